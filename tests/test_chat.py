"""Tests for chat.py: one-shot prompts (-p and stdin) against generate() called directly, history
truncation, the /commands, UTF-8 split across tokens, stop strings, the GPT fallback against
gpt.generate, the decoding precision, and `--serve` pointing to serve.py (whose server is tested
in test_serve.py)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import cli_in_process
import chat
import decode
import rundir
import train
from bpe import Tokenizer
from sft import render_chat

ROOT = Path(__file__).resolve().parent.parent
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What does len do?"}]


def run_cli(*args, stdin=""):
    return subprocess.run([sys.executable, str(ROOT / "chat.py"), *map(str, args)], input=stdin,
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


# ---------------------------------------------------------------------------------------------
# One-shot answers
# ---------------------------------------------------------------------------------------------
def test_p_mode_is_reproducible_and_matches_generate(pretrained_run, capsys):
    """The same answer from a new process and from this one (cli_in_process) with the same seed."""
    args = (pretrained_run, "-p", "The object", "--seed", "3", "--max-new-tokens", "12", "--device", "cpu")
    first, second = run_cli(*args), cli_in_process(chat.main, args, capsys)
    assert first.returncode == 0 and second[0] == 0, first.stderr + second[2]
    assert first.stdout == second[1] and first.stdout.strip()
    # The same continuation computed directly: text mode = <|endoftext|> + the prompt, defaults
    # temperature 0.7, top-k 50, top-p 0.9, repetition penalty 1.1, stop at <|endoftext|>.
    model, tok, _ = train.load_run(pretrained_run)
    decode.prepare_decoding(model, rundir.pick_inference_dtype("cpu"))  # what chat.py generates with
    eot = tok.special_tokens["<|endoftext|>"]
    ids = list(decode.generate(model, [eot] + tok.encode("The object"), 12, temperature=0.7, top_k=50, top_p=0.9,
                               repetition_penalty=1.1, stop_tokens=[eot], seed=3))
    assert first.stdout == tok.decode([i for i in ids if i != eot]) + "\n"


def test_prompt_from_stdin_in_chat_mode(sft_run):
    done = run_cli(sft_run, "--temperature", "0", "--max-new-tokens", "10", "--device", "cpu",
                   "--system", "Be brief.", stdin="What does len do?\n")
    assert done.returncode == 0, done.stderr
    model, tok, _ = train.load_run(sft_run)
    decode.prepare_decoding(model, rundir.pick_inference_dtype("cpu"))
    ids, _ = render_chat(tok, [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "What does len do?"}], add_generation_prompt=True)
    stops = {tok.special_tokens[n] for n in ("<|endoftext|>", "<|im_end|>", "<|im_start|>")}
    out = list(decode.generate(model, ids, 10, temperature=0, repetition_penalty=1.1, stop_tokens=stops))
    assert done.stdout == tok.decode([i for i in out if i not in stops]) + "\n"


def test_user_errors(tmp_path, pretrained_run, capsys):
    with pytest.raises(train.UserError, match="no such run directory"):
        chat.main([str(tmp_path / "nope"), "-p", "hi"])
    with pytest.raises(train.UserError, match="temperature"):
        chat.main([str(pretrained_run), "-p", "hi", "--temperature", "-1"])
    status, _, err = cli_in_process(chat.main, [tmp_path / "nope", "-p", "hi"], capsys)
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_serve_flag_names_the_server_command(tmp_path, capsys):
    """chat.py --serve, wherever it stands, is answered before any flag is parsed (an unknown
    flag, a missing run directory) with the command to type instead: one line, exit status 2."""
    done = run_cli("out/dpo", "--serve", "--port", "8001")  # the real command line, once
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("error: the server has its own command now: "
                           "python serve.py out/dpo --port 8001\n")
    for args in (["--serve", "out/dpo", "--port", "8001"], ["out/dpo", "--port", "8001", "--serve"]):
        assert cli_in_process(chat.main, args, capsys) == (
            2, "", "error: the server has its own command now: python serve.py out/dpo --port 8001\n")
    status, _, err = cli_in_process(chat.main, [tmp_path / "no run", "--serve", "--api-key", "a b", "--bogus"],
                                    capsys)
    assert status == 2
    assert err == ("error: the server has its own command now: "
                   f"python serve.py '{tmp_path / 'no run'}' --api-key 'a b' --bogus\n")
    with pytest.raises(train.UserError, match="^the server has its own command now: "
                                              "python serve.py x --host 0.0.0.0$"):
        chat.main(["x", "--host", "0.0.0.0", "--serve"])


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


def test_the_engine_generates_in_the_fastest_accurate_dtype(sft_run):
    engine = chat.Engine(sft_run)
    assert engine.dtype.startswith("fp16" if decode.HAS_FBGEMM_FP16 else "fp32") and "auto" in engine.dtype
    assert decode.decoding_weights(engine.model).dtype == (torch.float16 if decode.HAS_FBGEMM_FP16 else torch.float32)
    assert "generating in fp16" in engine.describe() or not decode.HAS_FBGEMM_FP16
    assert chat.Engine(sft_run, dtype="fp32").dtype == "fp32"
    with pytest.raises(train.UserError, match="--dtype"):
        chat.Engine(sft_run, dtype="fp8")
