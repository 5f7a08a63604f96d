"""gguf_file.py: GGUF v3, the one-file format of llama.cpp and Ollama, written and read by hand
(a companion file).

    from gguf_file import GGUFFile, GGUFWriter
    w = GGUFWriter()
    w.add("general.architecture", "llama")                   # key-value metadata
    w.add_tensor("token_embd.weight", embedding, "q8_0")      # torch tensors, f32 | f16 | q8_0
    with open("model.gguf", "wb") as f:                       # rundir.atomic_write(path, w.write)
        w.write(f)
    g = GGUFFile("model.gguf")                                # the header; the data memory-mapped
    g.metadata["general.architecture"], g.tensor("token_embd.weight")    # "llama", float32

What is here is the format itself, the same for every model: the file's layout and its table of
value types (shared by the reader and the writer), the writer, the reader, and the facts of
llama.cpp a file must follow: its tensor names, the order of the rows its "llama" RoPE expects,
and how it holds RoPE scaling.
The tensor types (F16, Q8_0, Q4_K, ...) and how each is decoded are gguf_quants.py's. Which
architecture, which keys and which tensors go into a file are convert.py's decisions, and what a
file read back means as a model is gguf_import.py's.

Imported by convert.py (--to gguf) and gguf_import.py. Imports gguf_quants.py (the tensor types),
minimind.py (RoPE scaling's frequencies) and bpe.py (UserError): numpy, torch, tqdm and the
standard library.
"""
import collections
import numbers
import re
import struct

import numpy as np
import torch
from tqdm import tqdm

import minimind
from bpe import UserError
from gguf_quants import GGML_TYPE_NAMES, GGML_TYPES, dequantize, ggml_nbytes, quantize_q8_0


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

GGML_MAX_DIMS = 4
GGML_MAX_NAME = 63  # bytes; llama.cpp keeps names in char[64] with a terminating zero
GGUF_FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}  # general.file_type: all f32, mostly f16, q8_0


def padding(n, alignment):
    """Zero bytes that take n up to the next multiple of alignment."""
    return bytes(-n % alignment)


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
    if wanted not in GGUF_FILE_TYPES:
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
    if isinstance(tensor, Blocks):
        yield tensor.data
        return
    flat = tensor.detach().reshape(-1)
    for start in range(0, flat.numel(), chunk):
        part = flat[start:start + chunk].to(torch.float32)
        if kind == "f16":
            part = part.to(torch.float16)  # round to nearest even, as ggml and numpy do
        elif kind == "q8_0":
            part = quantize_q8_0(part)
        yield part.contiguous().view(torch.uint8).numpy()


class Blocks:
    """Tensor data already in a ggml type (the bytes of its blocks), written as it is."""

    def __init__(self, data, shape, kind):
        self.data, self.shape = np.frombuffer(bytes(data), dtype=np.uint8), tuple(shape)
        if kind not in GGML_TYPES or shape[-1] % GGML_TYPES[kind][1] \
                or self.data.size != ggml_nbytes(shape, kind):
            raise ValueError(f"{self.data.size} bytes are no {kind} tensor of shape {shape}")


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

    def add_blocks(self, name, data, shape, kind):
        """One tensor given as the bytes of its blocks in ggml type kind (any type gguf_quants.py
        reads), torch shape `shape`: for files of the types this writer does not quantize."""
        if name in self.tensors or not 1 <= len(shape) <= GGML_MAX_DIMS:
            raise ValueError(f"tensor name {name!r} is taken, or {shape} has no 1 to 4 dims")
        self.tensors[name] = (Blocks(data, shape, kind), kind)

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
# Reading: the header parsed, the data memory-mapped
#
# The reader walks the same layout. It reads versions 2 and 3 (the same layout; version 1 had
# 32-bit counts), every value type, arrays of arrays, and checks what a damaged file can get
# wrong: a count or a length past the end of the file, a value type or tensor type it does not
# know, tensor data outside the file. The data is a numpy.memmap: a tensor is read from disk when
# it is decoded, so opening a file costs its header only and an import builds the float model one
# tensor at a time.
# ---------------------------------------------------------------------------------------------
GGUF_READ_VERSIONS = (2, 3)
VALUE_TYPE_NAMES = {number: name for name, (number, _) in GGUF_VALUE_TYPES.items()}
TensorInfo = collections.namedtuple("TensorInfo", "name shape kind offset nbytes")  # torch shape;
# kind a key of gguf_quants.GGML_TYPES; offset of the first byte from the start of the file


