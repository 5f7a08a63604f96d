"""gguf_quants.py: llama.cpp's tensor types, decoded by hand: the floats (F32, F16, BF16) and the
quantized block formats (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the K-quants Q2_K, Q3_K, Q4_K, Q5_K,
Q6_K that Ollama's files use), with Q8_0's quantizer for the writer (a companion file).

    from gguf_quants import dequantize, quantize_q8_0
    w = dequantize(raw, "q4_1", (1536, 576))   # bytes or uint8 array -> float32 torch tensor
    blocks = quantize_q8_0(w)                  # uint8 [n_blocks, 34], as llama.cpp writes them

A quantized tensor is cut, row by row, into blocks of 32 (or, for the K-quants, 256) consecutive
values, and each block is stored as a few scales and one small integer per value. Each format is
decoded below where its layout is explained, vectorised over all blocks at once with numpy, and
in the order of ggml's float32 operations (dequantize_row_* in ggml-quants.c): the values are
bit for bit those llama.cpp and gguf-py compute, which the tests check.

Imported by gguf_file.py (the type table; Q8_0 for the writer) and gguf_import.py (reading).
Imports nothing from the project: numpy, torch.
"""
import math

import numpy as np
import torch

# ggml's tensor types: name -> (number in the file, values per block, bytes per block). These are
# the ones decoded here; GGML_TYPE_NAMES names the others, so a refusal can say which one it met.
GGML_TYPES = {
    "f32": (0, 1, 4), "f16": (1, 1, 2), "bf16": (30, 1, 2), "q8_0": (8, 32, 34),
    "q4_0": (2, 32, 18), "q4_1": (3, 32, 20), "q5_0": (6, 32, 22), "q5_1": (7, 32, 24),
    "q2_k": (10, 256, 84), "q3_k": (11, 256, 110), "q4_k": (12, 256, 144),
    "q5_k": (13, 256, 176), "q6_k": (14, 256, 210)}
GGML_TYPE_NAMES = {number: name for name, (number, _, _) in GGML_TYPES.items()}
GGML_TYPE_NAMES.update({9: "q8_1", 15: "q8_k", 16: "iq2_xxs", 17: "iq2_xs", 18: "iq3_xxs",
                        19: "iq1_s", 20: "iq4_nl", 21: "iq3_s", 22: "iq2_s", 23: "iq4_xs",
                        24: "i8", 25: "i16", 26: "i32", 27: "i64", 28: "f64", 29: "iq1_m",
                        34: "tq1_0", 35: "tq2_0", 39: "mxfp4"})


def ggml_nbytes(shape, kind):
    """Bytes a tensor of this (torch) shape takes in ggml type kind."""
    _, per_block, block_bytes = GGML_TYPES[kind]
    return math.prod(shape) // per_block * block_bytes


# ---------------------------------------------------------------------------------------------
# Reading the fields of a block
#
# A block is a row of bytes; its fields are consecutive slices of that row. Scales are fp16 (one
# per block, or one per block and a minimum), small integers are packed several to a byte,
# lowest bits first.
# ---------------------------------------------------------------------------------------------
def fields(blocks, *widths):
    """Cut every block (a row of `blocks`) into fields of these byte widths."""
    out, start = [], 0
    for width in widths:
        out.append(blocks[:, start:start + width])
        start += width
    return out


def fp16(field):
    """A 2-byte field of every block -> float32 [n_blocks, 1]."""
    return np.ascontiguousarray(field).view(np.float16).astype(np.float32)


def bits(field, shifts, mask):
    """Small integers packed in bytes: [n, k] bytes -> [n, len(shifts), k], the s-th slice holding
    (byte >> shifts[s]) & mask. Which value lands where is each format's business."""
    shifts = np.asarray(shifts, dtype=np.uint8).reshape(1, -1, 1)
    return (field[:, None, :] >> shifts) & np.uint8(mask)


def nibbles(field):
    """Each byte holds two 4-bit values: [n, k] bytes -> [n, 2k], first every low nibble, then
    every high one (the order all of llama.cpp's 4-bit formats use within a group)."""
    return bits(field, (0, 4), 0xF).reshape(len(field), -1)


