"""Tests for decode.py, the fast decoding path: its layers against nn.Linear, the Decoder's logits
against forward(), a batch of rows against each row alone, decode.generate against minimind's
generate (readable KV cache) and the uncached reference, 16-bit weights on a trained model, the
prepared weights following the model, and the demo."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import decode
from conftest import run_as_notebook_cell
import minimind
from decode import Decoder, FastLinear
from test_minimind import MOE, VOCAB, small

ROOT = Path(__file__).resolve().parent.parent


def teacher_forced(model, ids):
    """The decoder's argmax after each of ids, fed one at a time (teacher forcing) -> [T]."""
    decoder = Decoder(model)
    out = [decoder.add(ids[:1])]
    out += [decoder.step([t])[0] for t in ids[1:]]
    return torch.stack(out)  # [T, V]


def argmax_agreement(model, ids):
    """Share of positions where the decoding path and the reference forward() pick the same token."""
    with torch.no_grad():
        reference = model(torch.tensor([ids]))[0][0]  # [T, V]
    return (teacher_forced(model, ids).argmax(-1) == reference.argmax(-1)).float().mean().item()


def test_fast_linear_equals_linear_in_every_dtype():
    torch.manual_seed(0)
    w, b, x = torch.randn(48, 32), torch.randn(48), torch.randn(3, 32)
    exact = F.linear(x, w, b)
    torch.testing.assert_close(FastLinear(w, b)(x), exact, atol=1e-5, rtol=1e-5)
    for dtype in (torch.float16, torch.bfloat16):  # what rounding the weights to 16 bits costs
        y = FastLinear(w, b, dtype)(x)
        assert y.dtype == torch.float32
        rounded = F.linear(x, w.to(dtype).float(), b)
        assert (y - rounded).abs().max() <= (0.02 if dtype == torch.bfloat16 else 2e-3) * exact.abs().max()


@pytest.mark.skipif(decode.FBGEMM_FP16_PACK is None, reason="no fbgemm fp16 kernel in this torch")
def test_both_doors_to_fbgemms_fp16_kernel_give_the_same_numbers():
    torch.manual_seed(0)
    w, b, x = torch.randn(48, 32), torch.randn(48), torch.randn(3, 32)
    fast = FastLinear(w, b, torch.float16)
    assert fast.legacy  # the door with ~3 µs of overhead a call, not ~20 (decode.py)
    packed = torch.ops.quantized.linear_prepack_fp16(w, b)
    for rows in (x[:1], x):
        assert torch.equal(fast(rows), torch.ops.quantized.linear_dynamic_fp16(rows, packed))


@pytest.mark.parametrize("kw", [{}, MOE, dict(head_dim=12, qkv_bias=True, qk_norm=True, n_kv_heads=1)],
                         ids=["dense", "moe", "bias-qknorm-mqa"])
def test_decoder_logits_equal_the_forward_pass(kw):
    model = small(**kw)
    if kw.get("qkv_bias"):
        with torch.no_grad():
            model.layers[0].self_attn.v_proj.bias.normal_()
    ids = torch.randint(0, VOCAB, (20,)).tolist()
    with torch.no_grad():
        full = model(torch.tensor([ids]))[0][0]
    torch.testing.assert_close(teacher_forced(model, ids), full, atol=1e-4, rtol=1e-4)
    decoder = Decoder(model)
    torch.testing.assert_close(decoder.add(ids), full[-1], atol=1e-4, rtol=1e-4)  # a prompt in one pass


def test_a_batch_of_rows_equals_each_row_alone():
    """Rows of different lengths step together; rows leave (the last moves into the gap) and
    are refilled; each row's logits stay those of its sequence decoded alone."""
    model = small(seq_len=64)
    torch.manual_seed(1)
    seqs = [torch.randint(0, VOCAB, (n,)).tolist() for n in (3, 11, 7, 1)]
    batch = Decoder(model, max_batch=4)
    for s in seqs:
        batch.add(s[:1] if len(s) == 1 else s[:-1])
    with pytest.raises(ValueError):
        batch.add([1])  # all four rows are in use
    rows = [s if len(s) == 1 else s[:-1] for s in seqs]  # what each row holds
    for step in range(6):
        if step == 2:
            batch.remove(1)  # row 1 leaves; row 3 moves into its place
            rows[1] = rows.pop()
        if step == 4:
            batch.refill(0, rows[0][-2:])  # a crop: row 0 keeps its last two tokens
            rows[0] = rows[0][-2:]
        new = [(7 * step + i) % VOCAB for i in range(batch.rows)]
        logits = batch.step(new)
        for i, r in enumerate(rows):
            r.append(new[i])
            with torch.no_grad():
                alone = model(torch.tensor([r]))[0][0, -1]
            torch.testing.assert_close(logits[i], alone, atol=1e-4, rtol=1e-4)
    assert batch.lengths == [len(r) for r in rows]


