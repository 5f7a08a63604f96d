"""GGUF in, without any reference package: gguf_quants.py's block formats against a scalar decoder
written here from ggml-quants.c's loops, gguf_file.GGUFFile reading back what the writer wrote (every
tensor type, every value type), damaged files refused in one line, and gguf_import.py / convert.py
importing a tiny model that slm exported (f32 exactly; Q8_0 and Q4_0, quantized here, within the
format's error), and refusing what it cannot import, by name."""
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import bpe
import chat_templates
import convert
import gguf_file
import gguf_import
import gguf_quants
import hf_tokenizer
import rundir
from rundir import UserError
from test_convert import TEXT, our_run

ROOT = Path(__file__).resolve().parent.parent
F = np.float32
KINDS = [k for k in gguf_quants.GGML_TYPES if k not in ("f32", "f16", "bf16")]
SCALES = {"q8_0": [0], "q4_0": [0], "q4_1": [0, 2], "q5_0": [0], "q5_1": [0, 2], "q2_k": [80, 82],
          "q3_k": [108], "q4_k": [0, 2], "q5_k": [0, 2], "q6_k": [208]}  # where each fp16 sits


@pytest.fixture(scope="module")
def tok(corpus):
    return bpe.Tokenizer.load(corpus / "tok.json")


# ---- a scalar decoder, one value at a time, as ggml-quants.c's dequantize_row_* loops ----------
def h(b, i):
    return np.frombuffer(bytes(b[i:i + 2]), np.float16)[0].astype(F)


def s8(x):
    return F(x - 256 if x > 127 else x)


def k4_scale_min(j, q):
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


