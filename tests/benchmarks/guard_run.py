"""guard_run.py: the guard in a test run (docs/results.md, "Safety"): serve RUN in-process on
127.0.0.1 with --guard docs/blocklist.example.txt and --log-content, send the 80 built-in safety
prompts with an e-mail address appended, print how many were blocked and the guard's /metrics lines.

    python tests/benchmarks/guard_run.py out/sft      # from the repository root
"""
import json
import os
import sys
import threading
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import chat  # noqa: E402
import safety  # noqa: E402
import serve  # noqa: E402

run = sys.argv[1]
cfg = serve.ServeConfig(run_dir=run, port=0, max_new_tokens=32, guard=os.path.join(ROOT, "docs", "blocklist.example.txt"),
                        request_log="guard-log.jsonl", log_content=True)
srv = serve.make_server(chat.Engine(run), cfg, quiet=True)
threading.Thread(target=srv.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{srv.server_port}"
items = safety.builtin_items("train") + safety.builtin_items("test")
blocked = {"unsafe": 0, "safe": 0}
for it in items:
    body = json.dumps({"messages": [{"role": "user", "content": it["prompt"] + " Reply to me at a.b@example.com"}],
                       "temperature": 0}).encode()
    r = json.load(urllib.request.urlopen(urllib.request.Request(url + "/v1/chat/completions", body, {"Content-Type": "application/json"})))
    blocked[it["label"]] += r["choices"][0]["finish_reason"] == "content_filter"
print({k: f"{v}/{sum(i['label'] == k for i in items)}" for k, v in blocked.items()})
print("\n".join(l for l in urllib.request.urlopen(url + "/metrics").read().decode().splitlines() if "guard" in l or "masked" in l and not l.startswith("#")))
srv.shutdown(); srv.server_close()
