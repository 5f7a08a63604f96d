"""Tests for serve.py, the HTTP server, on 127.0.0.1: raw HTTP, server-sent events, errors,
concurrency, dropped clients, the official openai client when it is installed; the batch (equal
answers together and alone, joining a running batch, 503s, GPT rows in turn, a failed prefill),
API keys, --insecure, /metrics and the request log."""
import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import chat
import guard
import metrics
import serve
import train

ROOT = Path(__file__).resolve().parent.parent
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What does len do?"}]


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "serve.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


# ---------------------------------------------------------------------------------------------
# The HTTP server
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(sft_run):
    cfg = serve.ServeConfig(run_dir=str(sft_run), port=0, max_new_tokens=8, max_body=20_000)
    engine = chat.Engine(sft_run)
    srv = serve.make_server(engine, cfg, quiet=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield {"port": srv.server_port, "engine": engine}
    srv.shutdown()
    srv.server_close()


def request(port, method, path, body=None, headers=None):
    """One HTTP exchange; body may be a dict (sent as JSON) or raw bytes. -> (status, text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    conn.request(method, path, body=data, headers=headers or {"Content-Type": "application/json"})
    response = conn.getresponse()
    text = response.read().decode("utf-8")
    conn.close()
    return response.status, text


def complete(port, **body):
    status, text = request(port, "POST", "/v1/chat/completions", body)
    assert status == 200, text
    return json.loads(text)


def events(port, **body):
    """A streaming call parsed event by event: the list of JSON chunks, and the final line."""
    status, text = request(port, "POST", "/v1/chat/completions", dict(body, stream=True))
    assert status == 200, text
    assert text.endswith("\n\n")
    lines = [block for block in text.split("\n\n") if block]
    assert all(line.startswith("data: ") for line in lines)
    return [json.loads(line[6:]) for line in lines[:-1]], lines[-1]


def test_health_and_models(server):
    status, text = request(server["port"], "GET", "/health")
    assert status == 200 and json.loads(text)["status"] == "ok"
    status, text = request(server["port"], "GET", "/v1/models")
    assert status == 200 and json.loads(text)["data"][0]["id"] == "sft"


def test_non_streaming_completion_matches_the_engine(server):
    reply = complete(server["port"], model="sft", messages=HELLO, temperature=0, max_tokens=6)
    assert reply["object"] == "chat.completion" and reply["id"].startswith("chatcmpl-") and reply["model"] == "sft"
    choice = reply["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    engine = server["engine"]
    ids = engine.prompt_ids(HELLO)
    answer = chat.Answer(engine, ids, 6, temperature=0, top_k=50, top_p=0.9, repetition_penalty=1.1)
    assert choice["message"]["content"] == "".join(answer.stream())
    usage = reply["usage"]
    assert usage == {"prompt_tokens": len(ids), "completion_tokens": answer.n_tokens,
                     "total_tokens": len(ids) + answer.n_tokens}
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == 6
    for seed in (11, -3):  # a seed makes sampling repeat
        a = complete(server["port"], messages=HELLO, seed=seed, temperature=1.0, max_tokens=8)
        b = complete(server["port"], messages=HELLO, seed=seed, temperature=1.0, max_tokens=8)
        assert a["choices"][0]["message"] == b["choices"][0]["message"]


def test_streaming_completion_event_by_event(server):
    chunks, last = events(server["port"], messages=HELLO, temperature=0, max_tokens=8,
                          stream_options={"include_usage": True})
    assert last == "data: [DONE]"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks) and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] >= 1
    final = chunks[-2]["choices"][0]
    assert final["finish_reason"] in ("stop", "length") and final["delta"] == {}
    middle = chunks[1:-2]
    assert all(c["choices"][0]["finish_reason"] is None and set(c["choices"][0]["delta"]) == {"content"}
               for c in middle)
    text = "".join(c["choices"][0]["delta"]["content"] for c in middle)
    whole = complete(server["port"], messages=HELLO, temperature=0, max_tokens=8)
    assert text == whole["choices"][0]["message"]["content"]


def test_stop_strings_in_both_modes(server):
    full = complete(server["port"], messages=HELLO, temperature=0, max_tokens=8)["choices"][0]["message"]["content"]
    assert len(full) >= 4
    stop = full[2:4]
    expected = full[:full.find(stop)]
    reply = complete(server["port"], messages=HELLO, temperature=0, max_tokens=8, stop=stop)
    assert reply["choices"][0]["message"]["content"] == expected and reply["choices"][0]["finish_reason"] == "stop"
    chunks, _ = events(server["port"], messages=HELLO, temperature=0, max_tokens=8, stop=["\u2603", stop])
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


BAD = {
    "not json": (b"{messages: oops", 400),
    "not utf-8": (b'{"messages": "\xff"}', 400),
    "not an object": ([1, 2], 400),
    "no messages": ({"temperature": 0}, 400),
    "empty messages": ({"messages": []}, 400),
    "message not an object": ({"messages": ["hi"]}, 400),
    "unknown role": ({"messages": [{"role": "wizard", "content": "hi"}]}, 400),
    "content not a string": ({"messages": [{"role": "user", "content": 5}]}, 400),
    "image content": ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400),
    "temperature a string": ({"messages": HELLO, "temperature": "hot"}, 400),
    "temperature a bool": ({"messages": HELLO, "temperature": True}, 400),
    "temperature too high": ({"messages": HELLO, "temperature": 7}, 400),
    "top_p too high": ({"messages": HELLO, "top_p": 1.5}, 400),
    "max_tokens zero": ({"messages": HELLO, "max_tokens": 0}, 400),
    "max_tokens a float": ({"messages": HELLO, "max_tokens": 2.5}, 400),
    "stop a number": ({"messages": HELLO, "stop": 3}, 400),
    "stream a string": ({"messages": HELLO, "stream": "yes"}, 400),
    "seed a string": ({"messages": HELLO, "seed": "x"}, 400),
    "n of 2": ({"messages": HELLO, "n": 2}, 400),
    "prompt too long": ({"messages": [{"role": "user", "content": "word " * 100}]}, 400),
    "body too large": ({"messages": [{"role": "user", "content": "x" * 30_000}]}, 413),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_requests_get_an_openai_error(server, case):
    body, expected = BAD[case]
    status, text = request(server["port"], "POST", "/v1/chat/completions", body)
    assert status == expected, text
    error = json.loads(text)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert request(server["port"], "GET", "/health")[0] == 200  # and the server keeps serving


def test_wrong_routes_and_missing_length(server):
    for method, path in (("GET", "/nope"), ("POST", "/v1/embeddings")):
        status, text = request(server["port"], method, path, {"messages": HELLO} if method == "POST" else None)
        assert status == 404 and "error" in json.loads(text)
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b"".join(iter(lambda: s.recv(65536), b""))
    assert reply.startswith(b"HTTP/1.0 411") and b'"error"' in reply


def test_concurrent_requests_all_get_answers(server):
    results = [None] * 6

    def call(i):
        body = dict(messages=HELLO, max_tokens=6, seed=i, stream=i % 2 == 1)
        results[i] = request(server["port"], "POST", "/v1/chat/completions", body)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None and r[0] == 200 for r in results), results
    assert all(r[1].endswith("data: [DONE]\n\n") for r in results[1::2])


def test_client_dropped_mid_stream_does_not_break_the_server(server):
    body = json.dumps(dict(messages=HELLO, max_tokens=60, stream=True)).encode()
    for _ in range(2):
        s = socket.create_connection(("127.0.0.1", server["port"]), timeout=30)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert s.recv(200).startswith(b"HTTP/1.0 200")  # the stream has started
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        s.close()
    reply = complete(server["port"], messages=HELLO, max_tokens=4)  # the lock was released
    assert reply["choices"][0]["message"]["role"] == "assistant"


def test_the_official_openai_client(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server['port']}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["sft"]
    reply = client.chat.completions.create(model="sft", messages=HELLO, temperature=0, max_tokens=8)
    text = reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1
    streamed = client.chat.completions.create(model="sft", messages=HELLO, temperature=0, max_tokens=8, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="sft", messages=[{"role": "wizard", "content": "hi"}])


# ---------------------------------------------------------------------------------------------
# The batch, and what a deployment needs: API keys, /metrics, the request log, --insecure, 503s
# ---------------------------------------------------------------------------------------------
def start(engine, **flags):
    """A server on 127.0.0.1 with a free port, serving in a daemon thread; stop(srv) ends it."""
    cfg = serve.ServeConfig(**{**dict(port=0, max_new_tokens=8), **flags})
    srv = serve.make_server(engine, cfg, quiet=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def stop(srv):
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def engine(sft_run):
    return chat.Engine(sft_run)


class Gate:
    """Holds the batcher before its next decoding step until opened (at most 30 s), so a test
    can line requests up deterministically."""

    def __init__(self, srv):
        self.open, self.decoder = threading.Event(), srv.app.batcher.decoder
        self.real = self.decoder.step
        self.decoder.step = self.step

    def step(self, tokens):
        self.open.wait(timeout=30)
        return self.real(tokens)

    def release(self):
        self.open.set()
        self.decoder.step = self.real


def wait_until(condition, seconds=30):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def in_threads(calls):
    """Run the calls at once, each in a thread; returns their results in order."""
    results = [None] * len(calls)

    def run(i):
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(not t.is_alive() for t in threads)
    return results


def test_batched_answers_equal_lone_answers(engine):
    """Eight requests decoded together (greedy, seeded sampling, a stop string, streaming or not)
    get exactly what each gets alone."""
    srv = start(engine, max_batch=8)
    port = srv.server_port
    questions = ["What does len do?", "What is a list?", "Explain dict.get", "Hi", "What is a tuple?",
                 "What does zip do?", "Name a loop", "What is None?"]
    bodies = [dict(messages=[{"role": "user", "content": q}], temperature=0, max_tokens=20) for q in questions]
    bodies[1].update(temperature=0.9, seed=7)
    bodies[2].update(temperature=1.2, top_p=0.8, top_k=20, seed=8, repetition_penalty=1.3)
    text = lambda r: r["choices"][0]["message"]["content"]
    try:
        alone = [text(complete(port, **b)) for b in bodies]
        bodies[3]["stop"] = alone[3][3:5] or "\n"
        alone[3] = text(complete(port, **bodies[3]))
        gate = Gate(srv)  # line all eight up, so that they are decoded together
        calls = [lambda b=b: complete(port, **b) for b in bodies[:4]]
        calls += [lambda b=b: events(port, **b) for b in bodies[4:]]
        results = []
        waiter = threading.Thread(target=lambda: results.extend(in_threads(calls)), daemon=True)
        waiter.start()
        batcher = srv.app.batcher
        wait_until(lambda: len(batcher.active) + len(batcher.waiting) == 8 and len(batcher.active) >= 1)
        gate.release()
        waiter.join(timeout=60)
        together = [text(r) for r in results[:4]]
        together += ["".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
                     for chunks, _ in results[4:]]
        assert together == alone
        counts = srv.app.metrics.hist["batch_size"].counts  # cumulative: steps with <= 1, 2, 4, 8, ... rows
        assert counts[3] - counts[2] >= 1  # some steps advanced more than four rows at once
    finally:
        stop(srv)


def test_a_full_queue_answers_503_and_the_rest_are_served(engine):
    srv = start(engine, max_batch=1, max_queue=1)
    port, batcher = srv.server_port, srv.app.batcher
    gate = Gate(srv)
    try:
        first = []
        threading.Thread(target=lambda: first.append(request(port, "POST", "/v1/chat/completions",
                                                             {"messages": HELLO, "max_tokens": 4})),
                         daemon=True).start()
        wait_until(lambda: len(batcher.active) == 1)  # the one row is taken
        second = []
        threading.Thread(target=lambda: second.append(request(port, "POST", "/v1/chat/completions",
                                                              {"messages": HELLO, "max_tokens": 4})),
                         daemon=True).start()
        wait_until(lambda: len(batcher.waiting) == 1)  # the one place in the queue is taken
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/chat/completions", json.dumps({"messages": HELLO}),
                     {"Content-Type": "application/json"})
        refused = conn.getresponse()
        error = json.loads(refused.read())["error"]
        assert refused.status == 503 and refused.getheader("Retry-After") == "1"
        assert error["type"] == "server_error" and error["code"] == "overloaded" and set(error) == {
            "message", "type", "param", "code"}
        gate.release()
        wait_until(lambda: first and second)
        assert first[0][0] == 200 and second[0][0] == 200
    finally:
        gate.release()
        stop(srv)


def test_requests_join_the_running_batch_and_a_client_that_leaves_frees_its_row(engine):
    srv = start(engine, max_batch=4)
    port, batcher = srv.server_port, srv.app.batcher
    gate = Gate(srv)
    try:
        body = json.dumps(dict(messages=HELLO, max_tokens=50, stream=True, temperature=1.0, seed=1)).encode()
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert s.recv(200).startswith(b"HTTP/1.0 200")  # its first token is out; the step waits
        later = []
        threading.Thread(target=lambda: later.append(complete(port, messages=HELLO, max_tokens=3)),
                         daemon=True).start()
        wait_until(lambda: len(batcher.waiting) == 1)
        gate.release()  # the next round admits it next to the running stream
        wait_until(lambda: later)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # leave with a reset
        s.close()
        wait_until(lambda: not batcher.active)  # the abandoned row was freed long before 50 tokens
        assert later[0]["choices"][0]["message"]["role"] == "assistant"
        counts = srv.app.metrics.hist["batch_size"].counts  # cumulative: steps with <= 1, 2, ... rows
        assert counts[1] - counts[0] >= 1  # some steps advanced both
    finally:
        gate.release()
        stop(srv)


def test_gpt_requests_are_served_in_turn(gpt_run):
    engine = chat.Engine(gpt_run)
    srv = start(engine, max_batch=3)
    try:
        prompt = engine.prompt_ids([{"role": "user", "content": "def f"}])
        alone = list(engine.tokens(prompt, 10, None, temperature=0, top_k=0, top_p=1.0, repetition_penalty=1.0))
        body = dict(messages=[{"role": "user", "content": "def f"}], temperature=0, max_tokens=10,
                    repetition_penalty=1.0)
        results = in_threads([lambda: complete(srv.server_port, **body)] * 3)
        expected = engine.tok.decode([t for t in alone if t not in engine.stop_ids])
        assert [r["choices"][0]["message"]["content"] for r in results] == [expected] * 3
    finally:
        stop(srv)


def test_api_key(engine, monkeypatch):
    srv = start(engine, api_key="s3cret")
    port = srv.server_port
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/metrics")):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request(method, path, json.dumps({"messages": HELLO}) if method == "POST" else None,
                             {"Content-Type": "application/json", **headers})
                reply = conn.getresponse()
                error = json.loads(reply.read())["error"]
                assert reply.status == 401 and reply.getheader("WWW-Authenticate") == "Bearer"
                assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
        assert request(port, "GET", "/health")[0] == 200  # open: load balancers probe it
        good = {"Content-Type": "application/json", "Authorization": "Bearer s3cret"}
        status, text = request(port, "POST", "/v1/chat/completions", {"messages": HELLO, "max_tokens": 3}, good)
        assert status == 200 and json.loads(text)["choices"]
        assert request(port, "GET", "/metrics", None, good)[0] == 200
        openai = pytest.importorskip("openai")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="s3cret", max_retries=0)
        assert client.chat.completions.create(model="sft", messages=HELLO, max_tokens=3).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="nope",
                          max_retries=0).chat.completions.create(model="sft", messages=HELLO)
    finally:
        stop(srv)
    monkeypatch.setenv("SLM_API_KEY", "from-env")
    assert serve.parse_args(["x"]).api_key == "from-env"
    assert serve.parse_args(["x", "--api-key", "flag"]).api_key == "flag"


def test_no_listening_beyond_localhost_without_a_key(engine, sft_run):
    for host in ("0.0.0.0", "", "192.0.2.1", "example.org"):
        with pytest.raises(train.UserError, match="--api-key"):
            serve.make_server(engine, serve.ServeConfig(host=host, port=0), quiet=True)
    for flags in (dict(api_key="k"), dict(insecure=True)):
        serve.make_server(engine, serve.ServeConfig(host="0.0.0.0", port=0, **flags), quiet=True).server_close()
    for host in ("127.0.0.1", "localhost", "::1"):
        assert guard.is_loopback(host)
    done = run_cli(sft_run, "--host", "0.0.0.0", "--port", "0")
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "--insecure" in done.stderr


def parse_metrics(text):
    """Prometheus' text format, checked line by line -> {series: value}; every series has its
    # HELP and # TYPE, histograms have increasing buckets ending at +Inf == _count."""
    import re
    values, declared = {}, {}
    for line in text.splitlines():
        if line.startswith("# "):
            kind, name, rest = line[2:].split(" ", 2)
            declared.setdefault(name, {})[kind] = rest
            continue
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? (\S+)', line)
        assert m, line
        values[m.group(1) + (m.group(2) or "")] = float(m.group(4))
        base = re.sub(r"_(bucket|sum|count)$", "", m.group(1)) if m.group(1) not in declared else m.group(1)
        assert set(declared[base]) == {"HELP", "TYPE"}, line
    for name, d in declared.items():
        if d["TYPE"] == "histogram":
            buckets = [v for k, v in values.items() if k.startswith(name + "_bucket")]
            assert buckets == sorted(buckets) and buckets[-1] == values[name + "_count"]
    return values


def test_metrics_and_request_log(engine, tmp_path):
    log = tmp_path / "requests.jsonl"
    srv = start(engine, request_log=str(log), max_batch=4)
    port = srv.server_port
    try:
        replies = [complete(port, messages=HELLO, max_tokens=5, seed=i) for i in range(3)]
        chunks, _ = events(port, messages=HELLO, max_tokens=5, stream_options={"include_usage": True})
        request(port, "POST", "/v1/chat/completions", {"messages": "nope"})
        # A request is counted just after its answer is sent: wait until the last one has been.
        refused = 'slm_requests_total{path="/v1/chat/completions",status="400"}'
        wait_until(lambda: refused in parse_metrics(request(port, "GET", "/metrics")[1]))
        m = parse_metrics(request(port, "GET", "/metrics")[1])
    finally:
        stop(srv)
    done = '{path="/v1/chat/completions",status="200"}'
    assert m["slm_requests_total" + done] == 4
    assert m['slm_requests_total{path="/v1/chat/completions",status="400"}'] == 1
    tokens = sum(r["usage"]["completion_tokens"] for r in replies) + chunks[-1]["usage"]["completion_tokens"]
    assert m["slm_completion_tokens_total"] == tokens
    assert m["slm_prompt_tokens_total"] == 4 * replies[0]["usage"]["prompt_tokens"]
    assert m["slm_ttft_seconds_count"] == 4 and m["slm_ttft_seconds_sum"] > 0
    assert m["slm_tokens_per_s_count"] >= 1 and m["slm_batch_size_count"] >= 4
    assert m["slm_queue_depth"] == 0 and m["slm_max_batch"] == 4
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    posts = [e for e in lines if e["method"] == "POST"]
    assert [e["status"] for e in posts] == [200, 200, 200, 200, 400]
    assert all({"time", "client", "path", "status", "latency_s"} <= set(e) for e in lines)
    assert posts[0]["completion_tokens"] == replies[0]["usage"]["completion_tokens"] and posts[0]["ttft_s"] > 0
    assert not any("messages" in e or "answer" in e for e in lines)  # contents only with --log-content
    srv = start(engine, request_log=str(tmp_path / "content.jsonl"), log_content=True)
    try:
        reply = complete(srv.server_port, messages=HELLO, max_tokens=5)
    finally:
        stop(srv)
    entry = json.loads((tmp_path / "content.jsonl").read_text().splitlines()[0])
    assert entry["messages"] == HELLO and entry["answer"] == reply["choices"][0]["message"]["content"]


def test_a_request_whose_prefill_fails_leaves_the_batch_serving(engine):
    """A bug in one request's prefill fails that request only: no row is left half-made, and the
    next request is answered."""
    batcher = serve.Batcher(engine, max_batch=2, max_queue=2, metrics=metrics.Metrics())
    real, calls = batcher.decoder.add, []

    def add_failing_once(ids):
        calls.append(ids)
        if len(calls) == 1:
            raise RuntimeError("prefill went wrong")
        return real(ids)

    batcher.decoder.add = add_failing_once
    sampling = dict(temperature=0, top_k=0, top_p=1.0, repetition_penalty=1.0)
    try:
        failed = batcher.submit([1, 2, 3], 4, None, sampling)
        assert isinstance(failed.out.get(timeout=30), RuntimeError)
        ok = batcher.submit([1, 2, 3], 4, None, sampling)
        got = list(iter(lambda: ok.out.get(timeout=30), None))
        assert 1 <= len(got) <= 4 and all(isinstance(t, int) for t in got)
        wait_until(lambda: batcher.decoder.rows == len(batcher.active) == 0)
        assert batcher.thread.is_alive()
    finally:
        batcher.close()


# ---------------------------------------------------------------------------------------------
# POST /v1/completions: OpenAI's legacy text completions, with echo and logprobs
# ---------------------------------------------------------------------------------------------
def text_complete(port, **body):
    status, text = request(port, "POST", "/v1/completions", body)
    assert status == 200, text
    return json.loads(text)


def test_completions_echo_logprobs_are_the_models_own(server):
    import torch
    import torch.nn.functional as F
    engine, port = server["engine"], server["port"]
    prompt = "Return the number of items in a container."
    ids = engine.tok.encode(prompt, allowed_special="none")
    reply = text_complete(port, prompt=prompt, max_tokens=0, echo=True, logprobs=3)
    c = reply["choices"][0]
    assert reply["object"] == "text_completion" and c["text"] == prompt
    lp = c["logprobs"]
    assert "".join(lp["tokens"]) == prompt and lp["token_logprobs"][0] is None
    assert lp["text_offset"] == [len("".join(lp["tokens"][:i])) for i in range(len(ids))]
    with torch.no_grad():  # by hand: one forward pass, log-softmax, the next token's entry
        want = F.log_softmax(engine.model(torch.tensor([ids]))[0][0].float(), -1)
    assert lp["token_logprobs"][1:] == pytest.approx(
        [want[i - 1, t].item() for i, t in enumerate(ids) if i], abs=1e-4)
    for i, top in enumerate(lp["top_logprobs"][1:], 1):
        assert lp["tokens"][i] in top and 3 <= len(top) <= 4  # the token itself is always there
        assert max(top.values()) == pytest.approx(want[i - 1].max().item(), abs=1e-4)
    assert reply["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0,
                              "total_tokens": len(ids)}
    # the same prompt as token ids, in a batch of two prompts: one choice each, in order
    two = text_complete(port, prompt=[ids, ids[:3]], max_tokens=0, echo=True, logprobs=1)
    assert [ch["index"] for ch in two["choices"]] == [0, 1]
    assert two["choices"][0]["logprobs"]["token_logprobs"] == pytest.approx(lp["token_logprobs"])
    assert len(two["choices"][1]["logprobs"]["tokens"]) == 3


def test_completions_generate_with_logprobs_and_stop(server):
    engine, port = server["engine"], server["port"]
    prompt = "The function returns"
    n = len(engine.tok.encode(prompt, allowed_special="none"))
    reply = text_complete(port, prompt=prompt, max_tokens=6, temperature=0, logprobs=2,
                          repetition_penalty=1.0, seed=1)
    c = reply["choices"][0]
    assert c["finish_reason"] in ("length", "stop") and not c["text"].startswith(prompt)
    lp = c["logprobs"]  # the answer's tokens only (no echo), each the greedy choice
    assert "".join(lp["tokens"]) == c["text"] and lp["text_offset"][0] == 0
    for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert value == pytest.approx(max(top.values()), abs=1e-4) and token in top
    echoed = text_complete(port, prompt=prompt, max_tokens=6, temperature=0, logprobs=0,
                           echo=True, repetition_penalty=1.0)["choices"][0]
    assert echoed["text"] == prompt + c["text"]
    assert len(echoed["logprobs"]["tokens"]) == n + len(lp["tokens"])
    if c["text"].strip():
        cut = c["text"].strip()[-1]
        stopped = text_complete(port, prompt=prompt, max_tokens=6, temperature=0, stop=[cut],
                                repetition_penalty=1.0)["choices"][0]
        assert cut not in stopped["text"] and stopped["finish_reason"] == "stop"
        assert stopped["logprobs"] is None


@pytest.mark.parametrize("body, param", [
    ({"prompt": 3}, "prompt"), ({"prompt": []}, "prompt"), ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": [10**9]}, "prompt"), ({"prompt": "hi", "logprobs": 9}, "logprobs"),
    ({"prompt": "hi", "echo": "yes"}, "echo"), ({"prompt": "hi", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "hi", "stream": True, "logprobs": 1}, "logprobs"), ({"prompt": "hi", "stream": 1}, "stream"),
    ({"prompt": "hi", "temperature": 5}, "temperature"),
    ({"prompt": "word " * 300, "max_tokens": 2}, "prompt")])
def test_completions_refuse_bad_requests_with_an_openai_error(server, body, param):
    status, text = request(server["port"], "POST", "/v1/completions", body)
    error = json.loads(text)["error"]
    assert status == 400 and error["param"] == param and error["type"] == "invalid_request_error"


def test_completions_share_auth_metrics_and_the_log(engine, tmp_path):
    log = tmp_path / "requests.jsonl"
    srv = start(engine, api_key="k", request_log=str(log))
    port, good = srv.server_port, {"Content-Type": "application/json", "Authorization": "Bearer k"}
    try:
        assert request(port, "POST", "/v1/completions", {"prompt": "hi"})[0] == 401
        status, text = request(port, "POST", "/v1/completions",
                               {"prompt": "hi there", "max_tokens": 2, "logprobs": 1}, good)
        assert status == 200
        usage = json.loads(text)["usage"]
        done = 'slm_requests_total{path="/v1/completions",status="200"}'
        wait_until(lambda: done in parse_metrics(request(port, "GET", "/metrics", None, good)[1]))
        m = parse_metrics(request(port, "GET", "/metrics", None, good)[1])
    finally:
        stop(srv)
    assert m[done] == 1 and m['slm_requests_total{path="/v1/completions",status="401"}'] == 1
    assert m["slm_prompt_tokens_total"] == usage["prompt_tokens"]
    entry = [e for e in map(json.loads, log.read_text().splitlines()) if e["status"] == 200
             and e["method"] == "POST"][-1]
    assert entry["path"] == "/v1/completions" and entry["prompt_tokens"] == usage["prompt_tokens"]
    assert entry["completion_tokens"] == usage["completion_tokens"] and "answer" not in entry


def test_the_harnesses_local_completions_scores_like_eval(sft_run, engine, corpus, tmp_path):
    """lm-evaluation-harness's local-completions model against this server, and eval.py on the
    run itself: the same acc and acc_norm on the same local task file."""
    lm_eval = pytest.importorskip("lm_eval")
    pytest.importorskip("transformers")
    pytest.importorskip("tenacity")  # lm_eval[api]: what its API models need
    import convert
    import eval as evaluation
    from lm_eval.tasks import TaskManager
    convert.main([str(sft_run), str(tmp_path / "hf"), "--to", "hf"])
    text = (corpus / "text.txt").read_text()
    lines = [{"context": text[200 * i:200 * i + 50], "choices": [
        text[200 * i + 50 + 7 * k:200 * i + 60 + 9 * k] for k in range(4)], "label": i % 4}
        for i in range(12)]
    path = tmp_path / "cloze.jsonl"
    path.write_text("\n".join(map(json.dumps, lines)) + "\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "cloze.yaml").write_text(
        f"task: slm_cloze\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {path}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{context}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    srv = start(engine, max_new_tokens=8)
    try:
        theirs = lm_eval.simple_evaluate(
            model="local-completions", model_args=(
                f"model=sft,base_url=http://127.0.0.1:{srv.server_port}/v1/completions,"
                f"tokenizer_backend=huggingface,tokenizer={tmp_path / 'hf'},num_concurrent=1,"
                "max_retries=1"), tasks=["slm_cloze"],
            task_manager=TaskManager(include_path=str(tmp_path / "tasks")))
    finally:
        stop(srv)
    ours = evaluation.main([str(sft_run), "--data", str(corpus / "text.txt"), "--max-tokens",
                            "128", "--max-new-tokens", "2", "--no-report", "--tasks",
                            f"generic={path}", "--contamination", "none"])[0]["benchmarks"]["cloze"]
    res = theirs["results"]["slm_cloze"]
    assert ours["acc"] == pytest.approx(res["acc,none"])
    assert ours["acc_norm"] == pytest.approx(res["acc_norm,none"])
