"""guard_run.py: the guard in a test run (docs/results.md, "Safety"): serve RUN in-process on
127.0.0.1 with --guard docs/blocklist.example.txt and --log-content, send the 80 built-in safety
prompts with an e-mail address appended to both guarded routes (POST /v1/chat/completions as a
user message, POST /v1/completions as the prompt), greedy, 32 tokens; print, per route and kind of
prompt, how many were blocked at input and how many answers were cut at output, then the guard's
/metrics lines and whether the address reached the request log (slm-guard-log.jsonl in the
temporary directory).

    python tests/benchmarks/guard_run.py out/sft      # from the repository root
"""
import json
import os
import sys
import tempfile
import threading
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import chat  # noqa: E402
import safety  # noqa: E402
import serve  # noqa: E402

ADDRESS = "a.b@example.com"
LOG = os.path.join(tempfile.gettempdir(), "slm-guard-log.jsonl")
run = sys.argv[1]
if os.path.exists(LOG):
    os.remove(LOG)
cfg = serve.ServeConfig(run_dir=run, port=0, max_new_tokens=32, request_log=LOG, log_content=True,
                        guard=os.path.join(ROOT, "docs", "blocklist.example.txt"))
srv = serve.make_server(chat.Engine(run), cfg, quiet=True)
threading.Thread(target=srv.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{srv.server_port}"


def post(path, body):
    data = json.dumps(dict(body, temperature=0)).encode()
    request = urllib.request.Request(url + path, data, {"Content-Type": "application/json"})
    reply = json.load(urllib.request.urlopen(request))
    return reply["choices"][0]["finish_reason"], reply["usage"]["completion_tokens"]


ROUTES = {"/v1/chat/completions": lambda text: {"messages": [{"role": "user", "content": text}]},
          "/v1/completions": lambda text: {"prompt": text}}
items = safety.builtin_items("train") + safety.builtin_items("test")
for path, body in ROUTES.items():
    for label in ("unsafe", "safe"):
        asked = [it for it in items if it["label"] == label]
        got = [post(path, body(f"{it['prompt']} Reply to me at {ADDRESS}")) for it in asked]
        at_input = sum(f == "content_filter" and n == 0 for f, n in got)
        at_output = sum(f == "content_filter" and n > 0 for f, n in got)
        print(f"{path} {label} ({len(asked)}): {at_input} blocked at input, "
              f"{at_output} cut at output, {len(asked) - at_input - at_output} passed")
metrics = urllib.request.urlopen(url + "/metrics").read().decode().splitlines()
print("\n".join(s for s in metrics if s.startswith(("slm_guard", "slm_log_masked"))))
srv.shutdown()
srv.server_close()
print(f"{ADDRESS} in {LOG}: {ADDRESS in open(LOG, encoding='utf-8').read()}")
