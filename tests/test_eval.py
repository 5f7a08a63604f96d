"""Tests for eval.py: perplexity against a hand computation, the bits-per-byte identity, baselines
on a text whose answer is known, generation figures, and the command on two run directories."""
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eval as evaluation
from conftest import cli_in_process
import minimind
import quantize
import rundir
from bpe import Tokenizer

ROOT = Path(__file__).resolve().parent.parent



def tiny_model(vocab):
    torch.manual_seed(0)
    return minimind.MiniMind(minimind.MiniMindConfig(dim=32, n_layers=2, n_heads=2, n_kv_heads=1,
                                                     vocab_size=vocab, max_seq_len=16)).eval()


def test_perplexity_matches_a_hand_computation():
    model = tiny_model(50)
    tokens = np.random.default_rng(0).integers(0, 50, 60)
    windows = evaluation.contiguous_windows(tokens, seq_len=16, batch_size=2, max_tokens=40)
    # each of tokens[1..40] is predicted exactly once, in order
    assert np.array_equal(np.concatenate([y.numpy().ravel() for _, y in windows]), tokens[1:41])
    lengths = np.ones(50, dtype=np.int64)
    r = evaluation.perplexity(model, windows, lengths, "cpu")
    # by hand: for every target, the model reads the window up to it; -log softmax at that position
    nll = 0.0
    for start in range(0, 40, 16):
        x = torch.tensor(tokens[start:min(start + 16, 40)])[None]
        with torch.no_grad():
            logits = model(x)[0][0]
        for t in range(x.size(1)):
            nll -= F.log_softmax(logits[t].double(), dim=-1)[int(tokens[start + t + 1])].item()
    assert r["tokens"] == 40
    assert r["nll_sum"] == pytest.approx(nll, rel=1e-5)
    assert r["ppl"] == pytest.approx(math.exp(nll / 40), rel=1e-5)


def test_bits_per_byte_is_tokens_per_byte_times_loss_over_ln2(corpus):
    tok = Tokenizer.load(corpus / "tok.json")
    eot = tok.special_tokens["<|endoftext|>"]
    text = (corpus / "text.txt").read_text()[:3000]
    tokens = np.array(tok.encode(text[:1500]) + [eot] + tok.encode(text[1500:]))
    model = tiny_model(tok.vocab_size)
    lengths = evaluation.byte_lengths(tok)
    assert lengths[eot] == 0  # special tokens stand for no text
    windows = evaluation.contiguous_windows(tokens, 16, 4, 10_000)
    r = evaluation.perplexity(model, windows, lengths, "cpu")
    assert r["bytes"] == len(text.encode()) - len(tok.decode_bytes(tokens[:1].tolist()))  # every byte but the first token's
    assert r["bpb"] == pytest.approx(r["tokens"] / r["bytes"] * r["loss"] / math.log(2), rel=1e-9)


def test_baselines_on_a_periodic_text():
    """Train on 0 1 2 3 0 1 2 3 ...: the bigram knows each next token (up to smoothing); the unigram
    gives each a quarter; the uniform model spreads over the whole vocabulary of 6."""
    V, k = 6, 0.1
    train_tokens = np.array([0, 1, 2, 3] * 50)
    fit = evaluation.fit_baselines(train_tokens, V, k)
    windows = evaluation.contiguous_windows(np.array([0, 1, 2, 3] * 5), 8, 2, 100)
    lengths = np.ones(V, dtype=np.int64)
    b = evaluation.baseline_losses(fit, windows, lengths)
    assert b["uniform"]["loss"] == pytest.approx(math.log(V))
    assert b["unigram"]["loss"] == pytest.approx(-math.log((50 + k) / (200 + k * V)))
    # pairs (0,1), (1,2), (2,3) occur 50 times, (3,0) 49 times; each token is followed 50 times, 3 only 49
    targets = [1, 2, 3, 0] * 5
    expected = np.mean([-math.log((49 + k) / (49 + k * V)) if t == 0 else -math.log((50 + k) / (50 + k * V))
                        for t in targets[:19]])
    assert b["bigram"]["loss"] == pytest.approx(expected)
    assert b["bigram"]["bpb"] == pytest.approx(expected / math.log(2))


