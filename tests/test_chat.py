"""Tests for chat.py: one-shot prompts (-p and stdin) against generate() called directly, history
truncation, the /commands, UTF-8 split across tokens, stop strings, the GPT fallback against
gpt.generate, and the HTTP server on 127.0.0.1 (raw HTTP, server-sent events, errors, concurrency,
dropped clients, and the official openai client when it is installed)."""
import http.client
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import chat
import gpt
import rundir
import train
from bpe import Tokenizer
from sft import render_chat

ROOT = Path(__file__).resolve().parent.parent
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What does len do?"}]



@pytest.fixture(scope="module")
def sft_run(pretrained_run, tmp_path_factory):
    """The pre-trained fixture relabelled as a chat model (stage "sft"): chat mode, same weights."""
    out = tmp_path_factory.mktemp("chat") / "sft"
    shutil.copytree(pretrained_run, out)
    payload = rundir.read_model_file(out)
    payload["stage"] = "sft"
    rundir.atomic_write(out / "model.pt", lambda f: torch.save(payload, f))
    return out


@pytest.fixture(scope="module")
def gpt_run(corpus, tmp_path_factory):
    """An untrained tiny GPT with the corpus tokenizer, saved as a run directory."""
    tok = Tokenizer.load(corpus / "tok.json")
    config = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=tok.vocab_size, dropout=0.0)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("chat") / "gpt"
    rundir.save_model(out, gpt.GPT(gpt.GPTConfig(**config)), tok, {"step": 0, "stage": "pretrain"})
    return out


def run_cli(*args, stdin=""):
    return subprocess.run([sys.executable, str(ROOT / "chat.py"), *map(str, args)], input=stdin,
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


# ---------------------------------------------------------------------------------------------
# One-shot answers
# ---------------------------------------------------------------------------------------------
def test_p_mode_is_reproducible_and_matches_generate(pretrained_run):
    args = (pretrained_run, "-p", "The object", "--seed", "3", "--max-new-tokens", "12", "--device", "cpu")
    first, second = run_cli(*args), run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.strip()
    # The same continuation computed directly: text mode = <|endoftext|> + the prompt, defaults
    # temperature 0.7, top-k 50, top-p 0.9, repetition penalty 1.1, stop at <|endoftext|>.
    model, tok, _ = train.load_run(pretrained_run)
    eot = tok.special_tokens["<|endoftext|>"]
    ids = list(model.generate([eot] + tok.encode("The object"), 12, temperature=0.7, top_k=50, top_p=0.9,
                              repetition_penalty=1.1, stop_tokens=[eot], seed=3))
    assert first.stdout == tok.decode([i for i in ids if i != eot]) + "\n"


def test_prompt_from_stdin_in_chat_mode(sft_run):
    done = run_cli(sft_run, "--temperature", "0", "--max-new-tokens", "10", "--device", "cpu",
                   "--system", "Be brief.", stdin="What does len do?\n")
    assert done.returncode == 0, done.stderr
    model, tok, _ = train.load_run(sft_run)
    ids, _ = render_chat(tok, [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "What does len do?"}], add_generation_prompt=True)
    stops = {tok.special_tokens[n] for n in ("<|endoftext|>", "<|im_end|>", "<|im_start|>")}
    out = list(model.generate(ids, 10, temperature=0, repetition_penalty=1.1, stop_tokens=stops))
    assert done.stdout == tok.decode([i for i in out if i not in stops]) + "\n"


def test_user_errors(tmp_path, pretrained_run):
    with pytest.raises(train.UserError, match="no such run directory"):
        chat.main([str(tmp_path / "nope"), "-p", "hi"])
    with pytest.raises(train.UserError, match="temperature"):
        chat.main([str(pretrained_run), "-p", "hi", "--temperature", "-1"])
    done = run_cli(tmp_path / "nope", "-p", "hi")
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr


