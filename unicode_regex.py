r"""unicode_regex.py: tokenizer.json's split patterns for Python's `re` (a companion of bpe.py,
chapter 4).

A split pattern is the regular expression a tokenizer cuts text with before BPE runs (bpe.py,
step 5). GPT-4's, Llama 3's and Qwen's are written for Oniguruma, the engine `tokenizers` runs,
with classes Python's `re` lacks: \p{L} ("any letter"), \p{N} ("any number"). This file writes
each class out as the character ranges it stands for, computed once from `unicodedata` (lazily: a
version-1 tokenizer never pays for it), as Oniguruma defines them: \p{..} are the Unicode general
categories, and \s is \t \n \v \f \r, U+0085 and Zs Zl Zp (Python's \s adds U+001C..U+001F). The
few other constructs released patterns use (\P{..}, \x{..}, $) are translated too: a saved
tokenizer may hold such a pattern, and bpe.py loads every file it saved. Possessive quantifiers
("?+", "++") are kept where `re` has them (3.11+) and dropped on 3.10, which changes no chunk of
the released patterns. Where the engines can still differ (Unicode versions, case folding):
docs/bpe.md, "The companions".

    python_regex(r"\p{N}{1,3}") -> r"[\u0030-\u0039\u00b2-\u00b3...]{1,3}"
    isolated_split(r"\p{N}")("ab12c") -> ["ab", "1", "2", "c"]

Imported by bpe.py (its compile_split calls isolated_split) and hf_tokenizer.py. It imports
nothing from the project, so bpe.py and this file are all a notebook needs: run this file in a
cell before bpe.py's.
"""
import functools
import itertools
import re
import sys
import unicodedata

CATEGORIES = set("L Lu Ll Lt Lm Lo M Mn Mc Me N Nd Nl No P Pc Pd Ps Pe Pi Pf Po "
                 "S Sm Sc Sk So Z Zs Zl Zp C Cc Cf Co Cn".split())
POSSESSIVE_OK = sys.version_info >= (3, 11)


@functools.lru_cache(maxsize=1)
def all_characters():
    """Every Unicode character except the surrogates (which UTF-8 text cannot hold), as one str."""
    return "".join(map(chr, itertools.chain(range(0xD800), range(0xE000, 0x110000))))


def to_ranges(codes):
    """Sorted code points -> (first, last) ranges.  [48, 49, 50, 178] -> [(48, 50), (178, 178)]"""
    out = []
    for c in codes:
        if out and out[-1][1] == c - 1:
            out[-1] = (out[-1][0], c)
        else:
            out.append((c, c))
    return out


@functools.lru_cache(maxsize=None)
def unicode_class(name):
    """The characters of a class as Oniguruma defines it, as ranges: a general category ("L",
    "N", "Lu", "Nd", ...) or "space" (what \\s matches there).

    unicode_class("N")[:3] -> ((48, 57), (178, 179), (185, 185))     i.e. 0-9, ²³, ¹
    """
    chars, category = all_characters(), unicodedata.category
    if name == "space":
        members = (c for c in filter(str.isspace, chars)
                   if c in "\t\n\v\f\r\x85" or category(c) in ("Zs", "Zl", "Zp"))
    elif name in CATEGORIES:
        # str.isalpha is true exactly for the letters (Lu Ll Lt Lm Lo) and str.isnumeric for
        # every number (and a few letters with a numeric value, like 五): these C loops narrow
        # the search first, so the classes every released pattern uses take milliseconds.
        pool = chars
        if name[0] == "L":
            pool = filter(str.isalpha, chars)
        elif name[0] == "N":
            pool = filter(str.isnumeric, chars)
        members = (c for c in pool if category(c).startswith(name))
    else:
        raise ValueError(f"\\p{{{name}}} is not supported (general categories only: L, Lu, N, ...)")
    return tuple(to_ranges(map(ord, members)))


def complement(ranges):
    """The code points not in `ranges`.  [(1, 5)] -> [(0, 0), (6, 0x10FFFF)]"""
    out, start = [], 0
    for a, b in ranges:
        if a > start:
            out.append((start, a - 1))
        start = b + 1
    if start <= 0x10FFFF:
        out.append((start, 0x10FFFF))
    return out


def re_class_body(ranges):
    """Ranges as the inside of a `re` character class.
    [(48, 57), (178, 178)] -> r"\\u0030-\\u0039\\u00b2" """
    def esc(c):
        return f"\\u{c:04x}" if c <= 0xFFFF else f"\\U{c:08x}"
    return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in ranges)


