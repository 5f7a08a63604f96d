"""bpe.py: a byte-level BPE tokenizer written from scratch (book chapter 4).

A language model reads integers, not text. This file turns text into integers and back with
byte-pair encoding (BPE), the scheme used by GPT-2, GPT-4, Llama, Qwen and MiniMind:

1. Text is UTF-8 bytes, so any string is a list of integers 0..255 (the 256 base tokens).
2. Count which pair of neighbouring tokens is most common; merge that pair into a new token,
   everywhere, and remember the merge.
3. Training repeats that until the vocabulary is full, fast by keeping pair counts up to date.
4. Encode new text by replaying the merges, earliest learned first; decode by joining bytes.
5. Before counting, cut the text into chunks (words, numbers, punctuation, spaces) with a
   regular expression, so merges never glue a word to the punctuation after it.
6. Special tokens such as <|endoftext|>, which the model sees but text can never produce.
7. Write each byte as a printable character, so tokens can be stored as readable JSON strings.
8. The Tokenizer puts these together; 9. it saves to a JSON file and loads back.
Two companion files hold what a first reading skips: unicode_regex.py translates GPT-4's split
pattern (\\p{L}, \\p{N}) for Python's `re`, which lacks those classes; tokenizer_v1.py reads and
writes the files of an older version of this file.

Run it:

    python bpe.py --input book.txt --vocab-size 4096 --out tokenizer.json
    python bpe.py --tokenizer tokenizer.json --encode "Hello, world!"

or from Python (a notebook cell can hold this whole file, which imports from the project only
unicode_regex.py: run that file in the cell before; then this cell trains a small tokenizer on
Python's own docs and shows it working):

    tok = Tokenizer.train(text, vocab_size=4096)
    ids = tok.encode("Hello, world!")
    assert tok.decode(ids) == "Hello, world!"
    tok.save("tokenizer.json"); tok = Tokenizer.load("tokenizer.json")

Released models' tokenizers (Llama 3, Qwen, SmolLM2, GPT-2) are read and written by
hf_tokenizer.py as Tokenizers of this file, saved and loaded here like any other. Imported by
nearly every script (rundir.py, data.py, convert.py, ...), for the Tokenizer and UserError.

Token ids of the tokenizers trained here: 0..255 are the raw bytes, 256 + r is the token made by
merge number r, and the special tokens take the LAST ids, in the order given (by default
<|endoftext|>, <|im_start|>, <|im_end|> are vocab_size-3, vocab_size-2, vocab_size-1). A released
tokenizer puts its tokens wherever its file says. Either way `tok.vocab_size` is the largest id
+ 1, the number of rows a model's embedding table needs.
"""
import argparse
import collections
import functools
import heapq
import json
import os
import re
import sys
import time
import unicodedata
from collections import Counter

try:  # a progress bar is nice to have, not needed: the file still works where tqdm is missing
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

try:  # step 5's split for `re`, which lacks \p{L} (unicode_regex.py imports nothing of ours)
    from unicode_regex import isolated_split
except ImportError:  # in a notebook, unicode_regex.py may have run in an earlier cell instead
    if "isolated_split" not in globals():
        raise ImportError("bpe.py needs unicode_regex.py: keep it beside bpe.py (in a notebook, "
                          "run it in a cell before this one)") from None

# The project's special tokens: one marks the end of a document, two frame a chat turn (ChatML:
# "<|im_start|>user\nHi<|im_end|>\n"). They take the last three ids of the vocabulary.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

FORMAT_NAME = "slm-bpe"  # written into every saved file, so load() can tell ours from others
FORMAT_VERSION = 2       # the version save() writes; load() reads versions 1 and 2


class UserError(ValueError):
    """The project's one exception for a user's mistake: a file, a line, a flag, a value.

    Every script prints it as one line `error: ...` (naming the file, and the line where there is
    one) and exits with status 2, without a traceback. It lives here because every pipeline script
    imports bpe.py, which imports none of them. A ValueError, so `except ValueError` still works.
    """


# ---------------------------------------------------------------------------------------------
# Step 1: bytes, and counting neighbouring pairs
# ---------------------------------------------------------------------------------------------
# "héllo".encode("utf-8") == b"h\xc3\xa9llo" -> [104, 195, 169, 108, 108, 111]. Every string,
# in every language, becomes a list of numbers below 256, so 256 base tokens can spell anything
# and the tokenizer never meets an unknown character. The price: "é" costs two tokens until a
# merge joins them.

def get_pair_counts(ids, counts=None, weight=1):
    """Count how often each pair of neighbouring ids occurs.

    [1, 2, 3, 1, 2] -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}

    `counts` lets the caller add into an existing dict; `weight` counts the list that many times
    (used when one chunk of text occurs `weight` times in the training data).
    """
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


# ---------------------------------------------------------------------------------------------
# Step 2: merging a pair into a new token
# ---------------------------------------------------------------------------------------------

def merge(ids, pair, new_id):
    """Replace every occurrence of `pair` in `ids`, left to right, by `new_id`.

    merge([1, 2, 3, 1, 2], (1, 2), 256) -> [256, 3, 256]
    merge([5, 5, 5], (5, 5), 256) -> [256, 5]   (overlaps: the leftmost pair wins)
    """
    a, b = pair
    out = []
    i, n = 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


# ---------------------------------------------------------------------------------------------
# Step 3: training: merge the most common pair, again and again
# ---------------------------------------------------------------------------------------------
# Training is steps 1 and 2 in a loop: count the pairs, merge the most common one into token
# 256 + r, repeat until the vocabulary has the size asked for. The text arrives as chunks
# (step 5 below cuts it; think of a chunk as a word), each counted once with how often it occurs.

