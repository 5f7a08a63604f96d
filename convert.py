"""convert.py: released models in, run directories out (book chapters 3 and 11).

    python convert.py hf:Qwen/Qwen2.5-0.5B out/qwen      # a model on the Hugging Face hub
    python convert.py path/to/transformers-dir out/name    # a transformers directory on disk
    python convert.py out/sft --to hf out/sft-hf           # a run directory -> transformers
    python convert.py out/sft --to gguf out/sft.gguf       # ... -> one GGUF file for llama.cpp

Chapter 3 takes a released model and makes it a run directory like any other, so eval.py, chat.py
and sft.py work on it; chapter 11 goes the other way, to the files other tools read. Both stand on
three file formats, each written here by hand from its specification, with no library:

  1. safetensors: how the hub stores weights. A JSON header says where each tensor's bytes are;
     we map the file into memory instead of reading it, so a 1 GB checkpoint costs no 1 GB copy.
  2. the hub: which files make a model, fetched over plain HTTP into a cache (uses section 1 to
     check what arrived).
  3. GGUF v3: the one-file format of llama.cpp and Ollama, and its Q8_0 8-bit quantizer.

Reading order: those three sections, then the architecture mapping (config.json <-> our models,
tensor names) and the command line. Runtime: numpy, torch, tqdm and the standard library.
"""
import json
import math
import mmap
import numbers
import os
import re
import struct
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import train
from train import UserError


# ---------------------------------------------------------------------------------------------
# 1. safetensors
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
    if (folder / "model.safetensors.index.json").exists():
        return read_safetensors_index(folder / "model.safetensors.index.json")
    if (folder / "pytorch_model.bin").exists():
        return load_pytorch_bin(folder / "pytorch_model.bin")
    raise UserError(f"{folder}: no weights (model.safetensors, model.safetensors.index.json "
                    f"or pytorch_model.bin)")


def write_safetensors(path, tensors, metadata=None):
    """{name: torch.Tensor} -> a .safetensors file, written atomically.

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

    def write(f):
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in names:
            f.write(tensor_bytes(tensors[name]))
    train.atomic_write(path, write)


def tensor_bytes(t):
    """A tensor's values as raw bytes in C order (a numpy view, no copy when t is contiguous)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


# ---------------------------------------------------------------------------------------------
# 2. The Hugging Face hub
#
# A model on the hub is a git repository of files, and every file has a plain HTTPS address:
#
#     {endpoint}/{owner}/{name}/resolve/{revision}/{file}
#     https://huggingface.co/Qwen/Qwen2.5-0.5B/resolve/main/config.json
#
# The endpoint comes from $HF_ENDPOINT (a mirror, or a test server), and $HF_TOKEN, when set, is
# sent as "Authorization: Bearer ..." for gated or private models: the same variables the
# huggingface_hub library reads. Large files answer with a redirect to a content server; the token
# is never sent there (train.download sends headers to the first address only).
#
# Files land in the cache as {cache}/hub/{owner}--{name}/{revision}/{file}, where {cache} is
# $SLM_CACHE or ~/.cache/slm. A revision is a branch, a tag or a commit; a branch is cached as it
# was when first fetched (fetch a commit id to pin a model; delete the folder to refresh).
# ---------------------------------------------------------------------------------------------
HUB_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json")
HUB_OPTIONAL = ("tokenizer_config.json", "generation_config.json")  # a 404 on these is fine
SAFETENSORS_INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class HubModel:
    """hf:OWNER/NAME@REVISION, parsed."""
    owner: str
    name: str
    revision: str = "main"

    def __str__(self):
        return f"hf:{self.owner}/{self.name}@{self.revision}"

    def url(self, file):
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        revision = urllib.parse.quote(self.revision, safe="")  # refs/pr/1 -> refs%2Fpr%2F1
        return f"{endpoint}/{self.owner}/{self.name}/resolve/{revision}/{file}"

    def cache_folder(self):
        revision = urllib.parse.quote(self.revision, safe="")  # one folder, whatever it holds
        return train.cache_dir() / "hub" / f"{self.owner}--{self.name}" / revision


HUB_ID = re.compile(r"hf:([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)(?:@(.+))?")


def parse_hub_id(spec):
    """'hf:Qwen/Qwen2.5-0.5B' -> HubModel('Qwen', 'Qwen2.5-0.5B', 'main');
    'hf:Qwen/Qwen2.5-0.5B@v1.0' -> revision 'v1.0'. The hub forbids '--' and '..' in names, which
    also keeps the cache folder {owner}--{name} unambiguous and inside the cache."""
    match = HUB_ID.fullmatch(spec)
    repo = f"{match[1]}/{match[2]}" if match else ""
    if not match or "--" in repo or ".." in repo or match[3] in (".", ".."):
        raise UserError(f"{spec}: not a hub model (expected hf:OWNER/NAME or "
                        f"hf:OWNER/NAME@REVISION)")
    return HubModel(match[1], match[2], match[3] or "main")