class GGUFFile:
    """A GGUF file opened for reading:

        g = GGUFFile("model.gguf")
        g.metadata["llama.block_count"]    # 30: every key, its value in Python (arrays as lists)
        g.value_types["llama.block_count"] # "uint32" (an array's: its elements' type)
        g.tensors["token_embd.weight"]     # TensorInfo(name, shape, kind, offset, nbytes)
        g.tensor("token_embd.weight")      # float32 torch tensor of the torch shape, dequantized

    Anything wrong with the file is one UserError naming it."""

    def __init__(self, path):
        self.path, self.pos = str(path), 0
        try:
            self.data = np.memmap(path, dtype=np.uint8, mode="r")
        except ValueError:  # numpy cannot map an empty file
            raise self.error("truncated: the file is empty") from None
        except OSError as e:
            raise self.error(f"cannot read it: {e.strerror or e}") from None
        self.view = memoryview(self.data)
        magic = bytes(self.take(4))
        if magic != b"GGUF":
            raise self.error(f"not a GGUF file: it starts with {magic!r}, not b'GGUF'")
        (self.version,) = self.unpack("<I")
        if self.version not in GGUF_READ_VERSIONS:
            raise self.error(f"GGUF version {self.version} is not supported (2 and 3 are"
                             + ("; this looks like a big-endian file)" if self.version >= 1 << 16
                                else ")"))
        n_tensors, n_keys = self.unpack("<QQ")
        self.metadata, self.value_types = {}, {}  # key -> value; key -> GGUFWriter.add's kind
        for _ in range(n_keys):
            key = self.string()
            (number,) = self.unpack("<I")
            self.metadata[key] = self.value(number)
            self.value_types[key] = self.last_kind
        self.alignment = self.metadata.get("general.alignment", GGUF_ALIGNMENT)
        if type(self.alignment) is not int or self.alignment <= 0 \
                or self.alignment & (self.alignment - 1):
            raise self.error(f"general.alignment {self.alignment!r} is not a power of two")
        infos = [self.tensor_info() for _ in range(self.check_count(n_tensors, 24))]
        start = self.pos + len(padding(self.pos, self.alignment))  # the data
        self.tensors = {}
        for name, dims, number, offset in infos:
            kind = GGML_TYPE_NAMES.get(number, f"number {number}")
            if kind not in GGML_TYPES:
                raise self.error(f"tensor {name}: ggml type {kind} is not one this reader "
                                 f"decodes ({', '.join(GGML_TYPES)})")
            if dims[0] % GGML_TYPES[kind][1] or name in self.tensors:
                raise self.error(f"damaged: tensor {name} is listed twice or its rows of "
                                 f"{dims[0]} values cannot be {kind} blocks")
            shape = tuple(reversed(dims))
            info = TensorInfo(name, shape, kind, start + offset, ggml_nbytes(shape, kind))
            if offset % self.alignment or info.offset + info.nbytes > len(self.data):
                raise self.error(f"truncated or damaged: tensor {name} ({info.nbytes} bytes at "
                                 f"{info.offset}) lies outside the file's {len(self.data)} bytes")
            self.tensors[name] = info

    def error(self, why):
        return UserError(f"{self.path}: {why}")

    def take(self, n):
        """The next n bytes of the header (a memoryview), or the error a cut-off file earns."""
        if n > len(self.view) - self.pos:
            raise self.error(f"truncated or damaged: {n} bytes wanted at byte {self.pos} of "
                             f"{len(self.view)}")
        self.pos += n
        return self.view[self.pos - n:self.pos]

    def unpack(self, fmt):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def check_count(self, count, least):
        """A count read from the file, each item taking at least `least` bytes: more than the
        rest of the file holds means a damaged file, caught before looping over it."""
        if count * least > len(self.view) - self.pos:
            raise self.error(f"truncated or damaged: {count} items at byte {self.pos} do not fit")
        return count

    def string(self):
        data = self.take(self.unpack("<Q")[0])
        try:
            return str(data, "utf-8")
        except UnicodeDecodeError:
            raise self.error(f"damaged: the string at byte {self.pos - len(data)} is not "
                             f"UTF-8") from None

    def value(self, number):
        """One metadata value of value type `number`: a number, bool, string or list."""
        kind = VALUE_TYPE_NAMES.get(number)
        if kind is None:
            raise self.error(f"damaged: unknown metadata value type {number} at byte {self.pos}")
        self.last_kind = kind  # for an array: its elements' kind, the last one read
        if kind == "string":
            return self.string()
        if kind != "array":
            return self.unpack(GGUF_VALUE_TYPES[kind][1])[0]
        element, count = self.unpack("<IQ")
        self.last_kind = VALUE_TYPE_NAMES.get(element)
        fmt = GGUF_VALUE_TYPES.get(VALUE_TYPE_NAMES.get(element), (None, None))[1]
        if fmt is None:  # strings or arrays: one at a time
            return [self.value(element) for _ in range(self.check_count(count, 8))]
        size = struct.calcsize(fmt)  # numbers: all at once (49,152 token types, say)
        return np.frombuffer(self.take(self.check_count(count, size) * size),
                             dtype=np.dtype(fmt)).tolist()

    def tensor_info(self):
        name = self.string()
        (n_dims,) = self.unpack("<I")
        if not 1 <= n_dims <= GGML_MAX_DIMS:
            raise self.error(f"damaged: tensor {name} has {n_dims} dims")
        dims = self.unpack(f"<{n_dims}Q")
        number, offset = self.unpack("<IQ")
        return name, dims, number, offset

    def raw(self, name):
        """A tensor's bytes, as a uint8 view of the mapped file."""
        info = self.tensors[name]
        return self.data[info.offset:info.offset + info.nbytes]

    def tensor(self, name):
        """A tensor as float32, in torch's shape, decoded from whatever type the file holds."""
        info = self.tensors[name]
        return dequantize(self.raw(name), info.kind, info.shape)


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
    "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down",
    "mlp.gate": "ffn_gate_inp"}  # a mixture of experts' router (Qwen3-MoE, read only)