def learn_merges(chunk_counts, n_merges, progress=False):
    """The fast trainer: chunk_counts {chunk text: count} -> merges [(a, b), ...], merge r
    making token 256 + r. The textbook loop is: count all pairs in all the text,
    merge the best one, count all pairs again... Each recount reads everything, and there
    are thousands of merges. Instead:

    - work on distinct chunks with their counts ("the": 51,000), not on the raw text;
    - keep `pair_counts` for all pairs, and `where[pair]` = the chunks holding the pair;
    - after a merge, only the chunks in `where[best]` change. Subtract their old pairs,
      add their new pairs (times the chunk's count): every other count is still right;
    - find the best pair with a heap instead of scanning all pairs. When a count changes
      we push the new (count, pair) and leave the old entry in the heap; popping an entry
      whose count is no longer the pair's current count just discards it ("lazy deletion").

    Tie-break rule, for determinism: among pairs with the same count, the pair (a, b) with
    the smallest (a, b) wins (compare a first, then b). That is exactly the order of the
    heap's (-count, a, b) tuples, so it never depends on dict/set order or PYTHONHASHSEED.
    """
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]   # chunk -> byte ids
    freqs = list(chunk_counts.values())                              # chunk -> its count
    pair_counts, where = {}, collections.defaultdict(set)  # where: pair -> chunks that hold it
    for w, (ids, f) in enumerate(zip(words, freqs)):
        for pair in zip(ids, ids[1:]):
            pair_counts[pair] = pair_counts.get(pair, 0) + f
            where[pair].add(w)
    heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    merges = []
    bar = tqdm(total=n_merges, desc="merging", unit=" merges", disable=not progress) \
        if tqdm else None
    while len(merges) < n_merges and heap:
        neg, a, b = heapq.heappop(heap)
        best = (a, b)
        if pair_counts.get(best) != -neg:
            continue  # a stale heap entry: the pair's count changed since it was pushed
        new_id = 256 + len(merges)
        merges.append(best)
        delta = {}  # pair -> change of its count, from all the chunks touched by this merge
        for w in where.pop(best):
            ids = words[w]
            new = merge(ids, best, new_id)
            if len(new) == len(ids):
                continue  # the chunk lost this pair in an earlier merge ("where" may lag)
            f = freqs[w]
            for pair in zip(ids, ids[1:]):
                delta[pair] = delta.get(pair, 0) - f
            for pair in zip(new, new[1:]):
                delta[pair] = delta.get(pair, 0) + f
                where[pair].add(w)
            words[w] = new
        for pair, d in delta.items():
            if d == 0:
                continue
            c = pair_counts.get(pair, 0) + d
            if c > 0:
                pair_counts[pair] = c
                heapq.heappush(heap, (-c, pair[0], pair[1]))
            else:
                pair_counts.pop(pair, None)
                where.pop(pair, None)
        pair_counts.pop(best, None)  # every occurrence is merged now
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return merges


# ---------------------------------------------------------------------------------------------
# Step 4: encoding a chunk, by replaying the merges (and decoding: joining the tokens' bytes)
# ---------------------------------------------------------------------------------------------
# Each merge has a rank (its position in the list: the order it was learned in). To encode a
# chunk, start from its bytes and keep merging the neighbouring pair with the lowest rank, the
# leftmost one among equals, until no pair has a merge. This is exactly what Hugging Face
# `tokenizers` does; a heap finds the next pair without rescanning the whole chunk, which matters
# for long chunks (a Chinese sentence with no spaces is one chunk of hundreds of bytes). A short
# chunk (most are) is faster rescanned.
# Decoding needs no algorithm: each id stands for its bytes; join them and read UTF-8.

def apply_merges(ids, ranks):
    """ids: a chunk's tokens; ranks: (left, right) -> (rank, merged id). Returns the merged ids.

    ranks = {(97, 97): (0, 256), (256, 98): (1, 257)}
    apply_merges([97, 97, 97, 98], ranks) -> [256, 97, 98]   "aa" first, leftmost; no "ab"
    apply_merges([97, 97, 98], ranks) -> [257]               "aa", then "aa"+"b"
    """
    ids, n, get = list(ids), len(ids), ranks.get
    if n <= 10:  # short: rescanning the pairs (min and index run in C) beats building a heap
        no_merge = (float("inf"), -1)   # after every rank
        while len(ids) > 1:
            pairs = [get(p, no_merge) for p in zip(ids, ids[1:])]
            best = min(pairs)           # the lowest rank; index: the leftmost such pair
            if best is no_merge:
                break
            i = pairs.index(best)
            ids[i:i + 2] = [best[1]]
        return ids
    nxt = list(range(1, n + 1))     # nxt[i]: the position of the token after i (n: none)
    prv = list(range(-1, n - 1))    # prv[i]: the position of the token before i (-1: none)
    heap = [(r[0], i, r[1]) for i, p in enumerate(zip(ids, ids[1:])) if (r := get(p))]
    heapq.heapify(heap)
    while heap:
        _, i, new = heapq.heappop(heap)
        j = nxt[i]
        if ids[i] is None or j >= n:
            continue  # token i was merged into its left neighbour, or is now the last one
        now = get((ids[i], ids[j]))
        if now is None or now[1] != new:
            continue  # an old heap entry: the pair at i has changed since it was pushed
        ids[i], ids[j] = new, None      # merge: i takes the new token, j is gone
        k = nxt[i] = nxt[j]
        # the merged token makes new pairs with its neighbours (get: one dict lookup, not two)
        if k < n:
            prv[k] = i
            if r := get((new, ids[k])):
                heapq.heappush(heap, (r[0], i, r[1]))
        if prv[i] >= 0 and (r := get((ids[prv[i]], new))):
            heapq.heappush(heap, (r[0], prv[i], r[1]))
    return [t for t in ids if t is not None]


