r"""tokenizer_v1.py: version-1 tokenizer files, as an older bpe.py wrote them (a companion of
bpe.py, chapter 4).

Version 1 holds only the split pattern (for `re`), the special tokens {name: id} and the merges
[[left, right], ...]; the vocabulary follows from the merges, in the layout of
bpe.Tokenizer.from_merges (ids 0..255 the bytes, merge r id 256 + r, the special tokens after).
Its pattern is GPT-4's spelt with what `re` has (\p{L} -> [^\W\d_], \p{N} -> \d, "neither" ->
[^\w]|_), which differs from the real classes on rare characters ("²", "½", "Ⅻ", U+001C:
docs/bpe.md). A tokenizer loaded from version 1 keeps that pattern and is saved as version 1
again, so it encodes exactly as it always did; every byte still has a token.

    merges, specials, pattern = read_v1(json.load(f), bad)   # -> Tokenizer.from_merges(...)

Imported by bpe.py (Tokenizer.load and save, only when they meet a version-1 file) and
hf_tokenizer.py. It imports nothing from the project.
"""
import json
import re

V1_SPLIT_PATTERN = "|".join([r"'(?i:[sdmt]|ll|ve|re)", r"(?:[^\r\n\w]|_)?[^\W\d_]+", r"\d{1,3}",
                             r" ?(?:[^\s\w]|_)+[\r\n]*", r"\s*[\r\n]", r"\s+(?!\S)", r"\s+"])


def read_v1(data, bad):
    """A version-1 file's parsed JSON -> (merges, special token names, pattern), the arguments
    of Tokenizer.from_merges; bad(why) makes the UserError that names the file."""
    pattern, merges = data.get("pattern"), data.get("merges")
    specials = data.get("special_tokens")
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
            raise bad(f"merge {r} is {m!r}; expected two ids of earlier tokens "
                      f"(below {256 + r})")
    if not isinstance(specials, dict) or not all(isinstance(k, str) and k for k in specials):
        raise bad('"special_tokens" must map token names to ids')
    first = 256 + len(merges)
    names = sorted(specials, key=lambda k: specials[k] if type(specials[k]) is int else -1)
    if [specials[k] for k in names] != list(range(first, first + len(names))):
        raise bad(f'"special_tokens" must have the ids {first}..{first + len(names) - 1}, '
                  f"right after the merges; found {specials}")
    return merges, names, pattern


def v1_lines(tok, format_name):
    """A tokenizer loaded from a version-1 file -> the lines of that file, as bpe.py's save()
    writes it (format_name: bpe.FORMAT_NAME)."""
    assert tok.merged == list(range(256, 256 + len(tok.merges))), "not a version-1 layout"
    return ["{", f'  "format": {json.dumps(format_name)},', '  "version": 1,',
            f'  "pattern": {json.dumps(tok.split_patterns[0])},',
            f'  "special_tokens": {json.dumps(tok.special_tokens, ensure_ascii=False)},',
            '  "merges": [', ",\n".join(f"    [{a}, {b}]" for a, b in tok.merges), "  ]", "}"]