def hub_headers():
    """The HTTP headers for the hub: a bearer token when $HF_TOKEN is set."""
    token = os.environ.get("HF_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def fetch_hub_file(model, file, optional=False):
    """Download one file of a hub model into its cache folder (nothing when it is there), check
    that it is what its name says, and return its path; None for an optional file the hub does
    not have. A file that fails the check is deleted, so the next run fetches it again."""
    dest = model.cache_folder() / file
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        train.download(model.url(file), dest, headers=hub_headers())
    except UserError as e:
        if optional and getattr(e.__cause__, "code", None) == 404:
            return None
        raise UserError(f"{model}: {file}: {e}") from e.__cause__
    try:
        if file.endswith(".json"):
            read_json(dest)
        elif file.endswith(".safetensors"):
            read_safetensors_header(dest)
        elif file.endswith(".bin"):
            load_pytorch_bin(dest)
    except UserError as e:
        dest.unlink()
        raise UserError(f"{model}: {file} is damaged: {e}") from None
    return dest


def fetch_hub_weights(model):
    """The weights of a hub model -> the names of the files fetched: model.safetensors; or the
    index and every shard its weight_map names; or, only when there are no safetensors,
    pytorch_model.bin. Each absent choice costs one request answered 404."""
    if fetch_hub_file(model, "model.safetensors", optional=True):
        return ["model.safetensors"]
    index = fetch_hub_file(model, SAFETENSORS_INDEX, optional=True)
    if index:
        try:
            shards = sorted(set(read_weight_map(index).values()))
        except UserError as e:
            index.unlink()
            raise UserError(f"{model}: {SAFETENSORS_INDEX} is damaged: {e}") from None
        for shard in shards:
            try:
                fetch_hub_file(model, shard)
            except UserError as e:
                raise UserError(f"{e} (a shard named in {SAFETENSORS_INDEX})") from None
        read_safetensors_index(index)  # each tensor is in the shard the index says
        return [SAFETENSORS_INDEX, *shards]
    if fetch_hub_file(model, "pytorch_model.bin", optional=True):
        return ["pytorch_model.bin"]
    raise UserError(f"{model}: no weights on the hub (model.safetensors, {SAFETENSORS_INDEX} "
                    f"or pytorch_model.bin)")


def fetch_hub_model(spec):
    """'hf:OWNER/NAME[@REVISION]' -> the local folder holding its config.json, tokenizer files,
    generation_config.json (when the model has one) and weights.

    A complete fetch ends by writing fetched.json, the list of files it got; when that list is
    there and every file on it too, the next call returns at once without a single request."""
    model = parse_hub_id(spec)
    folder = model.cache_folder()
    manifest = folder / "fetched.json"
    if manifest.exists():
        try:
            files = read_json(manifest).get("files")
            if isinstance(files, list) and all(
                    isinstance(f, str) and (folder / f).exists() for f in files):
                return folder
        except UserError:
            pass  # a damaged list: fetch again (each file already here costs no request)
    files = []
    for file in HUB_FILES:
        if fetch_hub_file(model, file, optional=file in HUB_OPTIONAL):
            files.append(file)
    files += fetch_hub_weights(model)
    text = json.dumps({"model": str(model), "files": files}, indent=2)
    train.atomic_write(manifest, lambda f: f.write(text.encode("utf-8")))
    return folder


# ---------------------------------------------------------------------------------------------
# 3. GGUF v3, the file llama.cpp and Ollama load
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


# ---- Q8_0: 8-bit blocks ----------------------------------------------------------------------
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


def ggml_nbytes(shape, kind):
    """Bytes a tensor of this (torch) shape takes in ggml type kind."""
    _, per_block, block_bytes = GGML_TYPES[kind]
    return math.prod(shape) // per_block * block_bytes


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


def padding(n, alignment):
    """Zero bytes that take n up to the next multiple of alignment."""
    return bytes(-n % alignment)


class GGUFWriter:
    """Collects metadata and tensors, then writes one GGUF v3 file:

        w = GGUFWriter()
        w.add("general.architecture", "llama")
        w.add("llama.block_count", 8, "uint32")
        w.add("tokenizer.ggml.tokens", ["<s>", "a", "b"])        # an array of strings
        w.add_tensor("token_embd.weight", embedding, "q8_0")    # a torch tensor, torch shape
        w.write("model.gguf")

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

    def write(self, path):
        """Write the file atomically (temporary file, fsync, rename), with a progress bar."""
        header = self.header()
        total = sum(ggml_nbytes(t.shape, kind) for t, kind in self.tensors.values())

        def write(f):
            f.write(header + padding(len(header), self.alignment))
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"write {Path(path).name}",
                      disable=total < 1 << 24) as bar:  # no bar for a file written in a blink
                for tensor, kind in self.tensors.values():
                    written = 0
                    for chunk in ggml_chunks(tensor, kind):
                        f.write(chunk)
                        written += chunk.nbytes
                        bar.update(chunk.nbytes)
                    assert written == ggml_nbytes(tensor.shape, kind)
                    f.write(padding(written, self.alignment))
        train.atomic_write(path, write)