# ---------------------------------------------------------------------------------------------
# Step 5: cutting text into chunks before BPE sees it (the regex split)
# ---------------------------------------------------------------------------------------------
# Without a pre-split, BPE happily learns tokens like "dog." and "dog!" and "dog?", wasting the
# vocabulary on every word+punctuation combination. GPT-4 first cuts text with this pattern and
# runs BPE inside each chunk only. \p{L} is any letter (in any script), \p{N} any number:
GPT4_SPLIT_PATTERN = "|".join([
    r"'(?i:[sdmt]|ll|ve|re)",           # English contractions: 's 't 'll 've 're 'm 'd
    r"[^\r\n\p{L}\p{N}]?+\p{L}+",       # a word, with one leading space or symbol
    r"\p{N}{1,3}",                      # numbers, at most 3 digits per chunk
    r" ?[^\s\p{L}\p{N}]++[\r\n]*",      # punctuation runs, with one leading space
    r"\s*[\r\n]",                       # line breaks (with the spaces before them)
    r"\s+(?!\S)",                       # spaces, but leave the last one for the next word
    r"\s+",                             # any other spaces
])

# Python's `re` has neither \p{L} nor \p{N}: unicode_regex.py, a companion, writes each class out
# as the character ranges it stands for, so `re` cuts text exactly as `tokenizers` does.

@functools.lru_cache(maxsize=64)
def compile_split(pattern, syntax="tokenizers"):
    """A split pattern -> a function that cuts a text into its chunks: the pattern's matches and
    the stretches between them, in order, none empty (the "Isolated" split of `tokenizers`; the
    patterns above match every character, so there the stretches never occur):
        compile_split(GPT4_SPLIT_PATTERN)("Hello world's 12345") ->
            ["Hello", " world", "'s", " ", "123", "45"]
        compile_split(r"\\p{N}")("ab12c") -> ["ab", "1", "2", "c"]
    syntax "tokenizers": \\p{L} and friends, as tokenizer.json writes them (unicode_regex.py);
    "python": a version-1 file's pattern (tokenizer_v1.py), for `re` as it is, used with findall
    as it always was.
    """
    if syntax == "python":
        return re.compile(pattern).findall
    if syntax != "tokenizers":
        raise ValueError(f"unknown pattern syntax {syntax!r}")
    return isolated_split(pattern)


# ---------------------------------------------------------------------------------------------
# Step 6: special tokens, found whole before any splitting
# ---------------------------------------------------------------------------------------------
# Special tokens are found in the text before anything else, so the split pattern never
# sees them: "<|im_start|>user" is <|im_start|>, then "user".

@functools.lru_cache(maxsize=64)
def name_regex(names):
    """A regex matching any of the names, longest first (so a name that contains another wins);
    the capturing group makes re.split keep the names."""
    return re.compile("(" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
                      + ")")


def cut_at_names(text, names):
    """Yield (piece, is_name) for the text cut at the names (the leftmost, then the longest):
    ("a<|x|>b", {"<|x|>"}) -> ("a", False), ("<|x|>", True), ("b", False)"""
    if not names:
        if text:
            yield text, False
        return
    for i, piece in enumerate(name_regex(names).split(text)):
        if piece:
            yield piece, i % 2 == 1  # odd positions are the separators, i.e. the names


# ---------------------------------------------------------------------------------------------
# Step 7: writing any byte as a printable character (GPT-2's byte-level alphabet)
# ---------------------------------------------------------------------------------------------
# A token is bytes, often not valid UTF-8 on its own (half of an "é"). To store tokens as JSON
# strings that a person can read, GPT-2 gave each byte a printable character: the printable ones
# stand for themselves ("A", "!", "é"), the 68 others (controls, space, ...) take the characters
# from U+0100 on. So a space is "Ġ" and a newline "Ċ": " the" is stored as "Ġthe". Every
# tokenizer.json of a byte-level BPE (and GGUF files, and our own files) writes tokens this way.

def bytes_to_unicode():
    """GPT-2's table, byte -> character.  65 -> "A", 32 -> "Ġ", 10 -> "Ċ", 0 -> "Ā" """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {ord(c): b for b, c in BYTE_TO_CHAR.items()}   # (keyed by ord, for str.translate)
NOT_BYTE_LEVEL = re.compile("[^" + re.escape("".join(BYTE_TO_CHAR.values())) + "]")

# Both directions go through latin-1, the encoding where byte b is the character chr(b), so that
# str.translate does the work in C: that matters for 150,000-token vocabularies.


def to_byte_level(data):
    """bytes -> the string that stands for them.  b" caf\\xc3\\xa9" -> "ĠcafÃ©" """
    return data.decode("latin-1").translate(BYTE_TO_CHAR)


def from_byte_level(text):
    """The reverse: "ĠcafÃ©" -> b" caf\\xc3\\xa9"; None if a character is not in the alphabet."""
    if NOT_BYTE_LEVEL.search(text):
        return None
    return text.translate(CHAR_TO_BYTE).encode("latin-1")


