"""gguf_file.py: GGUF v3, the one-file format of llama.cpp and Ollama, written by hand (a
companion file).

    from gguf_file import GGUFWriter
    w = GGUFWriter()
    w.add("general.architecture", "llama")                   # key-value metadata
    w.add_tensor("token_embd.weight", embedding, "q8_0")      # torch tensors, f32 | f16 | q8_0
    with open("model.gguf", "wb") as f:                       # rundir.atomic_write(path, w.write)
        w.write(f)

What is here is the format itself, the same for every model: the file's layout and its tables of
value types and ggml tensor types (shared by a reader and a writer), Q8_0 (llama.cpp's 8-bit blocks,
quantize and dequantize, bit for bit as llama.cpp writes them), the writer, and the facts of
llama.cpp a file must follow: its tensor names and the order of the rows its "llama" RoPE expects.
Which architecture, which keys and which tensors go into a file are convert.py's decisions.

Imported by convert.py (--to gguf). Imports nothing from the project: torch, tqdm and the standard
library.
"""
import math
import numbers
import re
import struct

import torch
from tqdm import tqdm


# ---------------------------------------------------------------------------------------------
# The format: GGUF v3, the file llama.cpp and Ollama load
#
# One file holds everything: the architecture's numbers and the tokenizer as key-value metadata,
# then the tensors. All little-endian:
#
#     "GGUF"                  4 bytes of magic
#     version                 uint32, 3
#     tensor count            uint64
#     metadata count          uint64
#     metadata, each:         key (a string), value type (uint32), value
#     tensor infos, each:     name (a string), n_dims (uint32), dims (uint64 each, ggml order),
#                             ggml type (uint32), offset (uint64, from the start of the data)
#     zero padding            up to a multiple of the alignment (32, or general.alignment)
#     data                    each tensor's bytes, padded with zeros to the alignment
#
# ggml's reader (gguf.cpp) insists that each offset is exactly the padded sizes of the tensors
# before it, in the order of the infos: the data is the tensors back to back, nothing else.
#
# A string is its length (uint64) then UTF-8 bytes, no terminating zero. An array value is its
# element type (uint32), its length (uint64), then the elements.
#
# ggml order: dims[0] is the axis that varies fastest in memory, so a torch tensor of shape
# [rows, cols] (C order, cols fastest) has dims [cols, rows]: the shape reversed.
# ---------------------------------------------------------------------------------------------
GGUF_VERSION = 3
GGUF_ALIGNMENT = 32  # the default; another one is written as general.alignment

GGUF_VALUE_TYPES = {  # name: (the type's number in the file, struct format of one value)
    "uint8": (0, "<B"), "int8": (1, "<b"), "uint16": (2, "<H"), "int16": (3, "<h"),
    "uint32": (4, "<I"), "int32": (5, "<i"), "float32": (6, "<f"), "bool": (7, "<?"),
    "string": (8, None), "array": (9, None), "uint64": (10, "<Q"), "int64": (11, "<q"),
    "float64": (12, "<d"),
}

# ggml tensor types: name -> (number in the file, values per block, bytes per block)
GGML_TYPES = {"f32": (0, 1, 4), "f16": (1, 1, 2), "q8_0": (8, 32, 34)}
GGML_MAX_DIMS = 4
GGML_MAX_NAME = 63  # bytes; llama.cpp keeps names in char[64] with a terminating zero
GGUF_FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}  # general.file_type: all f32, mostly f16, q8_0


def ggml_nbytes(shape, kind):
    """Bytes a tensor of this (torch) shape takes in ggml type kind."""
    _, per_block, block_bytes = GGML_TYPES[kind]
    return math.prod(shape) // per_block * block_bytes


def padding(n, alignment):
    """Zero bytes that take n up to the next multiple of alignment."""
    return bytes(-n % alignment)


# ---------------------------------------------------------------------------------------------
# Q8_0: 8-bit blocks
#
# Q8_0 cuts each row into blocks of 32 consecutive values and stores each block as 34 bytes:
#
#     d         fp16, the block's scale              2 bytes
#     q[0..31]  int8, the values divided by d       32 bytes        x[i] ~ d * q[i]
#
# The scale maps the largest magnitude in the block to 127: d = max|x| / 127, so every x / d lies
# in [-127, 127] and rounds to an int8. Rounding to the nearest integer moves x by at most d / 2:
#
#     |x - d * q| = d * |x / d - round(x / d)| <= d / 2
#
# and storing d in fp16 (11 significant bits) adds |q| * |d - fp16(d)| <= 127 * d * 2^-11 more.
# A row whose length is not a multiple of 32 cannot be cut into blocks: ggml_type_for keeps such
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


