"""Tests for minimind.py: published sizes, every hand-written piece against a reference computation,
the KV cache against the uncached model, and sampling. CPU, tiny models, seconds."""
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import run_as_notebook_cell
from minimind import (SIZES, KVCache, MiniMind, MiniMindConfig, MoE, RMSNorm, apply_rope, attention_by_hand,
                      causal_mask, crop_start, flops_per_token, kv_bytes_per_token, rope_tables, sample_next,
                      size_table)

ROOT = Path(__file__).resolve().parent.parent

VOCAB = 97


def small(seq_len=32, **kw):
    """A tiny model (dim 32, 2 layers) with random weights large enough to give varied logits."""
    torch.manual_seed(0)
    cfg = MiniMindConfig(**{**dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=VOCAB,
                                   max_seq_len=seq_len), **kw})
    model = MiniMind(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model.eval()


MOE = dict(n_experts=4, top_k=2, n_shared_experts=1)


# ---------------------------------------------------------------------------------------------
# Sizes


def meta_model(name):
    with torch.device("meta"):
        return MiniMind(MiniMindConfig(**SIZES[name], vocab_size=6400))


@pytest.mark.parametrize("name, total, active", [
    ("minimind2-small", 25_829_888, 25_829_888),  # published as 25.83M
    ("minimind2", 104_030_976, 104_030_976),  # published as 104.03M
    ("minimind3", 63_912_192, 63_912_192),
    ("minimind3-moe", 198_416_640, 63_936_768),
])
def test_published_parameter_counts(name, total, active):
    model = meta_model(name)
    assert model.num_params() == total
    assert model.num_params(active=True) == active


def test_ffn_rules_and_small_sizes():
    assert MiniMindConfig(dim=512).hidden_dim == 1408
    assert MiniMindConfig(dim=768).hidden_dim == 2048
    assert MiniMindConfig(dim=768, ffn_rule="pi").hidden_dim == 2432
    assert MiniMindConfig(dim=768, ffn_hidden=1000).hidden_dim == 1000
    assert MiniMindConfig(dim=768, ffn_hidden=None).hidden_dim == 2048
    assert 5e6 <= meta_model("tiny").num_params() <= 10e6
    assert 1e6 <= meta_model("nano").num_params() <= 2e6


def test_config_round_trips_and_state_dict_has_weights_only():
    cfg = MiniMindConfig(**SIZES["nano"], vocab_size=VOCAB, max_seq_len=64)
    assert MiniMindConfig(**asdict(cfg)) == cfg
    a, b = MiniMind(cfg), MiniMind(MiniMindConfig(**asdict(cfg)))
    sd = a.state_dict()
    assert not any("rope" in k for k in sd)
    b.load_state_dict(sd)  # strict: same names, same shapes
    assert b.lm_head.weight is b.embed_tokens.weight  # tied
    linears = [m for m in a.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 4 * 7 + 1 and all(m.bias is None for m in linears)


def test_flops_and_kv_bytes():
    cfg = MiniMindConfig(**SIZES["nano"], vocab_size=6400, max_seq_len=256)
    assert flops_per_token(cfg) == 6 * 1_606_784 + 12 * 4 * 128 * 256
    moe = MiniMindConfig(**SIZES["minimind3-moe"], vocab_size=6400)
    assert flops_per_token(moe, 512) == 6 * 63_936_768 + 12 * 8 * 768 * 512
    assert kv_bytes_per_token(MiniMindConfig(**SIZES["minimind2-small"])) == 2 * 8 * 2 * 64 * 2
    text = "\n".join(size_table())
    assert "25.83M" in text and "198.42M" in text and "63.94M" in text


# ---------------------------------------------------------------------------------------------
# The pieces against their formulas


def test_rmsnorm_equals_formula():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 5, 16)
    expected = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    y = norm(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), expected, atol=3e-2, rtol=2e-2)