# ---------------------------------------------------------------------------------------------
# Step 8: the Tokenizer: vocabulary, training, encode/decode, special tokens, save/load
# ---------------------------------------------------------------------------------------------

class Tokenizer:
    """A byte-level BPE tokenizer: a vocabulary (id -> bytes), merges in rank order, split
    patterns, special tokens. Made by Tokenizer.train(...), Tokenizer.load(path) or, from a
    released model's tokenizer.json, hf_tokenizer.from_hf(path); not by the constructor."""

    def __init__(self, vocab, merges, added_tokens=(), *, split=(GPT4_SPLIT_PATTERN,),
                 syntax="tokenizers", normalizer=None, ignore_merges=False,
                 bos_added=(), eos_added=()):
        """vocab: {id: bytes} of the ordinary tokens, those BPE builds; all 256 single bytes
        are among them. merges: [(left, right, merged)] ids, in rank order.
        added_tokens: [(id, name, special, normalized)], tokens found whole in the text before
        any splitting: special ones (<|endoftext|>) only when encode() is told to, the others
        always; `normalized`: looked for after the normalizer ran, not before.
        split: regexes applied one after the other, each cutting every chunk further.
        syntax: "tokenizers" (\\p{L} ... as tokenizer.json writes them) or "python" (version 1).
        normalizer: None, "NFC", "NFKC", ... ignore_merges: a chunk that is one whole token in the
        vocabulary becomes that token (Llama 3). bos_added, eos_added: see hf_tokenizer.from_hf.
        """
        self.split_patterns, self.syntax = list(split), syntax
        self._splitters = [compile_split(p, syntax) for p in self.split_patterns]
        self.normalizer, self.ignore_merges = normalizer, ignore_merges
        self.bos_added, self.eos_added = (x if x is None else [*x] for x in (bos_added, eos_added))
        self.vocab = dict(vocab)    # id -> bytes, the ordinary tokens
        self._ordinary = {}         # bytes -> id (if two ids share bytes, the lower one)
        for id in sorted(self.vocab):
            self._ordinary.setdefault(self.vocab[id], id)
        # A byte without a token (SmolLM2 has none for 21 bytes text hardly holds, 0xff, 0x04 ...)
        # is dropped where it occurs, as by `tokenizers` (without an unk token) and llama.cpp.
        self._byte_ids = [self._ordinary.get(bytes([b])) for b in range(256)]
        # merges[r] = (a, b) joins token a and token b into token merged[r]. The rank r is the
        # priority at encode time: earlier merges are applied first. A pair listed twice keeps
        # its later rank, as in `tokenizers`.
        self.merges = [(a, b) for a, b, _ in merges]
        self.merged = [m for _, _, m in merges]
        self._ranks = {(a, b): (r, m) for r, (a, b, m) in enumerate(merges)}
        self._vocab = [None] * (max(self.vocab) + 1)  # id -> bytes, for decoding
        for id, data in self.vocab.items():
            self._vocab[id] = data
        self.special_tokens, self.added_tokens = {}, {}   # name -> id
        self._name_ids, self._special_by_id, self._normalized = {}, {}, set()
        for id, name, special, normalized in added_tokens:
            self._add_token(id, name, special, normalized)
        self._cache = {}  # chunk text -> its ids; text repeats the same words over and over

    def _add_token(self, id, name, special, normalized=False):
        (self.special_tokens if special else self.added_tokens)[name] = id
        self._name_ids[name] = id
        if special:
            self._special_by_id[id] = name
        if normalized:
            self._normalized.add(name)
        if id >= len(self._vocab):
            self._vocab.extend([None] * (id + 1 - len(self._vocab)))
        self._vocab[id] = from_byte_level(name) or name.encode("utf-8")  # what tokenizers do

    @classmethod
    def from_merges(cls, merges, special_tokens=(), pattern=GPT4_SPLIT_PATTERN,
                    syntax="tokenizers"):
        """The layout of the tokenizers trained here: ids 0..255 are the bytes, merge r makes
        id 256 + r, the special tokens follow.  merges: [(a, b), ...]"""
        vocab = {i: bytes([i]) for i in range(256)}
        for r, (a, b) in enumerate(merges):
            vocab[256 + r] = vocab[a] + vocab[b]
        first = 256 + len(merges)
        return cls(vocab, [(a, b, 256 + r) for r, (a, b) in enumerate(merges)],
                   [(first + i, name, True, False) for i, name in enumerate(special_tokens)],
                   split=[pattern], syntax=syntax)

    # -- training ------------------------------------------------------------------------------

    @classmethod
    def train(cls, text_or_iterable_of_texts, vocab_size, special_tokens=None, *, progress=False):
        """Learn merges from text until the vocabulary has `vocab_size` ids in total
        (256 bytes + merges + special tokens). Give one string, or any iterable of strings
        (a list of documents, a generator reading a huge file): documents are read one at a
        time, so the text never has to fit in memory, only its distinct chunks.

        special_tokens: list of names, default SPECIAL_TOKENS; [] for none.
        """
        special_tokens = list(SPECIAL_TOKENS if special_tokens is None else special_tokens)
        if len(set(special_tokens)) != len(special_tokens) or not all(
                isinstance(s, str) and s for s in special_tokens):
            raise UserError(f"special_tokens must be distinct non-empty strings: {special_tokens}")
        n_merges = vocab_size - 256 - len(special_tokens)
        if n_merges < 0:
            raise UserError(f"vocab_size {vocab_size} is too small: it must hold the 256 byte "
                            f"tokens and {len(special_tokens)} special tokens")
        texts = [text_or_iterable_of_texts] if isinstance(text_or_iterable_of_texts, str) \
            else text_or_iterable_of_texts

        # (a) Count the distinct chunks. " the" may occur a million times but is stored once
        # with its count, and the number of distinct chunks grows far more slowly than the
        # text, so all later work scales with the distinct chunks, not with the size of text.
        # Special-token names are cut out first: they get their own ids, and letting "<|" or
        # "endoftext" become ordinary merges would waste vocabulary.
        split = compile_split(GPT4_SPLIT_PATTERN)
        cut = re.compile("|".join(re.escape(s) for s in special_tokens)) if special_tokens else None
        chunk_counts = Counter()
        bar = tqdm(texts, desc="counting chunks", unit=" docs", disable=not progress) \
            if tqdm else texts
        for text in bar:
            if not isinstance(text, str):
                raise TypeError(f"training data must be strings, got {type(text).__name__}")
            for part in (cut.split(text) if cut else (text,)):
                chunk_counts.update(split(part))
        if not chunk_counts:
            raise UserError("no text to train on")

        merges = learn_merges(chunk_counts, n_merges, progress)
        if len(merges) < n_merges:
            print(f"bpe: the text ran out of pairs to merge after {len(merges)} merges; "
                  f"vocab_size is {256 + len(merges) + len(special_tokens)}, not {vocab_size}",
                  file=sys.stderr)
        return cls.from_merges(merges, special_tokens)

    # -- sizes and lookups ---------------------------------------------------------------------

    @property
    def vocab_size(self):
        """Number of ids: the largest id + 1 (bytes, merges and special tokens, and any ids a
        released tokenizer leaves unused), so the rows of a model's embedding table."""
        return len(self._vocab)

    def is_special(self, id):
        return id in self._special_by_id

    def id_to_bytes(self, id):
        """The bytes a token stands for. A special token gives its name's UTF-8 bytes
        (b"<|endoftext|>"), although no text encodes to it by default; so code that counts the
        bytes behind a prediction (eval.py's bits per byte) checks is_special(id) and counts
        special tokens as zero bytes of text."""
        if not 0 <= id < len(self._vocab):
            raise ValueError(f"token id {id} is outside this tokenizer (vocab_size "
                             f"{self.vocab_size})")
        if self._vocab[id] is None:
            raise ValueError(f"token id {id} stands for nothing in this tokenizer (unused)")
        return self._vocab[id]

    def reserve(self, vocab_size):
        """Make ids up to vocab_size - 1 exist, standing for nothing: a released model often has
        more embedding rows than its tokenizer has tokens (Qwen2.5: 151,936 for 151,665), and a
        run directory's tokenizer counts as many ids as its model has rows."""
        if vocab_size > len(self._vocab):
            self._vocab.extend([None] * (vocab_size - len(self._vocab)))

    def add_special_tokens(self, names):
        """Give each name a new special id at the end of the vocabulary and return the ids; a
        name that is already special keeps its id. A GPT-2 import has no chat markers, so a chat
        fine-tune adds them (and grows the model's embedding table to the new vocab_size):
            tok.add_special_tokens(["<|im_start|>", "<|im_end|>"]) -> [50257, 50258]"""
        ids = []
        for name in names:
            if not isinstance(name, str) or not name:
                raise UserError(f"a special token must be a non-empty string, not {name!r}")
            if name in self.added_tokens:
                raise UserError(f"{name!r} is already an added (not special) token")
            if name not in self.special_tokens:
                self._add_token(self.vocab_size, name, True)
            ids.append(self.special_tokens[name])
        return ids

    # -- encoding ------------------------------------------------------------------------------

    def _encode_chunk(self, chunk):
        """One chunk -> ids: its bytes, merged (or, with ignore_merges, one whole token)."""
        data = chunk.encode("utf-8")
        if self.ignore_merges and data in self._ordinary:
            return [self._ordinary[data]]
        ids = list(map(self._byte_ids.__getitem__, data))  # map: the loop runs in C
        return apply_merges([i for i in ids if i is not None] if None in ids else ids, self._ranks)

    def split_text(self, text):
        """The chunks BPE works on: `text` cut by each split pattern in turn (no normalizer, no
        special tokens).  "Hello world's 12345" -> ["Hello", " world", "'s", " ", "123", "45"]"""
        chunks = self._splitters[0](text) if self._splitters else [text] if text else []
        for split in self._splitters[1:]:
            chunks = [small for chunk in chunks for small in split(chunk)]
        return chunks

    def _encode_plain(self, text):
        """Text without special tokens: split into chunks, encode each (remembering chunks)."""
        out, cache = [], self._cache
        for chunk in self.split_text(text):
            ids = cache.get(chunk)
            if ids is None:
                ids = self._encode_chunk(chunk)
                if len(cache) >= 200_000:  # keep memory bounded on endless streams of text
                    cache.clear()
                cache[chunk] = ids
            out.extend(ids)
        return out

    def _encode(self, text, specials):
        """Find the allowed special names and the added tokens in the text, normalize the rest,
        encode it. The order is that of `tokenizers`: names matched in the raw text first, then
        normalization, then the names marked `normalized`, then splitting and BPE."""
        names = frozenset([*specials, *self.added_tokens])
        late = names & self._normalized
        raw = names - late
        ids = self._name_ids
        out = []
        for piece, is_name in cut_at_names(text, raw):
            if is_name:
                out.append(ids[piece])
                continue
            if self.normalizer:
                piece = unicodedata.normalize(self.normalizer, piece)
            for part, is_name in cut_at_names(piece, late):
                if is_name:
                    out.append(ids[part])
                else:
                    out.extend(self._encode_plain(part))
        return out

    def encode_ordinary(self, text):
        """Encode text, treating special-token names as ordinary text. (A released tokenizer's
        added tokens that are not special, like Qwen's <tool_call>, are still found whole, as
        `tokenizers` always does.)"""
        return self._encode(text, ())

    def encode(self, text, allowed_special="none_raise"):
        """Text -> list of ids. What to do with special-token names found in `text`:

        "none_raise" (default): raise ValueError; user text that contains "<|endoftext|>" is
                      usually a mistake or an injection attempt, so say so loudly.
        "none":       encode them as ordinary text (several normal tokens).
        "all":        turn each into its special id (what `tokenizers` does by default).
        a set:        turn those named into special ids, the others are ordinary text.
        """
        if allowed_special == "all":
            allowed = set(self.special_tokens)
        elif allowed_special in ("none", "none_raise"):
            allowed = set()
            if allowed_special == "none_raise":
                found = [name for name in self.special_tokens if name in text]
                if found:
                    raise ValueError(
                        f"text contains special token {found[0]!r}; pass allowed_special='all' to "
                        f"encode it as a special token, or 'none' to encode it as plain text")
        elif isinstance(allowed_special, (set, frozenset, list, tuple)):
            allowed = set(allowed_special)
            unknown = allowed - set(self.special_tokens)
            if unknown:
                raise ValueError(f"unknown special tokens {sorted(unknown)}; "
                                 f"this tokenizer has {list(self.special_tokens)}")
        else:
            raise ValueError(f"allowed_special must be 'all', 'none', 'none_raise' or a set, "
                             f"not {allowed_special!r}")
        return self._encode(text, allowed)

    # -- decoding ------------------------------------------------------------------------------

    def decode_bytes(self, ids):
        """ids -> the exact bytes they stand for (special tokens as their names)."""
        vocab, n = self._vocab, len(self._vocab)
        parts = []
        for i in ids:
            data = vocab[i] if 0 <= i < n else None
            parts.append(data if data is not None else self.id_to_bytes(i))  # or a clear error
        return b"".join(parts)

    def decode(self, ids):
        """ids -> text. A model can emit ids whose bytes are not valid UTF-8 (half of a "é",
        or a generation cut in the middle of an emoji); those become U+FFFD "�" instead of
        raising, because crashing a chat on one odd token helps nobody."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def piece(self, id):
        """A token as readable text, for display: 'Hello', ' world', '\\xe2\\x80'."""
        return self.id_to_bytes(id).decode("utf-8", errors="backslashreplace")

    # -- saving and loading: one JSON file a person can open (step 9 shows it) ----------------

    def save(self, path):
        if self.syntax == "python":  # loaded from a version-1 file: written as version 1 again
            from tokenizer_v1 import v1_lines
            lines = v1_lines(self, FORMAT_NAME)
        else:
            lines = v2_lines(self)
        # A temporary file renamed over the target in one step: a crash never leaves half a file.
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def added_list(self):
        """[(id, name, special, normalized)] of the added tokens, by id."""
        names = {**self.added_tokens, **self.special_tokens}
        return sorted((id, name, name in self.special_tokens, name in self._normalized)
                      for name, id in names.items())

    @classmethod
    def load(cls, path):
        """Read a file written by save(), version 1 or 2. Anything else raises UserError naming
        the file and what is wrong, instead of a KeyError deep inside this class."""
        def bad(why):
            return UserError(f"{path}: {why}")
        data = read_json(path)
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            hint = ""
            if isinstance(data, dict) and "model" in data and "pre_tokenizer" in data:
                hint = (" (it looks like a Hugging Face tokenizer.json: hf_tokenizer.from_hf "
                        "reads it)")
            raise bad(f"not an slm tokenizer file{hint}: expected \"format\": \"{FORMAT_NAME}\"")
        if data.get("version") == 1:
            from tokenizer_v1 import read_v1  # an older bpe.py's file: a companion reads it
            return cls.from_merges(*read_v1(data, bad), syntax="python")
        if data.get("version") == 2:
            return read_v2(data, bad)
        raise bad(f"format version {data.get('version')!r} is not supported (this bpe.py reads "
                  f"1 and 2; 3, SentencePiece-style: sentencepiece_bpe.load_tokenizer)")


# ---------------------------------------------------------------------------------------------
# Step 9: the saved file
# ---------------------------------------------------------------------------------------------
# One JSON file a person can open. Version 2 (what save() writes) holds everything:
#
#   {"format": "slm-bpe", "version": 2,
#    "normalizer": null,                       (or "NFC", "NFKC", "NFD", "NFKD")
#    "split": ["<regex>", ...],                (in tokenizer.json's syntax, applied in order)
#    "ignore_merges": false,
#    "bos_added": [], "eos_added": [],         (what the released tokenizer's post-processor
#                                               adds around a text; never added by encode)
#    "vocab_size": 4096,                       (ids past the last token stand for nothing)
#    "added_tokens": [                         (special or not, one per line)
#      {"id": 4093, "content": "<|endoftext|>", "special": true, "normalized": false}, ...],
#    "vocab": {                                (id -> its bytes in GPT-2's alphabet, one per
#      "0": "Ā", ..., "32": "Ġ", ..., "256": "Ġt", ...},    line; ids of special tokens have
#                                               no entry unless BPE knows them too, as GPT-2)
#    "merges": [                               (rank order: [left, right, merged] ids)
#      [32, 116, 256], ...]}
#
# Version 1, the file of an older bpe.py, is still read and written: see tokenizer_v1.py.


def v2_lines(tok):
    """A tokenizer -> the lines of its version-2 file (above), one token or merge a line."""
    def dump(value):
        return json.dumps(value, ensure_ascii=False)
    added = [dump({"id": id, "content": name, "special": special, "normalized": normalized})
             for id, name, special, normalized in tok.added_list()]
    vocab = [f'    "{id}": {dump(to_byte_level(data))}'
             for id, data in sorted(tok.vocab.items())]
    merges = [f"    [{a}, {b}, {m}]" for (a, b), m in zip(tok.merges, tok.merged)]
    header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "normalizer": tok.normalizer,
              "split": tok.split_patterns, "ignore_merges": tok.ignore_merges,
              "bos_added": tok.bos_added, "eos_added": tok.eos_added, "vocab_size": tok.vocab_size}
    return ["{", *(f"  {dump(key)}: {dump(value)}," for key, value in header.items()),
            '  "added_tokens": [', ",\n".join(f"    {line}" for line in added), "  ],",
            '  "vocab": {', ",\n".join(vocab), "  },",
            '  "merges": [', ",\n".join(merges), "  ]", "}"]


def read_v2(data, bad):
    """A version-2 file's parsed JSON -> its Tokenizer; bad(why) makes the UserError that names
    the file."""
    split, normalizer = data.get("split"), data.get("normalizer")
    if not isinstance(split, list) or not all(isinstance(p, str) for p in split):
        raise bad('"split" must be a list of regular expressions')
    for p in split:
        try:
            compile_split(p)
        except (ValueError, re.error) as e:
            raise bad(f'"split" pattern {p!r} cannot be used: {e}') from None
    if normalizer not in (None, "NFC", "NFKC", "NFD", "NFKD"):
        raise bad(f'"normalizer" must be null or "NFC", "NFKC", "NFD", "NFKD", not {normalizer!r}')
    vocab = read_v2_vocab(data.get("vocab"), bad)
    merges = read_v2_merges(data.get("merges"), vocab, bad)
    added = read_v2_added_tokens(data.get("added_tokens"), vocab, bad)
    known = set(vocab) | {t[0] for t in added}
    for key in ("bos_added", "eos_added"):
        value = data.get(key, [])
        if value is not None and not (isinstance(value, list) and set(value) <= known):
            raise bad(f'"{key}" must be null or a list of ids of this tokenizer')
    if not isinstance(data.get("ignore_merges", False), bool):
        raise bad('"ignore_merges" must be true or false')
    try:
        tok = Tokenizer(vocab, merges, added, split=split, normalizer=normalizer,
                        ignore_merges=data.get("ignore_merges", False),
                        bos_added=data.get("bos_added", []),
                        eos_added=data.get("eos_added", []))
    except ValueError as e:
        raise bad(str(e)) from None
    size = data.get("vocab_size", tok.vocab_size)  # ids past the last token stand for nothing
    if type(size) is not int or size < tok.vocab_size:
        raise bad(f'"vocab_size" must be an integer of at least {tok.vocab_size}, not {size!r}')
    tok.reserve(size)
    return tok


# Helpers of Tokenizer.load and read_v2: reading JSON, and checking a version-2 file's parts.

def read_json(path):
    """A JSON file -> its value; UserError("<path>: ...") if it cannot be read or parsed."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a valid JSON file ({e})") from None