def dequantize_q8_0(data, shape):
    """The inverse, for tests and for reading back: Q8_0 blocks (a uint8 tensor, or bytes read
    from a file) -> float32 tensor of shape (the torch shape, last dim a multiple of 32)."""
    if not isinstance(data, torch.Tensor):
        data = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    blocks = data.reshape(-1, 34)                                         # [n_blocks, 34]
    d = blocks[:, :2].contiguous().view(torch.float16).to(torch.float32)  # [n_blocks, 1]
    q = blocks[:, 2:].contiguous().view(torch.int8).to(torch.float32)     # [n_blocks, 32]
    return (d * q).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Writing: metadata values, tensor data, the file
# ---------------------------------------------------------------------------------------------
def gguf_string(text):
    """A GGUF string: uint64 byte length, then the UTF-8 bytes."""
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def default_value_type(value):
    """The GGUF type a Python value is written as when the caller names none: str -> string,
    bool -> bool, int -> uint32 (llama.cpp's sizes and token ids), float -> float32."""
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):  # test bool first: True is also an int
        return "bool"
    if isinstance(value, numbers.Integral):
        return "uint32"
    if isinstance(value, numbers.Real):
        return "float32"
    raise ValueError(f"no GGUF type for {value!r}; name one")


def gguf_value(value, kind=None):
    """A metadata value -> bytes: its type (uint32), then the value. kind names the type
    ('uint32', 'float32', 'string', ...); for a list, it names the type of the elements, which
    becomes an array: type 9, element type, uint64 count, elements.
        gguf_value(8, "uint32")         -> 04 00 00 00 | 08 00 00 00
        gguf_value(["a", "bc"])         -> 09 00 00 00 | 08 00 00 00 | 02 00 00 00 00 00 00 00
                                           | 01 00.. 00 61 | 02 00.. 00 62 63
    """
    if isinstance(value, (list, tuple)):
        if not value and kind is None:
            raise ValueError("an empty GGUF array needs its element type")
        kind = kind or default_value_type(value[0])
        if kind not in GGUF_VALUE_TYPES or kind == "array":
            raise ValueError(f"GGUF arrays of {kind!r} are not written here")
        number = GGUF_VALUE_TYPES[kind][0]
        items = b"".join(gguf_scalar(v, kind) for v in value)
        return struct.pack("<IIQ", GGUF_VALUE_TYPES["array"][0], number, len(value)) + items
    kind = kind or default_value_type(value)
    if kind not in GGUF_VALUE_TYPES or kind == "array":
        raise ValueError(f"unknown GGUF value type {kind!r}")
    return struct.pack("<I", GGUF_VALUE_TYPES[kind][0]) + gguf_scalar(value, kind)


def gguf_scalar(value, kind):
    """One value of a known type, without its type number."""
    if kind == "string":
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not a string")
        return gguf_string(value)
    try:
        return struct.pack(GGUF_VALUE_TYPES[kind][1], value)
    except struct.error as e:  # out of range, or not a number
        raise ValueError(f"{value!r} does not fit GGUF type {kind}: {e}") from None


def ggml_type_for(shape, wanted):
    """The ggml type a tensor is written as, given the type wanted for the model's matrices
    ('f32', 'f16' or 'q8_0'). As llama.cpp's converter does: a vector (norm weights, biases)
    stays f32, and Q8_0 falls back to f16 for rows that are not a multiple of 32 values."""
    if wanted not in GGML_TYPES:
        raise ValueError(f"unknown ggml type {wanted!r} (f32, f16 or q8_0)")
    if len(shape) <= 1:
        return "f32"
    if wanted == "q8_0" and shape[-1] % 32:
        return "f16"
    return wanted


def ggml_chunks(tensor, kind, chunk=1 << 22):
    """A tensor's data in ggml type kind, as numpy uint8 chunks of at most `chunk` values each, so
    converting a big (memory-mapped) tensor never holds a second full copy of it. chunk is a
    multiple of 32 and a Q8_0 row a multiple of 32, so no block straddles two chunks."""
    flat = tensor.detach().reshape(-1)
    for start in range(0, flat.numel(), chunk):
        part = flat[start:start + chunk].to(torch.float32)
        if kind == "f16":
            part = part.to(torch.float16)  # round to nearest even, as ggml and numpy do
        elif kind == "q8_0":
            part = quantize_q8_0(part)
        yield part.contiguous().view(torch.uint8).numpy()


