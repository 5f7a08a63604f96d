"""train.py: pre-train a small language model from scratch (book chapters 6 and 8).

    python train.py                          # CPU: a tiny MiniMind on Python's own docs, minutes
    python train.py --preset t4-small        # a free Colab T4: minimind2-small on TinyStories
    python train.py --preset a100-base --dry-run   # the resource calculator, no training
    torchrun --nproc_per_node=2 train.py ...  # several GPUs (or CPU processes) with DDP

Reading order: the config and presets -> device and precision -> data (built-in, downloads, files)
-> tokenizer and the token cache -> the model and the run directory -> optimizer and schedule ->
the resource calculator -> the training loop. sft.py and dpo.py reuse the pieces marked "shared".
The run directory it writes (model.pt, tokenizer.json, train_state.pt, config.json, log.jsonl,
loss.svg) is what eval.py, sft.py, quantize.py and chat.py take as input.
"""
import argparse
import contextlib
import dataclasses
import functools
import hashlib
import importlib
import inspect
import io
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import bpe
import gpt
import minimind


# ---------------------------------------------------------------------------------------------
# Errors (shared): a user's mistake ends with one line "error: ...", exit status 2, no traceback.
# ---------------------------------------------------------------------------------------------
class UserError(Exception):
    """A mistake in the user's input (file, flag, data). main() prints it as `error: ...`."""


def run_cli(main_fn):
    """Call main_fn(); turn a UserError into one `error:` line and exit status 2."""
    try:
        return main_fn()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