def read_v2_vocab(vocab, bad):
    """{"97": "a", "256": "Ġt"} -> {97: b"a", 256: b" t"}"""
    if not isinstance(vocab, dict):
        raise bad('"vocab" must map ids to tokens')
    out = {}
    for key, text in vocab.items():
        data = from_byte_level(text) if isinstance(text, str) else None
        if not (key.isascii() and key.isdigit()) or not data:
            raise bad(f'"vocab" entry "{key}": {text!r}; expected "id": "a token in the '
                      f'byte-level alphabet"')
        out[int(key)] = data
    return out


def read_v2_merges(merges, vocab, bad):
    """[[97, 97, 256], ...] -> [(97, 97, 256), ...], each merged token being its halves' bytes."""
    if not isinstance(merges, list):
        raise bad('"merges" must be a list of [left, right, merged] ids')
    out = []
    for r, m in enumerate(merges):
        ok = (isinstance(m, list) and len(m) == 3 and all(type(x) is int and x in vocab for x in m)
              and vocab[m[2]] == vocab[m[0]] + vocab[m[1]])
        if not ok:
            raise bad(f"merge {r} is {m!r}; expected [left, right, merged], three ids of the "
                      f"vocab, the merged token's bytes being the left's then the right's")
        out.append(tuple(m))
    return out