def test_16_bit_weights_agree_with_fp32_on_a_trained_model(pretrained_run):
    import rundir
    from pydoc_data.topics import topics
    model, tok, _ = rundir.load_run(pretrained_run)
    text = topics[sorted(topics)[-1]]  # not among the training text's first topics
    ids = tok.encode(text)[:model.context_length]
    decode.prepare_decoding(model, torch.float32)
    assert argmax_agreement(model, ids) == 1.0
    greedy = list(decode.generate(model, ids[:8], 40, temperature=0))
    assert greedy == list(model.generate(ids[:8], 40, temperature=0, use_cache=False))
    for dtype in (torch.float16, torch.bfloat16):
        decode.prepare_decoding(model, dtype)
        assert decode.decoding_weights(model).dtype == dtype
        assert argmax_agreement(model, ids) >= 0.99


def test_prepared_weights_follow_changes_to_the_model():
    model = small()
    prompt = [5, 6, 7]
    decode.prepare_decoding(model)
    kept = decode.decoding_weights(model)
    assert decode.decoding_weights(model) is kept  # reused while nothing changed
    before = list(decode.generate(model, prompt, 8, temperature=0))
    with torch.no_grad():
        model.lm_head.weight.mul_(-1)  # an in-place change, as an optimizer step makes
    after = list(decode.generate(model, prompt, 8, temperature=0))
    assert decode.decoding_weights(model) is not kept and after != before
    assert after == list(model.generate(prompt, 8, temperature=0, use_cache=False))
    fresh = small()  # never prepared: generate builds a copy for the call and keeps nothing
    list(decode.generate(fresh, prompt, 2))
    assert "decode_weights" not in fresh.__dict__ and "decode_weights" not in fresh.state_dict()


def test_a_half_precision_moe_model_decodes_on_the_fast_path():
    torch.manual_seed(0)
    model = small(**MOE).to(torch.bfloat16).eval()
    fast = list(decode.generate(model, [1, 2, 3], max_new_tokens=6, temperature=0))
    slow = list(model.generate([1, 2, 3], max_new_tokens=6, temperature=0, use_cache=False))
    assert len(fast) == 6 and fast[:2] == slow[:2]  # bf16 rounding may part them later


# ---------------------------------------------------------------------------------------------
# decode.generate: the tokens of minimind's generate


@pytest.mark.parametrize("kw", [{}, MOE, dict(qk_norm=True, n_kv_heads=1)], ids=["dense", "moe", "qknorm-mqa"])
def test_fast_generate_equals_minimind_generate_and_the_uncached_reference(kw):
    """The same tokens for the same arguments, greedy and sampled, through several crops of a
    16-token window, from a prompt longer than the window, with a penalty and a stop token."""
    model = small(seq_len=16, **kw)
    prompt, long_prompt = [3, 14, 15, 92, 65], torch.randint(0, VOCAB, (1, 25))
    settings = [dict(temperature=0), dict(temperature=1.0, top_k=20, seed=123),
                dict(temperature=0.8, top_p=0.9, repetition_penalty=1.3, seed=5)]
    for sampling in settings:
        for ids in (prompt, long_prompt):
            fast = list(decode.generate(model, ids, 40, **sampling))
            assert len(fast) == 40
            assert fast == list(model.generate(ids, 40, **sampling))  # the readable KV cache
            assert fast == list(model.generate(ids, 40, use_cache=False, **sampling))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert list(decode.generate(model, prompt, 10, generator=g1)) == list(model.generate(prompt, 10, generator=g2))
    first = next(decode.generate(model, prompt, temperature=0))
    assert list(decode.generate(model, prompt, 10, temperature=0, stop_tokens=[first])) == [first]
    with pytest.raises(ValueError):
        next(decode.generate(model, torch.zeros(2, 3, dtype=torch.long)))


def test_fast_generate_restores_the_mode_and_leaves_grad_on_between_tokens():
    model = small(dropout=0.5).train()
    gen = decode.generate(model, [1, 2, 3], max_new_tokens=5, temperature=0)
    first = next(gen)
    assert torch.is_grad_enabled()
    rest = list(gen)
    assert model.training and [first] + rest == list(model.eval().generate([1, 2, 3], 5, temperature=0))


def test_the_decoders_rope_is_minimind_apply_rope():
    """decode.py folds rotate_half's signs into its sin table and rotates with one roll."""
    model = small(head_dim=12, n_kv_heads=1)
    w, cfg = decode.decoding_weights(model), model.config
    heads = cfg.n_heads + cfg.n_kv_heads  # q and k; the v heads after them get angle 0
    x = torch.randn(5, heads + cfg.n_kv_heads, 12)  # [T, heads, hd] at positions 0..4
    rolled = torch.addcmul(x * w.cos[:5], x.roll(6, -1), w.sin[:5])
    expected = minimind.apply_rope(x[:, :heads].transpose(0, 1), model.rope_cos[:5], model.rope_sin[:5])
    torch.testing.assert_close(rolled[:, :heads], expected.transpose(0, 1))
    assert torch.equal(rolled[:, heads:], x[:, heads:])


def test_the_demo_runs_pasted_into_a_notebook_cell(monkeypatch, capsys):
    status, out, err = run_as_notebook_cell(ROOT / "decode.py", monkeypatch, capsys)
    assert status in (None, 0), err
    assert "the same 128 sampled tokens (random weights, seed 0): True" in out
