"""Tests for quantize.py and int8.py: the quantizer against its formula and error bound, the fast
kernel against the reference path, a quantized model against the float one, and INT8 run directories on disk."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import decode
import gpt
import int8
import minimind
import quantize
import rundir
from rundir import UserError

ROOT = Path(__file__).resolve().parent.parent



def test_per_channel_scales_and_round_trip_bound():
    torch.manual_seed(0)
    w = torch.randn(16, 48)
    w[3] *= 100  # an outlier row must not change the other rows' scales
    q, scale = quantize.quantize_per_channel(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert torch.equal(scale, w.abs().amax(dim=1) / 127)  # scale = max|w| / 127, row by row
    assert q.min() >= -127 and q.max() <= 127
    assert torch.equal(q.abs().amax(dim=1), torch.full((16,), 127, dtype=torch.int8))  # each row's max -> +-127
    err = (w - int8.dequantize(q, scale)).abs()
    assert (err <= scale[:, None] / 2 * (1 + 1e-6)).all()  # |w - w_hat| <= scale / 2, elementwise
    # the same numbers, computed another way: nearest multiple of the row's scale
    assert torch.equal(q, torch.round(w / scale[:, None]).to(torch.int8))


def test_all_zero_row_does_not_divide_by_zero():
    w = torch.randn(4, 32)
    w[2] = 0
    q, scale = quantize.quantize_per_channel(w)
    assert torch.isfinite(scale).all() and scale[2] > 0
    assert (q[2] == 0).all()
    w_hat = int8.dequantize(q, scale)
    assert torch.isfinite(w_hat).all() and (w_hat[2] == 0).all()


@pytest.mark.skipif(not int8.HAS_INT8_KERNEL, reason="this torch has no int8 weight-only kernel")
@pytest.mark.parametrize("bias", [False, True])
def test_fast_path_equals_reference_path(bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 96, bias=bias)
    layer = int8.QuantizedLinear.from_float(linear, quantize.quantize_per_channel)
    x = torch.randn(3, 5, 128)
    fast = layer(x)
    layer.fast = False
    ref = layer(x)
    assert fast.shape == ref.shape == (3, 5, 96) and fast.dtype == torch.float32
    # the kernel runs the activations in bf16 (8-bit mantissa): agreement to a fraction of a percent
    assert (fast - ref).abs().max() <= 5e-3 * ref.abs().max()
    # and the reference path is exactly "dequantize, then matmul"
    w_hat = int8.dequantize(layer.weight_int8, layer.scale)
    torch.testing.assert_close(ref, torch.nn.functional.linear(x, w_hat, linear.bias))


def test_sizes_the_kernel_cannot_take_use_the_reference_path():
    layer = int8.QuantizedLinear.from_float(torch.nn.Linear(40, 8),  # 40 is not a multiple of 16
                                            quantize.quantize_per_channel)
    x = torch.randn(2, 40)
    out = layer(x)
    layer.fast = False
    assert torch.equal(out, layer(x))


def tiny_minimind(vocab=320):
    torch.manual_seed(0)
    return minimind.MiniMind(minimind.MiniMindConfig(**minimind.SIZES["nano"], vocab_size=vocab, max_seq_len=64)).eval()


@pytest.mark.parametrize("include_embeddings", [False, True])
def test_quantized_model_logits_close_to_float(include_embeddings):
    model = tiny_minimind()
    q = copy.deepcopy(model)
    rows = quantize.quantize_model(q, include_embeddings)
    assert not any(isinstance(m, torch.nn.Linear) for m in q.modules()) if include_embeddings else \
        [n for n, m in q.named_modules() if isinstance(m, torch.nn.Linear)] == ["lm_head"]
    assert all(r["bound_ratio"] <= 1 + 1e-5 for r in rows)
    idx = torch.randint(0, 320, (2, 40))
    with torch.no_grad():
        a, b = model(idx)[0], q(idx)[0]
    assert (a - b).abs().max() < 0.02 * a.abs().max()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9
    if include_embeddings:  # the tied head uses the embedding's int8 table itself: stored once
        assert q.lm_head.embedding is q.embed_tokens
    list(q.generate([1, 2, 3], max_new_tokens=4, temperature=0))  # generate still runs (reads .weight)


def test_gpt_quantizes_too():
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=100)).eval()
    q = copy.deepcopy(model)
    quantize.quantize_model(q, include_embeddings=True)
    idx = torch.randint(0, 100, (2, 20))
    with torch.no_grad():
        a, b = model(idx)[0], q(idx)[0]
    assert (a - b).abs().max() < 0.02 * a.abs().max()


def test_cli_writes_an_int8_run_that_loads_safely(pretrained_run, corpus, tmp_path):
    out = tmp_path / "int8"
    result = quantize.main([str(pretrained_run), "--out", str(out), "--data", str(corpus / "text.txt"),
                            "--eval-batches", "2"])
    payload = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert payload["quantized"] == {"scheme": "int8-per-channel-symmetric", "include_embeddings": False,
                                    "source": str(pretrained_run)}
    assert payload["stage"] == "pretrain" and payload["format"] == "slm-run"
    int8_tensors = [k for k, v in payload["model"].items() if v.dtype == torch.int8]
    assert len(int8_tensors) == 4 * 7  # every projection of the 4 blocks
    assert payload["model"]["embed_tokens.weight"].dtype == torch.float32  # stays float by default
    assert (out / "tokenizer.json").read_bytes() == (pretrained_run / "tokenizer.json").read_bytes()
    assert not (out / "train_state.pt").exists()
    model, tok, loaded = rundir.load_run(out)
    assert isinstance(model.layers[0].self_attn.q_proj, int8.QuantizedLinear) and "model" not in loaded
    assert abs(result["after"]["val_ppl"] / result["before"]["val_ppl"] - 1) < 0.01
    assert result["size_after"] < 0.55 * result["size_before"]
    with pytest.raises(UserError, match="already quantized"):
        quantize.main([str(out), "--out", str(tmp_path / "again"), "--eval-batches", "0"])

    both = tmp_path / "int8-emb"
    quantize.main([str(pretrained_run), "--out", str(both), "--include-embeddings", "--eval-batches", "0"])
    # the 320 x 128 table goes from 4 bytes a number to 1 (+ a scale per row), stored once for both uses
    saved = (out / "model.pt").stat().st_size - (both / "model.pt").stat().st_size
    assert saved > 0.95 * (320 * 128 * 3 - 320 * 4)
    model, _, _ = rundir.load_run(both)
    assert model.lm_head.embedding is model.embed_tokens


def test_load_run_errors(tmp_path, pretrained_run):
    model, tok, payload = rundir.load_run(pretrained_run)  # a float run loads as train.load_run would
    assert isinstance(model.lm_head, torch.nn.Linear) and payload["stage"] == "pretrain"
    with pytest.raises(UserError, match="no such run directory"):
        rundir.load_run(tmp_path / "missing")
    r = subprocess.run([sys.executable, str(ROOT / "quantize.py"), str(tmp_path / "missing")],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


def test_moe_experts_that_get_no_tokens_still_run():
    torch.manual_seed(0)
    model = minimind.MiniMind(minimind.MiniMindConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=100,
                                                      max_seq_len=32, n_experts=8, top_k=1)).eval()
    q = copy.deepcopy(model)
    quantize.quantize_model(q)
    idx = torch.randint(0, 100, (1, 3))  # 3 tokens, 8 experts: most experts see 0 rows
    with torch.no_grad():
        a, b = model(idx)[0], q(idx)[0]
    assert (a - b).abs().max() < 0.02 * a.abs().max()


def test_int8_decoding_path_agrees_with_the_reference_path(pretrained_run):
    """decode.py's decoding path fuses the int8 layers (for_decoding) and runs the fast kernel; on a
    trained model its greedy picks match the int8 reference path (dequantize, fp32 matmul)."""
    from pydoc_data.topics import topics
    model, tok, _ = rundir.load_run(pretrained_run)
    for include_embeddings in (False, True):
        fast = copy.deepcopy(model)
        quantize.quantize_model(fast, include_embeddings)
        reference = int8.set_fast(copy.deepcopy(fast), False)
        ids = tok.encode(topics[sorted(topics)[-1]])[:model.context_length]
        with torch.no_grad():
            expected = reference(torch.tensor([ids]))[0][0].argmax(-1)
        decoder = decode.Decoder(fast)
        picks = [decoder.add(ids[:1]).argmax()] + [decoder.step([t])[0].argmax() for t in ids[1:]]
        assert (torch.stack(picks) == expected).float().mean() >= 0.99
        prompt = ids[:8]
        assert list(decode.generate(fast, prompt, 30, temperature=0)) == \
            list(reference.generate(prompt, 30, temperature=0, use_cache=False))
