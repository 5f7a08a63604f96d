"""A fake Hugging Face hub on 127.0.0.1 for the tests of download.py's hub client (and of
convert.py's imports from it): the hub's URL layout, Range requests, 404s, and a gated model that
needs a bearer token (HF_TOKEN) and redirects to a CDN."""
import http.server
import threading
import urllib.parse
from pathlib import Path


class FakeHub:
    """Serves folder/{owner}/{name}/{revision}/{file} at /{owner}/{name}/resolve/{revision}/{file},
    as the hub does: Range requests, 404 for absent files, 401 without the right bearer token for
    a gated model (whose .safetensors redirect to /cdn/..., as the hub redirects to its CDN)."""
    TOKEN = "secret-token"

    def __init__(self, folder):
        self.folder, self.requests, self.gated = Path(folder), [], set()
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hub.requests.append((self.path, dict(self.headers)))
                hub.answer(self)

            def log_message(self, *args):
                pass
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, repo, files, revision="main"):
        for name, data in files.items():
            path = self.folder / repo / revision / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def answer(self, request):
        parts = [urllib.parse.unquote(p) for p in request.path.split("/")[1:]]
        if parts[0] == "cdn":  # where a gated model's weights live; no token needed here
            return self.send_file(request, self.folder.joinpath(*parts[1:]))
        owner, name, _, revision, *file = parts
        repo = f"{owner}/{name}"
        if repo in self.gated and request.headers.get("Authorization") != f"Bearer {self.TOKEN}":
            return self.send_error(request, 401, "Access to model is restricted.")
        path = self.folder / repo / revision / "/".join(file)
        if repo in self.gated and path.suffix == ".safetensors" and path.exists():
            request.send_response(302)
            request.send_header("Location", f"{self.url}/cdn/{repo}/{revision}/{'/'.join(file)}")
            request.send_header("Content-Length", "0")
            return request.end_headers()
        self.send_file(request, path)

    def send_error(self, request, code, message):
        request.send_response(code)
        request.send_header("X-Error-Message", message)
        request.send_header("Content-Length", "0")
        request.end_headers()

    def send_file(self, request, path):
        if not path.is_file():
            return self.send_error(request, 404, "Entry not found")
        body, start = path.read_bytes(), 0
        if request.headers.get("Range"):
            start = int(request.headers["Range"].split("=")[1].rstrip("-"))
        request.send_response(206 if start else 200)
        request.send_header("Content-Length", str(len(body) - start))
        request.end_headers()
        request.wfile.write(body[start:])