class GGUFWriter:
    """Collects metadata and tensors, then writes one GGUF v3 file:

        w = GGUFWriter()
        w.add("general.architecture", "llama")
        w.add("llama.block_count", 8, "uint32")
        w.add("tokenizer.ggml.tokens", ["<s>", "a", "b"])        # an array of strings
        w.add_tensor("token_embd.weight", embedding, "q8_0")    # a torch tensor, torch shape
        rundir.atomic_write("model.gguf", w.write)              # w.write(f): an open file

    Tensors are kept as given (memory-mapped views are fine) and converted one at a time while
    the file is written. Metadata and tensors are written in the order they were added."""

    def __init__(self, alignment=GGUF_ALIGNMENT):
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"the GGUF alignment must be a power of two, not {alignment}")
        self.alignment = alignment
        self.metadata = {}  # key -> encoded value (type and value)
        self.tensors = {}   # name -> (tensor, ggml type name)
        if alignment != GGUF_ALIGNMENT:
            self.add("general.alignment", alignment, "uint32")

    def add(self, key, value, kind=None):
        """One metadata key; kind as in gguf_value (default: str, bool, int -> uint32, float)."""
        try:
            self.metadata[key] = gguf_value(value, kind)
        except ValueError as e:
            raise ValueError(f"GGUF key {key}: {e}") from None

    def add_tensor(self, name, tensor, kind="f16"):
        """One tensor, written as ggml_type_for(its shape, kind); returns the type chosen."""
        if name in self.tensors or len(name.encode("utf-8")) > GGML_MAX_NAME:
            raise ValueError(f"tensor name {name!r} is taken or longer than {GGML_MAX_NAME} bytes")
        if not 1 <= tensor.dim() <= GGML_MAX_DIMS or not tensor.is_floating_point():
            raise ValueError(f"tensor {name!r}: GGUF takes float tensors of 1 to 4 dims here")
        self.tensors[name] = (tensor, ggml_type_for(tuple(tensor.shape), kind))
        return self.tensors[name][1]

    def header(self):
        """Everything before the data: magic, counts, metadata, tensor infos (unpadded)."""
        parts = [b"GGUF", struct.pack("<IQQ", GGUF_VERSION, len(self.tensors), len(self.metadata))]
        for key, value in self.metadata.items():
            parts += [gguf_string(key), value]
        offset = 0
        for name, (tensor, kind) in self.tensors.items():
            dims = tuple(reversed(tensor.shape))  # ggml order: the fastest-varying axis first
            parts += [gguf_string(name), struct.pack("<I", len(dims)),
                      struct.pack(f"<{len(dims)}Q", *dims),
                      struct.pack("<IQ", GGML_TYPES[kind][0], offset)]
            nbytes = ggml_nbytes(tensor.shape, kind)
            offset += nbytes + len(padding(nbytes, self.alignment))
        return b"".join(parts)

    def write(self, f, name="GGUF"):
        """Write the file into the open binary file f, with a progress bar named `name`. Callers
        write through rundir.atomic_write (temporary file, fsync, rename), so a failed export never
        leaves half a file under the real name."""
        header = self.header()
        total = sum(ggml_nbytes(t.shape, kind) for t, kind in self.tensors.values())
        f.write(header + padding(len(header), self.alignment))
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"write {name}",
                  disable=total < 1 << 24) as bar:  # no bar for a file written in a blink
            for tensor, kind in self.tensors.values():
                written = 0
                for chunk in ggml_chunks(tensor, kind):
                    f.write(chunk)
                    written += chunk.nbytes
                    bar.update(chunk.nbytes)
                assert written == ggml_nbytes(tensor.shape, kind)
                f.write(padding(written, self.alignment))


# ---------------------------------------------------------------------------------------------
# llama.cpp's names and layouts
#
# llama.cpp knows a tensor by its own name (blk.N.attn_q.weight), not transformers' (as gguf-py's
# tensor_mapping.py has it, for its converter). The table maps the names inside a block and at the
# top of the model as our run directories hold them: transformers' Llama names without "model.",
# and GPT-2's. The architecture, its metadata and which tensors to write are the converter's to
# decide; these are facts of llama.cpp, the same whatever writes or reads the file.
# ---------------------------------------------------------------------------------------------
GGUF_BLOCK = {  # our name inside layers.N / transformer.h.N -> llama.cpp's inside blk.N
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
GGUF_TOP = {"embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output",
            "transformer.wte": "token_embd", "transformer.wpe": "position_embd",
            "transformer.ln_f": "output_norm"}


def gguf_name(ours):
    """Our tensor name -> llama.cpp's: layers.3.self_attn.q_proj.weight -> blk.3.attn_q.weight."""
    stem, _, kind = ours.rpartition(".")
    match = re.fullmatch(r"(?:layers|transformer\.h)\.(\d+)\.(.+)", stem)
    if match:
        return f"blk.{match[1]}.{GGUF_BLOCK[match[2]]}.{kind}"
    return f"{GGUF_TOP[stem]}.{kind}"


def rotary_pairs_adjacent(w, n_heads):
    """Permute the rows of q_proj / k_proj (or their biases) for llama.cpp's "llama" RoPE. Within a
    head of d rows, ours pairs row i with row i + d/2; llama.cpp pairs rows 2i and 2i+1. Row
    (i, half h) moves to 2i + h: [a0 a1 .. | b0 b1 ..] -> [a0 b0 a1 b1 ..], so every pair is
    rotated by the same angle as before and the attention scores do not change."""
    d = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, d // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
