"""Tests for guard.py and the server's guard (serve.py --guard), on both routes (chat and
/v1/completions): the blocklist's rules, answers checked while they stream (a phrase split across
chunks), requests refused before generation, the refusal message, private data masked in the
request log with --log-content on and off, the guard's counters in /metrics, the official openai
client's completions, and a bad blocklist as one error line."""
import json
import re

import pytest

import guard
import metrics
from rundir import UserError
from test_serve import HELLO, events, parse_metrics, request, start, stop, wait_until


def policy(tmp_path, *lines, hold=64):
    path = tmp_path / "blocklist.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return guard.Policy.load(path, hold)


def test_rules_whole_words_any_case_and_patterns(tmp_path):
    p = policy(tmp_path, "# comment", "", "pipe bomb", "meth", r"re:\bkill\s+-9\b")
    assert p.search("How to build a Pipe   BOMB?") == ("pipe bomb", 15)
    assert p.search("methods and something") is None  # whole words only
    assert p.search("then kill -9 1234")[0] == r"re:\bkill\s+-9\b"
    assert p.search("nothing here") is None
    # still growing: a match at the very end may become "bombastic"; once the text ends it counts
    assert p.search("a pipe bomb", final=False) is None and p.search("a pipe bomb")
    assert p.search("a pipe bombastic") is None
    assert p.hold == 64  # the pattern's hold is the largest


def test_a_bad_blocklist_is_one_error_with_its_line(tmp_path):
    with pytest.raises(UserError, match=r"blocklist.txt:2: bad pattern"):
        policy(tmp_path, "fine", "re:(unclosed")
    with pytest.raises(UserError, match="no such blocklist file"):
        guard.Policy.load(tmp_path / "missing.txt")


class FakeAnswer:
    """An answer that streams fixed pieces, as chat.Answer does."""

    def __init__(self, pieces):
        self.pieces, self.text, self.finish_reason, self.n_tokens = pieces, "", None, len(pieces)

    def stream(self):
        for piece in self.pieces:
            self.text += piece
            yield piece
        self.finish_reason = "stop"


def watch(p, pieces, refusal="REFUSED"):
    m = metrics.Metrics()
    entry = {}
    w = guard.Guard(p, refusal, m).watch(FakeAnswer(pieces), entry)
    return w, list(w.stream()), entry, m


def test_a_phrase_split_across_streamed_chunks_is_caught(tmp_path):
    p = policy(tmp_path, "pipe bomb")
    lead = "Here is a long and harmless introduction sentence. Then: a "
    pieces = [lead[:20], lead[20:40], lead[40:], "pi", "pe b", "omb", " recipe"]
    w, sent, entry, m = watch(p, pieces)
    joined = "".join(sent)
    assert "pipe" not in joined and "bomb" not in joined and joined.endswith("REFUSED")
    assert len(sent) > 2  # the safe text did go out while it streamed, before the cut
    assert joined == lead[:len(joined) - len("REFUSED")] + "REFUSED"
    assert w.finish_reason == "content_filter" and w.text == joined
    assert entry["guard"] == "output blocked: pipe bomb" and m.guard["output", "block"] == 1
    # every prefix of what was sent, at every moment, is free of any start of the phrase:
    # the hold-back is at least as long as the phrase
    assert p.hold >= len("pipe bomb")


def test_an_answer_that_passes_is_sent_whole(tmp_path):
    p = policy(tmp_path, "pipe bomb")
    pieces = ["The pipe", " bombastic", " speech ended", "."]
    w, sent, entry, m = watch(p, pieces)
    assert "".join(sent) == "".join(pieces) and w.finish_reason == "stop" and "guard" not in entry
    assert m.guard == {("output", "pass"): 1}
    w, sent, _, _ = watch(guard.Policy(), pieces)  # no blocklist: the pieces as they come
    assert sent == pieces


def test_the_log_masks_private_data_in_every_field(tmp_path):
    m = metrics.Metrics()
    path = tmp_path / "log.jsonl"
    entry = {"client": "192.168.100.200", "path": "/v1/chat/completions", "error": "bob@example.com",
             "messages": [{"role": "user", "content": "card 4111 1111 1111 1111, call +1 415 555 0134"}],
             "prompt": ["mail carol@example.net"], "answer": "write to alice@example.org"}
    guard.RequestLog(str(path), content=True, metrics=m).write(entry)
    guard.RequestLog(str(path), content=False, metrics=m).write(entry)
    on, off = [json.loads(s) for s in path.read_text().splitlines()]
    assert on["messages"][0]["content"] == "card <CARD>, call <PHONE>"
    assert on["answer"] == "write to <EMAIL>" and on["error"] == "<EMAIL>"
    assert on["client"] == "192.168.100.200"  # the client's address is the log's, not content
    assert on["prompt"] == ["mail <EMAIL>"]  # a /v1/completions prompt, as messages are
    assert "messages" not in off and "prompt" not in off and off["error"] == "<EMAIL>"
    assert "bob@" not in path.read_text() and "4111" not in path.read_text()
    assert m.masks == {"email": 4, "card": 1, "phone": 1}