GPT2_BLOCK = {"ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"}
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


def our_name(theirs, gpt2=False):
    """llama.cpp's tensor name -> ours, the inverse of gguf_name, for GPT-2 or the Llama family
    (which share some of llama.cpp's names); None for a name neither has."""
    stem, _, kind = theirs.rpartition(".")
    match = re.fullmatch(r"blk\.(\d+)\.(.+)", stem)
    if match:
        ours = [o for o, t in GGUF_BLOCK.items() if t == match[2] and (o in GPT2_BLOCK) == gpt2]
        prefix = f"transformer.h.{match[1]}." if gpt2 else f"layers.{match[1]}."
    else:
        ours = [o for o, t in GGUF_TOP.items() if t == stem
                and (o.startswith("transformer.") == gpt2 or o == "lm_head")]
        prefix = ""
    return f"{prefix}{ours[0]}.{kind}" if ours else None


def rotary_pairs_adjacent(w, n_heads):
    """Permute the rows of q_proj / k_proj (or their biases) for llama.cpp's "llama" RoPE. Within a
    head of d rows, ours pairs row i with row i + d/2; llama.cpp pairs rows 2i and 2i+1. Row
    (i, half h) moves to 2i + h: [a0 a1 .. | b0 b1 ..] -> [a0 b0 a1 b1 ..], so every pair is
    rotated by the same angle as before and the attention scores do not change."""
    d = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, d // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def rotary_pairs_halved(w, n_heads):
    """The inverse, for reading a "llama" file: [a0 b0 a1 b1 ..] -> [a0 a1 .. | b0 b1 ..]."""
    d = w.shape[0] // n_heads
    return w.reshape(n_heads, d // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def add_rope(w, arch, theta, head_dim, scaling):
    """RoPE's base, always (llama.cpp's default, 10000, is not ours), and a long-context RoPE
    (MiniMindConfig.rope_scaling) the way llama.cpp's own converter writes it. "linear": two keys,
    the type and the factor every frequency is divided by. "llama3" has no key: a float32 tensor
    rope_freqs.weight, [head_dim/2], the number llama.cpp divides each pair's frequency by (factor
    for the slowest pairs, 1 for the fastest; gguf_import reads it back)."""
    w.add(f"{arch}.rope.freq_base", theta, "float32")
    if (scaling or {}).get("rope_type") == "linear":
        w.add(f"{arch}.rope.scaling.type", "linear")
        w.add(f"{arch}.rope.scaling.factor", scaling["factor"], "float32")
    elif scaling:
        if arch != "llama":  # (llama-cpp-python 0.3.36 will not load the file: tested)
            raise UserError(f"llama.cpp reads Llama 3's RoPE scaling for its llama architecture "
                            f"only, and this model goes out as {arch}; export it with --to hf")
        plain = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        w.add_tensor("rope_freqs.weight", plain / minimind.scale_frequencies(plain, scaling), "f32")
