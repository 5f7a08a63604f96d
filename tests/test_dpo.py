"""Tests for dpo.py: the loss at step 0, one step raising the margin, IPO and conservative DPO
against their formulas computed another way, the precomputed reference against the live one,
jsonl validation, and a tiny end-to-end run."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dpo
from conftest import cli_in_process
import sft
import rundir
import train
from rundir import UserError

ROOT = Path(__file__).resolve().parent.parent
PROMPT = [{"role": "user", "content": "What is 4 + 5?"}]
PAIR = {"chosen": PROMPT + [{"role": "assistant", "content": "9"}],
        "rejected": PROMPT + [{"role": "assistant", "content": "10"}]}


def pair_rows(tok, pairs, seq_len=64):
    return [(sft.chat_example(tok, p["chosen"], seq_len), sft.chat_example(tok, p["rejected"], seq_len))
            for p in pairs]


def test_step_zero_is_ln2_with_zero_rewards(pretrained_run):
    policy, tok, _ = train.load_run(pretrained_run)
    ref = dpo.make_reference(policy)
    rows = pair_rows(tok, [PAIR, dpo.builtin_pairs(sft.python_docs_conversations()[1][:1])[0]])
    pi_c, pi_r = dpo.pair_logprobs(policy, rows, 0, "cpu", torch.float32)
    ref_c, ref_r = dpo.pair_logprobs(ref, rows, 0, "cpu", torch.float32)
    loss, chosen, rejected = dpo.preference_loss(pi_c, pi_r, ref_c, ref_r, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert torch.allclose(chosen, torch.zeros(2)) and torch.allclose(rejected, torch.zeros(2))


def test_sequence_logprob_counts_only_the_answer(pretrained_run):
    model, tok, _ = train.load_run(pretrained_run)
    (c, _), = pair_rows(tok, [PAIR])
    ids, trained = c
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
        logp = F.log_softmax(logits[0, :-1], -1)
        expected = sum(logp[t, ids[t + 1]] for t in range(len(ids) - 1) if trained[t + 1])
        got = dpo.sequence_logprobs(model, [c], 0, "cpu", torch.float32)[0]
    assert got.item() == pytest.approx(expected.item(), abs=1e-4)


def test_one_step_raises_the_margin(pretrained_run):
    policy, tok, _ = train.load_run(pretrained_run)
    policy.train()
    ref = dpo.make_reference(policy)
    rows = pair_rows(tok, [PAIR])
    opt = torch.optim.SGD(policy.parameters(), lr=0.5)

    def margin():
        with torch.no_grad():
            c, r = dpo.pair_logprobs(policy, rows, 0, "cpu", torch.float32)
        return (c - r).item()
    before = margin()
    pi_c, pi_r = dpo.pair_logprobs(policy, rows, 0, "cpu", torch.float32)
    with torch.no_grad():
        ref_c, ref_r = dpo.pair_logprobs(ref, rows, 0, "cpu", torch.float32)
    dpo.preference_loss(pi_c, pi_r, ref_c, ref_r, beta=0.1)[0].backward()
    opt.step()
    assert margin() > before
    assert all(p.grad is None for p in ref.parameters())  # the reference never learns


def test_losses_match_their_formulas():
    g = torch.Generator().manual_seed(0)
    pi_c, pi_r, ref_c, ref_r = (torch.randn(6, generator=g) * 3 for _ in range(4))
    beta, eps = 0.3, 0.2
    h = (pi_c - pi_r) - (ref_c - ref_r)  # the same h, grouped as policy margin minus reference margin
    # DPO: -log sigma(beta h), written with sigmoid and log
    ours = dpo.preference_loss(pi_c, pi_r, ref_c, ref_r, beta)[0]
    assert ours.item() == pytest.approx(-torch.log(torch.sigmoid(beta * h)).mean().item(), rel=1e-5)
    # conservative DPO is binary cross-entropy on beta*h with a soft label 1 - eps
    ours = dpo.preference_loss(pi_c, pi_r, ref_c, ref_r, beta, label_smoothing=eps)[0]
    bce = F.binary_cross_entropy_with_logits(beta * h, torch.full_like(h, 1 - eps))
    assert ours.item() == pytest.approx(bce.item(), rel=1e-5)
    # IPO: the squared distance of h from 1 / (2 beta)
    ours = dpo.preference_loss(pi_c, pi_r, ref_c, ref_r, beta, kind="ipo")[0]
    assert ours.item() == pytest.approx(sum((x - 1 / (2 * beta)) ** 2 for x in h.tolist()) / 6, rel=1e-5)
    # rewards are beta * log(pi / pi_ref)
    _, chosen, rejected = dpo.preference_loss(pi_c, pi_r, ref_c, ref_r, beta)
    assert torch.allclose(chosen, beta * (pi_c - ref_c)) and torch.allclose(rejected, beta * (pi_r - ref_r))


BAD_PAIRS = {
    "bad JSON": '{"chosen": [',
    "no rejected side": json.dumps({"chosen": PAIR["chosen"]}),
    "missing role": json.dumps({"chosen": PAIR["chosen"], "rejected": [{"content": "x"}]}),
    "empty conversation": json.dumps({"chosen": [], "rejected": PAIR["rejected"]}),
    "last turn not the assistant's": json.dumps({"chosen": PAIR["chosen"], "rejected": PROMPT + PROMPT
                                                 + [{"role": "assistant", "content": "1"}] + PROMPT}),
}


@pytest.mark.parametrize("kind", BAD_PAIRS)
def test_malformed_pairs_name_file_and_line(tmp_path, kind):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(PAIR) + "\n" + BAD_PAIRS[kind] + "\n")
    with pytest.raises(UserError, match=rf"^{path}:2: "):
        sft.read_jsonl(path, dpo.parse_pair_line)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dpo") / "pairs.jsonl"
    items = [it for it in sft.python_docs_conversations()[0] if it["kind"] != "doc"][:40]
    path.write_text("".join(json.dumps(p) + "\n" for p in dpo.builtin_pairs(items)))
    return path


def test_precomputed_reference_gives_the_same_losses(tmp_path, pretrained_run, pairs_file):
    common = ["--init", str(pretrained_run), "--data", str(pairs_file), "--max-steps", "3",
              "--batch-size", "4", "--warmup-steps", "1", "--lr", "1e-3", "--eval-exact", "0", "--sft-weight", "0"]
    dpo.main(common + ["--out-dir", str(tmp_path / "live")])
    dpo.main(common + ["--out-dir", str(tmp_path / "pre"), "--precompute-ref"])
    logs = [[json.loads(l) for l in (tmp_path / d / "log.jsonl").read_text().splitlines()] for d in ("live", "pre")]
    steps = [[r for r in log if "loss" in r] for log in logs]
    assert steps[0][0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    for a, b in zip(*steps):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-5)


def run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_end_to_end_and_resume(tmp_path, pretrained_run, pairs_file, capsys):
    """The first DPO run is a real process stopped at --halt-at; the resume and the bad file run
    in-process, as their command lines do (conftest.cli_in_process). The built-in pairs, the
    default --data, go through dpo.py in test_convert.py."""
    sft_dir = tmp_path / "sft"
    sft.main(["--init", str(pretrained_run), "--max-steps", "2", "--batch-size", "4", "--eval-exact", "2",
              "--max-new-tokens", "2", "--eval-heldout", "8", "--out-dir", str(sft_dir)])
    out = tmp_path / "dpo"
    r = run("dpo.py", "--init", sft_dir, "--data", pairs_file, "--max-steps", 4, "--halt-at", 2, "--batch-size", 4,
            "--eval-exact", 2, "--max-new-tokens", 2, "--eval-heldout", 8, "--out-dir", out)
    assert r.returncode == 0, r.stderr
    status, stdout, stderr = cli_in_process(dpo.main, ["--resume", "--out-dir", out], capsys)
    assert status == 0, stderr
    assert "held-out preference accuracy" in stdout and "held-out exact match" in stdout
    _, _, payload = train.load_run(out)
    assert payload["stage"] == "dpo" and payload["step"] == 4
    rows = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "grad_norm"):
        assert key in rows[1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PAIR) + "\n" + BAD_PAIRS["no rejected side"] + "\n")
    status, _, stderr = cli_in_process(dpo.main, ["--init", sft_dir, "--data", bad, "--out-dir", tmp_path / "x"],
                                       capsys)
    assert status == 2 and stderr.strip().splitlines()[-1].startswith(f"error: {bad}:2: ")
    assert not (tmp_path / "x").exists()


def test_sft_weight_adds_the_sft_loss_on_chosen(tmp_path, pretrained_run, pairs_file):
    dpo.main(["--init", str(pretrained_run), "--data", str(pairs_file), "--max-steps", "1", "--batch-size", "4",
              "--eval-exact", "0", "--sft-weight", "0.5", "--out-dir", str(tmp_path / "rpo")])
    first = [json.loads(l) for l in (tmp_path / "rpo" / "log.jsonl").read_text().splitlines()][1]
    model, tok, _ = train.load_run(pretrained_run)
    rows, _, _ = dpo.load_pairs(str(pairs_file), tok, 64)
    batch = [rows[i][0] for i in train.StepSampler(len(rows), 4, 1, 1337).next_step()[0]]  # the same first batch
    with torch.no_grad():
        x, y = sft.collate(batch, tok.special_tokens["<|endoftext|>"])
        nll = sft.masked_cross_entropy(model(x)[0], y)
    assert first["loss"] == pytest.approx(math.log(2) + 0.5 * nll.item(), abs=1e-4)


def test_moe_balancing_term_is_part_of_the_dpo_loss(tmp_path, pretrained_run, pairs_file):
    """The loop adds MiniMind's MoE load-balancing term for every stage (DPO used to drop it)."""
    import minimind
    _, tok, _ = train.load_run(pretrained_run)
    torch.manual_seed(0)
    moe = minimind.MiniMind(minimind.MiniMindConfig(dim=32, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=tok.vocab_size,
                                                    max_seq_len=64, n_experts=4, top_k=1))
    rundir.save_model(tmp_path / "moe", moe, tok, {"stage": "sft", "step": 0})
    dpo.main(["--init", str(tmp_path / "moe"), "--data", str(pairs_file), "--max-steps", "1", "--batch-size", "4",
              "--eval-exact", "0", "--eval-heldout", "2", "--sft-weight", "0", "--out-dir", str(tmp_path / "dpo")])
    first = [r for r in rundir.read_log(tmp_path / "dpo" / "log.jsonl") if "loss" in r][0]
    rows, _, _ = dpo.load_pairs(str(pairs_file), tok, 64)
    pairs = [rows[i] for i in train.StepSampler(len(rows), 4, 1, 1337).next_step()[0]]
    x, _ = sft.collate([c for c, _ in pairs] + [r for _, r in pairs], tok.special_tokens["<|endoftext|>"])
    with torch.no_grad():
        moe.train()(x)
    aux = moe.aux_loss.item()
    assert aux > 1e-3  # big enough to see: at step 0 the preference loss alone is exactly ln 2
    assert first["loss"] == pytest.approx(math.log(2) + aux, abs=1e-5)
