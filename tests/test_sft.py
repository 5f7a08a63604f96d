"""Tests for sft.py: the loss mask and its shift, the hand-written loss against PyTorch's, the
truncation rule, the built-in data, jsonl validation, and tiny end-to-end runs with exact resume."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sft
from conftest import cli_in_process
import rundir
import train
from bpe import Tokenizer
from rundir import UserError

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = {"role": "system", "content": "You are terse."}
USER1 = {"role": "user", "content": "What is 2 + 3?"}
ANSWER1 = {"role": "assistant", "content": "5"}
USER2 = {"role": "user", "content": "And reversed: c a t"}
ANSWER2 = {"role": "assistant", "content": "t a c, as asked."}


@pytest.fixture(scope="module")
def tok(corpus):
    return Tokenizer.load(corpus / "tok.json")


def trained_text(tok, ids, trained):
    return tok.decode([t for t, keep in zip(ids, trained) if keep])


def test_mask_single_turn(tok):
    ids, trained = sft.render_chat(tok, [SYSTEM, USER1, ANSWER1])
    assert trained_text(tok, ids, trained) == "5<|im_end|>"
    # everything before the answer (system, user, headers) is untrained; after it only "\n"
    first = trained.index(True)
    assert tok.decode(ids[:first]).endswith("<|im_start|>assistant\n")
    assert sum(trained) == len(tok.encode("5")) + 1
    assert tok.decode(ids[first + sum(trained):]) == "\n"


def test_mask_multi_turn(tok):
    msgs = [SYSTEM, USER1, ANSWER1, USER2, ANSWER2]
    ids, trained = sft.render_chat(tok, msgs)
    assert trained_text(tok, ids, trained) == "5<|im_end|>t a c, as asked.<|im_end|>"
    untrained = tok.decode([t for t, keep in zip(ids, trained) if not keep])
    for m in (SYSTEM, USER1, USER2):  # every system and user word is context only
        assert m["content"] in untrained
    # the whole rendering is the concatenation of the per-message renderings
    parts = [sft.render_chat(tok, [m]) for m in msgs]
    assert ids == sum((p[0] for p in parts), [])
    assert trained == sum((p[1] for p in parts), [])


def test_shift_and_dynamic_padding(tok):
    long = sft.chat_example(tok, [SYSTEM, USER1, ANSWER1, USER2, ANSWER2], 500)
    short = sft.chat_example(tok, [USER1, ANSWER1], 500)
    x, y = sft.collate([long, short], pad_id=0)
    assert x.shape == y.shape == (2, len(long[0]) - 1)  # padded to this batch's longest row only
    for row, (ids, trained) in enumerate([long, short]):
        n = len(ids) - 1
        assert x[row, :n].tolist() == ids[:-1]
        for t in range(n):  # y[t] is token t+1, kept exactly when token t+1 is trained
            assert y[row, t].item() == (ids[t + 1] if trained[t + 1] else sft.IGNORE)
        assert (y[row, n:] == sft.IGNORE).all()  # padding is never trained
    assert tok.decode([t for t in y[1].tolist() if t != sft.IGNORE]) == "5<|im_end|>"


def test_truncation_keeps_the_mask_aligned(tok):
    msgs = [SYSTEM, USER1, ANSWER1, USER2, ANSWER2]
    full_ids, full_trained = sft.render_chat(tok, msgs)
    for seq_len in range(5, len(full_ids) + 3):
        ex = sft.chat_example(tok, msgs, seq_len)
        keep = full_ids[:seq_len + 1]
        if not any(full_trained[1:seq_len + 1]):
            assert ex is None  # nothing to learn in the kept part: dropped, not padded
            continue
        assert ex == (keep, full_trained[:seq_len + 1])
        assert len(ex[0]) <= seq_len + 1


def test_hand_written_loss_equals_pytorch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g)
    targets = torch.randint(11, (3, 7), generator=g)
    targets[0, :4] = sft.IGNORE
    targets[2, 5:] = sft.IGNORE
    ours = sft.masked_cross_entropy(logits, targets)
    ref = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert torch.allclose(ours, ref, atol=1e-6)
    # not the mean of per-sequence means
    per_seq = [F.cross_entropy(logits[i], targets[i], ignore_index=-100) for i in range(3)]
    assert not torch.allclose(ours, torch.stack(per_seq).mean(), atol=1e-4)


def test_model_loss_matches_the_models_own(pretrained_run, tok):
    model, tok, _ = train.load_run(pretrained_run)
    x, y = sft.collate([sft.chat_example(tok, [USER1, ANSWER1], 64),
                        sft.chat_example(tok, [SYSTEM, USER2, ANSWER2], 64)], 0)
    _, ref = model(x, y)
    assert torch.allclose(sft.masked_cross_entropy(model(x)[0], y), ref, atol=1e-5)
    # as one part of a larger step: the same sum over a larger count
    n = int((y != sft.IGNORE).sum())
    assert torch.allclose(sft.masked_cross_entropy(model(x)[0], y, 4 * n), ref / 4, atol=1e-5)


def test_builtin_data_is_fixed_and_held_out():
    tr, held = sft.python_docs_conversations()
    assert len(tr) > 5000 and len(held) > 300
    assert not {i["question"] for i in tr} & {i["question"] for i in held}
    kinds = {i["kind"] for i in held}
    assert {"doc", "add", "reverse", "count"} <= kinds
    for it in tr + held:
        assert it["answer"] != it["wrong"]
        assert it["messages"][-1] == {"role": "assistant", "content": it["answer"]}
        if it["kind"] == "add":
            a, b = it["question"][len("What is "):-1].split(" + ")
            assert int(it["answer"]) == int(a) + int(b) and abs(int(it["wrong"]) - int(it["answer"])) == 1
        if it["kind"] == "reverse":
            assert it["answer"] == it["question"].split(": ")[1][::-1]
    assert any(i["question"].startswith("What does `json.dumps`") or "json.dumps" in i["question"]
               for i in tr + held)


BAD_LINES = {
    "bad JSON": '{"conversations": [',
    "missing role": '{"conversations": [{"content": "hi"}, {"role": "assistant", "content": "yo"}]}',
    "unknown role": '{"conversations": [{"role": "robot", "content": "hi"}]}',
    "empty": '{"conversations": []}',
    "no assistant": '{"conversations": [{"role": "user", "content": "hi"}]}',
    "content not a string": '{"conversations": [{"role": "assistant", "content": 3}]}',
    "no conversations key": '{"text": "hi"}',
}
GOOD_LINE = '{"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'


@pytest.mark.parametrize("kind", BAD_LINES)
def test_malformed_jsonl_names_file_and_line(tmp_path, kind):
    path = tmp_path / "bad.jsonl"
    path.write_text(GOOD_LINE + "\n\n" + BAD_LINES[kind] + "\n")
    with pytest.raises(UserError, match=rf"^{path}:3: "):
        sft.read_jsonl(path, sft.parse_sft_line)


def run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_cli_error_on_malformed_file(tmp_path, pretrained_run, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(GOOD_LINE + "\n" + BAD_LINES["empty"] + "\n")
    status, _, err = cli_in_process(sft.main, ["--init", pretrained_run, "--data", path, "--out-dir", tmp_path / "out"],
                                    capsys)
    assert status == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {path}:2: empty conversation")
    assert not (tmp_path / "out").exists()


def test_end_to_end_on_builtin_data(tmp_path, pretrained_run, capsys):
    out = tmp_path / "sft"
    r = run("sft.py", "--init", pretrained_run, "--max-steps", 3, "--batch-size", 4, "--eval-exact", 3,
            "--max-new-tokens", 3, "--eval-heldout", 8, "--out-dir", out)
    assert r.returncode == 0, r.stderr
    assert "held-out exact match" in r.stdout and "held-out assistant loss" in r.stdout
    model, _, payload = train.load_run(out)
    assert payload["stage"] == "sft" and payload["step"] == 3
    rows = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [r.get("eval") for r in rows] == ["before", None, None, None, "after"]
    assert all(math.isfinite(r["val_loss"]) for r in rows if "eval" in r)
    status, out, err = cli_in_process(sft.main, ["--init", pretrained_run, "--show-example"], capsys)
    assert status == 0 and "<|im_end|>" in out and " yes" in out, err


def test_exact_resume(tmp_path, pretrained_run):
    data = tmp_path / "chat.jsonl"
    lines = [{"conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
             for _, q, a, _ in sft.exercises(["cat", "dog", "tree", "moon"])[:60]]
    data.write_text("".join(json.dumps(l) + "\n" for l in lines))
    common = ["--init", str(pretrained_run), "--data", str(data), "--max-steps", "4", "--batch-size", "4",
              "--warmup-steps", "2", "--lr", "3e-3"]
    sft.main(common + ["--out-dir", str(tmp_path / "straight")])
    sft.main(common + ["--out-dir", str(tmp_path / "split"), "--halt-at", "2"])
    sft.main(["--resume", "--out-dir", str(tmp_path / "split")])
    a = rundir.read_model_file(tmp_path / "straight")["model"]
    b = rundir.read_model_file(tmp_path / "split")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [[json.loads(l) for l in (tmp_path / d / "log.jsonl").read_text().splitlines()]
            for d in ("straight", "split")]
    assert [r.get("loss") for r in logs[0]] == [r.get("loss") for r in logs[1]]


def test_impossible_flags_are_one_error_line(pretrained_run, tmp_path, capsys):
    for flags, why in ((["--batch-size", "0"], "--batch-size must be at least 1"),
                       (["--lr", "0"], "--lr must be positive")):
        status, _, err = cli_in_process(sft.main, ["--init", pretrained_run, "--out-dir", tmp_path / "out", *flags],
                                        capsys)
        assert status == 2 and err.count("\n") == 1 and err.startswith(f"error: {why}"), err
        assert not (tmp_path / "out").exists()


def chat_file(tmp_path, n=60):
    data = tmp_path / "chat.jsonl"
    lines = [{"conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
             for _, q, a, _ in sft.exercises(["cat", "dog", "tree", "moon", "river"])[:n]]
    data.write_text("".join(json.dumps(l) + "\n" for l in lines))
    return data


def step_losses(run_dir):
    return [r["loss"] for r in rundir.read_log(Path(run_dir) / "log.jsonl") if "loss" in r]


def test_accumulation_equals_the_larger_batch(tmp_path, pretrained_run):
    """Micro-batches of different lengths and trained-token counts still add up to the big batch:
    every micro-batch's loss is its share of the tokens of the whole step."""
    common = ["--init", str(pretrained_run), "--data", str(chat_file(tmp_path)), "--max-steps", "3",
              "--warmup-steps", "1", "--lr", "3e-3", "--eval-exact", "0", "--eval-heldout", "2"]
    sft.main(common + ["--batch-size", "8", "--out-dir", str(tmp_path / "big")])
    sft.main(common + ["--batch-size", "2", "--grad-accum", "4", "--out-dir", str(tmp_path / "accum")])
    assert step_losses(tmp_path / "accum") == pytest.approx(step_losses(tmp_path / "big"), abs=1e-5)
    a = rundir.read_model_file(tmp_path / "big")["model"]
    b = rundir.read_model_file(tmp_path / "accum")["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)  # Adam amplifies float rounding a little
