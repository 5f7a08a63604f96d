"""bpe.py: a byte-level BPE tokenizer written from scratch (book chapter 4).

A language model reads integers, not text. This file turns text into integers and back with
byte-pair encoding (BPE), the scheme used by GPT-2, GPT-4, Llama and MiniMind:

1. Text is UTF-8 bytes, so any string is a list of integers 0..255 (the 256 base tokens).
2. Count which pair of neighbouring tokens is most common.
3. Merge that pair into a new token, everywhere, and remember the merge. Repeat.
4. Before counting, cut the text into chunks (words, numbers, punctuation, spaces) with a
   regular expression, so merges never glue a word to the punctuation after it.
5. Reserve special tokens such as <|endoftext|> that the model sees but text can never produce.
6. Save the merges to a JSON file, load them back.
7. Train fast: keep the pair counts up to date after each merge instead of recounting.

Run it:

    python bpe.py --input book.txt --vocab-size 4096 --out tokenizer.json
    python bpe.py --tokenizer tokenizer.json --encode "Hello, world!"

or from Python (a notebook cell can hold this whole file, it imports nothing from the project):

    tok = Tokenizer.train(text, vocab_size=4096)
    ids = tok.encode("Hello, world!")
    assert tok.decode(ids) == "Hello, world!"
    tok.save("tokenizer.json"); tok = Tokenizer.load("tokenizer.json")

Token ids: 0..255 are the raw bytes, 256 + r is the token made by merge number r, and the special
tokens take the LAST ids, in the order given (by default <|endoftext|>, <|im_start|>, <|im_end|>
are vocab_size-3, vocab_size-2, vocab_size-1). `tok.vocab_size` counts all of them, so it is the
number of rows a model's embedding table needs.
"""
import argparse
import collections
import heapq
import json
import os
import re
import sys
import time
from collections import Counter

try:  # a progress bar is nice to have, not needed: the file still works where tqdm is missing
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

# The project's special tokens: one marks the end of a document, two frame a chat turn (ChatML:
# "<|im_start|>user\nHi<|im_end|>\n"). They take the last three ids of the vocabulary.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

FORMAT_NAME = "slm-bpe"  # written into every saved file, so load() can tell ours from others
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Step 1 and 2: bytes, and counting neighbouring pairs
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
# Step 3: merging a pair into a new token
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
# Step 4: cutting text into chunks before BPE sees it
# ---------------------------------------------------------------------------------------------
# Without a pre-split, BPE happily learns tokens like "dog." and "dog!" and "dog?", wasting the
# vocabulary on every word+punctuation combination. GPT-4 first cuts text with this pattern and
# runs BPE inside each chunk only:
#
#   '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+
#
# It needs the third-party `regex` module for \p{L} (any letter) and \p{N} (any number). The
# standard-library `re` has neither, so we spell them with what it has:
#   \p{L}  -> [^\W\d_]   "a word character that is not a digit or underscore"
#   \p{N}  -> \d         "a decimal digit" (any script: Arabic-Indic, Devanagari, ...)
#   "not a letter and not a number" -> [^\w]|_   (underscore is a \w character in `re`)
# Differences: \d misses the rarer numbers (superscripts "²", fractions "½", Roman numerals "Ⅻ"),
# and \w counts them as word characters, so here they behave like letters. The possessive "?+" and
# "++" are dropped (Python 3.10's `re` lacks them); they only make `regex` faster: the pieces after
# them can always match the empty string or fail either way, so no different split results.
# None of this matters for correctness: the chunks still cover the text exactly, every byte
# still gets a token, decode(encode(s)) == s for every s. It only moves a few rare characters
# into a different chunk, which changes which merges are *possible* for them, a tiny effect on
# compression.
LETTER = r"[^\W\d_]"
NUMBER = r"\d"
GPT4_SPLIT_PATTERN = "|".join([
    r"'(?i:[sdmt]|ll|ve|re)",                # English contractions: 's 't 'll 've 're 'm 'd
    rf"(?:[^\r\n\w]|_)?{LETTER}+",           # a word, with one leading space or symbol
    rf"{NUMBER}{{1,3}}",                     # numbers, at most 3 digits per chunk
    r" ?(?:[^\s\w]|_)+[\r\n]*",              # punctuation runs, with one leading space
    r"\s*[\r\n]",                            # line breaks (with the spaces before them)
    r"\s+(?!\S)",                            # spaces, but leave the last one for the next word
    r"\s+",                                  # any other spaces
])


