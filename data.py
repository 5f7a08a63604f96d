"""data.py: the text a run trains on, and the held-out figures measured on it (a companion file).

    import data
    tok, train_tokens, val_tokens = data.prepare_data(cfg)  # cfg has train.py's data, tokenizer,
                                                            # vocab_size and val_fraction fields
    windows = data.eval_windows(val_tokens, seq_len=256, batch_size=8, n_batches=4)
    data.evaluate(model, windows, data.byte_lengths(tok), "cpu", torch.float32)
    # -> {"val_loss": ..., "val_ppl": ..., "val_bpb": ...}

--data is one of: python-docs (the built-in corpus: Python's help topics and the standard library's
docstrings, ~1.3 MB, offline), a name in DOWNLOADS (downloaded once into the cache), or a .txt, a
.jsonl ({"text": ...} per line) or a folder of them. The documents are split into train and val
(every k-th document to val), a BPE tokenizer is trained on the train split unless --tokenizer
gives one, and each split is encoded once into a flat token file that later runs memory-map.

Imported by train.py (pre-training's batches and held-out figures), eval.py and quantize.py (the
same windows and figures, so the three always agree) and sft.py (the built-in questions come from
python_docs_entries). Imports bpe.py, sentencepiece_bpe.py, download.py, hf_tokenizer.py
and rundir.py.
"""
import contextlib
import functools
import hashlib
import importlib
import inspect
import io
import json
import math
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import bpe
import sentencepiece_bpe
from download import cache_dir, download
from hf_tokenizer import TOKEN_NORMAL, TOKEN_USER_DEFINED, token_strings, token_types
from rundir import UserError, autocast


# ---------------------------------------------------------------------------------------------
# 1. The documents: the built-in corpus, downloads, and the user's own files
# ---------------------------------------------------------------------------------------------
# Modules never imported for their docstrings: they open windows or browsers, print on import,
# are test suites, or are platform-specific.
_SKIP_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test",
                 "lib2to3", "ensurepip", "venv", "pydoc_data", "msvcrt", "winreg", "winsound", "nt"}


@functools.lru_cache(maxsize=1)
def python_docs_entries():
    """(shared) [(qualified name, docstring)] for the standard library's public modules, classes,
    functions and methods, in a fixed (sorted) order. sft.py and dpo.py build questions
    from these."""
    entries = []
    # some modules warn that they are deprecated: not our concern here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(n for n in sys.stdlib_module_names
                           if not n.startswith("_") and n not in _SKIP_MODULES):
            try:
                with (contextlib.redirect_stdout(io.StringIO()),
                      contextlib.redirect_stderr(io.StringIO())):
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
    """The built-in pre-training corpus: Python's help topics, then the stdlib docstrings
    (~1.3 MB)."""
    from pydoc_data.topics import topics
    docs = [topics[key].strip() for key in sorted(topics)]
    docs += [f"{name}\n\n{doc}" for name, doc in python_docs_entries()]
    return docs


def python_docs_text():
    return "\n\n".join(python_docs_documents())


DOWNLOADS = {  # name: (url, expected size in bytes or None)
    "shakespeare": ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                    "tinyshakespeare/input.txt", 1115394),
    "tinystories": ("https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
                    "TinyStories-train.txt", None),
}


def read_documents(path):
    """Yield the documents of a .txt, a .jsonl ({"text": ...} per line), or a folder of them
    (sorted), with bpe.read_texts; a malformed line raises UserError naming FILE:LINE."""
    path = Path(path)
    files = (sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl")) if path.is_dir()
             else [path])
    if not files:
        raise UserError(f"{path}: no .txt or .jsonl files in this folder")
    # a malformed line: bpe.UserError, the project's one error type
    yield from bpe.read_texts(files)


def resolve_data(data):
    """Return (documents iterable factory, cache directory, data fingerprint) for --data."""
    if data == "python-docs":
        return (python_docs_documents, cache_dir(),
                f"python-docs-py{sys.version_info[0]}.{sys.version_info[1]}")
    if data in DOWNLOADS:
        url, size = DOWNLOADS[data]
        path = download(url, cache_dir() / Path(url).name, size)
    else:
        path = Path(data)
        if not path.exists():
            raise UserError(f"{data}: no such file or folder "
                            f"(or use python-docs, {', '.join(DOWNLOADS)})")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*")
                                                 if p.suffix in (".txt", ".jsonl"))
    stamp = hashlib.sha1(repr([(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns)
                               for p in files]).encode()).hexdigest()[:12]
    return ((lambda: read_documents(path)), (path.parent if path.is_file() else path),
            f"{path.name}-{stamp}")


def split_documents(docs, val_fraction):
    """Deterministic train/val split: every k-th document goes to val (k = 1/val_fraction); a single
    long document is split at its end instead."""
    docs = list(docs)
    if len(docs) >= 2 / max(val_fraction, 1e-9):
        k = max(2, round(1 / val_fraction))
        return ([d for i, d in enumerate(docs) if i % k != k - 1],
                [d for i, d in enumerate(docs) if i % k == k - 1])
    text = "\n\n".join(docs)
    cut = int(len(text) * (1 - val_fraction))
    return [text[:cut]], [text[cut:]]