def high_bits(field, count):
    """The lowest `count` bits of a little-endian field, bit i of the whole field -> column i."""
    words = np.ascontiguousarray(field).view("<u4")                         # [n, 1]: Q5's qh
    return ((words >> np.arange(count, dtype=np.uint32)) & 1).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Floats, and the blocks of 32
#
#   F32    4 bytes a value. F16: IEEE half. BF16: the top 16 bits of a float32 (shift them back).
#   Q8_0   d (fp16), q[32] (int8):                          x = d * q
#   Q4_0   d, 16 bytes of 4-bit q (low nibbles are values 0..15, high nibbles 16..31):
#                                                           x = d * (q - 8)
#   Q4_1   d, m (fp16), the same 16 bytes:                  x = d * q + m
#   Q5_0   d, qh (32 bits: bit i is the 5th bit of value i), the same 16 bytes of low 4 bits:
#                                                           x = d * (q - 16)
#   Q5_1   d, m, qh, the 16 bytes:                          x = d * q + m
# The offset formats (Q4_1, Q5_1) store the minimum m instead of centring q on zero.
# ---------------------------------------------------------------------------------------------
def decode_f32(blocks):
    return np.ascontiguousarray(blocks).view(np.float32)


def decode_f16(blocks):
    return np.ascontiguousarray(blocks).view(np.float16).astype(np.float32)


def decode_bf16(blocks):
    halves = np.ascontiguousarray(blocks).view(np.uint16).astype(np.uint32)
    return (halves << 16).view(np.float32)


def decode_q8_0(blocks):
    d, q = fields(blocks, 2, 32)
    return fp16(d) * np.ascontiguousarray(q).view(np.int8).astype(np.float32)


def decode_q4_0(blocks):
    d, qs = fields(blocks, 2, 16)
    return fp16(d) * (nibbles(qs).astype(np.int8) - np.int8(8)).astype(np.float32)


def decode_q4_1(blocks):
    d, m, qs = fields(blocks, 2, 2, 16)
    return fp16(d) * nibbles(qs).astype(np.float32) + fp16(m)


def decode_q5_0(blocks):
    d, qh, qs = fields(blocks, 2, 4, 16)
    q = nibbles(qs) | (high_bits(qh, 32) << np.uint8(4))
    return fp16(d) * (q.astype(np.int8) - np.int8(16)).astype(np.float32)


def decode_q5_1(blocks):
    d, m, qh, qs = fields(blocks, 2, 2, 4, 16)
    q = nibbles(qs) | (high_bits(qh, 32) << np.uint8(4))
    return fp16(d) * q.astype(np.float32) + fp16(m)


# ---------------------------------------------------------------------------------------------
# The K-quants: super-blocks of 256 values
#
# A super-block has one fp16 scale d (and a minimum's scale dmin) and cuts its 256 values into
# sub-blocks of 16 or 32, each with its own small integer scale (and minimum), so the scales
# cost little and adapt to the values closely:
#
#   Q2_K  scales[16] (4-bit scale | 4-bit min each), qs[64] (2-bit), d, dmin; 16 sub-blocks of 16:
#             x = d * sc * q - dmin * m
#   Q3_K  hmask[32] (the 3rd bit), qs[64] (low 2 bits), scales[12] (16 6-bit scales), d;
#         16 sub-blocks of 16:   x = d * (sc - 32) * (q - 4), q's 3rd bit set meaning "no -4"
#   Q4_K  d, dmin, scales[12] (8 6-bit scales and 8 6-bit mins), qs[128] (4-bit); 8 sub-blocks
#         of 32:                 x = d * sc * q - dmin * m
#   Q5_K  d, dmin, scales[12], qh[32] (the 5th bit), qs[128]; 8 of 32: as Q4_K with 5-bit q
#   Q6_K  ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8), d; 16 of 16:
#             x = d * sc * (q - 32)
#
# The 2-bit values of a group of 32 bytes go out shift by shift: (byte >> 0) & 3 for 32 values,
# then >> 2, >> 4, >> 6; 4-bit values low nibbles first; a bit plane (hmask, qh) gives bit s of
# its 32 bytes to the s-th run of 32 values. ggml multiplies d by the sub-block's scale first,
# then by q, and subtracts dmin * m last; so do we, or the float32 results would differ.
# ---------------------------------------------------------------------------------------------
def decode_q2_k(blocks):
    scales, qs, d, dmin = fields(blocks, 16, 64, 2, 2)
    n = len(blocks)
    q = bits(qs.reshape(n * 2, 32), (0, 2, 4, 6), 3).reshape(n, 16, 16)  # 2 halves x 4 shifts
    scale = (fp16(d) * (scales & 0xF).astype(np.float32))[:, :, None]
    low = (fp16(dmin) * (scales >> 4).astype(np.float32))[:, :, None]
    return (scale * q.astype(np.float32) - low).reshape(n, 256)