# ---------------------------------------------------------------------------------------------
# Steps 5 to 7 live in the Tokenizer class: special tokens, save/load, fast training.
# ---------------------------------------------------------------------------------------------

class UserError(ValueError):
    """A mistake in the user's input (a file, a line, a flag, a value): the project's one exception
    for it. Every script prints it as one line `error: ...` and exits with status 2."""


class TokenizerFileError(ValueError):
    """A tokenizer file that cannot be loaded: not JSON, not ours, or damaged."""


class Tokenizer:
    """A trained byte-level BPE tokenizer: merges in rank order, a split pattern, special tokens.

    Make one with Tokenizer.train(...) or Tokenizer.load(path), not with the constructor.
    """

    def __init__(self, merges, special_tokens=(), pattern=GPT4_SPLIT_PATTERN):
        self.pattern = pattern
        self._split = re.compile(pattern)
        # merges[r] = (a, b) means: merge number r joins token a and token b into token 256 + r.
        # The rank r is also the priority at encode time: earlier merges are applied first,
        # exactly as they were learned.
        self.merges = [tuple(p) for p in merges]
        self._ranks = {pair: 256 + r for r, pair in enumerate(self.merges)}
        # The bytes each id stands for: a merged token is the bytes of its two halves.
        self._vocab = [bytes([i]) for i in range(256)]
        for a, b in self.merges:
            self._vocab.append(self._vocab[a] + self._vocab[b])
        first = 256 + len(self.merges)
        self.special_tokens = {name: first + i for i, name in enumerate(special_tokens)}
        self._special_by_id = {i: name for name, i in self.special_tokens.items()}
        self._cache = {}  # chunk text -> its ids; text repeats the same words over and over

    # -- sizes and lookups ---------------------------------------------------------------------

    @property
    def vocab_size(self):
        """Number of distinct ids: 256 bytes + one per merge + the special tokens."""
        return 256 + len(self.merges) + len(self.special_tokens)

    def is_special(self, id):
        return id in self._special_by_id

    def id_to_bytes(self, id):
        """The bytes a token stands for. A special token gives its name's UTF-8 bytes
        (b"<|endoftext|>"), although no text encodes to it by default; so code that counts the
        bytes behind a prediction (eval.py's bits per byte) checks is_special(id) and counts
        special tokens as zero bytes of text."""
        if id in self._special_by_id:
            return self._special_by_id[id].encode("utf-8")
        if not 0 <= id < len(self._vocab):
            raise ValueError(f"token id {id} is outside this tokenizer (vocab_size {self.vocab_size})")
        return self._vocab[id]

    # -- encoding ------------------------------------------------------------------------------

    def _encode_chunk(self, data):
        """BPE on one chunk's bytes: apply the earliest-learned merge that fits, repeat."""
        ids = list(data)
        ranks = self._ranks
        while len(ids) >= 2:
            # The neighbouring pair with the lowest rank (learned first). Pairs never learned
            # get rank "infinity"; if every pair is unknown, we are done.
            best = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, 1 << 62))
            new_id = ranks.get(best)
            if new_id is None:
                break
            ids = merge(ids, best, new_id)
        return ids

    def encode_ordinary(self, text):
        """Encode text, treating special-token names as ordinary text."""
        out = []
        cache = self._cache
        for chunk in self._split.findall(text):
            ids = cache.get(chunk)
            if ids is None:
                ids = self._encode_chunk(chunk.encode("utf-8"))
                if len(cache) >= 200_000:  # keep memory bounded on endless streams of text
                    cache.clear()
                cache[chunk] = ids
            out.extend(ids)
        return out

    def encode(self, text, allowed_special="none_raise"):
        """Text -> list of ids. What to do with special-token names found in `text`:

        "none_raise" (default): raise ValueError; user text that contains "<|endoftext|>" is
                      usually a mistake or an injection attempt, so say so loudly.
        "none":       encode them as ordinary text (several normal tokens).
        "all":        turn each into its special id.
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
        if not allowed:
            return self.encode_ordinary(text)
        # Cut the text at the allowed special names (longest first, so a name that contains
        # another wins); the capturing group makes re.split keep the names in the list.
        names = sorted(allowed, key=len, reverse=True)
        parts = re.split("(" + "|".join(re.escape(n) for n in names) + ")", text)
        out = []
        for i, part in enumerate(parts):
            if i % 2:  # odd positions are the separators, i.e. the special names
                out.append(self.special_tokens[part])
            elif part:
                out.extend(self.encode_ordinary(part))
        return out

    # -- decoding ------------------------------------------------------------------------------

    def decode_bytes(self, ids):
        """ids -> the exact bytes they stand for (special tokens as their names)."""
        vocab, n = self._vocab, len(self._vocab)
        parts = []
        for i in ids:
            if 0 <= i < n:
                parts.append(vocab[i])
            else:
                parts.append(self.id_to_bytes(i))  # a special token, or a clear error
        return b"".join(parts)

    def decode(self, ids):
        """ids -> text. A model can emit ids whose bytes are not valid UTF-8 (half of a "é",
        or a generation cut in the middle of an emoji); those become U+FFFD "�" instead of
        raising, because crashing a chat on one odd token helps nobody."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def piece(self, id):
        """A token as readable text, for display: 'Hello', ' world', '\\xe2\\x80'."""
        return self.id_to_bytes(id).decode("utf-8", errors="backslashreplace")

    # -- saving and loading --------------------------------------------------------------------
    # One JSON file a person can open: the format name and version, the split pattern, the
    # special tokens with their ids, and the merges in rank order (line r is merge r, which
    # makes token 256 + r). That is everything: the vocabulary follows from the merges.

    def save(self, path):
        lines = [
            "{",
            f'  "format": {json.dumps(FORMAT_NAME)},',
            f'  "version": {FORMAT_VERSION},',
            f'  "pattern": {json.dumps(self.pattern)},',
            f'  "special_tokens": {json.dumps(self.special_tokens, ensure_ascii=False)},',
            '  "merges": [',
            ",\n".join(f"    [{a}, {b}]" for a, b in self.merges),
            "  ]",
            "}",
        ]
        # Write a temporary file, then rename it over the target in one step: a crash halfway
        # leaves the old file intact instead of half a tokenizer.
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path):
        """Read a file written by save(). Anything else raises TokenizerFileError naming the
        file and what is wrong, instead of a KeyError deep inside this class."""
        def bad(why):
            return TokenizerFileError(f"{path}: {why}")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as e:
            raise bad(f"cannot read ({e.strerror or e})") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise bad(f"not a valid JSON file ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            hint = ""
            if isinstance(data, dict) and "model" in data and "pre_tokenizer" in data:
                hint = " (it looks like a Hugging Face tokenizers file)"
            raise bad(f"not an slm tokenizer file{hint}: expected \"format\": \"{FORMAT_NAME}\"")
        if data.get("version") != FORMAT_VERSION:
            raise bad(f"format version {data.get('version')!r} is not supported "
                      f"(this bpe.py reads version {FORMAT_VERSION})")
        pattern, merges, specials = data.get("pattern"), data.get("merges"), data.get("special_tokens")
        if not isinstance(pattern, str):
            raise bad('"pattern" must be a string')
        try:
            re.compile(pattern)
        except re.error as e:
            raise bad(f'"pattern" is not a valid regular expression ({e})') from None
        if not isinstance(merges, list):
            raise bad('"merges" must be a list of [left_id, right_id] pairs')
        for r, m in enumerate(merges):
            # A merge may only use tokens that exist before it: bytes and earlier merges.
            ok = (isinstance(m, list) and len(m) == 2
                  and all(type(x) is int and 0 <= x < 256 + r for x in m))
            if not ok:
                raise bad(f"merge {r} is {m!r}; expected two ids of earlier tokens (below {256 + r})")
        if not isinstance(specials, dict) or not all(isinstance(k, str) and k for k in specials):
            raise bad('"special_tokens" must map token names to ids')
        first = 256 + len(merges)
        names = sorted(specials, key=lambda k: specials[k] if type(specials[k]) is int else -1)
        if [specials[k] for k in names] != list(range(first, first + len(names))):
            raise bad(f'"special_tokens" must have the ids {first}..{first + len(names) - 1}, '
                      f"right after the merges; found {specials}")
        return cls(merges, names, pattern)

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
            raise ValueError(f"special_tokens must be distinct non-empty strings: {special_tokens}")
        n_merges = vocab_size - 256 - len(special_tokens)
        if n_merges < 0:
            raise ValueError(f"vocab_size {vocab_size} is too small: it must hold the 256 byte "
                             f"tokens and {len(special_tokens)} special tokens")
        texts = [text_or_iterable_of_texts] if isinstance(text_or_iterable_of_texts, str) \
            else text_or_iterable_of_texts

        # (a) Count the distinct chunks. " the" may occur a million times but is stored once
        # with its count, and the number of distinct chunks grows far more slowly than the
        # text, so all later work scales with the distinct chunks, not with the size of text.
        # Special-token names are cut out first: they get their own ids, and letting "<|" or
        # "endoftext" become ordinary merges would waste vocabulary.
        split = re.compile(GPT4_SPLIT_PATTERN)
        cut = re.compile("|".join(re.escape(s) for s in special_tokens)) if special_tokens else None
        chunk_counts = Counter()
        bar = tqdm(texts, desc="counting chunks", unit=" docs", disable=not progress) \
            if tqdm else texts
        for text in bar:
            if not isinstance(text, str):
                raise TypeError(f"training data must be strings, got {type(text).__name__}")
            for part in (cut.split(text) if cut else (text,)):
                chunk_counts.update(split.findall(part))

        merges = cls._learn_merges(chunk_counts, n_merges, progress)
        if len(merges) < n_merges:
            print(f"bpe: the text ran out of pairs to merge after {len(merges)} merges; "
                  f"vocab_size is {256 + len(merges) + len(special_tokens)}, not {vocab_size}",
                  file=sys.stderr)
        return cls(merges, special_tokens)

    @staticmethod
    def _learn_merges(chunk_counts, n_merges, progress=False):
        """Step 7, the fast trainer. The textbook loop is: count all pairs in all the text,
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
# Command line
# ---------------------------------------------------------------------------------------------

class InputError(Exception):
    """A problem with the user's input files; main() prints it as one `error:` line."""


def read_texts(paths):
    """Yield documents from .txt files and .jsonl files (one {"text": ...} object per line,
    read one line at a time). A .txt file is one document, or several separated by
    <|endoftext|> (as TinyStories ships). A malformed line or a byte that is not UTF-8 raises
    InputError naming the file (and line)."""
    for path in map(str, paths):
        if not os.path.isfile(path):
            raise InputError(f"{path}: no such file")
        try:
            if path.endswith(".jsonl"):
                with open(path, encoding="utf-8") as f:
                    for lineno, line in enumerate(f, 1):
                        if not line.strip():
                            continue
                        try:
                            obj = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                            raise InputError(f'{path}:{lineno}: expected an object with a "text" string')
                        yield obj["text"]
            else:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                yield from (doc.strip() for doc in text.split("<|endoftext|>") if doc.strip())
        except UnicodeDecodeError as e:
            raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Train a byte-level BPE tokenizer, or show how one encodes some text.")
    p.add_argument("--input", nargs="+", metavar="FILE", help="training text: .txt or .jsonl files")
    p.add_argument("--vocab-size", type=int, default=4096,
                   help="total ids: 256 bytes + merges + special tokens (default 4096)")
    p.add_argument("--out", default="tokenizer.json", help="where to save (default tokenizer.json)")
    p.add_argument("--tokenizer", metavar="FILE", help="a saved tokenizer, to use with --encode")
    p.add_argument("--encode", metavar="TEXT", help="show the tokens of TEXT")
    args, _ = p.parse_known_args(argv)  # known args only: Jupyter passes extra ones
    try:
        if args.encode is not None:
            tok = Tokenizer.load(args.tokenizer or args.out)
            ids = tok.encode(args.encode, allowed_special="all")
            print(" ".join(f"[{tok.piece(i)}]" for i in ids))
            print(ids)
            print(f"{len(args.encode.encode('utf-8'))} bytes -> {len(ids)} tokens")
            return 0
        if not args.input:
            p.error("give --input FILE ... to train, or --tokenizer FILE --encode TEXT")
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
    except (InputError, TokenizerFileError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