# ---------------------------------------------------------------------------------------------
# Configuration: one dataclass, each field a flag; --preset fills defaults; explicit flags win.
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    preset: str = field(default="", metadata={"help": "named defaults, listed below; flags given explicitly win"})
    # model
    model: str = field(default="minimind", metadata={"help": "architecture: minimind | gpt"})
    size: str = field(default="nano", metadata={"help": "a named size from minimind.SIZES / gpt.SIZES"})
    seq_len: int = field(default=256, metadata={"help": "context length in tokens"})
    dropout: float = field(default=0.0, metadata={"help": "dropout probability"})
    # data and tokenizer
    data: str = field(default="python-docs", metadata={
        "help": "python-docs (built in) | tinystories | shakespeare | a .txt/.jsonl file or folder"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer.json to use; empty: train one with bpe.py"})
    vocab_size: int = field(default=4096, metadata={"help": "vocabulary size when training a tokenizer"})
    val_fraction: float = field(default=0.05, metadata={"help": "share of the data held out for validation"})
    # optimisation
    batch_size: int = field(default=16, metadata={"help": "sequences per micro-batch (per process)"})
    tokens_per_step: int = field(default=0, metadata={
        "help": "tokens per optimizer step; sets gradient accumulation (0: one micro-batch per step)"})
    max_steps: int = field(default=1200, metadata={"help": "optimizer steps"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine floor as a fraction of lr"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warmup steps"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW decay (matrices only)"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    beta2: float = field(default=0.95, metadata={"help": "AdamW beta2"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient norm to this (0: off)"})
    seed: int = field(default=1337, metadata={"help": "random seed"})
    # hardware
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | mps"})
    dtype: str = field(default="auto", metadata={"help": "auto | fp32 | bf16 | fp16"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    # logging and output
    out_dir: str = field(default="out/pretrain", metadata={"help": "run directory to write"})
    eval_every: int = field(default=250, metadata={"help": "steps between evaluations and samples"})
    eval_batches: int = field(default=20, metadata={"help": "batches per evaluation"})
    save_every: int = field(default=500, metadata={"help": "steps between checkpoints"})
    sample_tokens: int = field(default=120, metadata={"help": "tokens in each printed sample"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --out-dir exactly"})
    overwrite: bool = field(default=False, metadata={"help": "start a new run in an --out-dir that holds one"})
    halt_at: int = field(default=0, metadata={
        "help": "stop after this step with a checkpoint, as if interrupted (split a schedule across sessions)"})
    dry_run: bool = field(default=False, metadata={"help": "print the resource calculator and exit"})


# Each preset: a one-line description of the hardware and time it expects, then its defaults.
PRESETS = {
    "cpu": ("2 CPU cores, about 7 minutes: a 1.3M MiniMind (nano) on Python's docs",
            dict(model="minimind", size="nano", seq_len=256, batch_size=16, max_steps=1200, lr=2e-3,
                 vocab_size=4096, dtype="fp32")),
    "t4-small": ("free Colab T4 (16 GB, fp16 + scaler), 1-2 hours: minimind2-small (26M) on TinyStories",
                 dict(model="minimind", size="minimind2-small", data="tinystories", seq_len=512,
                      batch_size=32, tokens_per_step=65536, max_steps=6000, lr=1e-3, vocab_size=6400,
                      dtype="fp16", warmup_steps=300, eval_every=500, save_every=500)),
    "l4-base": ("one L4 (24 GB, bf16), about 6 hours: minimind2 (104M) on TinyStories",
                dict(model="minimind", size="minimind2", data="tinystories", seq_len=512, batch_size=32,
                     tokens_per_step=131072, max_steps=10000, lr=6e-4, vocab_size=6400, dtype="bf16",
                     warmup_steps=500, eval_every=500, save_every=1000)),
    "a100-base": ("one A100 (40/80 GB, bf16), about 5 hours: minimind2 (104M), context 1024, TinyStories",
                  dict(model="minimind", size="minimind2", data="tinystories", seq_len=1024,
                       batch_size=64, tokens_per_step=262144, max_steps=10000, lr=6e-4,
                       vocab_size=6400, dtype="bf16", compile=True, warmup_steps=500,
                       eval_every=500, save_every=1000)),
    "a100-350m": ("one A100 80 GB (bf16), about 27 hours: a 361M MiniMind; bring more data than TinyStories",
                  dict(model="minimind", size="minimind-350m", data="tinystories", seq_len=1024,
                       batch_size=32, tokens_per_step=524288, max_steps=8000, lr=3e-4,
                       vocab_size=6400, dtype="bf16", compile=True, warmup_steps=1000,
                       eval_every=1000, save_every=1000)),
    "gpt2-124m": ("one A100 (bf16), about 11 hours: the GPT of gpt.py at GPT-2 small's 124M",
                  dict(model="gpt", size="gpt2", data="tinystories", seq_len=1024, batch_size=32,
                       tokens_per_step=524288, max_steps=10000, lr=6e-4, vocab_size=50257,
                       dtype="bf16", compile=True, warmup_steps=700, eval_every=500, save_every=1000)),
}


def parse_config(cls, argv=None, presets=None, overrides=None):
    """(shared) Build a config dataclass from defaults < preset < command-line flags < overrides.

    Every field becomes a kebab-case flag with its help and default. A field's metadata may add
    "positional" (an nargs, e.g. "?" for a RUN_DIR) or "short" (e.g. "-p"). Unknown arguments are
    ignored and a notebook kernel's own argv is not read, so `main()` works in a notebook cell."""
    if argv is None and "ipykernel" in sys.modules:
        argv = []  # a notebook kernel's own arguments (-f kernel.json) are not ours
    presets = presets or {}
    epilog = "presets:\n" + "\n".join(f"  {k:<11} {v[0]}" for k, v in presets.items()) if presets else None
    parser = argparse.ArgumentParser(description=inspect.getdoc(sys.modules[cls.__module__]).split("\n")[0],
                                     epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(cls):
        helptext = f.metadata.get("help", "")
        if f.default is not dataclasses.MISSING:
            helptext += f" (default: {f.default})"
        if "positional" in f.metadata:
            parser.add_argument(f.name, nargs=f.metadata["positional"], default=None, help=helptext)
            continue
        names = ["--" + f.name.replace("_", "-")] + ([f.metadata["short"]] if "short" in f.metadata else [])
        if f.type in (bool, "bool"):
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        else:
            kind = {"int": int, "float": float}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
            parser.add_argument(*names, type=kind, default=None, help=helptext)
    args, unknown = parser.parse_known_args(argv)
    if unknown[:1] == ["-f"]:  # Jupyter's "-f kernel.json", when argv was passed on from a notebook
        unknown = unknown[2:]
    if unknown:
        raise UserError(f"unknown argument(s): {' '.join(unknown)} (see --help)")
    given = {k: v for k, v in vars(args).items() if v is not None and v != []}
    given.update(overrides or {})
    name = given.get("preset", "")
    if name and name not in presets:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(presets)}")
    values = dict(presets[name][1]) if name else {}
    values.update(given)
    bad = set(values) - {f.name for f in dataclasses.fields(cls)}
    if bad:
        raise UserError(f"unknown option(s): {', '.join(sorted(bad))}")
    return cls(**values)


# ---------------------------------------------------------------------------------------------
# Device and precision (shared)
# ---------------------------------------------------------------------------------------------
def pick_device(name="auto"):
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device, name="auto"):
    """bf16 where the GPU has it, fp16 (with a gradient scaler) on older GPUs like the T4, fp32 on CPU."""
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name != "auto":
        if name not in table:
            raise UserError(f"--dtype must be one of auto, {', '.join(table)}; got {name!r}")
        return table[name]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def autocast(device, dtype):
    """Mixed precision context: weights stay fp32, matmuls run in dtype."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Data: the built-in corpus, downloads, and the user's own files
# ---------------------------------------------------------------------------------------------
# Modules never imported for their docstrings: they open windows or browsers, print on import,
# are test suites, or are platform-specific.
_SKIP_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test",
                 "lib2to3", "ensurepip", "venv", "pydoc_data", "msvcrt", "winreg", "winsound", "nt"}


@functools.lru_cache(maxsize=1)
def python_docs_entries():
    """(shared) [(qualified name, docstring)] for the standard library's public modules, classes,
    functions and methods, in a fixed (sorted) order. sft.py and dpo.py build questions from these."""
    entries = []
    with warnings.catch_warnings():  # some modules warn that they are deprecated: not our concern here
        warnings.simplefilter("ignore")
        for name in sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in _SKIP_MODULES):
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    module = importlib.import_module(name)
            except BaseException:  # absent on this platform, or fails to import: skip it
                continue
            if inspect.getdoc(module):
                entries.append((name, inspect.getdoc(module)))
            for attr in sorted(vars(module)):
                obj = getattr(module, attr)
                if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                    continue
                if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
                    continue
                if obj.__doc__:
                    entries.append((f"{name}.{attr}", inspect.cleandoc(obj.__doc__)))
                if inspect.isclass(obj):
                    for meth in sorted(vars(obj)):
                        member = vars(obj)[meth]
                        doc = getattr(member, "__doc__", None)
                        if not meth.startswith("_") and callable(member) and doc:
                            entries.append((f"{name}.{attr}.{meth}", inspect.cleandoc(doc)))
    return tuple(entries)


def python_docs_documents():
    """The built-in pre-training corpus: Python's help topics, then the stdlib docstrings (~1.3 MB)."""
    from pydoc_data.topics import topics
    docs = [topics[key].strip() for key in sorted(topics)]
    docs += [f"{name}\n\n{doc}" for name, doc in python_docs_entries()]
    return docs


def python_docs_text():
    return "\n\n".join(python_docs_documents())


def cache_dir():
    """Where downloads and token caches live: $SLM_CACHE, else ~/.cache/slm."""
    path = Path(os.environ.get("SLM_CACHE", Path.home() / ".cache" / "slm"))
    path.mkdir(parents=True, exist_ok=True)
    return path


DOWNLOADS = {  # name: (url, expected size in bytes or None)
    "shakespeare": ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                    1115394),
    "tinystories": ("https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories-train.txt",
                    None),
}


# A failed download's HTTP status -> what the user can do about it. Without a token the hub answers
# 401 for a private or gated model and for one that does not exist; 403: the token may not read it.
HTTP_ADVICE = {401: "not authorized: no such model, or a private or gated one (set HF_TOKEN)",
               403: "forbidden: accept the model's terms on its page, and check HF_TOKEN",
               404: "not found: no such model, revision or file"}


def download(url, dest, expected_size=None, headers=None):
    """Download url to dest once, with a progress bar; resumes a partial .part file with an HTTP
    Range request, checks the size against Content-Length (and expected_size), then renames.
    headers (e.g. a hub token) go to url only, never to a server it redirects to (a CDN).
    An HTTP error raises UserError from the urllib HTTPError, whose .code callers may read."""
    dest = Path(dest)
    if dest.exists():
        return dest
    part = dest.with_suffix(dest.suffix + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    for key, value in (headers or {}).items():
        request.add_unredirected_header(key, value)
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        advice = HTTP_ADVICE.get(e.code, e.reason)
        detail = e.headers.get("X-Error-Message")  # the hub says why in this header
        raise UserError(f"cannot download {url}: HTTP {e.code}, {advice}"
                        + (f" ({detail})" if detail else "")) from e
    except OSError as e:
        raise UserError(f"cannot download {url}: {e}")
    with response:
        if have and response.status != 206:  # the server ignored the Range: start again
            have = 0
        total = have + int(response.headers.get("Content-Length", 0) or 0)
        with open(part, "ab" if have else "wb") as f, tqdm(total=total or None, initial=have, unit="B",
                                                          unit_scale=True, desc=f"download {dest.name}") as bar:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if (total and size != total) or (expected_size and size != expected_size):
        raise UserError(f"download of {url} is incomplete ({size} bytes); run again to resume")
    os.replace(part, dest)
    return dest


def read_documents(path):
    """Yield the documents of a .txt, a .jsonl ({"text": ...} per line), or a folder of them
    (sorted), with bpe.read_texts; a malformed line raises UserError naming FILE:LINE."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl")) if path.is_dir() else [path]
    if not files:
        raise UserError(f"{path}: no .txt or .jsonl files in this folder")
    try:
        yield from bpe.read_texts(files)
    except bpe.InputError as e:
        raise UserError(str(e)) from None


def resolve_data(data):
    """Return (documents iterable factory, cache directory, data fingerprint) for --data."""
    if data == "python-docs":
        return python_docs_documents, cache_dir(), f"python-docs-py{sys.version_info[0]}.{sys.version_info[1]}"
    if data in DOWNLOADS:
        url, size = DOWNLOADS[data]
        path = download(url, cache_dir() / Path(url).name, size)
    else:
        path = Path(data)
        if not path.exists():
            raise UserError(f"{data}: no such file or folder (or use python-docs, {', '.join(DOWNLOADS)})")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl"))
    stamp = hashlib.sha1(repr([(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
                         .encode()).hexdigest()[:12]
    return (lambda: read_documents(path)), (path.parent if path.is_file() else path), f"{path.name}-{stamp}"


def split_documents(docs, val_fraction):
    """Deterministic train/val split: every k-th document goes to val (k = 1/val_fraction); a single
    long document is split at its end instead."""
    docs = list(docs)
    if len(docs) >= 2 / max(val_fraction, 1e-9):
        k = max(2, round(1 / val_fraction))
        return [d for i, d in enumerate(docs) if i % k != k - 1], [d for i, d in enumerate(docs) if i % k == k - 1]
    text = "\n\n".join(docs)
    cut = int(len(text) * (1 - val_fraction))
    return [text[:cut]], [text[cut:]]


def get_tokenizer(cfg, train_docs, cache, fingerprint):
    """--tokenizer FILE, or a BPE trained on (a sample of) the training documents, cached."""
    if cfg.tokenizer:
        try:
            return bpe.Tokenizer.load(cfg.tokenizer)
        except (OSError, ValueError) as e:
            raise UserError(f"{cfg.tokenizer}: {e}")
    cached = cache / f"{fingerprint}.v{cfg.val_fraction}.bpe{cfg.vocab_size}.json"  # never saw this val split
    if cached.exists():
        return bpe.Tokenizer.load(cached)
    sample, budget = [], 20_000_000  # at most ~20 MB of text: enough for a good BPE, fast to train
    for d in train_docs:
        sample.append(d)
        budget -= len(d)
        if budget <= 0:
            break
    print(f"training a {cfg.vocab_size}-token BPE tokenizer on {sum(map(len, sample)) / 1e6:.1f} MB ...")
    try:
        tok = bpe.Tokenizer.train(sample, cfg.vocab_size)
    except ValueError as e:
        raise UserError(f"--vocab-size {cfg.vocab_size}: {e}")
    tok.save(cached)
    return tok


def tokenize_to_bin(docs, tok, path):
    """Encode documents once into a flat token file (uint16 when the vocab fits, else uint32),
    each document followed by <|endoftext|>; later runs memory-map it instead of re-encoding."""
    path = Path(path)
    if not path.exists():
        dtype = np.uint16 if tok.vocab_size <= 65536 else np.uint32
        eot = tok.special_tokens["<|endoftext|>"]
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for doc in tqdm(docs, desc=f"tokenize {path.name}", unit="doc", leave=False):
                np.array(tok.encode(doc, allowed_special="none") + [eot], dtype=dtype).tofile(f)
        os.replace(tmp, path)
    dtype = np.uint16 if tok.vocab_size <= 65536 else np.uint32
    return np.memmap(path, dtype=dtype, mode="r")


class Batches:
    """Random windows of seq_len+1 tokens from a token array. Its own generator makes the data
    order part of the saved state, so a resumed run sees exactly the batches it would have."""

    def __init__(self, tokens, seq_len, batch_size, seed, rank=0, world=1):
        if len(tokens) <= seq_len + 1:
            raise UserError(f"only {len(tokens)} tokens of data: fewer than --seq-len {seq_len} + 1")
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.rank, self.world = rank, world
        self.gen = torch.Generator().manual_seed(seed)

    def next(self):
        # Every rank draws the same global batch and keeps its own rows, so N processes see
        # exactly what one process with an N-times larger batch would see.
        starts = torch.randint(len(self.tokens) - self.seq_len - 1, (self.batch_size * self.world,),
                               generator=self.gen)[self.rank::self.world]
        rows = np.stack([self.tokens[s:s + self.seq_len + 1] for s in starts.tolist()]).astype(np.int64)
        rows = torch.from_numpy(rows)
        return rows[:, :-1], rows[:, 1:]


def eval_windows(tokens, seq_len, batch_size, n_batches):
    """Fixed, evenly spaced validation windows: the same text at every evaluation."""
    if len(tokens) <= seq_len + 1:
        raise UserError(f"the validation split has only {len(tokens)} tokens, not enough for one window of "
                        f"--seq-len {seq_len}: give more text, a larger --val-fraction or a smaller --seq-len")
    n = min(n_batches * batch_size, max(1, (len(tokens) - 1) // seq_len))
    starts = np.linspace(0, len(tokens) - seq_len - 1, n).astype(np.int64)
    rows = torch.from_numpy(np.stack([tokens[s:s + seq_len + 1] for s in starts]).astype(np.int64))
    return [(b[:, :-1], b[:, 1:]) for b in rows.split(batch_size)]


# ---------------------------------------------------------------------------------------------
# The model and the run directory (shared)
# ---------------------------------------------------------------------------------------------
def model_config(arch, size, vocab_size, seq_len, dropout=0.0):
    """The config dict of a named size with this tokenizer's vocab and this context length."""
    sizes = {"minimind": minimind.SIZES, "gpt": gpt.SIZES}
    if arch not in sizes:
        raise UserError(f"--model must be minimind or gpt; got {arch!r}")
    if size not in sizes[arch]:
        raise UserError(f"unknown --size {size!r} for {arch}; choose one of: {', '.join(sizes[arch])}")
    cfg = dict(sizes[arch][size], vocab_size=vocab_size, dropout=dropout)
    cfg["max_seq_len" if arch == "minimind" else "block_size"] = seq_len
    return cfg


def build_model(arch, config):
    if arch == "gpt":
        return gpt.GPT(gpt.GPTConfig(**config))
    return minimind.MiniMind(minimind.MiniMindConfig(**config))


def atomic_write(path, write):
    """Write through a temporary file, flush to disk, then rename: a killed run never leaves a
    half-written file where a good one was."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_model(run_dir, model, arch, config, tokenizer, extra=None):
    """model.pt (arch, config, weights: plain tensors and dicts, so weights_only loading works) and
    the tokenizer the model was trained with: a run directory is self-contained."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    payload = {"format": "slm-run", "version": 1, "arch": arch, "config": dict(config),
               "model": model.state_dict(), **(extra or {})}
    atomic_write(run_dir / "model.pt", lambda f: torch.save(payload, f))
    tokenizer.save(run_dir / "tokenizer.json")  # bpe.py writes atomically too


def read_model_file(run_dir):
    """Load model.pt safely (weights_only=True) and check it is one of ours."""
    path = Path(run_dir) / "model.pt"
    if not path.exists():
        raise UserError(f"{path}: no such file (is {run_dir} a run directory?)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: cannot be loaded ({str(e).splitlines()[0]})")
    if not isinstance(payload, dict) or payload.get("format") != "slm-run":
        raise UserError(f"{path}: not an slm model file")
    return payload


def load_run(run_dir, device="cpu"):
    """(shared) A float run directory -> (model in eval mode, tokenizer, payload without weights).
    quantize.load_run wraps this for INT8 run directories."""
    payload = read_model_file(run_dir)
    try:
        tok = bpe.Tokenizer.load(Path(run_dir) / "tokenizer.json")
    except (OSError, ValueError) as e:
        raise UserError(f"{Path(run_dir) / 'tokenizer.json'}: {e}")
    if tok.vocab_size != payload["config"]["vocab_size"]:
        raise UserError(f"{run_dir}: tokenizer has {tok.vocab_size} tokens, model expects "
                        f"{payload['config']['vocab_size']}")
    try:
        model = build_model(payload["arch"], payload["config"])
        model.load_state_dict(payload.pop("model"))
    except (RuntimeError, TypeError, KeyError) as e:
        raise UserError(f"{Path(run_dir) / 'model.pt'}: weights do not fit the model it describes "
                        f"({str(e).splitlines()[0]}); an INT8 run loads with quantize.load_run")
    return model.to(device).eval(), tok, payload


def write_loss_svg(log_path, svg_path):
    """Draw train and val loss against step as an SVG (no plotting library needed)."""
    train, val = [], []
    for line in filter(is_json, Path(log_path).read_text().splitlines()):
        row = json.loads(line)
        if "loss" in row:
            train.append((row["step"], row["loss"]))
        if "val_loss" in row:
            val.append((row["step"], row["val_loss"]))
    points = train + val
    if len(points) < 2:
        return
    W, H, M = 640, 400, 50
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points) or 1
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    sx = lambda x: M + (W - 2 * M) * (x - x0) / max(x1 - x0, 1)
    sy = lambda y: H - M - (H - 2 * M) * (y - y0) / max(y1 - y0, 1e-9)
    line = lambda pts, color: ('<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>'
                               % (color, " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)))
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
           f'font-size="12"><rect width="{W}" height="{H}" fill="white"/>',
           f'<rect x="{M}" y="{M}" width="{W - 2 * M}" height="{H - 2 * M}" fill="none" stroke="#888"/>',
           line(train, "#1f77b4") if train else "", line(val, "#d62728") if len(val) > 1 else "",
           f'<text x="{M}" y="{M - 10}">loss (blue: train, red: val)</text>',
           f'<text x="{M - 45}" y="{M + 4}">{y1:.2f}</text><text x="{M - 45}" y="{H - M}">{y0:.2f}</text>',
           f'<text x="{M}" y="{H - M + 18}">step {x0}</text><text x="{W - M - 60}" y="{H - M + 18}">step {x1}</text>',
           "</svg>"]
    atomic_write(svg_path, lambda f: f.write("\n".join(svg).encode()))


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule (shared)
# ---------------------------------------------------------------------------------------------
def make_optimizer(model, lr, weight_decay, betas, device):
    """AdamW with weight decay on matrices only: decaying norms' gains and biases just fights the
    model for no regularisation benefit. Fused kernel on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = device.startswith("cuda")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, **({"fused": True} if fused else {}))


def lr_at(step, lr, warmup, total, min_ratio):
    """Linear warmup to lr over `warmup` steps, then a cosine from lr down to min_ratio*lr at `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# ---------------------------------------------------------------------------------------------
# The resource calculator (book ch. 6): what a run needs before you pay for it
# ---------------------------------------------------------------------------------------------
# name: (peak dense TFLOPS at 16-bit, memory GB, assumed on-demand price in USD per hour)
GPUS = {"T4": (65, 16, 0.35), "L4": (121, 24, 0.80), "A100": (312, 80, 1.80)}
ASSUMED_MFU = 0.35  # the share of peak a well-tuned small-model run reaches; T4s often do less


def count_params(model, active=False):
    """Parameters (a tied matrix once); active=True: those one token uses (MiniMind's MoE)."""
    return model.num_params(active=active) if isinstance(model, minimind.MiniMind) else model.num_params()


def flops_per_token(arch, config, n_params):
    """Training FLOPs per token: 6N for the matmuls (2 forward + 4 backward per weight) plus the
    attention scores and values, 12 * layers * width * context (the same accounting as PaLM's MFU)."""
    layers = config.get("n_layers", config.get("n_layer"))
    width = config.get("dim", config.get("n_embd"))
    seq = config.get("max_seq_len", config.get("block_size"))
    return 6 * n_params + 12 * layers * width * seq


def resource_report(cfg, vocab_size=None):
    vocab_size = vocab_size or cfg.vocab_size
    mcfg = model_config(cfg.model, cfg.size, vocab_size, cfg.seq_len, cfg.dropout)
    with torch.device("meta"):  # build the shapes only: no memory, works for any size
        model = build_model(cfg.model, mcfg)
    total, active = count_params(model), count_params(model, active=True)
    half = cfg.dtype in ("bf16", "fp16") or (cfg.dtype == "auto" and pick_device(cfg.device) == "cuda")
    act_bytes = 2 if half else 4
    layers, width = mcfg.get("n_layers", mcfg.get("n_layer")), mcfg.get("dim", mcfg.get("n_embd"))
    tokens_micro = cfg.batch_size * cfg.seq_len
    accum = max(1, cfg.tokens_per_step // tokens_micro) if cfg.tokens_per_step else 1
    tokens_step = tokens_micro * accum
    # Activations kept for backward, per layer and token: about 17 width-sized tensors (inputs of
    # norms, q/k/v, attention output, MLP in/out: Korthikanti et al. 2022, with fused attention so
    # no T x T score matrix), plus the logits and their gradient in fp32.
    activations = layers * tokens_micro * width * 17 * act_bytes + tokens_micro * vocab_size * 4 * 2
    memory = {"weights (fp32 master)": 4 * total, "gradients (fp32)": 4 * total,
              "optimizer (AdamW m and v, fp32)": 8 * total, "activations (one micro-batch)": activations}
    flops_step = flops_per_token(cfg.model, mcfg, active) * tokens_step
    lines = [f"resource calculator: preset {cfg.preset or '(none)'}, {cfg.model} {cfg.size}, vocab {vocab_size}, "
             f"context {cfg.seq_len}",
             f"  parameters           {total:,}" + (f" ({active:,} active per token)" if active != total else ""),
             *[f"  {k:<33}{v / 2**30:8.2f} GiB" for k, v in memory.items()],
             f"  total (training)                 {sum(memory.values()) / 2**30:8.2f} GiB",
             f"  tokens per step      {tokens_step:,} ({cfg.batch_size} x {cfg.seq_len} x {accum} accumulation)",
             f"  FLOPs per step       {flops_step:.3e}   ({cfg.max_steps:,} steps: {flops_step * cfg.max_steps:.3e})",
             f"  estimated time and cost for {cfg.max_steps:,} steps at {ASSUMED_MFU:.0%} of peak "
             f"(assumed on-demand prices):"]
    for name, (tflops, mem_gb, price) in GPUS.items():
        hours = flops_step * cfg.max_steps / (tflops * 1e12 * ASSUMED_MFU) / 3600
        fits = "fits" if sum(memory.values()) < mem_gb * 2**30 * 0.9 else "does NOT fit: lower --batch-size"
        lines.append(f"    {name:<5} {tflops:>4} TFLOPS  {hours:8.2f} h  ${hours * price:8.2f}   {mem_gb} GB: {fits}")
    return "\n".join(lines), {"params": total, "active_params": active, "memory": memory,
                              "tokens_per_step": tokens_step, "flops_per_step": flops_step}


def peak_flops(device, dtype):
    """Peak FLOP/s for MFU: a table for known GPUs; on CPU, a short measured matmul."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        for key, tflops in {"H100": 989, "A100": 312, "L4": 121, "T4": 65, "V100": 125}.items():
            if key in name:
                return tflops * 1e12
        return None
    a = torch.ones(512, 512)  # not randn: measuring must not move the RNG a resumed run restored
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.2:
        a @ a
        n += 1
    return 2 * 512**3 * n / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Evaluation and sampling (shared)
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, windows, byte_lengths, device, dtype):
    """Validation loss (summed NLL / predicted tokens), perplexity and bits per byte."""
    model.eval()
    nll, count, nbytes = 0.0, 0, 0
    for x, y in windows:
        with autocast(device, dtype):
            logits, _ = model(x.to(device))
        nll += F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
        count += y.numel()
        nbytes += int(byte_lengths[y.numpy()].sum())
    model.train()
    loss = nll / count
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)), "val_bpb": nll / (math.log(2) * max(nbytes, 1))}


def sample(model, arch, tok, prompt, max_new_tokens, seed=0, temperature=0.8, top_k=50):
    """Sample a continuation of `prompt` with either model's generate()."""
    ids = tok.encode(prompt, allowed_special="all") if prompt else [tok.special_tokens["<|endoftext|>"]]
    device = next(model.parameters()).device
    if arch == "gpt":
        gen = torch.Generator(device=device).manual_seed(seed)
        out = model.generate(torch.tensor([ids], device=device), max_new_tokens, temperature=temperature,
                             top_k=top_k, generator=gen)[0, len(ids):].tolist()
    else:
        out = list(model.generate(ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                  seed=seed, stop_tokens=[tok.special_tokens["<|endoftext|>"]]))
    return tok.decode([t for t in out if not tok.is_special(t)])  # the end-of-text marker is not text


# ---------------------------------------------------------------------------------------------
# Checkpoints: model.pt + train_state.pt, enough to continue exactly (shared)
# ---------------------------------------------------------------------------------------------
def rng_state():
    """Torch's RNG (dropout, sampling); the data order has its own generator in Batches."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir, model, arch, mcfg, tok, optimizer, scaler, step, extra_state=None, stage="pretrain"):
    """model.pt and train_state.pt, both stamped with the step. The state is written in full under
    a side name first, then model.pt is replaced, then the state is renamed into place: a kill
    leaves the old pair or the new one (or, for the instant between two renames, a pair whose
    steps differ, which resume refuses). `stage` (pretrain, sft, dpo) tells chat.py and eval.py
    whether the model speaks the chat template."""
    state = {"step": step, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
             "rng": rng_state(), **(extra_state or {})}
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    state_path = Path(run_dir) / "train_state.pt"
    atomic_write(state_path.with_name("train_state.pt.next"), lambda f: torch.save(state, f))
    save_model(run_dir, model, arch, mcfg, tok, extra={"step": step, "stage": stage})
    os.replace(state_path.with_name("train_state.pt.next"), state_path)


def load_checkpoint(run_dir, model, optimizer, scaler):
    """Restore weights, optimizer, scaler and RNG from run_dir; return the train state dict."""
    payload = read_model_file(run_dir)
    path = Path(run_dir) / "train_state.pt"
    if not path.exists():
        raise UserError(f"{path}: no such file; nothing to resume")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["step"] != payload.get("step"):
        raise UserError(f"{run_dir}: model.pt (step {payload.get('step')}) and train_state.pt "
                        f"(step {state['step']}) disagree")
    getattr(model, "module", model).load_state_dict(payload["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return state


def is_json(line):
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False


class RunLog:
    """log.jsonl, one JSON object per line; on resume, lines after the checkpoint are dropped."""

    def __init__(self, run_dir, keep_until_step=None):
        self.path = Path(run_dir) / "log.jsonl"
        if keep_until_step is None or not self.path.exists():
            self.path.write_text("")
        else:
            rows = [json.loads(l) for l in self.path.read_text().splitlines() if is_json(l)]  # a kill may tear a line
            kept = "".join(json.dumps(r) + "\n" for r in rows if r["step"] <= keep_until_step)
            atomic_write(self.path, lambda f: f.write(kept.encode()))

    def write(self, **row):
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def prepare_data(cfg):
    """Tokenizer plus train/val token arrays, reading and encoding the text only when not cached."""
    make_docs, cache, fingerprint = resolve_data(cfg.data)
    docs = None
    if not cfg.tokenizer and not (cache / f"{fingerprint}.v{cfg.val_fraction}.bpe{cfg.vocab_size}.json").exists():
        docs = split_documents(make_docs(), cfg.val_fraction)
    tok = get_tokenizer(cfg, docs[0] if docs else None, cache, fingerprint)
    tok_hash = hashlib.sha1(json.dumps(tok.special_tokens, sort_keys=True).encode() +
                            b"".join(tok.id_to_bytes(i) + b"\0" for i in range(tok.vocab_size))).hexdigest()[:10]
    stem = cache / f"{fingerprint}.{tok_hash}.v{cfg.val_fraction}"
    paths = [Path(f"{stem}.train.bin"), Path(f"{stem}.val.bin")]
    if not all(p.exists() for p in paths):
        docs = docs or split_documents(make_docs(), cfg.val_fraction)
    train_tokens, val_tokens = (tokenize_to_bin(docs[i] if docs else [], tok, paths[i]) for i in (0, 1))
    return tok, train_tokens, val_tokens


def check_positive(cfg, names):
    """(shared) Each named flag must be at least 1: caught here, not deep inside torch."""
    for name in names:
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1; got {getattr(cfg, name)}")


def check_device(name):
    """(shared) pick_device, refusing a device this machine does not have with a clear message."""
    device = pick_device(name)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible to PyTorch here")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: Apple's MPS backend is not available here")
    return device


def read_saved_config(cls, path, keep):
    """(shared) The config a run saved in config.json, with the fields in `keep` replaced."""
    try:
        return cls(**{**json.loads(Path(path).read_text()), **keep})
    except (json.JSONDecodeError, TypeError) as e:
        raise UserError(f"{path}: not a config this script wrote ({e})")


def refuse_to_overwrite(cfg):
    """(shared) A fresh run must not clobber a run directory that already holds a run."""
    if not cfg.resume and not cfg.overwrite and (Path(cfg.out_dir) / "model.pt").exists():
        raise UserError(f"{cfg.out_dir} already holds a run: --resume continues it, --overwrite starts again "
                        f"there, or choose another --out-dir")


def check_config(cfg):
    check_positive(cfg, ("seq_len", "batch_size", "max_steps", "eval_every", "eval_batches", "save_every"))
    if not 0 < cfg.val_fraction < 0.5:
        raise UserError(f"--val-fraction must be between 0 and 0.5; got {cfg.val_fraction}")
    if cfg.lr <= 0 or cfg.warmup_steps < 0 or cfg.tokens_per_step < 0:
        raise UserError("--lr must be positive, --warmup-steps and --tokens-per-step not negative")
    if not 0 <= cfg.dropout < 1:
        raise UserError(f"--dropout must be in [0, 1); got {cfg.dropout}")
    check_device(cfg.device)
    refuse_to_overwrite(cfg)


def train(cfg):
    out = Path(cfg.out_dir)
    if cfg.resume:  # continue with the saved config; only these may differ from it
        saved = out / "config.json"
        if not saved.exists():
            raise UserError(f"{saved}: no such file; nothing to resume")
        keep = {k: getattr(cfg, k) for k in ("resume", "overwrite", "halt_at", "device", "out_dir")}
        cfg = read_saved_config(TrainConfig, saved, keep)
    check_config(cfg)
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    device = pick_device(cfg.device)
    if ddp:
        torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
        if device == "cuda":
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(device)
    master = rank == 0
    dtype = pick_dtype(device, cfg.dtype)
    torch.manual_seed(cfg.seed + rank)

    if ddp and not master:  # rank 0 trains the tokenizer and writes the token cache; the others wait,
        torch.distributed.barrier()  # then read what it wrote
    tok, train_tokens, val_tokens = prepare_data(cfg)
    if ddp and master:
        torch.distributed.barrier()
    mcfg = model_config(cfg.model, cfg.size, tok.vocab_size, cfg.seq_len, cfg.dropout)
    model = build_model(cfg.model, mcfg).to(device)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), device)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=dtype == torch.float16)
    batches = Batches(train_tokens, cfg.seq_len, cfg.batch_size, cfg.seed, rank, world)
    step = 0
    if cfg.resume:
        state = load_checkpoint(out, model, optimizer, scaler)
        step = state["step"]
        batches.gen.set_state(state["batches"])
    if master:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "config.json", lambda f: f.write(json.dumps(dataclasses.asdict(cfg), indent=2).encode()))
    log = RunLog(out, step if cfg.resume else None) if master else None
    net = model
    if cfg.compile:
        net = torch.compile(net)
    if ddp:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.startswith("cuda") else None)

    tokens_micro = cfg.batch_size * cfg.seq_len * world
    accum = max(1, cfg.tokens_per_step // tokens_micro) if cfg.tokens_per_step else 1
    byte_lengths = np.array([0 if i in tok.special_tokens.values() else len(tok.id_to_bytes(i))
                             for i in range(tok.vocab_size)])
    windows = eval_windows(val_tokens, cfg.seq_len, cfg.batch_size, cfg.eval_batches)
    n_params = count_params(model)
    flops_token = flops_per_token(cfg.model, mcfg, count_params(model, active=True))
    peak = peak_flops(device, dtype) if master else None
    if master:
        print(f"{cfg.model} {cfg.size}: {n_params / 1e6:.2f}M parameters, vocab {tok.vocab_size}, context "
              f"{cfg.seq_len}, {len(train_tokens):,} train / {len(val_tokens):,} val tokens, {device} {dtype}, "
              f"{accum * tokens_micro:,} tokens per step" + (f", {world} processes" if ddp else ""))

    def checkpoint(at_step):
        if master:
            save_checkpoint(out, model, cfg.model, mcfg, tok, optimizer, scaler, at_step,
                            {"batches": batches.gen.get_state()})
            write_loss_svg(out / "log.jsonl", out / "loss.svg")

    def evaluate_and_sample(at_step):
        if not master:
            return {}
        metrics = evaluate(model, windows, byte_lengths, device, dtype)
        log.write(step=at_step, **metrics)
        text = sample(model, cfg.model, tok, "", cfg.sample_tokens, seed=at_step)
        tqdm.write(f"step {at_step}: val loss {metrics['val_loss']:.3f}, perplexity {metrics['val_ppl']:.1f}, "
                   f"{metrics['val_bpb']:.3f} bits/byte\n--- sample ---\n{text.strip()[:600]}\n--------------")
        return metrics

    bar = tqdm(total=cfg.max_steps, initial=step, disable=not master, unit="step", dynamic_ncols=True)
    t_last = time.perf_counter()
    try:
        while step < cfg.max_steps:
            lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(accum):
                x, y = (t.to(device, non_blocking=True) for t in batches.next())
                # DDP: average gradients across processes only on the last micro-batch
                sync = micro == accum - 1 or not ddp
                with contextlib.nullcontext() if sync else net.no_sync():
                    with autocast(device, dtype):
                        _, loss = net(x, y)
                    scaler.scale(loss / accum).backward()
                loss_sum += loss.detach()
            scaler.unscale_(optimizer)  # true gradients (a no-op without fp16's scaler)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf")).item()
            if ddp:
                torch.distributed.all_reduce(loss_sum, op=torch.distributed.ReduceOp.AVG)
            loss_value = loss_sum.item() / accum
            # Checked before the step, so bad numbers never reach the weights or a checkpoint. With
            # fp16 an overflowing gradient is normal: the scaler skips that step and lowers its scale.
            if not math.isfinite(loss_value) or not (math.isfinite(grad_norm) or scaler.is_enabled()):
                raise UserError(f"loss {loss_value}, gradient norm {grad_norm} at step {step + 1}; stopped. The last "
                                f"good checkpoint in {out} is untouched (try a lower --lr or --dtype bf16/fp32)")
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            now = time.perf_counter()
            tokens_per_s = accum * tokens_micro / (now - t_last)
            t_last = now
            if master:
                mfu = flops_token * tokens_per_s / peak if peak else None
                log.write(step=step, loss=loss_value, lr=lr, tokens_per_s=round(tokens_per_s), grad_norm=grad_norm,
                          **({"mfu": mfu} if mfu else {}))
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.1e}", tok_s=f"{tokens_per_s:,.0f}",
                                **({"mfu": f"{mfu:.1%}"} if mfu else {}))
                bar.update()
            if step % cfg.eval_every == 0 and step < cfg.max_steps:
                evaluate_and_sample(step)
            if step % cfg.save_every == 0 or step == cfg.halt_at:
                checkpoint(step)
            if step == cfg.halt_at:
                if master:
                    tqdm.write(f"halted at step {step} (--halt-at); continue with --resume --out-dir {out}")
                return {"step": step}
    except KeyboardInterrupt:
        checkpoint(step)
        if master:
            tqdm.write(f"\ninterrupted: saved step {step} to {out}; continue with --resume --out-dir {out}")
        return {"step": step}
    finally:
        bar.close()
        if ddp:  # every process leaves its last collective before any tears the group down
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
    checkpoint(step)
    final = evaluate_and_sample(step)
    if master:
        print(f"done: {step} steps, val loss {final['val_loss']:.3f}, perplexity {final['val_ppl']:.1f}, "
              f"{final['val_bpb']:.3f} bits/byte. Run directory: {out}")
    return {"step": step, **final}


def main(argv=None, **overrides):
    """Train with flags from argv (or sys.argv) and keyword overrides (for notebooks)."""
    cfg = parse_config(TrainConfig, argv, PRESETS, overrides)
    if cfg.dry_run:
        print(resource_report(cfg)[0])
        return None
    return train(cfg)


if __name__ == "__main__":
    run_cli(main)