def test_generation_figures_on_known_outputs():
    stop, end = {9, 8}, 9
    outputs = [[1, 2, 3, 1, 2, 3, 1, 2, 3, 9],  # loops, ends properly
               [4, 5, 8],                        # ends on the other stop token: not the chat format
               [6, 7, 6, 7]]                     # never stopped
    g = evaluation.generation_figures(outputs, stop, end)
    assert g["stopped"] == pytest.approx(2 / 3)
    assert g["format"] == pytest.approx(1 / 3)
    assert g["mean_length"] == pytest.approx((9 + 2 + 4) / 3)
    assert g["distinct_1"] == pytest.approx(7 / 15)      # {1..7} among 15 tokens
    assert g["distinct_2"] == pytest.approx(6 / 12)      # 12 23 31 45 67 76: 6 distinct among 12
    assert g["repetition"] == pytest.approx(3 / 7)       # 1231 2312 3123 seen once, then 3 repeats; 67 67: 1 gram


def test_eval_two_run_dirs_in_one_call(pretrained_run, corpus, tmp_path, capsys):
    run = tmp_path / "base"
    shutil.copytree(pretrained_run, run)  # readiness.md goes into it; keep the shared fixture clean
    quantize.main([str(run), "--out", str(tmp_path / "base-int8"), "--eval-batches", "0"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "eval.py"), str(run), str(tmp_path / "base-int8"),
                        "--data", str(corpus / "text.txt"), "--max-new-tokens", "12", "--limit", "100", "--json",
                        str(tmp_path / "figures.json")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    header = r.stdout.splitlines()[0].split()
    assert header == ["base", "base-int8"]
    table = [line for line in r.stdout.splitlines()[1:] if not line.startswith(("base:", "base-int8:"))]
    for line in table:  # two columns on every row, however long a cell ("FAIL: bigram,format")
        assert len(re.split(r"\s{2,}", line[22:].strip())) == 2, line
    figures = json.loads((tmp_path / "figures.json").read_text())
    base, int8 = figures["runs"]
    assert int8["quantized"] == "int8-per-channel-symmetric" and base["tokens"] == int8["tokens"] > 500
    assert abs(int8["ppl"] / base["ppl"] - 1) < 0.01
    assert base["baselines"]["uniform"]["loss"] == pytest.approx(math.log(320))
    for d in (run, tmp_path / "base-int8"):
        report = (d / "readiness.md").read_text()
        assert "| tokenizer round trip | PASS |" in report and "beats the bigram baseline" in report

    status, _, err = cli_in_process(evaluation.main, [tmp_path / "missing"], capsys)
    assert status == 2 and err.startswith("error:") and err.count("\n") == 1


def test_chat_run_gets_the_format_check(pretrained_run, corpus, tmp_path):
    run = tmp_path / "sft"
    shutil.copytree(pretrained_run, run)
    payload = rundir.read_model_file(run)
    payload["stage"] = "sft"
    torch.save(payload, run / "model.pt")
    results = evaluation.main([str(run), "--data", str(corpus / "text.txt"), "--max-tokens", "256",
                               "--max-new-tokens", "8", "--limit", "100"])
    r = results[0]
    assert r["chat"] and "format" in r["generation"]
    assert [c["check"] for c in r["readiness"]][-1] == "chat format adherence"
    # a model never trained on chat does not end its answers with <|im_end|>: the report says so
    assert r["generation"]["format"] < 0.5
    assert r["readiness"][-1]["status"] == "FAIL"
    assert "chat format adherence" in (run / "readiness.md").read_text()


def test_a_base_model_stuck_in_a_loop_fails_generation_terminates(pretrained_run):
    model, tok, _ = rundir.load_run(pretrained_run)
    cfg = evaluation.EvalConfig(run_dirs=[str(pretrained_run)])
    base = {"loss": 1.0, "baselines": {"bigram": {"loss": 2.0}}, "chat": False}
    looping = evaluation.generation_figures([[5, 6, 7, 8] * 10], stop={0})
    healthy = evaluation.generation_figures([list(range(40))], stop={0})
    status = lambda g: {c["check"]: c["status"] for c in evaluation.readiness_checks(
        {**base, "generation": g}, model, tok, "some text", cfg)}["generation terminates"]
    assert looping["repetition"] > 0.5 and status(looping) == "FAIL"
    assert healthy["repetition"] == 0 and status(healthy) == "PASS"