def q3_k_scales(scales):
    """12 bytes -> 16 6-bit scales: scale i's low 4 bits are nibble i of bytes 0..7 (low nibbles
    first), its high 2 bits sit in byte 8 + i % 4 at bit 2 * (i // 4)."""
    low = nibbles(scales[:, :8])                                    # [n, 16]
    high = bits(scales[:, 8:], (0, 2, 4, 6), 3).reshape(len(scales), 16)
    return (low | (high << np.uint8(4))).astype(np.int8) - np.int8(32)


def decode_q3_k(blocks):
    hmask, qs, scales, d = fields(blocks, 32, 64, 12, 2)
    n = len(blocks)
    low = bits(qs.reshape(n * 2, 32), (0, 2, 4, 6), 3).reshape(n, 16, 16)
    high = bits(hmask, range(8), 1).reshape(n, 16, 16)
    q = low.astype(np.int8) - ((high ^ np.uint8(1)) << np.uint8(2)).astype(np.int8)
    scale = (fp16(d) * q3_k_scales(scales).astype(np.float32))[:, :, None]
    return (scale * q.astype(np.float32)).reshape(n, 256)


def k4_scales_and_mins(scales):
    """Q4_K's and Q5_K's 12 bytes -> 8 6-bit scales and 8 6-bit mins. Bytes 0-3 hold scales 0-3,
    bytes 4-7 mins 0-3 (low 6 bits each); bytes 8-11 hold scales 4-7 (low nibble) and mins 4-7
    (high nibble), whose top 2 bits are the spare top bits of bytes 0-3 and 4-7."""
    a, b, c = fields(scales, 4, 4, 4)
    sc = np.concatenate([a & 63, (c & 0xF) | ((a >> 6) << 4)], axis=1)
    m = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=1)
    return sc.astype(np.float32), m.astype(np.float32)


def k4_decode(d, dmin, scales, q):
    sc, m = k4_scales_and_mins(scales)
    return ((fp16(d) * sc)[:, :, None] * q.astype(np.float32)
            - (fp16(dmin) * m)[:, :, None]).reshape(len(q), 256)


def decode_q4_k(blocks):
    d, dmin, scales, qs = fields(blocks, 2, 2, 12, 128)
    q = bits(qs.reshape(-1, 32), (0, 4), 0xF).reshape(len(blocks), 8, 32)  # 4 groups x 2 nibbles
    return k4_decode(d, dmin, scales, q)


def decode_q5_k(blocks):
    d, dmin, scales, qh, qs = fields(blocks, 2, 2, 12, 32, 128)
    q = bits(qs.reshape(-1, 32), (0, 4), 0xF).reshape(len(blocks), 8, 32)
    q |= bits(qh, range(8), 1) << np.uint8(4)
    return k4_decode(d, dmin, scales, q)


def decode_q6_k(blocks):
    ql, qh, scales, d = fields(blocks, 128, 64, 16, 2)
    n = len(blocks)
    # each half of 128 values: 64 bytes of ql (nibble-major, then 2 runs of 32) and 32 of qh
    low = bits(ql.reshape(n * 2, 64), (0, 4), 0xF).reshape(n, 2, 4, 32)
    high = bits(qh.reshape(n * 2, 32), (0, 2, 4, 6), 3).reshape(n, 2, 4, 32)
    q = ((low | (high << np.uint8(4))).astype(np.int8) - np.int8(32)).reshape(n, 16, 16)
    scale = (fp16(d) * np.ascontiguousarray(scales).view(np.int8).astype(np.float32))
    return (scale[:, :, None] * q.astype(np.float32)).reshape(n, 256)