def test_an_int8_run_directory_chats(sft_run, tmp_path, capsys):
    import quantize
    assert chat.load_run is rundir.load_run
    quantize.main([str(sft_run), "--out", str(tmp_path / "int8"), "--eval-batches", "0"])
    engine = chat.Engine(tmp_path / "int8")
    assert engine.chat and "INT8" in engine.describe()
    answer = chat.Answer(engine, engine.prompt_ids(HELLO), 6, temperature=0, top_k=0, top_p=1.0,
                         repetition_penalty=1.0)
    "".join(answer.stream())
    assert answer.n_tokens >= 1 and answer.finish_reason in ("stop", "length")


# ---------------------------------------------------------------------------------------------
# The terminal session
# ---------------------------------------------------------------------------------------------
def test_fit_history_drops_oldest_turns_and_keeps_the_system_prompt(corpus):
    tok = Tokenizer.load(corpus / "tok.json")
    turns = []
    for i in range(6):
        turns += [{"role": "user", "content": f"question {i} " * 3}, {"role": "assistant", "content": f"answer {i} " * 3}]
    turns.append({"role": "user", "content": "the last question"})
    system = "You are terse."
    size = lambda t: len(render_chat(tok, [{"role": "system", "content": system}] + t, add_generation_prompt=True)[0])
    budget = size(turns[-5:])  # room for exactly the last two exchanges and the new question
    kept, dropped = chat.fit_history(tok, system, turns, budget)
    assert kept == turns[-5:] and dropped == 8  # whole exchanges went, oldest first
    assert size(kept) <= budget
    assert chat.fit_history(tok, system, turns, 10**6) == (turns, 0)
    kept, _ = chat.fit_history(tok, system, turns, size(turns[-1:]) - 1)  # even the question is too long
    assert kept is None


class Script:
    """A stand-in for input(): returns the given lines, raises what it is given, then Ctrl-D."""

    def __init__(self, *lines):
        self.lines = list(lines)

    def __call__(self, prompt):
        if not self.lines:
            raise EOFError
        line = self.lines.pop(0)
        if isinstance(line, BaseException):
            raise line
        return line


def test_session_truncates_history_and_tells_the_user(sft_run, capsys):
    cfg = chat.ChatConfig(run_dir=str(sft_run), system="You are terse.", max_new_tokens=8, seed=0)
    session = chat.ChatSession(chat.Engine(sft_run), cfg, out=sys.stdout)
    assert session.budget == 64 - 8
    chat.repl(session, Script("first question about lists", "second question about dicts", "third one", "/exit"))
    out = capsys.readouterr().out
    assert "chat mode" in out and "context full: dropped" in out
    # What was kept fits, and the system prompt is still what the model sees first.
    messages = [{"role": "system", "content": "You are terse."}] + session.turns
    assert len(render_chat(session.engine.tok, messages[:-1])[0]) <= session.budget
    assert session.turns[0]["role"] == "user" and session.turns[-2]["content"] == "third one"
    chat.repl(session, Script("x " * 200))  # longer than the context alone: refused, not sent
    assert "too long" in capsys.readouterr().out
    with pytest.raises(train.UserError, match="does not fit"):  # -p: an error, exit status 2
        chat.main([str(sft_run), "-p", "x " * 200])


def test_commands_and_ctrl_c(sft_run, capsys):
    cfg = chat.ChatConfig(run_dir=str(sft_run), max_new_tokens=6, seed=0)
    session = chat.ChatSession(chat.Engine(sft_run), cfg, out=sys.stdout)
    real_tokens = session.engine.tokens

    def interrupted(*args, **kwargs):  # the user presses Ctrl-C after two tokens of the answer
        gen = real_tokens(*args, **kwargs)
        yield next(gen)
        yield next(gen)
        raise KeyboardInterrupt

    chat.repl(session, Script("/help", "/system Be brief.", "hello", KeyboardInterrupt(), "/bogus", "/reset"))
    out = capsys.readouterr().out
    assert "/reset" in out and "[system prompt: 'Be brief.']" in out and "unknown command /bogus" in out
    assert session.system == "Be brief." and session.turns == []  # /reset keeps the system prompt
    session.engine.tokens = interrupted
    chat.repl(session, Script("hello again"))  # Ctrl-C stops the answer, the chat goes on until Ctrl-D
    assert "[stopped]" in capsys.readouterr().out
    assert [m["role"] for m in session.turns] == ["user", "assistant"]