def test_rope_depends_only_on_relative_position():
    torch.manual_seed(0)
    hd = 16
    cos, sin = rope_tables(hd, 200, theta=1e6)
    q, k = torch.randn(1, 1, 1, hd), torch.randn(1, 1, 1, hd)

    def score(m, n):
        return (apply_rope(q, cos[m:m + 1], sin[m:m + 1]) * apply_rope(k, cos[n:n + 1], sin[n:n + 1])).sum()

    for m, n, shift in [(5, 2, 100), (7, 7, 50), (0, 30, 150)]:
        torch.testing.assert_close(score(m, n), score(m + shift, n + shift), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(score(5, 2), score(5, 3), atol=1e-3)  # but it does depend on m - n
    # rotate-half layout: channel i pairs with i + hd/2, and position 0 is the identity
    torch.testing.assert_close(apply_rope(q, cos[:1], sin[:1]), q)
    x = torch.zeros(1, 1, 1, hd)
    x[..., 0] = 1.0
    r = apply_rope(x, cos[1:2], sin[1:2])  # pair 0 turns by 1 radian per position
    assert torch.allclose(r[..., 0], torch.tensor(math.cos(1.0))) and torch.allclose(r[..., hd // 2], torch.tensor(math.sin(1.0)))


def test_hand_attention_equals_sdpa():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 10, 8), torch.randn(2, 4, 10, 8)
    mask = causal_mask(6, 10, 4, "cpu")  # 6 new queries after 4 cached keys
    torch.testing.assert_close(attention_by_hand(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    torch.testing.assert_close(attention_by_hand(q, k, v), F.scaled_dot_product_attention(q, k, v))
    # and the whole model, with and without a cache
    model = small()
    idx = torch.randint(0, VOCAB, (2, 12))
    ref, _ = model(idx)
    for layer in model.layers:
        layer.self_attn.use_sdpa = False
    hand, _ = model(idx)
    torch.testing.assert_close(hand, ref, atol=1e-5, rtol=1e-5)
    cache = model.new_kv_cache(2)
    model(idx[:, :7], kv_cache=cache)
    step, _ = model(idx[:, 7:], kv_cache=cache, start_pos=7)
    torch.testing.assert_close(step, ref[:, 7:], atol=1e-5, rtol=1e-5)


def plain_mha(attn, x, cos, sin):
    """Multi-head attention written out head by head, sharing nothing with Attention.forward."""
    B, T, D = x.shape
    hd = attn.head_dim
    outs = []
    for h in range(attn.n_heads):
        kv = h * attn.n_kv_heads // attn.n_heads  # the KV head this query head reads
        q = x @ attn.q_proj.weight[h * hd:(h + 1) * hd].T  # [B, T, hd]
        k = x @ attn.k_proj.weight[kv * hd:(kv + 1) * hd].T
        v = x @ attn.v_proj.weight[kv * hd:(kv + 1) * hd].T
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        s = q @ k.transpose(1, 2) / math.sqrt(hd)
        s = s + torch.full((T, T), float("-inf")).triu(1)
        outs.append(torch.softmax(s, -1) @ v)
    return torch.cat(outs, -1) @ attn.o_proj.weight.T


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_gqa_equals_plain_multi_head_attention(n_kv_heads):
    model = small(n_kv_heads=n_kv_heads)
    attn = model.layers[0].self_attn
    x = torch.randn(2, 9, 32)
    cos, sin = model.rope_cos[:9], model.rope_sin[:9]
    torch.testing.assert_close(attn(x, cos, sin), plain_mha(attn, x, cos, sin), atol=1e-5, rtol=1e-5)
    if n_kv_heads < 4:  # GQA = MHA whose K/V weights are copied to every query head of a group
        mha = small(n_kv_heads=4).layers[0].self_attn
        rep, hd = 4 // n_kv_heads, 8
        with torch.no_grad():
            mha.q_proj.weight.copy_(attn.q_proj.weight)
            mha.o_proj.weight.copy_(attn.o_proj.weight)
            for name in ("k_proj", "v_proj"):
                w = getattr(attn, name).weight.view(n_kv_heads, hd, 32)
                getattr(mha, name).weight.copy_(w.repeat_interleave(rep, dim=0).reshape(32, 32))
        torch.testing.assert_close(attn(x, cos, sin), mha(x, cos, sin), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# The mixture of experts


def moe_layer(n_experts=4, top_k=1, n_shared=0, dim=8):
    torch.manual_seed(0)
    return MoE(MiniMindConfig(dim=dim, n_heads=2, n_kv_heads=2, n_experts=n_experts, top_k=top_k,
                              n_shared_experts=n_shared))


def test_moe_aux_loss_analytic_values():
    moe = moe_layer()
    with torch.no_grad():
        moe.gate.weight.zero_()
        moe.gate.weight[:, :4] = 3 * torch.eye(4)  # token e scores expert e highest, the rest alike
    x = torch.eye(8)[:4].view(1, 4, 8)  # 4 tokens, one per expert: f_i = 1/4, and P_i = 1/4 by symmetry
    moe(x)
    torch.testing.assert_close(moe.aux, torch.tensor(1.0))  # 4 * sum_i (1/4)(1/4) = 1, the minimum
    # all tokens alike: every one goes to expert argmax p, so aux = E * p_max
    x = torch.eye(8)[:1].expand(6, 8).reshape(1, 6, 8)
    moe(x)
    p = torch.softmax(torch.tensor([3.0, 0, 0, 0]), 0)
    torch.testing.assert_close(moe.aux, 4 * p[0])


def test_topk_routing_sends_each_token_to_k_experts_with_renormalised_weights():
    moe = moe_layer(n_experts=4, top_k=2, n_shared=1)
    x = torch.randn(2, 5, 8)
    x[..., 0] = torch.arange(10.0).view(2, 5) * 10  # channel 0 names the token
    seen = {e: [] for e in range(4)}
    hooks = [ex.register_forward_hook(lambda m, inp, out, e=e: seen[e].extend(inp[0][:, 0].div(10).round().long().tolist()))
             for e, ex in enumerate(moe.experts)]
    out = moe(x)
    for h in hooks:
        h.remove()
    counts = torch.zeros(10, dtype=torch.long)
    for e in seen:
        assert len(set(seen[e])) == len(seen[e])  # no token twice in one expert
        counts[seen[e]] += 1
    assert counts.tolist() == [2] * 10
    # the output by hand: renormalised top-2 probabilities times the experts, plus the shared one
    flat = x.view(10, 8)
    probs = torch.softmax(moe.gate(flat), -1)
    w, idx = probs.topk(2, -1)
    w = w / w.sum(-1, keepdim=True)
    expected = torch.stack([sum(w[t, j] * moe.experts[idx[t, j]](flat[t]) for j in range(2)) + moe.shared_experts[0](flat[t])
                            for t in range(10)])
    torch.testing.assert_close(out.view(10, 8), expected, atol=1e-5, rtol=1e-5)


def test_loss_is_cross_entropy_plus_aux_and_ignores_minus_100():
    for kw in ({}, MOE):
        model = small(**kw)
        idx, targets = torch.randint(0, VOCAB, (2, 10)), torch.randint(0, VOCAB, (2, 10))
        targets[0, :4] = -100
        logits, loss = model(idx, targets)
        keep = targets != -100
        ce = F.cross_entropy(logits[keep], targets[keep])
        torch.testing.assert_close(loss - model.aux_loss, ce)
        if kw:
            expected = model.config.aux_loss_coef * sum(layer.mlp.aux for layer in model.layers)
            torch.testing.assert_close(model.aux_loss, expected)
            assert model.aux_loss > 0
            loss.backward()
            assert model.layers[0].mlp.gate.weight.grad.abs().sum() > 0
        else:
            assert model.aux_loss.item() == 0.0
        assert model(idx)[1] is None


# ---------------------------------------------------------------------------------------------
# Causality and the KV cache


@pytest.mark.parametrize("kw", [{}, MOE], ids=["dense", "moe"])
def test_causal(kw):
    model = small(**kw)
    idx = torch.randint(0, VOCAB, (1, 16))
    other = idx.clone()
    other[0, 10:] = (other[0, 10:] + 1) % VOCAB  # change only the future
    a, _ = model(idx)
    b, _ = model(other)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("kw", [{}, MOE, dict(qk_norm=True, n_kv_heads=1)], ids=["dense", "moe", "qknorm-mqa"])
def test_cache_logits_equal_full_forward(kw):
    model = small(**kw)
    idx = torch.randint(0, VOCAB, (2, 20))
    full, _ = model(idx)
    cache = model.new_kv_cache(2)
    assert isinstance(cache, KVCache) and cache.k[0].shape == (2, model.config.n_kv_heads, 32, 8)
    parts = [model(idx[:, :6], kv_cache=cache)[0]]  # prefill
    parts.append(model(idx[:, 6:9], kv_cache=cache, start_pos=6)[0])  # a chunk appended to the cache
    for t in range(9, 20):  # then one token at a time
        parts.append(model(idx[:, t:t + 1], kv_cache=cache, start_pos=t)[0])
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", [{}, MOE], ids=["dense", "moe"])
def test_greedy_generation_with_cache_is_identical_including_across_crops(kw):
    model = small(seq_len=16, **kw)
    prompt = [3, 14, 15, 92, 65]
    cached = list(model.generate(prompt, max_new_tokens=40, temperature=0))
    uncached = list(model.generate(prompt, max_new_tokens=40, temperature=0, use_cache=False))
    assert len(cached) == 40 and cached == uncached  # 45 tokens through a 16-token window: several crops
    long_prompt = torch.randint(0, VOCAB, (1, 25))  # longer than the window from the start
    a = list(model.generate(long_prompt, max_new_tokens=12, temperature=0))
    assert a == list(model.generate(long_prompt[0], max_new_tokens=12, temperature=0, use_cache=False))


def test_generate_runs_the_readable_kv_cache_one_token_a_step():
    """generate's default is section 4's KVCache through forward(): the prompt once, then one token
    a step, the window run again after a crop; use_cache=False runs the whole window every time."""
    model = small(seq_len=8)
    shapes = {}
    for use_cache in (True, False):
        calls = shapes[use_cache] = []
        forward = model.forward
        model.forward = lambda idx, *a, **kw: calls.append((idx.size(1), kw.get("start_pos", 0))) or forward(idx, *a, **kw)
        sampled = list(model.generate([1, 2, 3], max_new_tokens=8, temperature=1.0, top_k=20, seed=7,
                                      use_cache=use_cache))
        del model.forward
        shapes[use_cache, "tokens"] = sampled
    # 3 + 8 tokens through an 8-token window: the 9th token overflows it, 4 are kept and run again
    assert shapes[True] == [(3, 0), (1, 3), (1, 4), (1, 5), (1, 6), (1, 7), (4, 0), (1, 4)]
    assert shapes[False] == [(3, 0), (4, 0), (5, 0), (6, 0), (7, 0), (8, 0), (4, 0), (5, 0)]
    assert shapes[True, "tokens"] == shapes[False, "tokens"]  # sampled, seed 7: the same tokens


def test_crop_start_keeps_the_most_recent_half_window():
    assert crop_start(8, 0, 8) == 0  # a full window is not cropped
    assert crop_start(9, 0, 8) == 5  # one over: the last 4 stay
    assert crop_start(13, 5, 8) == 5 and crop_start(14, 5, 8) == 10
    assert crop_start(3, 1, 1) == 2  # a window of 1 keeps 1


# ---------------------------------------------------------------------------------------------
# Sampling


def test_sample_next_respects_top_k_and_top_p():
    logits = torch.log(torch.tensor([0.05, 0.5, 0.05, 0.3, 0.1]))
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits, temperature=0) == 1
    draws = lambda **kw: {sample_next(logits, generator=g, **kw) for _ in range(300)}
    assert draws(top_k=2, temperature=5.0) == {1, 3}
    assert draws(top_k=1, temperature=5.0) == {1}
    assert draws(top_p=0.75) == {1, 3}  # 0.5 + 0.3 reaches 0.75
    assert draws(top_p=0.5) == {1}
    assert draws(top_p=0.85) == {1, 3, 4}
    assert draws(temperature=5.0) == {0, 1, 2, 3, 4}


def test_generate_stops_seeds_and_penalises():
    model = small()
    prompt = [1, 2, 3]
    first = next(model.generate(prompt, temperature=0))
    assert list(model.generate(prompt, max_new_tokens=10, temperature=0, stop_tokens=[first])) == [first]
    a = list(model.generate(prompt, max_new_tokens=20, temperature=1.0, top_k=20, seed=123))
    b = list(model.generate(torch.tensor([prompt]), max_new_tokens=20, temperature=1.0, top_k=20, seed=123))
    c = list(model.generate(prompt, max_new_tokens=20, temperature=1.0, top_k=20, seed=124))
    assert a == b and a != c
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert list(model.generate(prompt, 10, generator=g1)) == list(model.generate(prompt, 10, generator=g2))
    # a huge penalty pushes every token already seen below the unseen ones with positive logits
    out = list(model.generate(prompt, max_new_tokens=15, temperature=0, repetition_penalty=1e4))
    assert len(set(out + prompt)) == len(out) + len(prompt)


def test_generate_restores_modes_and_streams():
    model = small(dropout=0.5)
    model.train()
    gen = model.generate([1, 2, 3], max_new_tokens=5, temperature=0)
    first = next(gen)
    assert torch.is_grad_enabled()  # grad is off only while the generator runs
    rest = list(gen)
    assert model.training and len(rest) == 4
    model.eval()
    assert [first] + rest == list(model.generate([1, 2, 3], max_new_tokens=5, temperature=0))  # dropout was off
    with pytest.raises(ValueError):
        next(model.generate(torch.zeros(2, 3, dtype=torch.long)))
    with pytest.raises(ValueError):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_bf16_autocast_forward_and_cache():
    model = small(**MOE)
    idx = torch.randint(0, VOCAB, (1, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, idx)
        cache = model.new_kv_cache(1)
        model(idx[:, :7], kv_cache=cache)
        step, _ = model(idx[:, 7:], kv_cache=cache, start_pos=7)
    assert torch.isfinite(loss) and torch.isfinite(step).all()


def test_explicit_head_dim_and_qkv_biases():
    """Qwen3 sets head_dim apart from dim / n_heads; Qwen2 has biases on q, k and v."""
    model = small(head_dim=12, qkv_bias=True, qk_norm=True)
    attn = model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (4 * 12, 32) and attn.k_proj.weight.shape == (2 * 12, 32)
    assert attn.o_proj.weight.shape == (32, 4 * 12) and attn.q_proj.bias.shape == (48,)
    assert attn.o_proj.bias is None and model.rope_cos.shape == (32, 12)
    assert all(b.abs().sum() == 0 for n, b in MiniMind(model.config).named_parameters() if n.endswith(".bias"))
    with torch.no_grad():
        attn.v_proj.bias.normal_()
    idx = torch.randint(0, VOCAB, (1, 9))
    cache = model.new_kv_cache(1)
    full = model(idx)[0]
    stepped = torch.cat([model(idx[:, :5], kv_cache=cache)[0]] +
                        [model(idx[:, t:t + 1], kv_cache=cache, start_pos=t)[0] for t in range(5, 9)], 1)
    torch.testing.assert_close(stepped, full, atol=1e-4, rtol=1e-4)
    assert MiniMindConfig(**asdict(model.config)) == model.config
    assert (model.context_length, model.n_layers, model.width) == (32, 2, 32)


def test_pasted_into_a_notebook_cell_prints_the_size_table(monkeypatch, capsys):
    status, out, err = run_as_notebook_cell(ROOT / "minimind.py", monkeypatch, capsys)
    assert status in (None, 0), err
    assert "minimind2-small" in out and "25.83M" in out


def test_gradient_checkpointing_still_fills_a_kv_cache():
    torch.manual_seed(0)
    model, idx = small().train(), torch.randint(0, 64, (1, 5))
    caches = []
    for checkpointing in (False, True):
        model.grad_checkpoint = checkpointing
        cache = model.new_kv_cache(1)
        model(idx, kv_cache=cache)
        caches.append(cache)
    assert caches[1].length == caches[0].length == 5
    assert all(torch.equal(a, b) for a, b in zip(caches[0].k + caches[0].v, caches[1].k + caches[1].v))
