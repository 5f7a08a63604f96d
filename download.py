"""download.py: files over HTTP, downloaded once into a cache folder (a companion file).

    from download import cache_dir, download
    download("https://example.org/big.txt", cache_dir() / "big.txt")   # progress bar, resumable

A download goes to NAME.part first and is renamed only when its size checks out, so an interrupted
download resumes with an HTTP Range request and never leaves a half file under the real name. An
HTTP error becomes one UserError line with advice for the status (401, 403, 404).

Imported by train.py (the built-in downloads: TinyStories, Tiny Shakespeare) and convert.py (the
Hugging Face hub's files). Imports only bpe.py's UserError, the project's one error type.
"""
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from bpe import UserError


def cache_dir():
    """Where downloads and token caches live: $SLM_CACHE, else ~/.cache/slm."""
    path = Path(os.environ.get("SLM_CACHE", Path.home() / ".cache" / "slm"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# A failed download's HTTP status -> what the user can do about it. Without a token the hub answers
# 401 for a private or gated model and for one that does not exist; 403: the token may not read it.
HTTP_ADVICE = {401: "not authorized: no such model, or a private or gated one (set HF_TOKEN)",
               403: "forbidden: accept the model's terms on its page, and check HF_TOKEN",
               404: "not found: no such model, revision or file"}


def download(url, dest, expected_size=None, headers=None):
    """Download url to dest once, with a progress bar; resumes a partial .part file with an HTTP
    Range request, checks the size against Content-Length (and expected_size), then renames.
    headers (e.g. a hub token) go to url only, never to a server it redirects to (a CDN).
    An HTTP error raises UserError from the urllib HTTPError, whose .code callers may read."""
    dest = Path(dest)
    if dest.exists():
        return dest
    part = dest.with_suffix(dest.suffix + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    for key, value in (headers or {}).items():
        request.add_unredirected_header(key, value)
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        advice = HTTP_ADVICE.get(e.code, e.reason)
        detail = e.headers.get("X-Error-Message")  # the hub says why in this header
        raise UserError(f"cannot download {url}: HTTP {e.code}, {advice}"
                        + (f" ({detail})" if detail else "")) from e
    except OSError as e:
        raise UserError(f"cannot download {url}: {e}")
    with response:
        if have and response.status != 206:  # the server ignored the Range: start again
            have = 0
        total = have + int(response.headers.get("Content-Length", 0) or 0)
        with (open(part, "ab" if have else "wb") as f,
              tqdm(total=total or None, initial=have, unit="B", unit_scale=True,
                   desc=f"download {dest.name}") as bar):
            while chunk := response.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if (total and size != total) or (expected_size and size != expected_size):
        raise UserError(f"download of {url} is incomplete ({size} bytes); run again to resume")
    os.replace(part, dest)
    return dest