def read_v2_added_tokens(items, vocab, bad):
    """[{"id", "content", "special", "normalized"}, ...] -> [(id, name, special, normalized)]"""
    if not isinstance(items, list):
        raise bad('"added_tokens" must be a list')
    out, names, ids = [], set(), set()
    for k, t in enumerate(items):
        ok = (isinstance(t, dict) and isinstance(t.get("content"), str) and t["content"]
              and type(t.get("id")) is int and t["id"] >= 0 and isinstance(t.get("special"), bool)
              and isinstance(t.get("normalized", False), bool))
        if not ok:
            raise bad(f'added token {k} is {t!r}; expected {{"id": ..., "content": "...", '
                      f'"special": true/false, "normalized": true/false}}')
        id, name = t["id"], t["content"]
        if name in names or id in ids:
            raise bad(f"added token {name!r} (id {id}): that name or id is listed twice")
        if id in vocab and vocab[id] != (from_byte_level(name) or name.encode("utf-8")):
            raise bad(f"added token {name!r} has id {id}, which the vocab gives to "
                      f"{to_byte_level(vocab[id])!r}")
        names.add(name)
        ids.add(id)
        out.append((id, name, t["special"], t.get("normalized", False)))
    return out


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def jsonl_objects(path, lines):
    """(lineno, value) of each non-blank (lineno, line) of a .jsonl file."""
    for lineno, line in lines:
        if line.strip():
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def read_texts(paths):
    """Yield documents from .txt and .jsonl files (one {"text": ...} object a line, read a line at
    a time). A .txt file is one document, or several separated by <|endoftext|> (as TinyStories
    ships). A malformed line or a byte that is not UTF-8 raises UserError naming file and line."""
    for path in map(str, paths):
        if not os.path.isfile(path):
            raise UserError(f"{path}: no such file")
        try:
            if path.endswith(".jsonl"):
                with open(path, encoding="utf-8") as f:
                    for lineno, obj in jsonl_objects(path, enumerate(f, 1)):
                        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                            raise UserError(f'{path}:{lineno}: not an object with a "text" string')
                        yield obj["text"]
            else:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                yield from (doc.strip() for doc in text.split("<|endoftext|>") if doc.strip())
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def demo():
    """What this file does pasted into a notebook cell (after unicode_regex.py's): train a small
    tokenizer on Python's own documentation (every Python ships it, nothing is downloaded)."""
    try:
        import pydoc_data.topics
        topics = pydoc_data.topics.topics
        text = "\n\n".join(topics[k] for k in sorted(topics))[:100_000]
    except ImportError:  # pragma: no cover (a Python built without its help topics)
        text = __doc__ * 30
    tok = Tokenizer.train(text, vocab_size=512)
    print(f"bpe.py demo: a {tok.vocab_size}-token BPE trained on {len(text):,} characters of "
          f"Python's help topics")
    for s in ["Hello, world!", "for i in range(10):\n    print(i ** 2)",
              "naïve café, 日本語 🙂", "<|im_start|>user\nHi!<|im_end|>"]:
        ids = tok.encode(s, allowed_special="all")
        print(f"\n{s!r}: {len(s.encode('utf-8'))} bytes -> {len(ids)} tokens\n  {ids}\n  "
              + " ".join(f"[{tok.piece(i)}]".replace("\n", "\\n") for i in ids))
        assert tok.decode(ids) == s
    print("\ndecode(encode(text)) gave back each text exactly. Next: Tokenizer.train(your_text, "
          "4096), or python bpe.py --help")
    return 0


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a mistake raises UserError (one `error:` line, status 2) instead
    of printing the usage and exiting."""

    def error(self, message):
        raise UserError(message)


def main(argv=None):
    """The command line; main([...]) works from Python too. A notebook kernel's own arguments
    ("-f kernel.json") are not ours: pasted whole into a notebook cell, this file runs main()
    with nothing else to do, and shows demo()."""
    notebook = "ipykernel" in sys.modules
    argv = sys.argv[1:] if argv is None else list(argv)
    if notebook and argv[:1] == ["-f"]:
        argv = argv[2:]
    if notebook and not argv:
        return demo()
    p = ArgumentParser(allow_abbrev=False,  # "--vocab 300" is a typo, not --vocab-size
                       description="Train a byte-level BPE tokenizer, or show how one "
                                   "encodes text.")
    p.add_argument("--input", nargs="+", metavar="FILE", help="training text: .txt or .jsonl files")
    p.add_argument("--vocab-size", type=int, default=4096,
                   help="total ids: 256 bytes + merges + special tokens (default 4096)")
    p.add_argument("--out", default="tokenizer.json", help="where to save (default tokenizer.json)")
    p.add_argument("--tokenizer", metavar="FILE", help="a saved tokenizer, to use with --encode")
    p.add_argument("--encode", metavar="TEXT", help="show the tokens of TEXT")
    try:
        args = p.parse_args(argv)
        if args.encode is not None:
            tok = Tokenizer.load(args.tokenizer or args.out)
            ids = tok.encode(args.encode, allowed_special="all")
            print(" ".join(f"[{tok.piece(i)}]" for i in ids))
            print(ids)
            print(f"{len(args.encode.encode('utf-8'))} bytes -> {len(ids)} tokens")
            return 0
        if not args.input:
            raise UserError("give --input FILE ... to train, or --tokenizer FILE --encode TEXT")
        if not any(read_texts(args.input)):  # stops at the first document that holds text
            raise UserError(f"{', '.join(args.input)}: no text to train on")
        # Documents stream from disk one at a time; a malformed line stops training with an
        # error before save() runs, so nothing is written.
        t0 = time.time()
        tok = Tokenizer.train(read_texts(args.input), args.vocab_size, progress=True)
        seconds = time.time() - t0
        n_bytes = n_tokens = 0
        for text in read_texts(args.input):  # second pass: measure the compression
            n_bytes += len(text.encode("utf-8"))
            n_tokens += len(tok.encode_ordinary(text))
        tok.save(args.out)
        print(f"trained vocab {tok.vocab_size} on {n_bytes:,} bytes in {seconds:.1f}s; "
              f"{n_bytes / max(n_tokens, 1):.2f} bytes/token; saved {args.out}")
        return 0
    except (UserError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    status = main()
    if "ipykernel" not in sys.modules:  # in a notebook, SystemExit would only print a warning
        sys.exit(status)