def scalar_block(kind, b):
    y = []
    if kind == "q8_0":
        return [h(b, 0) * s8(x) for x in b[2:]]
    if kind in ("q4_0", "q4_1"):
        d, m, qs = h(b, 0), h(b, 2) if kind == "q4_1" else None, b[4 if kind == "q4_1" else 2:]
        lo = [F(q & 0xF) if m is not None else F((q & 0xF) - 8) for q in qs]
        hi = [F(q >> 4) if m is not None else F((q >> 4) - 8) for q in qs]
        return [d * x + m if m is not None else d * x for x in lo + hi]
    if kind in ("q5_0", "q5_1"):
        one = kind == "q5_1"
        d, m = h(b, 0), h(b, 2) if one else None
        qh = struct.unpack("<I", bytes(b[4 if one else 2:8 if one else 6]))[0]
        qs = b[8 if one else 6:]
        out = [0] * 32
        for j in range(16):
            x0 = (qs[j] & 0xF) | (((qh >> j) << 4) & 0x10)
            x1 = (qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)
            out[j], out[j + 16] = ((d * F(x0) + m, d * F(x1) + m) if one else
                                   (d * F(x0 - 16), d * F(x1 - 16)))
        return out
    if kind == "q2_k":
        scales, q, d, dmin = b[:16], b[16:80], h(b, 80), h(b, 82)
        i = 0
        for n in (0, 32):
            for shift in (0, 2, 4, 6):
                for half in (0, 16):
                    sc = scales[i]
                    i += 1
                    dl, ml = d * F(sc & 0xF), dmin * F(sc >> 4)
                    y += [dl * F((q[n + half + l] >> shift) & 3) - ml for l in range(16)]
        return y
    if kind == "q3_k":
        hm, q, d = b[:32], b[32:96], h(b, 108)
        a0, a1, tmp = struct.unpack("<3I", bytes(b[96:108]))
        k1, k2 = 0x03030303, 0x0F0F0F0F
        aux = [(a0 & k2) | (((tmp >> 0) & k1) << 4), (a1 & k2) | (((tmp >> 2) & k1) << 4),
               ((a0 >> 4) & k2) | (((tmp >> 4) & k1) << 4),
               ((a1 >> 4) & k2) | (((tmp >> 6) & k1) << 4)]
        scales = list(np.frombuffer(struct.pack("<4I", *aux), np.int8))
        i, m = 0, 1
        for n in (0, 32):
            for shift in (0, 2, 4, 6):
                for half in (0, 16):
                    dl = d * F(int(scales[i]) - 32)
                    i += 1
                    y += [dl * F(((q[n + half + l] >> shift) & 3)
                                 - (0 if hm[half + l] & m else 4)) for l in range(16)]
                m <<= 1
        return y
    if kind in ("q4_k", "q5_k"):
        d, dmin, scales = h(b, 0), h(b, 2), b[4:16]
        qh, ql = (b[16:48], b[48:]) if kind == "q5_k" else (None, b[16:])
        u1, u2 = 1, 2
        for j in range(4):
            (s1, m1), (s2, m2) = k4_scale_min(2 * j, scales), k4_scale_min(2 * j + 1, scales)
            for s, mn, shift, u in ((s1, m1, 0, u1), (s2, m2, 4, u2)):
                y += [d * F(s) * F(((ql[32 * j + l] >> shift) & 0xF)
                                   + (16 if qh is not None and qh[l] & u else 0))
                      - dmin * F(mn) for l in range(32)]
            u1, u2 = u1 << 2, u2 << 2
        return y
    assert kind == "q6_k"
    d, out = h(b, 208), [0] * 256
    for n in (0, 1):
        ql, qh, sc = b[64 * n:64 * n + 64], b[128 + 32 * n:160 + 32 * n], b[192 + 8 * n:200 + 8 * n]
        for l in range(32):
            i = l // 16
            qs = [((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32,
                  ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32,
                  ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32,
                  ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32]
            for k in range(4):
                out[128 * n + l + 32 * k] = d * s8(sc[i + 2 * k]) * F(qs[k])
    return out


def random_blocks(kind, n, seed=0):
    """n random blocks of kind, their fp16 scales finite and moderate."""
    rng = np.random.default_rng(seed)
    _, _, size = gguf_quants.GGML_TYPES[kind]
    blocks = rng.integers(0, 256, (n, size), dtype=np.uint8)
    for at in SCALES[kind]:
        blocks[:, at:at + 2] = (rng.standard_normal((n, 1)) * 0.05).astype(np.float16).view(np.uint8)
    return blocks


@pytest.mark.parametrize("kind", KINDS)
def test_each_block_format_decodes_as_the_scalar_loops_of_ggml(kind):
    _, per_block, _ = gguf_quants.GGML_TYPES[kind]
    blocks = random_blocks(kind, 6)
    ours = gguf_quants.dequantize(blocks.tobytes(), kind, (2, 3 * per_block)).numpy()
    expected = np.array([v for b in blocks for v in scalar_block(kind, b.tolist())], dtype=F)
    assert ours.dtype == np.float32 and ours.shape == (2, 3 * per_block)
    assert np.array_equal(ours.reshape(-1).view(np.uint32), expected.view(np.uint32))


def test_blocks_of_known_values():
    d = np.float16(0.5).tobytes()
    assert gguf_quants.dequantize(d + bytes([0x9F] * 16), "q4_0", (32,)).tolist() == \
        [3.5] * 16 + [0.5] * 16                                   # (15 - 8) / 2, (9 - 8) / 2
    assert gguf_quants.dequantize(d + np.float16(-1).tobytes() + bytes([0x21] * 16), "q4_1",
                                  (32,)).tolist() == [-0.5] * 16 + [0.0] * 16  # q/2 - 1
    q5 = d + struct.pack("<I", 0xFFFF0000) + bytes([0x00] * 16)  # 5th bit on for values 16..31
    assert gguf_quants.dequantize(q5, "q5_0", (32,)).tolist() == [-8.0] * 16 + [0.0] * 16
    assert gguf_quants.dequantize(d + bytes(range(-16 & 255, 256)) + bytes(range(16)), "q8_0",
                                  (32,)).tolist() == [x / 2 for x in range(-16, 16)]
    q6 = bytes(128 + 64) + bytes([1] * 16) + np.float16(0.25).tobytes()  # all q = 0 - 32
    assert gguf_quants.dequantize(q6, "q6_k", (256,)).tolist() == [-8.0] * 256
    x = torch.tensor([1.0, -2.5, 65504.0, 1e-3])
    assert torch.equal(gguf_quants.dequantize(x.numpy().tobytes(), "f32", (4,)), x)
    assert torch.equal(gguf_quants.dequantize(x.half().numpy().tobytes(), "f16", (4,)),
                       x.half().float())
    bf = x.bfloat16()
    assert torch.equal(gguf_quants.dequantize(bf.view(torch.uint8).numpy().tobytes(), "bf16",
                                              (4,)), bf.float())


def test_decoding_in_chunks_is_decoding_in_one_piece():
    blocks = random_blocks("q4_k", 9, seed=3).tobytes()
    whole = gguf_quants.dequantize(blocks, "q4_k", (9, 256))
    assert torch.equal(gguf_quants.dequantize(blocks, "q4_k", (9, 256), chunk=8), whole)


# ---- the file: every tensor type and value type written, read back exactly --------------------
METADATA = [("u8", 200, "uint8"), ("i8", -100, "int8"), ("u16", 60000, "uint16"),
            ("i16", -30000, "int16"), ("u32", 4_000_000_000, "uint32"), ("i32", -5, "int32"),
            ("f32", 0.5, "float32"), ("yes", True, "bool"), ("s", "héllo\n", "string"),
            ("u64", 2**63 + 1, "uint64"), ("i64", -2**40, "int64"), ("f64", 0.1, "float64"),
            ("strings", ["a", "", "ü"], "string"), ("ints", [3, -1, 7], "int32"),
            ("empty", [], "float32"), ("bools", [True, False], "bool")]


def every_type_file(path, alignment=32):
    """A file with one tensor of every type (random blocks) and one key of every value type."""
    w = gguf_file.GGUFWriter(alignment)
    for key, value, kind in METADATA:
        w.add(key, value, kind)
    tensors = {}
    for i, kind in enumerate(gguf_quants.GGML_TYPES):
        per_block = gguf_quants.GGML_TYPES[kind][1]
        shape = (3, per_block * 2) if per_block > 1 else (5, 7)
        if kind in SCALES:
            data = random_blocks(kind, 6, seed=i).tobytes()
        else:
            values = torch.randn(shape)
            data = (values.numpy() if kind == "f32" else values.half().numpy() if kind == "f16"
                    else values.bfloat16().view(torch.uint8).numpy()).tobytes()
        w.add_blocks(f"t.{kind}", data, shape, kind)
        tensors[f"t.{kind}"] = (kind, shape, data)
    with open(path, "wb") as f:
        w.write(f)
    return tensors


@pytest.mark.parametrize("alignment", [32, 64])
def test_every_tensor_type_and_value_type_reads_back_exactly(tmp_path, alignment):
    tensors = every_type_file(tmp_path / "all.gguf", alignment)
    g = gguf_file.GGUFFile(tmp_path / "all.gguf")
    assert g.version == 3 and g.alignment == alignment
    for key, value, kind in METADATA:
        got = g.metadata[key]
        assert got == (float(F(value)) if kind == "float32" and value != [] else value), key
        assert g.value_types[key] == kind
    assert list(g.tensors) == list(tensors)
    for name, (kind, shape, data) in tensors.items():
        info = g.tensors[name]
        assert (info.kind, info.shape) == (kind, shape) and info.offset % alignment == 0
        assert g.raw(name).tobytes() == data
        t = g.tensor(name)
        assert t.dtype == torch.float32 and tuple(t.shape) == shape
        if kind in SCALES:
            expected = [v for b in np.frombuffer(data, np.uint8).reshape(6, -1)
                        for v in scalar_block(kind, b.tolist())]
            assert np.array_equal(t.numpy().reshape(-1), np.array(expected, dtype=F))


# ---- damaged files: one line naming the file ------------------------------------------------
def small_file(tmp_path):
    w = gguf_file.GGUFWriter()
    w.add("general.architecture", "llama")
    w.add("list", ["x", "yz"])
    w.add_tensor("a.weight", torch.randn(2, 32), "q8_0")
    w.add_tensor("b.weight", torch.randn(3), "f32")
    with open(tmp_path / "ok.gguf", "wb") as f:
        w.write(f)
    return (tmp_path / "ok.gguf").read_bytes(), len(w.header())


def refused(path, data, match):
    path.write_bytes(data)
    with pytest.raises(UserError, match=match) as info:
        gguf_file.GGUFFile(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


def test_a_truncated_file_at_any_point_is_one_error(tmp_path):
    data, header = small_file(tmp_path)
    gguf_file.GGUFFile(tmp_path / "ok.gguf")  # whole, it reads
    for cut in list(range(0, header, 3)) + [header + 10, len(data) - 21]:  # 20: padding
        refused(tmp_path / "cut.gguf", data[:cut], "truncated")


def test_damaged_headers_are_named(tmp_path):
    data, _ = small_file(tmp_path)
    bad = tmp_path / "bad.gguf"
    assert "not a GGUF file" in refused(bad, b"GGML" + data[4:], "not a GGUF")
    for version in (1, 4, 3 << 24):
        message = refused(bad, data[:4] + struct.pack("<I", version) + data[8:], "version")
        assert ("big-endian" in message) == (version == 3 << 24)
    key_type = 24 + 8 + len("general.architecture")  # the first key's value type
    refused(bad, data[:key_type] + struct.pack("<I", 77) + data[key_type + 4:],
            "unknown metadata value type 77")
    type_at = data.index(b"a.weight") + 8 + 4 + 16  # a.weight's ggml type
    assert struct.unpack_from("<I", data, type_at)[0] == 8
    message = refused(bad, data[:type_at] + struct.pack("<I", 16) + data[type_at + 4:], "iq2_xxs")
    assert "tensor a.weight" in message
    refused(bad, data[:type_at] + struct.pack("<I", 99) + data[type_at + 4:], "number 99")
    refused(bad, data[:type_at + 4] + struct.pack("<Q", 1 << 40) + data[type_at + 12:],
            "outside the file")


def test_convert_refuses_a_damaged_file_with_one_error_line_and_status_2(tmp_path):
    data, _ = small_file(tmp_path)
    (tmp_path / "cut.gguf").write_bytes(data[:len(data) // 2])
    result = subprocess.run([sys.executable, str(ROOT / "convert.py"), str(tmp_path / "cut.gguf"),
                             str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"error: {tmp_path / 'cut.gguf'}: ")
    assert not (tmp_path / "run").exists()


# ---- a model slm exported, imported back ------------------------------------------------------
def quantize_q4_0(x):
    """llama.cpp's reference Q4_0 (quantize_row_q4_0_ref): d = the block's value of largest
    magnitude / -8, q = trunc(x / d + 8.5) clipped to 0..15, low nibbles the first 16 values."""
    blocks = x.detach().float().numpy().reshape(-1, 32)
    peak = np.take_along_axis(blocks, np.abs(blocks).argmax(1)[:, None], 1)
    d = peak / F(-8)
    inverse = np.where(d == 0, F(0), F(1) / np.where(d == 0, F(1), d)).astype(F)
    q = np.clip(np.trunc(blocks * inverse + F(8.5)), 0, 15).astype(np.uint8)
    packed = q[:, :16] | (q[:, 16:] << 4)
    return np.concatenate([d.astype(np.float16).view(np.uint8), packed], 1).tobytes()


def rewrite(src, dst, kind="f32", change=None):
    """Read a GGUF file and write it again: matrices as `kind`, metadata changed by `change`."""
    g = gguf_file.GGUFFile(src)
    w = gguf_file.GGUFWriter()
    metadata = {k: (v, g.value_types[k]) for k, v in g.metadata.items()}
    metadata.update(change or {})
    for key, (value, value_type) in metadata.items():
        if value is not None:
            w.add(key, value, value_type)
    for name, info in g.tensors.items():
        t = g.tensor(name)
        if kind == "q4_0" and len(info.shape) == 2 and info.shape[1] % 32 == 0:
            w.add_blocks(name, quantize_q4_0(t), info.shape, "q4_0")
        else:
            w.add_tensor(name, t, kind if len(info.shape) == 2 else "f32")
    with open(dst, "wb") as f:
        w.write(f)


def logits_of(run, tok):
    model = rundir.load_run(run)[0]
    ids = torch.tensor([tok.encode(TEXT, allowed_special="all")[:32]])
    with torch.no_grad():
        return model(ids)[0]


@pytest.mark.parametrize("variant", ["llama", "untied", "qwen2", "qwen3", "gpt"])
def test_an_f32_export_imports_back_to_the_same_model(tmp_path, tok, variant):
    arch, kw = {"llama": ("minimind", {}), "untied": ("minimind", {"tie_embeddings": False}),
                "qwen2": ("minimind", {"qkv_bias": True}),
                "qwen3": ("minimind", {"qk_norm": True, "head_dim": 16}),
                # llama.cpp's GPT-2 has GELU's tanh form only: a GPT with the exact one comes
                # back with it (the exporter's loss, not the reader's)
                "gpt": ("gpt", {"gelu_approximate": "tanh"})}[variant]
    our_run(tmp_path / "run", tok, arch, **kw)
    convert.main([str(tmp_path / "run"), str(tmp_path / "m.gguf"), "--to", "gguf", "--type", "f32"])
    out = convert.main([str(tmp_path / "m.gguf"), str(tmp_path / "back"), "--max-seq-len", "64"])
    before, after = (rundir.read_model_file(tmp_path / d) for d in ("run", "back"))
    assert out["arch"] == before["arch"] and before["model"].keys() == after["model"].keys()
    for name, t in before["model"].items():  # q and k rows back in our order: exactly equal
        assert torch.equal(t, after["model"][name]), name
    tok2 = rundir.load_tokenizer(tmp_path / "back")
    assert tok2.encode(TEXT, allowed_special="all") == tok.encode(TEXT, allowed_special="all")
    assert torch.equal(logits_of(tmp_path / "run", tok), logits_of(tmp_path / "back", tok))


@pytest.mark.parametrize("kind, tolerance", [("q8_0", 0.02), ("q4_0", 0.3)])
def test_a_quantized_export_imports_within_the_formats_error(tmp_path, tok, kind, tolerance):
    our_run(tmp_path / "run", tok, dim=64, n_heads=4, n_kv_heads=2)
    convert.main([str(tmp_path / "run"), str(tmp_path / "f.gguf"), "--to", "gguf", "--type", "f32"])
    rewrite(tmp_path / "f.gguf", tmp_path / "q.gguf", kind)
    assert {i.kind for i in gguf_file.GGUFFile(tmp_path / "q.gguf").tensors.values()} == {kind, "f32"}
    convert.main([str(tmp_path / "q.gguf"), str(tmp_path / "back")])
    before, after = (rundir.read_model_file(tmp_path / d)["model"] for d in ("run", "back"))
    # Q8_0: within half a step d = max|x| / 127. Q4_0: d = max|x| / 8 and q - 8 in -8..7, so a
    # value of the sign opposite to the largest one can be clipped by up to a whole step. Both
    # plus fp16's rounding of d.
    levels, steps = (127, 0.5) if kind == "q8_0" else (8, 1.0)
    for name, t in before.items():
        if t.dim() == 2:
            blocks = t.reshape(-1, 32)
            step = blocks.abs().amax(1, keepdim=True) / levels
            error = (after[name].reshape(-1, 32) - blocks).abs()
            assert (error <= step * (steps + levels * 2 ** -10) + 1e-7).all(), name
            assert error.max() > 0
        else:
            assert torch.equal(t, after[name])
    a, b = logits_of(tmp_path / "run", tok), logits_of(tmp_path / "back", tok)
    assert 0 < (a - b).abs().max() < tolerance * a.abs().max()


# ---- what cannot be imported, refused by name -------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"general.architecture": ("phi3", "string")}, "general.architecture 'phi3' is not supported"),
    ({"tokenizer.ggml.model": ("bert", "string")}, "tokenizer.ggml.model 'bert' is not supported"),
    ({"tokenizer.ggml.pre": ("tekken", "string")}, "tokenizer.ggml.pre 'tekken' is not supported"),
    ({"llama.rope.scaling.type": ("yarn", "string")}, "rope_scaling"),
    ({"llama.rope.dimension_count": (4, "uint32")}, "partial_rotary_factor"),
    ({"llama.block_count": (None, None)}, "no llama.block_count"),
])
def test_what_cannot_be_imported_is_refused_by_name(tmp_path, tok, change, message):
    our_run(tmp_path / "run", tok)
    convert.main([str(tmp_path / "run"), str(tmp_path / "m.gguf"), "--to", "gguf", "--type", "f32"])
    rewrite(tmp_path / "m.gguf", tmp_path / "bad.gguf", change=change)
    with pytest.raises(UserError, match=message) as info:
        convert.main([str(tmp_path / "bad.gguf"), str(tmp_path / "back")])
    assert str(info.value).startswith(str(tmp_path / "bad.gguf")) and "\n" not in str(info.value)
    assert not (tmp_path / "back").exists()


def test_every_pre_name_reads_as_the_split_the_exporter_writes_it_for(tok):
    for name, patterns, ignore in hf_tokenizer.GGUF_PRE:
        first = next((p, i) for n, p, i in hf_tokenizer.GGUF_PRE if n == name)
        t = bpe.Tokenizer(tok.vocab, [(a, b, m) for (a, b), m in zip(tok.merges, tok.merged)],
                          tok.added_list(), split=patterns, ignore_merges=ignore)
        metadata = {k: v for k, v, _ in hf_tokenizer.gguf_tokenizer(t, **chat_templates.export_tokens(t, True))}
        back = hf_tokenizer.from_gguf(metadata, "m.gguf")
        assert (back.split_patterns, back.ignore_merges) == first
        # names that only reading knows (starcoder: smollm's patterns) export as the first name
        exported = next(n for n, p, i in hf_tokenizer.GGUF_PRE if (p, i) == first)
        assert hf_tokenizer.gguf_pre(back) == exported
        assert back.encode(TEXT, allowed_special="all") == t.encode(TEXT, allowed_special="all")


@pytest.mark.parametrize("scores", ["merge order", "sentencepiece"])
def test_a_llama_tokenizer_gguf_imports_as_a_release(tmp_path, scores):
    """A Llama-2-style model (SentencePiece-style tokenizer, llama.cpp's "llama" tokenizer model)
    exported and imported back: the same weights and logits, a SentencePieceTokenizer with the
    ids the file's scores give (the export's own, or SentencePiece-like ones rewritten in)."""
    import sentencepiece_bpe
    from test_sentencepiece_bpe import OLD_NORMALIZER, mixed_texts, tokenizer_json
    spm = hf_tokenizer.from_hf(tokenizer_json(OLD_NORMALIZER))
    spm.add_special_tokens(bpe.SPECIAL_TOKENS)
    our_run(tmp_path / "run", spm)
    convert.main([str(tmp_path / "run"), str(tmp_path / "e.gguf"), "--to", "gguf", "--type", "f32"])
    pieces = gguf_file.GGUFFile(tmp_path / "e.gguf").metadata["tokenizer.ggml.tokens"]
    rewrite(tmp_path / "e.gguf", tmp_path / "m.gguf", change={} if scores == "merge order" else {
        "tokenizer.ggml.scores": ([float(len(p)) if i >= 259 else 0.0  # long pieces first
                                   for i, p in enumerate(pieces)], "float32")})
    expected = hf_tokenizer.from_gguf(gguf_file.GGUFFile(tmp_path / "m.gguf").metadata, "m")
    out = convert.main([str(tmp_path / "m.gguf"), str(tmp_path / "back"), "--max-seq-len", "64"])
    assert out["source"]["chat_template"] == "chatml"
    before, after = (rundir.read_model_file(tmp_path / d) for d in ("run", "back"))
    for name, t in before["model"].items():
        assert torch.equal(t, after["model"][name]), name
    tok = rundir.load_tokenizer(tmp_path / "back")
    assert isinstance(tok, sentencepiece_bpe.SentencePieceTokenizer) and tok.bos_added == [1]
    texts = mixed_texts(100, seed=21) + ["Hello ab", "<|im_start|>user\nHello<|im_end|>"]
    for text in texts:
        assert tok.encode(text, allowed_special="all") == expected.encode(text, allowed_special="all")
    differ = sum(tok.encode(t, allowed_special="all") != spm.encode(t, allowed_special="all")
                 for t in texts)
    assert differ > 2 if scores == "sentencepiece" else differ == 2  # "Hello": see below
    # (the merge order's scores: the file's "▁Hello" is a token no merge makes, which the score
    # rule still reaches, "▁Hel" + "lo", where the tokenizer.json's merge list gives "▁Hel" "lo")
    ids = torch.tensor([tok.encode("Hello ab abab", allowed_special="all")])
    with torch.no_grad():
        a = rundir.load_run(tmp_path / "run")[0](ids)[0]
        b = rundir.load_run(tmp_path / "back")[0](ids)[0]
    assert torch.equal(a, b)


def test_lazy_tensors_are_read_when_popped():
    calls = []
    lazy = gguf_import.LazyTensors({"a": lambda: calls.append("a") or 1, "b": lambda: 2})
    assert "a" in lazy and calls == [] and lazy.pop("a") == 1 and calls == ["a"]
    assert lazy["b"] == 2 and lazy.pop("zz", None) is None and list(lazy) == ["b"]