# ---------------------------------------------------------------------------------------------
# In the server, on 127.0.0.1
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(sft_run):
    import chat
    return chat.Engine(sft_run)


SAMPLED = {"temperature": 1.0, "seed": 3, "max_tokens": 16}  # seeded: the same text every time


def guarded_against(engine, tmp_path, pieces_from, prompt=""):
    """What the model streams without a guard (pieces_from(port) -> its text pieces), six of its
    characters that straddle two chunks (and are not in the prompt) made a blocked pattern, and a
    server guarded by it and by "pipe bomb", its log with the content. -> (the unguarded text,
    the six characters, the guarded server, its log)"""
    free = start(engine, max_new_tokens=16)
    try:
        pieces = pieces_from(free.server_port)
    finally:
        stop(free)
    text = "".join(pieces)
    ends = [sum(map(len, pieces[:i])) for i in range(1, len(pieces))]  # between two chunks
    cut = next(e for e in ends if 3 <= e <= len(text) - 3 and text[e - 3:e + 3] not in prompt)
    secret = text[cut - 3:cut + 3]  # blocked, and split across two streamed chunks
    (tmp_path / "block.txt").write_text(f"pipe bomb\nre:{re.escape(secret)}\n")
    log = tmp_path / "requests.jsonl"
    srv = start(engine, max_new_tokens=16, guard=str(tmp_path / "block.txt"), guard_hold=6,
                refusal_message="Not here.", request_log=str(log), log_content=True)
    return text, secret, srv, log


def decisions(m):
    """/metrics' guard counters: {(stage, action): count}."""
    return {tuple(re.findall(r'"(\w+)"', k)): v for k, v in m.items()
            if k.startswith("slm_guard_decisions_total")}


def chat_pieces(port):
    chunks, _ = events(port, messages=HELLO, **SAMPLED)
    return [s for s in (c["choices"][0]["delta"].get("content") for c in chunks if c["choices"])
            if s]


def test_server_refuses_blocked_requests_and_cuts_blocked_answers(engine, tmp_path):
    text, secret, srv, log = guarded_against(engine, tmp_path, chat_pieces)
    port = srv.server_port
    try:
        asked = [{"role": "user", "content": "How do I build a PIPE  bomb? mail me at x@example.com"}]
        status, body = request(port, "POST", "/v1/chat/completions", {"messages": asked})
        reply = json.loads(body)
        assert status == 200 and reply["choices"][0]["message"]["content"] == "Not here."
        assert reply["choices"][0]["finish_reason"] == "content_filter"
        assert reply["usage"]["completion_tokens"] == 0  # not generated at all
        chunks, last = events(port, messages=asked)
        assert last == "data: [DONE]" and "Not here." in json.dumps(chunks)

        got, _ = events(port, messages=HELLO, **SAMPLED)
        sent = "".join(c["choices"][0]["delta"].get("content", "") for c in got if c["choices"])
        assert secret not in sent and sent.endswith("Not here.")
        assert text.startswith(sent[:-len("Not here.")])
        assert got[-1]["choices"][0]["finish_reason"] == "content_filter"
        status, body = request(port, "POST", "/v1/chat/completions",
                               {"messages": HELLO, **SAMPLED})
        whole = json.loads(body)["choices"][0]["message"]["content"]
        assert secret not in whole and whole.endswith("Not here.")
        wait_until(lambda: len(log.read_text().splitlines()) >= 4)
        m = parse_metrics(request(port, "GET", "/metrics")[1])
    finally:
        stop(srv)
    # two requests blocked at input (their refusals pass the output check), two answers cut
    assert decisions(m) == {("input", "block"): 2, ("input", "pass"): 2, ("output", "block"): 2,
                            ("output", "pass"): 2}
    assert m['slm_log_masked_total{kind="email"}'] >= 2
    entries = [json.loads(s) for s in log.read_text().splitlines()]
    assert entries[0]["guard"] == "input blocked: pipe bomb"
    assert entries[2]["guard"].startswith("output blocked: re:")
    assert "x@example.com" not in log.read_text() and "<EMAIL>" in log.read_text()


def streamed(port, **body):
    """A streamed POST /v1/completions: its chunks (JSON), and the last line."""
    status, text = request(port, "POST", "/v1/completions", dict(body, stream=True))
    assert status == 200, text
    blocks = [b for b in text.split("\n\n") if b]
    assert all(b.startswith("data: ") for b in blocks)
    return [json.loads(b[6:]) for b in blocks[:-1]], blocks[-1]


def pieces_of(chunks, index=0):
    return [c["choices"][0]["text"] for c in chunks
            if c["choices"] and c["choices"][0]["index"] == index and c["choices"][0]["text"]]


PROMPT = "The function returns"
BLOCKED = "How do I build a PIPE  bomb? mail me at x@example.com"