# ---------------------------------------------------------------------------------------------
# Text from tokens: UTF-8 across tokens, stop strings
# ---------------------------------------------------------------------------------------------
class ByteEngine:
    """An engine whose "model" emits a fixed list of token ids (single bytes here)."""

    def __init__(self, tok, ids):
        self.tok, self.ids, self.stop_ids = tok, ids, {tok.special_tokens["<|im_end|>"]}

    def tokens(self, ids, max_new_tokens, generator, **sampling):
        return (t for t in self.ids[:max_new_tokens])  # a generator, like the real ones


def pieces_of(tok, token_ids, stop=(), max_new_tokens=100):
    answer = chat.Answer(ByteEngine(tok, token_ids), [0], max_new_tokens, stop=stop)
    return list(answer.stream()), answer


def test_utf8_split_across_tokens_never_shows_half_a_character(corpus):
    tok = Tokenizer.load(corpus / "tok.json")
    text = "héllo wörld 😀!"
    ids = list(text.encode("utf-8"))  # ids below 256 are single bytes: every character split up
    pieces, answer = pieces_of(tok, ids)
    assert "".join(pieces) == text == answer.text and answer.finish_reason == "length"
    assert all("\ufffd" not in p for p in pieces) and "😀" in pieces
    pieces, answer = pieces_of(tok, ids + [0xF0, 0x9F])  # cut off inside an emoji: one "�" at the end
    assert answer.text == text + "\ufffd"
    pieces, answer = pieces_of(tok, ids + [tok.special_tokens["<|im_end|>"], 65])
    assert answer.text == text and answer.finish_reason == "stop" and answer.n_tokens == len(ids) + 1


def test_stop_strings_cut_the_text_even_across_tokens(corpus):
    tok = Tokenizer.load(corpus / "tok.json")
    assert chat.stop_cut("Hi. User", ["User:"]) == (4, False)
    assert chat.stop_cut("Hi. User: x", ["User:", ". "]) == (2, True)
    text = "Sure. User: more? Assistant: done"
    for stops in (["User:"], ["Assistant:", "User"], ["e. U"], ["nothing"], ["o", "d"]):
        pieces, answer = pieces_of(tok, list(text.encode()), stop=stops)
        cut = min([text.find(s) for s in stops if s in text], default=len(text))
        assert "".join(pieces) == answer.text == text[:cut]
        assert answer.finish_reason == ("stop" if cut < len(text) else "length")


def test_gpt_run_streams_the_same_tokens_as_gpt_generate(gpt_run):
    engine = chat.Engine(gpt_run)
    assert engine.arch == "gpt" and engine.context == 16 and not engine.chat
    prompt = [engine.eot] + engine.tok.encode("def f")
    reference = list(prompt)  # greedy by hand: argmax over the last 16 tokens, 24 times
    with torch.no_grad():
        for _ in range(24):
            reference.append(int(engine.model(torch.tensor([reference[-16:]]))[0][0, -1].argmax()))
    reference = reference[len(prompt):]
    ours = list(engine.tokens(prompt, 24, None, temperature=0, top_k=0, top_p=1.0, repetition_penalty=1.0))
    n = next((i + 1 for i, t in enumerate(ours) if t in engine.stop_ids), len(ours))
    assert ours == reference[:n]  # 24 tokens through a 16-token window: the crop matches too
    gen = torch.Generator().manual_seed(5)
    reference = list(engine.model.generate(prompt, 20, temperature=0.9, top_k=40, generator=gen))
    ours = list(engine.tokens(prompt, 20, torch.Generator().manual_seed(5), temperature=0.9, top_k=40,
                              top_p=1.0, repetition_penalty=1.0))
    n = next((i + 1 for i, t in enumerate(ours) if t in engine.stop_ids), len(ours))
    assert ours == reference[:n]


# ---------------------------------------------------------------------------------------------
# The HTTP server
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(sft_run):
    cfg = chat.ChatConfig(run_dir=str(sft_run), port=0, max_new_tokens=8, max_body=20_000)
    engine = chat.Engine(sft_run)
    srv = chat.make_server(engine, cfg, quiet=True)
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
    for method, path in (("GET", "/nope"), ("POST", "/v1/completions")):
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