def translate_escape(pattern, i, in_class, bmp_only=False):
    """The escape at pattern[i] (a backslash) -> (its `re` spelling, index after it)."""
    e, end = pattern[i + 1:i + 2], i + 2
    if e in ("p", "P") and pattern[i + 2:i + 3] == "{":       # \p{L}, \P{N}
        end = pattern.index("}", i) + 1
        ranges = unicode_class(pattern[i + 3:end - 1])
    elif e in ("p", "P"):                                      # \pL
        ranges, end = unicode_class(pattern[i + 2:i + 3]), i + 3
    elif e in ("s", "S"):
        ranges = unicode_class("space")
    elif e == "x" and pattern[i + 2:i + 3] == "{":             # \x{1F600}
        end = pattern.index("}", i) + 1
        code = int(pattern[i + 3:end - 1], 16)
        return re_class_body([(code, code)]), end
    elif e and (e in "dDtnrfv" or not e.isalnum()):           # the same in both engines
        return pattern[i:end], end
    elif e == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", pattern[i + 2:i + 4]):
        return pattern[i:i + 4], i + 4
    else:
        raise ValueError(f"\\{e} is not supported")
    if bmp_only:
        ranges = [(a, min(b, 0xFFFF)) for a, b in ranges if a <= 0xFFFF]
    negate = e in ("P", "S")
    if in_class:  # inside [...], put the ranges themselves (or those of the complement)
        return re_class_body(complement(ranges) if negate else ranges), end
    return ("[^" if negate else "[") + re_class_body(ranges) + "]", end


@functools.lru_cache(maxsize=64)
def python_regex(pattern, bmp_only=False):
    """A regex as tokenizer.json writes it (Oniguruma syntax) -> the same regex for `re`.

    r"\\p{N}{1,3}" -> r"[\\u0030-\\u0039\\u00b2-\\u00b3...]{1,3}"    (all 1,791 numbers, as ranges)

    Capturing groups become non-capturing (isolated_split needs the only group). Syntax whose
    meaning differs between the engines, or that no released pattern uses, raises ValueError.
    bmp_only: leave out the characters beyond U+FFFF (see isolated_split).
    """
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c, after = pattern[i], pattern[i + 1:i + 2]
        if c == "\\":
            piece, i = translate_escape(pattern, i, in_class, bmp_only)
            out.append(piece)
            continue
        if in_class:
            if c == "[" or pattern.startswith("&&", i):
                raise ValueError("nested classes and && inside [...] are not supported")
            in_class = c != "]"
        elif c == "[":
            if pattern[i + 1:i + 2] == "]" or pattern[i + 1:i + 3] == "^]":
                raise ValueError("a class that starts with ] is not supported")
            in_class = True
        elif c == "(" and after != "?":
            c = "(?:"
        elif c == "(" and pattern[i + 1:i + 3] == "?<" and pattern[i + 3:i + 4] not in "=!":
            raise ValueError("named groups are not supported")
        elif c in "?*+" and after == "+":      # possessive: kept where `re` has it
            c, i = (c + "+" if POSSESSIVE_OK else c), i + 1
        elif c == "}" and after == "+":
            raise ValueError("{n,m}+ is not supported (Oniguruma's Ruby syntax repeats it)")
        elif c == "$":                          # Oniguruma's: before any "\n", or at the end
            c = r"(?=\n|\Z)"
        elif c in ".^":
            raise ValueError(f"{c} is not supported (its meaning differs between the engines)")
        out.append(c)
        i += 1
    if in_class:
        raise ValueError("a [ is never closed")
    return "".join(out)


def isolated_split(pattern):
    """A split pattern as tokenizer.json writes it -> a function that cuts a text into the
    pattern's matches and the stretches between them, in order, none empty (the "Isolated" split
    of `tokenizers`; bpe.compile_split is its cached front door).

    Speed: `re` compares a character beyond U+FFFF with each range of a class in turn (\\p{L}
    has 268 there), so text without one (no emoji, no rare CJK) is cut by a second version of
    the pattern without those ranges: six times faster, the same chunks.
    """
    full = re.compile("(" + python_regex(pattern) + ")")
    below_10000 = re.compile("(" + python_regex(pattern, bmp_only=True) + ")")

    def split(text):
        regex = full if text and max(text) > "\uffff" else below_10000
        chunks = regex.findall(text)  # faster than split, and the same where matches cover text
        if sum(map(len, chunks)) == len(text) and "" not in chunks:
            return chunks
        return [chunk for chunk in regex.split(text) if chunk]
    return split