DECODERS = {"f32": decode_f32, "f16": decode_f16, "bf16": decode_bf16, "q8_0": decode_q8_0,
            "q4_0": decode_q4_0, "q4_1": decode_q4_1, "q5_0": decode_q5_0, "q5_1": decode_q5_1,
            "q2_k": decode_q2_k, "q3_k": decode_q3_k, "q4_k": decode_q4_k, "q5_k": decode_q5_k,
            "q6_k": decode_q6_k}


def dequantize(data, kind, shape, chunk=1 << 14):
    """The bytes of a tensor in ggml type kind (bytes, a uint8 torch tensor, or a uint8 numpy
    array such as a slice of a memory-mapped file) -> a float32 torch tensor of the torch shape
    `shape`. Decoded about 32 * chunk values at a time into the result, so the temporaries stay
    small whatever the tensor."""
    _, per_block, block_bytes = GGML_TYPES[kind]
    if isinstance(data, torch.Tensor):  # what quantize_q8_0 returns
        data = data.numpy()
    blocks = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    blocks = blocks.reshape(-1, block_bytes)
    out = np.empty((len(blocks), per_block), dtype=np.float32)
    step = max(1, chunk * 32 // per_block)  # about the same number of values per chunk
    for start in range(0, len(blocks), step):
        out[start:start + step] = DECODERS[kind](blocks[start:start + step]).reshape(-1, per_block)
    return torch.from_numpy(out).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Writing Q8_0
#
# The scale maps the largest magnitude in the block to 127: d = max|x| / 127, so every x / d lies
# in [-127, 127] and rounds to an int8. Rounding to the nearest integer moves x by at most d / 2:
#
#     |x - d * q| = d * |x / d - round(x / d)| <= d / 2
#
# and storing d in fp16 (11 significant bits) adds |q| * |d - fp16(d)| <= 127 * d * 2^-11 more.
# A row whose length is not a multiple of 32 cannot be cut into blocks: the writer keeps such
# tensors in f16, as llama.cpp's converter does.
#
# To be bit-for-bit what llama.cpp writes, we follow its reference quantizer (ggml-quants.c,
# quantize_row_q8_0_ref) step by step: d is computed in fp32, then its inverse id = 1 / d (0 for
# an all-zero block), each x * id in fp32, rounded half away from zero (C's roundf: 2.5 -> 3,
# -2.5 -> -3; torch.round would give 2, rounding half to even), and d is stored rounded to fp16.
# ---------------------------------------------------------------------------------------------
def round_half_away(x):
    """C's roundf on a float tensor: halves go away from zero. (floor(|x| + 0.5) would be wrong:
    in fp32, 0.49999997 + 0.5 rounds up to 1.0.) |x| - trunc(|x|) is exact, so this is too."""
    a = x.abs()
    whole = a.trunc()
    return torch.copysign(whole + (a - whole >= 0.5).to(x.dtype), x)


def quantize_q8_0(x):
    """A float tensor whose last dim is a multiple of 32 -> uint8 tensor [x.numel() / 32, 34]:
    for each block of 32 values, the fp16 scale d (2 bytes) then 32 int8 values."""
    if x.shape[-1] % 32:
        raise ValueError(f"Q8_0 needs rows of a multiple of 32 values, not {x.shape[-1]}")
    blocks = x.detach().to(torch.float32).reshape(-1, 32)         # [n_blocks, 32]
    d = blocks.abs().amax(dim=1, keepdim=True) / 127              # [n_blocks, 1]
    inverse = torch.where(d == 0, torch.zeros_like(d), 1 / d)     # an all-zero block: q = 0
    q = round_half_away(blocks * inverse).to(torch.int8)          # [n_blocks, 32], in [-127, 127]
    scale = d.to(torch.float16).view(torch.uint8)                 # [n_blocks, 2]
    return torch.cat([scale, q.view(torch.uint8)], dim=1)         # [n_blocks, 34]
