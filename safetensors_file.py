"""safetensors_file.py: the weights of a transformers directory, read and written by hand (a
companion file).

    from safetensors_file import read_weights, write_safetensors
    tensors = read_weights("path/to/transformers-dir")    # {name: tensor}, memory-mapped
    with open("model.safetensors", "wb") as f:            # rundir.atomic_write(path, ...) in use
        write_safetensors(f, tensors)

A release keeps its weights in model.safetensors, in shards named by model.safetensors.index.json,
or (older ones) in pytorch_model.bin, a torch.save pickle. This file reads all three and writes the
first, with no library: the safetensors format is a JSON header and raw bytes, small enough to
write from its specification. Every problem with a file is one UserError naming the file and, where
there is one, the tensor. read_json reads the JSON files beside the weights (the index,
config.json) with the same care.

Imported by convert.py (import and export) and download.py (checking what the hub sent). Imports
only bpe.py's UserError, the project's one error type.
"""
import json
import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from bpe import UserError


# ---------------------------------------------------------------------------------------------
# The format, and reading one file
#
# A .safetensors file is three parts, all little-endian:
#
#     [8 bytes]  N, the header's length, an unsigned 64-bit integer
#     [N bytes]  the header, a JSON object (UTF-8), maybe padded with spaces:
#                {"__metadata__": {"format": "pt"},                      (optional, str -> str)
#                 "model.embed_tokens.weight": {"dtype": "BF16", "shape": [151936, 896],
#                                               "data_offsets": [0, 272269312]}, ...}
#     [rest]     the data: each tensor's bytes, row-major (C order), at data_offsets =
#                [begin, end) counted from the first byte after the header
#
# Nothing else: no pickle, so loading a file cannot run code (torch.load's old danger).
# ---------------------------------------------------------------------------------------------
SAFETENSORS_DTYPES = {  # the header's dtype name -> torch dtype (bytes per value: dtype.itemsize)
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8,
    "BOOL": torch.bool,
}
SAFETENSORS_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
MAX_HEADER = 100_000_000  # the reference library's limit: a larger N means a damaged file


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header, checked: where its bytes are in the data part."""
    dtype: torch.dtype
    shape: tuple
    begin: int
    end: int


def read_safetensors_header(path):
    """Read and check a safetensors header -> ({name: TensorEntry}, metadata dict, data_start).
    data_start is the file offset of the data part (8 + N). Every problem is a UserError naming
    the file and, where there is one, the tensor."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise UserError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", prefix)
        if n < 2 or n > MAX_HEADER or 8 + n > size:
            raise UserError(f"{path}: not a safetensors file (header length {n}, "
                            f"file {size} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise UserError(f"{path}: safetensors __metadata__ is not an object of strings")
    data_size = size - 8 - n
    entries = {name: check_tensor_entry(path, name, entry, data_size)
               for name, entry in header.items()}
    check_no_overlap(path, entries)
    return entries, metadata, 8 + n


def check_tensor_entry(path, name, entry, data_size):
    """One header entry -> TensorEntry, or a UserError saying what is wrong with it."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise UserError(f"{where}: needs dtype, shape and data_offsets")
    dtype = SAFETENSORS_DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise UserError(f"{where}: unknown dtype {entry['dtype']!r}")
    shape, offsets = entry["shape"], entry["data_offsets"]

    def is_count(x):  # JSON true/false would pass isinstance(x, int): bool is a subclass of int
        return type(x) is int and x >= 0
    if not isinstance(shape, list) or not all(is_count(d) for d in shape):
        raise UserError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(is_count, offsets)):
        raise UserError(f"{where}: data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    if not begin <= end <= data_size:
        raise UserError(f"{where}: data_offsets {offsets} lie outside the {data_size} bytes of "
                        f"data (a truncated file?)")
    if end - begin != math.prod(shape) * dtype.itemsize:
        raise UserError(f"{where}: {end - begin} bytes for shape {shape} of {entry['dtype']}, "
                        f"which needs {math.prod(shape) * dtype.itemsize}")
    return TensorEntry(dtype, tuple(shape), begin, end)


def check_no_overlap(path, entries):
    """Two tensors must not share bytes: sorted by where they begin, each ends before the next."""
    spans = sorted((e.begin, e.end, name) for name, e in entries.items() if e.end > e.begin)
    for (_, end, name), (begin, _, other) in zip(spans, spans[1:]):
        if begin < end:
            raise UserError(f"{path}: tensors {name!r} and {other!r} overlap in the data")


def read_safetensors(path):
    """A .safetensors file -> ({name: torch.Tensor}, metadata), without reading the data.

    Each tensor is a view of a memory map of its own bytes in the file: the operating system reads
    a page from disk the first time it is touched (and may drop it again under memory pressure).
    Nothing is copied, and an importer that converts the tensors one by one, dropping each source
    tensor once converted, never holds more than one of them beyond what it has converted.

    Lifetime: a tensor (and every view of it) keeps its mapping alive; the mapping is unmapped
    when the last of them is freed, never before. It is a copy-on-write mapping: writing into a
    tensor changes that tensor only, never the file. Replacing the file (a rename, as every writer
    here does) is safe while tensors live; truncating it in place is not. Values are read as
    little-endian: the byte order of every machine torch runs on today."""
    entries, metadata, data_start = read_safetensors_header(path)
    tensors = {}
    with open(path, "rb") as f:  # a mapping stays valid after the file is closed
        for name, e in entries.items():
            tensors[name] = map_tensor(f, data_start + e.begin, data_start + e.end, e)
    return tensors, metadata


def map_tensor(f, start, end, entry):
    """The bytes [start, end) of file f as a tensor of entry's dtype and shape, memory-mapped."""
    if start == end:
        return torch.empty(entry.shape, dtype=entry.dtype)
    first_page = start - start % mmap.ALLOCATIONGRANULARITY  # a mapping starts on a page
    mapping = mmap.mmap(f.fileno(), end - first_page, access=mmap.ACCESS_COPY, offset=first_page)
    if start % entry.dtype.itemsize:  # misaligned (other writers do not pad): copy it, aligned
        raw = torch.frombuffer(mapping, dtype=torch.uint8, count=end - start,
                               offset=start - first_page)
        return raw.clone().view(entry.dtype).view(entry.shape)
    count = (end - start) // entry.dtype.itemsize
    # frombuffer keeps a reference to the mapping: it lives as long as the tensor does
    flat = torch.frombuffer(mapping, dtype=entry.dtype, count=count, offset=start - first_page)
    return flat.view(entry.shape)


# ---------------------------------------------------------------------------------------------
# A transformers directory's weights: one file, shards named by an index, or the older pickle
# ---------------------------------------------------------------------------------------------
SAFETENSORS_INDEX = "model.safetensors.index.json"


def read_json(path, what="file"):
    """A JSON object from path, or a UserError (an HTML error page saved as JSON says so)."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        start = path.read_bytes()[:40]
        raise UserError(f"{path}: {what} is not JSON ({e}; it starts {start!r})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: {what} is not a JSON object")
    return value


def read_weight_map(index_path):
    """model.safetensors.index.json -> its weight_map {tensor name: shard file}, checked."""
    index = read_json(index_path, "safetensors index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise UserError(f"{index_path}: weight_map is not an object of tensor -> shard file")
    for shard in set(weight_map.values()):
        # a shard is a file beside the index: a name like ../../x must not reach outside it
        if Path(shard).name != shard or shard in (".", ".."):
            raise UserError(f"{index_path}: shard name {shard!r} is not a plain file name")
    return weight_map


def read_safetensors_index(index_path):
    """A sharded checkpoint -> {name: torch.Tensor} (memory-mapped views, as read_safetensors).
    Every tensor the weight_map names must be in the shard it names; the weight_map is the list
    of the model's tensors, so anything else a shard may hold is left out."""
    index_path = Path(index_path)
    weight_map = read_weight_map(index_path)
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        if not (index_path.parent / shard).exists():
            raise UserError(f"{index_path}: names shard {shard}, which is missing")
        in_shard, _ = read_safetensors(index_path.parent / shard)
        for name in [n for n, s in weight_map.items() if s == shard]:
            if name not in in_shard:
                raise UserError(f"{index_path}: tensor {name!r} is not in {shard}, the shard "
                                f"its weight_map names")
            tensors[name] = in_shard[name]
    return tensors


def load_pytorch_bin(path):
    """pytorch_model.bin (the format before safetensors: a torch.save pickle) -> {name: tensor}.
    weights_only=True: unpickling a downloaded file must never run its code. mmap=True maps the
    tensors like read_safetensors does; files from torch < 1.6 cannot be mapped and are read."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a damaged or malicious file
        raise UserError(f"{path}: cannot be loaded ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a state dict of tensors")
    return state


def read_weights(folder):
    """The weights of a transformers directory -> {name: tensor}: model.safetensors, else the
    shards of model.safetensors.index.json, else pytorch_model.bin."""
    folder = Path(folder)
    if (folder / "model.safetensors").exists():
        return read_safetensors(folder / "model.safetensors")[0]
    if (folder / SAFETENSORS_INDEX).exists():
        return read_safetensors_index(folder / SAFETENSORS_INDEX)
    if (folder / "pytorch_model.bin").exists():
        return load_pytorch_bin(folder / "pytorch_model.bin")
    raise UserError(f"{folder}: no weights (model.safetensors, {SAFETENSORS_INDEX} "
                    f"or pytorch_model.bin)")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def write_safetensors(f, tensors, metadata=None):
    """{name: torch.Tensor} -> a .safetensors file, into the open binary file f. Like json.dump,
    it writes where it is told: callers write through rundir.atomic_write (temporary file, fsync,
    rename), so a failed write never leaves half a file under the real name.

    Tensors are laid out by element size, largest first, then by name: every tensor then starts
    at a multiple of its own element size (the header is padded with spaces to a multiple of 8),
    so a reader can map it without copying. Two names that share storage (a tied embedding and
    output head) are written twice, as two separate tensors: the reference library refuses such
    input instead, and transformers usually leaves the tied `lm_head.weight` out of the file and
    sets "tie_word_embeddings": true in config.json. Which names to write is the caller's choice."""
    metadata = {"format": "pt", **(metadata or {})}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError("safetensors metadata must map strings to strings")
    names = sorted(tensors, key=lambda name: (-tensors[name].dtype.itemsize, name))
    header, offset = {"__metadata__": metadata}, 0
    for name in names:
        t = tensors[name]
        if t.dtype not in SAFETENSORS_NAMES:
            raise ValueError(f"tensor {name!r}: safetensors has no dtype for {t.dtype}")
        nbytes = t.numel() * t.dtype.itemsize
        header[name] = {"dtype": SAFETENSORS_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # 8 + len(raw) is then a multiple of 8: the data is aligned
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for name in names:
        f.write(tensor_bytes(tensors[name]))


def tensor_bytes(t):
    """A tensor's values as raw bytes in C order (a numpy view, no copy when t is contiguous)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