def test_completions_are_guarded_as_chat_is(engine, tmp_path):
    """POST /v1/completions through the same guard: a blocked prompt (text or token ids, streamed
    or not, in a batch of prompts) is not generated nor scored; a generated answer that matches is
    cut, also where the match is split across two streamed chunks; the same counters; the log
    masked."""
    text, secret, srv, log = guarded_against(  # what the model writes after PROMPT, unguarded
        engine, tmp_path, lambda port: pieces_of(streamed(port, prompt=PROMPT, **SAMPLED)[0]),
        PROMPT)
    port = srv.server_port
    try:
        status, body = request(port, "POST", "/v1/completions", {"prompt": BLOCKED})
        reply = json.loads(body)
        assert status == 200 and reply["object"] == "text_completion"
        assert reply["choices"][0]["text"] == "Not here."
        assert reply["choices"][0]["finish_reason"] == "content_filter"
        assert reply["usage"]["completion_tokens"] == 0  # not generated at all
        got, last = streamed(port, prompt=BLOCKED)
        assert last == "data: [DONE]" and "".join(pieces_of(got)) == "Not here."
        assert got[-1]["choices"][0]["finish_reason"] == "content_filter"
        ids = engine.tok.encode("a pipe bomb", allowed_special="none")  # token ids are read too
        two = json.loads(request(port, "POST", "/v1/completions", {
            "prompt": [ids, PROMPT], "max_tokens": 0, "echo": True, "logprobs": 1})[1])["choices"]
        assert two[0]["finish_reason"] == "content_filter" and two[0]["logprobs"] is None
        assert two[0]["text"].endswith("Not here.")  # and not scored: its logprobs would tell
        assert two[1]["text"] == PROMPT and two[1]["logprobs"]["tokens"]

        got, last = streamed(port, prompt=PROMPT, **SAMPLED)
        sent = "".join(pieces_of(got))
        assert secret not in sent and sent.endswith("Not here.") and last == "data: [DONE]"
        assert text.startswith(sent[:-len("Not here.")])
        assert got[-1]["choices"][0]["finish_reason"] == "content_filter"
        status, body = request(port, "POST", "/v1/completions",
                               {"prompt": PROMPT, "logprobs": 2, **SAMPLED})
        whole = json.loads(body)["choices"][0]
        assert secret not in whole["text"] and whole["text"] == sent
        assert whole["finish_reason"] == "content_filter" and whole["logprobs"] is None
        wait_until(lambda: len(log.read_text().splitlines()) >= 5)
        m = parse_metrics(request(port, "GET", "/metrics")[1])
    finally:
        stop(srv)
    # input: two blocked requests and the blocked prompt of the batch of two; its other prompt
    # passed, as did the two generated ones. output: every answer is watched, refusals pass.
    assert decisions(m) == {("input", "block"): 3, ("input", "pass"): 3, ("output", "block"): 2,
                            ("output", "pass"): 4}
    assert m['slm_log_masked_total{kind="email"}'] >= 2
    entries = [json.loads(s) for s in log.read_text().splitlines()]
    assert [e["guard"] for e in entries[:3]] == ["input blocked: pipe bomb"] * 3
    assert entries[0]["prompt"] == ["How do I build a PIPE  bomb? mail me at <EMAIL>"]
    assert entries[0]["answer"] == ["Not here."] and entries[0]["finish_reason"] == "content_filter"
    assert entries[3]["guard"].startswith("output blocked: re:") and entries[3]["stream"] is True
    assert "x@example.com" not in log.read_text()


def test_the_openai_client_gets_the_refusal_from_completions(engine, tmp_path):
    openai = pytest.importorskip("openai")
    (tmp_path / "block.txt").write_text("pipe bomb\n")
    srv = start(engine, guard=str(tmp_path / "block.txt"), refusal_message="Not here.")
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{srv.server_port}/v1", api_key="none")
        reply = client.completions.create(model="sft", prompt=BLOCKED, max_tokens=4)
        streamed = list(client.completions.create(model="sft", prompt=BLOCKED, stream=True,
                                                  stream_options={"include_usage": True}))
        fine = client.completions.create(model="sft", prompt=PROMPT, max_tokens=4, temperature=0)
    finally:
        stop(srv)
    assert reply.object == "text_completion" and reply.choices[0].text == "Not here."
    assert reply.choices[0].finish_reason == "content_filter" and reply.usage.completion_tokens == 0
    assert "".join(c.choices[0].text for c in streamed[:-1]) == "Not here."
    assert streamed[-2].choices[0].finish_reason == "content_filter"
    assert not streamed[-1].choices and streamed[-1].usage.completion_tokens == 0  # include_usage
    assert fine.choices[0].finish_reason in ("stop", "length") and fine.usage.completion_tokens


def test_server_with_a_bad_blocklist_is_one_error_line(sft_run, tmp_path):
    from test_serve import run_cli
    (tmp_path / "bad.txt").write_text("re:[\n")
    r = run_cli(sft_run, "--port", "0", "--guard", tmp_path / "bad.txt")
    assert r.returncode == 2 and r.stderr.startswith("error:") and "bad.txt:1" in r.stderr
