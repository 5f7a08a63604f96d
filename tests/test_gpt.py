"""Tests for gpt.py: the hand-written attention against PyTorch's fused kernel, causality, the
GPT-2 parameter count, learning, sampling, and the command line. CPU, a few seconds."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from conftest import run_as_notebook_cell  # noqa: E402
from gpt import (GPT, SIZES, CharTokenizer, GPTConfig, causal_attention, get_batch, get_lr,  # noqa: E402
                 load_text, main, make_optimizer, parse_args, sample_token, split_data)



TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=40, dropout=0.0)


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **kw}))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_hand_attention_equals_sdpa_values_and_gradients(dtype, tol):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 11, 8, dtype=dtype, requires_grad=True) for _ in range(3))
    upstream = torch.randn(2, 3, 11, 8, dtype=dtype)
    ours = causal_attention(q, k, v)
    grads_ours = torch.autograd.grad((ours * upstream).sum(), (q, k, v))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    grads_ref = torch.autograd.grad((ref * upstream).sum(), (q, k, v))
    torch.testing.assert_close(ours, ref, atol=tol, rtol=tol)
    for g_ours, g_ref in zip(grads_ours, grads_ref):
        torch.testing.assert_close(g_ours, g_ref, atol=tol, rtol=tol)


def test_hand_and_fused_models_agree():
    fused = tiny_model(fused_attention=True)
    hand = tiny_model(fused_attention=False)
    hand.load_state_dict(fused.state_dict())
    idx = torch.randint(0, TINY["vocab_size"], (3, 16))
    logits_f, loss_f = fused(idx, idx)
    logits_h, loss_h = hand(idx, idx)
    torch.testing.assert_close(logits_f, logits_h, atol=1e-5, rtol=1e-5)
    loss_f.backward()
    loss_h.backward()
    for (name, pf), ph in zip(fused.named_parameters(), hand.parameters()):
        torch.testing.assert_close(pf.grad, ph.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("fused", [False, True])
def test_causality_a_token_never_changes_earlier_logits(fused):
    model = tiny_model(fused_attention=fused).eval()
    idx = torch.randint(0, TINY["vocab_size"], (1, 16))
    base, _ = model(idx)
    for t in (0, 5, 15):
        changed = idx.clone()
        changed[0, t] = (changed[0, t] + 1) % TINY["vocab_size"]
        logits, _ = model(changed)
        torch.testing.assert_close(logits[:, :t], base[:, :t], atol=1e-6, rtol=0)
        assert not torch.allclose(logits[:, t:], base[:, t:])  # the change is seen from t on


def test_gpt2_size_has_124_439_808_parameters():
    with torch.device("meta"):  # shapes only, no memory
        model = GPT(GPTConfig(**SIZES["gpt2"]))
    assert model.num_params() == 124_439_808
    assert model.lm_head.weight is model.transformer.wte.weight
    # the same count, by hand: embeddings + 12 blocks + final LayerNorm
    C, V, T, L = 768, 50257, 1024, 12
    block = 2 * (2 * C) + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    assert V * C + T * C + L * block + 2 * C == 124_439_808


def test_gpt2_parameter_names_mirror_gpt2():
    with torch.device("meta"):
        names = set(GPT(GPTConfig(**SIZES["gpt2"])).state_dict())
    for name in ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
                 "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.bias",
                 "transformer.h.11.mlp.c_fc.weight", "transformer.h.11.mlp.c_proj.weight",
                 "transformer.h.11.ln_2.bias", "transformer.ln_f.weight", "lm_head.weight"]:
        assert name in names


def test_config_round_trips_and_sizes_build():
    for name, kw in SIZES.items():
        config = GPTConfig(**kw)
        assert GPTConfig(**dataclasses.asdict(config)) == config
    assert SIZES["cpu"] == dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0)


def test_residual_projections_are_scaled_by_depth():
    model = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=256, block_size=16, vocab_size=50))
    std_proj = model.transformer.h[0].mlp.c_proj.weight.std().item()
    std_fc = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(std_fc - 0.02) < 0.002
    assert abs(std_proj - 0.02 / 4) < 0.0005  # 1 / sqrt(2 * 8) = 1/4


def test_loss_ignores_minus_100_targets():
    model = tiny_model()
    idx = torch.randint(0, TINY["vocab_size"], (2, 16))
    targets = torch.randint(0, TINY["vocab_size"], (2, 16))
    targets[:, :10] = -100
    logits, loss = model(idx, targets)
    expected = F.cross_entropy(logits[:, 10:].reshape(-1, TINY["vocab_size"]), targets[:, 10:].reshape(-1))
    torch.testing.assert_close(loss, expected)
    assert model(idx)[1] is None


def test_a_few_steps_lower_the_loss():
    text = load_text()[:20000]
    tok = CharTokenizer(text)
    train, _ = split_data(tok.encode(text))
    model = tiny_model(vocab_size=tok.vocab_size)
    opt = make_optimizer(model, 3e-3, 0.1, (0.9, 0.99))
    torch.manual_seed(0)
    x, y = get_batch(train, 16, 16)
    first = model(x, y)[1].item()
    for _ in range(30):
        x, y = get_batch(train, 16, 16)
        loss = model(x, y)[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = get_batch(train, 16, 16)
    assert model(x, y)[1].item() < first - 0.5


def test_overfits_one_small_batch():
    model = tiny_model()
    torch.manual_seed(1)
    x = torch.randint(0, TINY["vocab_size"], (4, 16))
    y = torch.randint(0, TINY["vocab_size"], (4, 16))
    opt = make_optimizer(model, 1e-2, 0.0, (0.9, 0.99))
    for _ in range(150):
        loss = model(x, y)[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_weight_decay_only_on_matrices():
    model = tiny_model()
    decay, no_decay = make_optimizer(model, 1e-3, 0.1, (0.9, 0.99)).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_lr_schedule_warms_up_then_decays_to_min():
    assert get_lr(0, 1.0, 0.1, 10, 100) == pytest.approx(0.1)
    assert get_lr(9, 1.0, 0.1, 10, 100) == pytest.approx(1.0)
    assert get_lr(100, 1.0, 0.1, 10, 100) == pytest.approx(0.1)
    lrs = [get_lr(i, 1.0, 0.1, 10, 100) for i in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_char_tokenizer_round_trips():
    tok = CharTokenizer("hello")
    assert tok.encode("hell") == [1, 0, 2, 2]
    assert tok.decode(tok.encode("olleh")) == "olleh"


def test_generate_is_reproducible_greedy_and_crops_context():
    model = tiny_model()
    a = list(model.generate([0], 40, top_k=5, generator=torch.Generator().manual_seed(7)))
    b = list(model.generate(torch.zeros(1, 1, dtype=torch.long), 40, top_k=5, seed=7))
    assert len(a) == 40 and a == b  # 40 > block_size 16: the context is cropped
    greedy = [0] + list(model.generate([0], 3, temperature=0))
    for t in range(1, 4):
        assert greedy[t] == model(torch.tensor([greedy[:t]]))[0][0, -1].argmax()


def test_generate_stops_at_a_stop_token_and_penalises_repeats():
    model = tiny_model()
    greedy = list(model.generate([1, 2, 3], 12, temperature=0))
    stopped = list(model.generate([1, 2, 3], 12, temperature=0, stop_tokens={greedy[4]}))
    assert stopped == greedy[:greedy.index(greedy[4]) + 1]  # the stop token is yielded, then the end
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    first = next(model.generate([1, 2, 3], 1, temperature=0))
    penalised = next(model.generate([1, 2, 3, first], 1, temperature=0, repetition_penalty=1e4))
    assert penalised != first and penalised not in (1, 2, 3)


def test_generate_respects_top_k():
    model = tiny_model()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # spread the logits out so the top 3 are well defined
    context = torch.randint(0, TINY["vocab_size"], (1, 5))
    top3 = set(model(context)[0][0, -1].topk(3).indices.tolist())
    gen = torch.Generator().manual_seed(0)
    sampled = {next(model.generate(context, 1, temperature=2.0, top_k=3, generator=gen)) for _ in range(300)}
    assert sampled <= top3
    unrestricted = {next(model.generate(context, 1, temperature=2.0, generator=gen)) for _ in range(300)}
    assert not unrestricted <= top3  # without top_k, other tokens do come up


def test_sample_token_top_p_keeps_the_nucleus_and_matches_the_filtered_distribution():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, -3.0])
    probs = torch.softmax(logits, 0)  # 0.61, 0.22, 0.14, 0.03, 0.004
    gen = torch.Generator().manual_seed(0)
    draws = [sample_token(logits, 1.0, None, 0.8, gen) for _ in range(4000)]
    assert set(draws) == {0, 1}  # 0.61 < 0.8 <= 0.61 + 0.22: the nucleus is the first two
    share = draws.count(0) / len(draws)
    assert abs(share - probs[0] / (probs[0] + probs[1])) < 0.03  # renormalised over the nucleus
    assert sample_token(logits, 0) == 0
    assert {sample_token(logits, 1.0, 2, None, gen) for _ in range(500)} == {0, 1}


def test_tanh_gelu_option_matches_gpt2_approximation():
    model = tiny_model(gelu_approximate="tanh")
    x = torch.randn(5, 7)
    torch.testing.assert_close(model.transformer.h[0].mlp.gelu(x), F.gelu(x, approximate="tanh"))
    assert tiny_model().transformer.h[0].mlp.gelu(x).sub(F.gelu(x)).abs().max() == 0


def test_the_model_interface_every_script_uses():
    model = tiny_model()
    assert (model.context_length, model.n_layers, model.width) == (16, 2, 32)
    assert model.num_params(active=True) == model.num_params()


def test_main_from_a_notebook(tmp_path):
    data = tmp_path / "tiny.txt"
    data.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    out = main(data=str(data), max_iters=5, eval_interval=5, eval_iters=2, batch_size=4, sample_tokens=10)
    assert out["val_loss"] < 5 and isinstance(out["model"], GPT) and len(out["sample"]) == 11
    assert parse_args(["--max-iters", "3"])["max_iters"] == 3
    with pytest.raises(ValueError, match="unknown argument.*--max-iter "):  # a typo is not ignored
        parse_args(["--max-iter ", "3"])


def test_pasted_into_a_notebook_cell_runs_a_short_demo(monkeypatch, capsys):
    """A notebook cell runs the file as __main__ with the kernel's own argv (-f kernel.json): the
    demo runs instead of parsing flags. Its 150 steps are cut to 10 here (15 s of CPU saved)."""
    demo = "main(max_iters=150, eval_interval=50, sample_tokens=200)"
    status, out, err = run_as_notebook_cell(ROOT / "gpt.py", monkeypatch, capsys,
                                            [(demo, "main(max_iters=10, eval_interval=5, eval_iters=2, sample_tokens=20)")])
    assert status is None or status == 0, err
    assert "a short demo" in out and "sample" in out and "step    10: train loss" in err + out


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "gpt.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cli_runs_end_to_end():
    r = run_cli("--max-iters", "10", "--eval-interval", "5", "--eval-iters", "2", "--sample-tokens", "20",
                "--no-fused-attention")
    assert r.returncode == 0, r.stderr
    assert "step    10: train loss" in r.stdout and "sample" in r.stdout


def test_cli_bad_data_file_is_one_error_line(tmp_path):
    r = run_cli("--data", str(tmp_path / "missing.txt"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: cannot read {tmp_path / 'missing.txt'}: No such file or directory"]
    with pytest.raises(ValueError) as e:  # the same path in-process: __main__ prints it as "error: ..."
        parse_args(["--max-iterz", "3"])
    assert str(e.value) == "unknown argument(s): --max-iterz 3 (see --help)"
    short = tmp_path / "short.txt"  # the same check, in-process (a subprocess costs a torch import)
    short.write_text("abc")
    with pytest.raises(ValueError, match="too short"):
        main(data=str(short))
