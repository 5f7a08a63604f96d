"""ngrams.py: hashed words and word n-grams with numpy, and the repetition counts Gopher's rules
are made of (a companion of prepare.py, chapter 4).

    h = ngrams.word_hashes(["a", "rose", "is", "a", "rose"])   # uint64 [5], the same everywhere
    ngrams.ngram_hashes(h, 2)           # uint64 [4]: "a rose", "rose is", "is a", "a rose"
    ngrams.top_ngram_chars(words, h, 2) # len("a rose") * 2 = 12
    ngrams.repeated_ngram_chars(words, h, 2), ngrams.repeated(lines)

Why hashes: Python's hash() of a str is salted per process, so worker processes would disagree,
and comparing n-grams as strings means building every one of them. A 64-bit hash per word,
combined into one per window with numpy, is the same in every process and makes shingles
(MinHash), n-gram repetition and decontamination a few array operations.

Imported by prepare.py. Imports nothing from the project.
"""
import hashlib
import zlib

import numpy as np


def stable_hash(s):
    """A 64-bit hash that is the same in every process and every run (Python's hash() of a str
    is salted per process, which would make workers disagree)."""
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")


def word_hashes(words):
    """Each word's 64-bit hash: CRC32 and Adler-32 side by side (fast, in C, the same in every
    process)."""
    return np.fromiter(((zlib.crc32(b) << 32) | zlib.adler32(b) for b in map(str.encode, words)),
                       np.uint64, len(words))


def ngram_hashes(h, n):
    """uint64 hashes of the n-word windows of word hashes h, with numpy: the window's polynomial
    sum h[i]*M**(n-1) + ... + h[i+n-1] (wrapping mod 2**64), then mixed. A text shorter than n
    words gives one window, the whole text."""
    if not len(h):
        return np.zeros(0, np.uint64)
    n = min(n, len(h))
    out = np.zeros(len(h) - n + 1, np.uint64)
    for i in range(n):
        out = out * np.uint64(0x100000001B3) + h[i:len(h) - n + 1 + i]
    return mix(out)


def mix(x):
    """SplitMix64's finaliser: every output bit depends on every input bit, so windows of
    similar words ("x10", "x11": close CRC and Adler sums) get unrelated hashes, and any 32 bits
    of one serve as a shingle id."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def repeated(items):
    """(how many items repeat an earlier one, their characters): [a, b, a, a] -> (2, 2 len(a))."""
    seen, count, chars = set(), 0, 0
    for x in items:
        if x in seen:
            count, chars = count + 1, chars + len(x)
        seen.add(x)
    return count, chars


def repeated_ngram_chars(words, h, n):
    """Characters covered by n-grams that repeat an earlier one, stepping over each repeat
    (Gopher's "duplicate n-gram character fraction"). The n-grams are compared by hash
    (ngram_hashes), and a text in which no hash occurs twice is answered without the walk."""
    if len(words) < n:
        return 0
    grams = ngram_hashes(h, n).tolist()
    if len(set(grams)) == len(grams):
        return 0
    lengths = np.cumsum([0] + [len(w) for w in words])
    seen, chars, i = set(), 0, 0
    while i < len(grams):
        if grams[i] in seen:
            chars, i = chars + int(lengths[i + n] - lengths[i]), i + n
        else:
            seen.add(grams[i])
            i += 1
    return chars


def top_ngram_chars(words, h, n):
    """Characters of the most frequent n-gram (joined by spaces) times its count; among equally
    frequent ones the first to occur. An n-gram that occurs once is no repetition: it counts 0
    (datatrove counts it, which removes most short documents; docs/prepare.md)."""
    if len(words) < n:
        return 0
    _, first, counts = np.unique(ngram_hashes(h, n), return_index=True, return_counts=True)
    if counts.max() < 2:
        return 0
    top = first[counts == counts.max()].min()
    return (sum(len(w) for w in words[top:top + n]) + n - 1) * int(counts.max())
