"""Shared fixtures: a small text with its tokenizer, a tiny pre-trained run directory that the
tests of sft.py, dpo.py, eval.py, quantize.py, chat.py and serve.py start from, the same run
relabelled as a chat model, and an untrained tiny GPT run. Seconds, not minutes."""
import os
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

import rundir
from bpe import Tokenizer

# Tiny models gain nothing from a second thread, and on a busy 2-core machine threads that wait on
# each other make each small op hundreds of times slower. Subprocesses inherit the variable.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


def cli_in_process(main, args, capsys):
    """Run a script's main as its command line does (rundir.run_cli: a UserError becomes one
    `error:` line and status 2) without a subprocess, which costs seconds of torch import.
    Returns (status, stdout, stderr). Each script keeps one real subprocess test as well."""
    capsys.readouterr()
    try:
        rundir.run_cli(lambda: main([str(a) for a in args]))
        status = 0
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def run_as_notebook_cell(path, monkeypatch, capsys, replace=()):
    """Run a file as a notebook cell does, in this process: the whole source executed as __main__
    while a Jupyter kernel is loaded (sys.modules has ipykernel) and sys.argv is the kernel's own
    (-f kernel.json). `replace` is (old, new) pairs applied to the source first, each of which must
    occur (a shorter demo for the test). Returns (status, stdout, stderr)."""
    source = Path(path).read_text(encoding="utf-8")
    for old, new in replace:
        assert old in source, f"{path} no longer holds {old!r}"
        source = source.replace(old, new)
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "/tmp/kernel.json"])
    capsys.readouterr()
    try:
        exec(compile(source, "cell", "exec"), {"__name__": "__main__"})
        status = 0
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Downloads and token caches go to a fresh folder, never to the user's ~/.cache/slm."""
    monkeypatch.setenv("SLM_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A folder with text.txt (the first help topics, ~60 KB) and tok.json (a 320-token BPE)."""
    from pydoc_data.topics import topics
    d = tmp_path_factory.mktemp("corpus")
    text = "\n\n".join(topics[k] for k in sorted(topics)[:12])
    (d / "text.txt").write_text(text, encoding="utf-8")
    Tokenizer.train(text, 320).save(d / "tok.json")
    return d


@pytest.fixture(scope="session")
def pretrained_run(corpus, tmp_path_factory):
    """A run directory of a `nano` MiniMind trained for 40 steps on the corpus (context 64)."""
    import train
    out = tmp_path_factory.mktemp("runs") / "pretrain"
    train.main(["--data", str(corpus / "text.txt"), "--tokenizer", str(corpus / "tok.json"),
                "--size", "nano", "--seq-len", "64", "--batch-size", "8", "--max-steps", "40",
                "--warmup-steps", "5", "--lr", "3e-3", "--eval-every", "1000", "--eval-batches", "2",
                "--sample-tokens", "8", "--out-dir", str(out)],
               )
    return out


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A FakeHub (tests/fakehub.py) that HF_ENDPOINT points to, and no HF_TOKEN."""
    from fakehub import FakeHub
    fake = FakeHub(tmp_path / "hub-files")
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


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
    import gpt
    tok = Tokenizer.load(corpus / "tok.json")
    config = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=tok.vocab_size, dropout=0.0)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("chat") / "gpt"
    rundir.save_model(out, gpt.GPT(gpt.GPTConfig(**config)), tok, {"step": 0, "stage": "pretrain"})
    return out