# ---------------------------------------------------------------------------------------------
# 2. The tokenizer and the token cache
# ---------------------------------------------------------------------------------------------
def tokenizer_cache(cfg, cache, fingerprint):
    """Where a tokenizer trained on this data's training split is cached (it never
    saw the val split). The name carries the split pattern bpe.py trains with, so a tokenizer
    an older bpe.py trained with another pattern is not picked up again."""
    split = hashlib.sha1(bpe.GPT4_SPLIT_PATTERN.encode()).hexdigest()[:8]
    return cache / f"{fingerprint}.v{cfg.val_fraction}.bpe{cfg.vocab_size}.{split}.json"


def get_tokenizer(cfg, train_docs, cache, fingerprint):
    """--tokenizer FILE, or a BPE trained on (a sample of) the training documents, cached."""
    if cfg.tokenizer:
        try:
            return sentencepiece_bpe.load_tokenizer(cfg.tokenizer)
        except (OSError, ValueError) as e:
            raise UserError(f"{cfg.tokenizer}: {e}")
    cached = tokenizer_cache(cfg, cache, fingerprint)
    if cached.exists():
        return sentencepiece_bpe.load_tokenizer(cached)
    sample, budget = [], 20_000_000  # at most ~20 MB of text: enough for a good BPE, fast to train
    for d in train_docs:
        sample.append(d)
        budget -= len(d)
        if budget <= 0:
            break
    print(f"training a {cfg.vocab_size}-token BPE tokenizer on "
          f"{sum(map(len, sample)) / 1e6:.1f} MB ...")
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


def tokenizer_key(tok):
    """The token cache's key: a hash of all that decides the ids a text gets, so two tokenizers
    that encode differently never share a cache. bpe.py's: split, normalizer, tokens, merges in
    their order, added tokens; a SentencePiece-style one's also its normalizer, pre-tokenizer
    and decoder steps, pieces, byte fallback, unk token and the scores that rank its merges."""
    what = [tok.split_patterns, tok.normalizer, tok.ignore_merges, token_strings(tok),
            tok.added_list(), tok.merges, tok.merged]
    if isinstance(tok, sentencepiece_bpe.SentencePieceTokenizer):
        what += [tok.hf_steps, sorted(tok.pieces.items()), tok.byte_fallback, tok.unk_token,
                 tok.fuse_unk, sorted((tok.scores or {}).items()), tok.scores is None]
    return hashlib.sha1(json.dumps(what).encode()).hexdigest()[:10]


def prepare_data(cfg):
    """Tokenizer plus train/val token arrays, reading and encoding the text only when not cached."""
    make_docs, cache, fingerprint = resolve_data(cfg.data)
    docs = None
    if not cfg.tokenizer and not tokenizer_cache(cfg, cache, fingerprint).exists():
        docs = split_documents(make_docs(), cfg.val_fraction)
    tok = get_tokenizer(cfg, docs[0] if docs else None, cache, fingerprint)
    stem = cache / f"{fingerprint}.{tokenizer_key(tok)}.v{cfg.val_fraction}"
    paths = [Path(f"{stem}.train.bin"), Path(f"{stem}.val.bin")]
    if not all(p.exists() for p in paths):
        docs = docs or split_documents(make_docs(), cfg.val_fraction)
    train_tokens, val_tokens = (tokenize_to_bin(docs[i] if docs else [], tok, paths[i])
                                for i in (0, 1))
    return tok, train_tokens, val_tokens


# ---------------------------------------------------------------------------------------------
# 3. Held-out windows, and the loss, perplexity and bits per byte on them
# ---------------------------------------------------------------------------------------------
def eval_windows(tokens, seq_len, batch_size, n_batches):
    """Fixed, evenly spaced validation windows: the same text at every evaluation."""
    if len(tokens) <= seq_len + 1:
        raise UserError(f"the validation split has only {len(tokens)} tokens, not enough for one "
                        f"window of --seq-len {seq_len}: give more text, a larger --val-fraction "
                        f"or a smaller --seq-len")
    n = min(n_batches * batch_size, max(1, (len(tokens) - 1) // seq_len))
    starts = np.linspace(0, len(tokens) - seq_len - 1, n).astype(np.int64)
    rows = torch.from_numpy(np.stack([tokens[s:s + seq_len + 1] for s in starts]).astype(np.int64))
    return [(b[:, :-1], b[:, 1:]) for b in rows.split(batch_size)]


def byte_lengths(tok):
    """UTF-8 bytes each token id stands for; special tokens stand for no text, so they count 0, and
    so do the ids a released vocabulary leaves unused."""
    types = token_types(tok)
    return np.array([len(tok.id_to_bytes(i)) if kind in (TOKEN_NORMAL, TOKEN_USER_DEFINED)
                     else 0 for i, kind in enumerate(types)])


@torch.no_grad()
def evaluate(model, windows, lengths, device, dtype):
    """Validation loss (summed NLL / predicted tokens), perplexity and bits per byte (summed NLL in
    bits / the UTF-8 bytes of the predicted tokens). Targets -100 are not predicted (eval.py masks
    chats that way). The model is left in the mode it was in."""
    was_training = model.training
    model.eval()
    nll, count, nbytes = 0.0, 0, 0
    for x, y in windows:
        with autocast(device, dtype):
            logits, _ = model(x.to(device))
        nll += F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(),
                               ignore_index=-100, reduction="sum").item()
        predicted = y[y != -100]
        count += predicted.numel()
        nbytes += int(lengths[predicted.numpy()].sum())
    model.train(was_training)
    loss = nll / count
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)),
            "val_bpb": nll / (math.log(2) * max(nbytes, 1))}
