"""hf_tokenizer.py: released tokenizers, read and written exactly (a companion of bpe.py).

A model on the Hugging Face hub ships its tokenizer as tokenizer.json (section 1 says what it
holds). This file reads the tokenizer.json of a byte-level BPE (GPT-2, Llama 3, Qwen2/2.5/3,
SmolLM2) into a bpe.Tokenizer that encodes every text to exactly the ids `tokenizers` gives, and
writes any bpe.Tokenizer (trained here or imported) back as a tokenizer.json that `tokenizers`
and transformers load; GGUF's tokenizer section (token strings, token types, merges) too:

    tok = hf_tokenizer.from_hf("Qwen2.5-0.5B/tokenizer.json")   # a bpe.Tokenizer
    tok.save("out/qwen/tokenizer.json")       # our format: Tokenizer.load reads it back as is
    json.dump(hf_tokenizer.to_hf(tok), f)     # tokenizer.json again
    hf_tokenizer.gguf_vocab(tok)              # {"tokens", "token_type", "merges"} for GGUF
    hf_tokenizer.gguf_tokenizer(tok, **chat_templates.export_tokens(tok, chat))  # GGUF's tokenizer
    hf_tokenizer.from_gguf(metadata, "m.gguf")  # and read back: a GGUF file's tokenizer.ggml.*
    hf_tokenizer.chat_template_of(folder)     # a release's chat template (Jinja), or None

Functions rather than a subclass: a released tokenizer, once read, is a plain bpe.Tokenizer
(its normalizer, split patterns and added tokens are all bpe.py knows), saved into a run
directory and loaded back by bpe.Tokenizer.load like any other; and every Tokenizer, trained or
imported, can be exported. So there is no second kind of tokenizer to keep through a save.

Imports bpe.py (the Tokenizer, its byte-level alphabet and split patterns, UserError), and its
companions tokenizer_v1.py (version 1's pattern) and unicode_regex.py (character ranges), nothing
else from the project. Imported by convert.py (release in, run directory out), gguf_import.py
(a GGUF file's tokenizer) and data.py (token strings and types, for the token cache and bits per
byte).
"""
import collections
import json
import re
import unicodedata

import sentencepiece_bpe
from bpe import (BYTE_TO_CHAR, FORMAT_NAME, GPT4_SPLIT_PATTERN, Tokenizer, UserError,
                 compile_split, from_byte_level, read_json, to_byte_level)
from tokenizer_v1 import V1_SPLIT_PATTERN
from unicode_regex import all_characters, to_ranges


# ---------------------------------------------------------------------------------------------
# 1. Reading tokenizer.json
# ---------------------------------------------------------------------------------------------
# A model on the Hugging Face hub ships its tokenizer as tokenizer.json, written by the Rust
# library `tokenizers`. For a byte-level BPE (GPT-2, Llama 3, Qwen2/2.5/3, SmolLM2, and
# the families below) it holds:
#
#   "model": {"type": "BPE", "vocab": {"Ġthe": 279, ...}, "merges": ["Ġ t", ...] (or, in newer
#             files, [["Ġ", "t"], ...]), "ignore_merges": false, ...}   tokens in the byte-level
#             alphabet (bpe.py's step 7); the bytes need not be ids 0..255, and the token a
#             merge makes is whatever id the vocab gives the joined string ("Ġt")
#   "added_tokens": [{"id": 151643, "content": "<|endoftext|>", "special": true, ...}, ...]
#                 found whole, leftmost then longest (GPT-NeoX's runs of spaces); DeepSeek Coder's
#                 "õ" ... (ids 32000-32012) are matched in the text and decode, as `tokenizers`
#                 decodes them, to the byte their character stands for (f5: "\ufffd")
#   "normalizer": null, or {"type": "NFC"} (Qwen, GPT-NeoX: compose "e" + U+0301 into "é"
#                 first), or NFKC, NFD, NFKD; DeepSeek's empty Sequence is none
#   "pre_tokenizer": how text is cut into chunks:
#       GPT-2:            ByteLevel(use_regex: true)                    -> GPT2_SPLIT_PATTERN
#       Llama 3, Qwen:    Sequence[Split(Regex P, "Isolated"), ByteLevel(use_regex: false)] -> P
#       SmolLM2:          Sequence[Digits(individual_digits: true), ByteLevel(use_regex: true)]
#                                                        -> r"\p{N}", then GPT2_SPLIT_PATTERN
#       StarCoder2, Refact: as SmolLM2.      GPT-NeoX, MPT: as GPT-2, with an NFC normalizer
#       Falcon:           Sequence[Punctuation(Contiguous), ByteLevel(use_regex: true),
#                         Digits(individual_digits: false), Split([0-9][0-9][0-9])]
#                         -> PUNCTUATION_CLASS+, GPT2_SPLIT_PATTERN, [0-9][0-9][0-9], and the
#                         Digits, which sees bytes, as merges left out (digit_cuts)
#       DeepSeek LLM, Coder: Sequence[Split(R, "Isolated") ..., Digits(true), ByteLevel(false)]
#                         -> each R (LLM's "\s+$": Oniguruma's $, before any "\n"), r"\p{N}"
#   "decoder": ByteLevel (bytes back from the alphabet: decode needs nothing more)
#   "post_processor": what encode(..., add_special_tokens=True) adds around a text (Llama 3: a
#                     <|begin_of_text|> in front); not part of encoding, see from_hf.
#
# Everything else (ByteLevel add_prefix_space, Split behaviours other than Isolated, lstrip /
# rstrip / single_word, Prepend and Replace normalizers, SentencePiece-style BPE with "▁" for
# spaces like Llama 2 and TinyLlama, byte_fallback, WordPiece, Unigram, ...) is refused with one
# error naming the field and value.

def from_hf(source):
    """A released model's tokenizer.json (a path, or the dict json.load gives) of a
    byte-level BPE -> a bpe.Tokenizer that encodes every text to exactly the ids of
    `tokenizers.Tokenizer.from_file(path).encode(text, add_special_tokens=False).ids`
    (with allowed_special="all"; "none" matches its encode_special_tokens=True).

    What the file's post-processor adds around a text with add_special_tokens=True is not
    part of encode(); it is in tok.bos_added / tok.eos_added, lists of ids: [128000] and []
    for Llama 3, [] and [] for GPT-2, Qwen and SmolLM2, None when the post-processor is of a
    kind this file does not read.
    Anything that is not a byte-level BPE, or that this file does not implement, raises
    UserError("<path>: <field> <value> is not supported ...").
    """
    data, where = (source, "tokenizer.json") if isinstance(source, dict) else \
        (read_json(source), str(source))
    if sentencepiece_bpe.is_sentencepiece(data):  # Llama 2, TinyLlama, Mistral: "▁", <0xNN>
        return sentencepiece_bpe.from_hf(data, where, hf_post_processor(
            data.get("post_processor")), ids_tokenizers_would_give)
    return Tokenizer(**hf_arguments(data, where))


def hf_arguments(data, where):
    """A parsed tokenizer.json -> the arguments of Tokenizer(...); UserError("<where>: ...")."""
    def bad(why):
        return UserError(f"{where}: {why}")
    if isinstance(data, dict) and data.get("format") == FORMAT_NAME:
        raise bad("this is an slm tokenizer file, not a tokenizer.json: Tokenizer.load reads it")
    model = data.get("model") if isinstance(data, dict) else None
    kind = model.get("type", "BPE" if "merges" in model else None) \
        if isinstance(model, dict) else None
    if kind != "BPE":
        raise bad(f"model type {kind} is not supported (byte-level BPE only)")
    split, cut = hf_pre_tokenizer(data.get("pre_tokenizer"), bad)
    normalizer = hf_normalizer(data.get("normalizer"), bad)
    if cut and model.get("ignore_merges"):
        raise bad("model.ignore_merges true with Digits after ByteLevel is not supported")
    for field, allowed in (("dropout", (None, 0)), ("byte_fallback", (None, False)),
                           ("continuing_subword_prefix", (None, "")),
                           ("end_of_word_suffix", (None, ""))):
        if model.get(field) not in allowed:
            raise bad(f"model.{field} {json.dumps(model.get(field))} is not supported "
                      f"(byte-level BPE only)")
    decoder = data.get("decoder")
    if not (isinstance(decoder, dict) and decoder.get("type") == "ByteLevel"):
        kind = decoder.get("type") if isinstance(decoder, dict) else json.dumps(decoder)
        raise bad(f"decoder type {kind} is not supported (byte-level BPE needs ByteLevel)")
    strings = model.get("vocab")
    if not isinstance(strings, dict):
        raise bad("model.vocab must map token strings to ids")
    added = hf_added_tokens(data.get("added_tokens") or [], strings, bad)
    for _, name, _, normalized in added:  # `tokenizers` would look for the normalized name
        if normalized and normalizer and unicodedata.normalize(normalizer, name) != name:
            raise bad(f"added token {name!r}: normalized true, and {normalizer} changes it")
    vocab = hf_vocab(strings, {name for _, name, _, _ in added}, bad)
    bos, eos = hf_post_processor(data.get("post_processor"))
    merges = digit_cuts(hf_read_merges(model.get("merges"), strings, vocab, bad), vocab, cut)
    return dict(vocab=vocab, merges=merges,
                added_tokens=added, split=split, normalizer=normalizer,
                ignore_merges=bool(model.get("ignore_merges", False)),
                bos_added=bos, eos_added=eos)


# GPT-2's split pattern, which the ByteLevel pre-tokenizer has built in (use_regex): numbers of
# any length, and no special case for line breaks, unlike GPT-4's (bpe.GPT4_SPLIT_PATTERN).
GPT2_SPLIT_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

# `tokenizers`' Punctuation pre-tokenizer (Falcon) cuts at ASCII punctuation and at the Unicode
# categories P*, but in the Unicode version of the Rust crate it asks, older than Python's (whose
# \p{P} would add 30 ranges and miss 2 characters): so its set is written out here, code point
# ranges in hex, found by running it on every character.
PUNCTUATION = """
21-2f 3a-40 5b-60 7b-7e a1 a7 ab b6-b7 bb bf 37e 387 55a-55f 589-58a 5be 5c0 5c3 5c6
5f3-5f4 609-60a 60c-60d 61b 61e-61f 66a-66d 6d4 700-70d 7f7-7f9 830-83e 85e 964-965 970
af0 df4 e4f e5a-e5b f04-f12 f14 f3a-f3d f85 fd0-fd4 fd9-fda 104a-104f 10fb 1360-1368
1400 166d-166e 169b-169c 16eb-16ed 1735-1736 17d4-17d6 17d8-17da 1800-180a 1944-1945
1a1e-1a1f 1aa0-1aa6 1aa8-1aad 1b5a-1b60 1bfc-1bff 1c3b-1c3f 1c7e-1c7f 1cc0-1cc7 1cd3
2010-2027 2030-2043 2045-2051 2053-205e 207d-207e 208d-208e 2308-230b 2329-232a
2768-2775 27c5-27c6 27e6-27ef 2983-2998 29d8-29db 29fc-29fd 2cf9-2cfc 2cfe-2cff 2d70
2e00-2e2e 2e30-2e42 3001-3003 3008-3011 3014-301f 3030 303d 30a0 30fb a4fe-a4ff
a60d-a60f a673 a67e a6f2-a6f7 a874-a877 a8ce-a8cf a8f8-a8fa a8fc a92e-a92f a95f
a9c1-a9cd a9de-a9df aa5c-aa5f aade-aadf aaf0-aaf1 abeb fd3e-fd3f fe10-fe19 fe30-fe52
fe54-fe61 fe63 fe68 fe6a-fe6b ff01-ff03 ff05-ff0a ff0c-ff0f ff1a-ff1b ff1f-ff20
ff3b-ff3d ff3f ff5b ff5d ff5f-ff65 10100-10102 1039f 103d0 1056f 10857 1091f 1093f
10a50-10a58 10a7f 10af0-10af6 10b39-10b3f 10b99-10b9c 11047-1104d 110bb-110bc
110be-110c1 11140-11143 11174-11175 111c5-111c9 111cd 111db 111dd-111df 11238-1123d
112a9 114c6 115c1-115d7 11641-11643 1173c-1173e 12470-12474 16a6e-16a6f 16af5
16b37-16b3b 16b44 1bc9f 1da87-1da8b
"""
PUNCTUATION_CLASS = "[" + "".join("-".join(f"\\x{{{c}}}" for c in item.split("-"))
                                  for item in PUNCTUATION.split()) + "]"
# After ByteLevel, a step sees the byte-level alphabet ("ü" is "Ã¼"), where Digits finds numbers
# in 0-9 and in ²³¹¼½¾ (bytes b2 b3 b9 bc bd be, which end "ü" and "β"): see digit_cuts.
NUMERIC_BYTES = frozenset(b for b, c in BYTE_TO_CHAR.items() if unicodedata.category(c)[0] == "N")
ASCII_DIGIT_REGEX = re.compile(r"(?:\[0-9\](?:[+*?]|\{\d+(?:,\d*)?\})?)+")


def hf_pre_tokenizer(pre, bad):
    """"pre_tokenizer" -> (the split patterns, in order, as tokenizer.json writes regexes, and
    the Digits cut made after ByteLevel: None, "runs" or "each", see digit_cuts).
    Steps before ByteLevel cut the text and are split patterns; ByteLevel cuts with GPT-2's
    pattern if use_regex, then maps the text to the byte-level alphabet; the steps after it see
    that alphabet: a Split there must match ASCII digits only (Falcon's [0-9][0-9][0-9], the
    same in both alphabets), and Digits cuts between bytes, inside characters."""
    if pre is None:
        raise bad("pre_tokenizer null is not supported (byte-level BPE only; a SentencePiece-"
                  "style BPE such as Llama 2's or TinyLlama's has none)")
    steps = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" \
        else [pre]
    patterns, after_bytes, cut = [], False, None
    for step in steps if isinstance(steps, list) else [steps]:
        kind = step.get("type") if isinstance(step, dict) else json.dumps(step)
        where = "after ByteLevel " if after_bytes else ""
        if kind == "ByteLevel" and not after_bytes:
            if step.get("add_prefix_space"):   # a space before every piece between added tokens
                raise bad("pre_tokenizer ByteLevel add_prefix_space true is not supported")
            patterns += [GPT2_SPLIT_PATTERN] if step.get("use_regex", True) else []
            after_bytes = True
        elif kind == "Split":
            patterns.append(hf_split_regex(step, bad))
            if after_bytes and not ASCII_DIGIT_REGEX.fullmatch(patterns[-1]):
                raise bad(f"pre_tokenizer Split {where}with regex {patterns[-1]!r} is not "
                          f"supported (only ASCII digits, as [0-9][0-9][0-9])")
        elif kind == "Digits" and not after_bytes:  # char::is_numeric: the categories N*
            patterns.append(r"\p{N}" if step.get("individual_digits") else r"\p{N}+")
        elif kind == "Digits" and cut is None:
            cut = "each" if step.get("individual_digits") else "runs"
        elif kind == "Punctuation" and not after_bytes:
            behavior = step.get("behavior", "Isolated")
            if behavior not in ("Isolated", "Contiguous"):
                raise bad(f"pre_tokenizer Punctuation behavior {behavior} is not supported "
                          f"(only Isolated and Contiguous)")
            patterns.append(PUNCTUATION_CLASS + ("+" if behavior == "Contiguous" else ""))
        else:
            raise bad(f"pre_tokenizer type {kind} {where}is not supported (byte-level BPE only)")
    if not after_bytes:
        raise bad("pre_tokenizer has no ByteLevel step (byte-level BPE only)")
    return patterns, cut


def digit_cuts(merges, vocab, cut):
    """The merges that can apply after a Digits step that comes after ByteLevel. That step cuts
    between two bytes where one is numeric and the other not ("runs"; "each": where either is),
    inside a character too: Falcon encodes "ü" (c3 bc) as two pieces, "Ã" and "¼". Whether a
    cut falls between two bytes depends on those two bytes only, so a merge that joins across
    such a cut can never apply, and every other merge applies as it would inside the pieces:
    leaving those merges out gives, on the uncut chunk, exactly the ids of the pieces."""
    def apart(x, y):
        return (x in NUMERIC_BYTES) != (y in NUMERIC_BYTES) if cut == "runs" else \
            x in NUMERIC_BYTES or y in NUMERIC_BYTES
    return [m for m in merges if not apart(vocab[m[0]][-1], vocab[m[1]][0])] if cut else merges


def hf_split_regex(step, bad):
    """A Split pre-tokenizer -> its regex, checked to be one this file can run exactly
    ({"String": s} becomes the regex matching s)."""
    pattern = step.get("pattern")
    if isinstance(pattern, dict) and isinstance(pattern.get("String"), str) and pattern["String"]:
        pattern = {"Regex": "".join("\\" + c if c.isascii() and not c.isalnum() else c
                                    for c in pattern["String"])}
    if not (isinstance(pattern, dict) and isinstance(pattern.get("Regex"), str)):
        raise bad(f"pre_tokenizer Split pattern {json.dumps(pattern)} is not supported "
                  f"(only Regex and String)")
    if step.get("behavior") != "Isolated":
        raise bad(f"pre_tokenizer Split behavior {step.get('behavior')} is not supported "
                  f"(only Isolated)")
    if step.get("invert"):
        raise bad("pre_tokenizer Split invert true is not supported")
    try:
        compile_split(pattern["Regex"])
    except (ValueError, re.error) as e:
        raise bad(f"pre_tokenizer Split regex {pattern['Regex']!r} is not supported: {e}") from None
    return pattern["Regex"]


def hf_normalizer(normalizer, bad):
    """"normalizer" -> None or a Unicode normal form, "NFC", "NFKC", "NFD" or "NFKD" (also alone
    in a Sequence; an empty Sequence, as DeepSeek's, is none)."""
    steps = [] if normalizer is None else normalizer.get("normalizers") \
        if isinstance(normalizer, dict) and normalizer.get("type") == "Sequence" else [normalizer]
    forms = []
    for step in steps if isinstance(steps, list) else [steps]:
        kind = step.get("type") if isinstance(step, dict) else json.dumps(step)
        if kind not in ("NFC", "NFKC", "NFD", "NFKD"):  # Prepend, Replace: SentencePiece-style
            raise bad(f"normalizer type {kind} is not supported (only NFC, NFKC, NFD, NFKD)")
        forms.append(kind)
    if len(set(forms)) > 1:
        raise bad(f"normalizer Sequence {forms} is not supported (one normal form only)")
    return forms[0] if forms else None


def ids_tokenizers_would_give(vocab, names):
    """The ids `tokenizers` gives the added tokens, in the order listed. It does not trust the
    file's ids: a name the vocab has keeps the vocab's id; any other takes the next id after the
    vocabulary (its number of entries) or after the added tokens before it, whichever is larger.
        ({"a": 0, "b": 1}, ["<x>", "b", "<y>"]) -> [2, 1, 3]"""
    out, given = [], {}
    for name in names:
        if name in given:
            id = given[name]
        elif name in vocab:
            id = vocab[name]
        else:
            top, n = max(given.values(), default=None), len(vocab)
            id = n if top is None or (top < n and n > 0) else top + 1
        given[name] = id
        out.append(id)
    return out


def hf_added_tokens(items, strings, bad):
    """"added_tokens" -> [(id, name, special, normalized)]. A file whose ids are not the ones
    `tokenizers` would give (ids_tokenizers_would_give) encodes differently from what its model
    was trained with, so it is refused."""
    if not isinstance(items, list):
        raise bad("added_tokens must be a list")
    out = []
    for k, t in enumerate(items):
        if not (isinstance(t, dict) and isinstance(t.get("content"), str) and t["content"]
                and type(t.get("id")) is int):
            raise bad(f"added_tokens[{k}] is {t!r}; expected an object with an id and a content")
        for flag in ("lstrip", "rstrip", "single_word"):
            if t.get(flag):
                raise bad(f"added token {t['content']!r}: {flag} true is not supported")
        special = bool(t.get("special", False))
        out.append((t["id"], t["content"], special, bool(t.get("normalized", not special))))
    names = [name for _, name, _, _ in out]
    if len(set(names)) != len(names):
        raise bad("added_tokens lists the same token twice")
    for (id, name, _, _), given in zip(out, ids_tokenizers_would_give(strings, names)):
        if id != given:
            raise bad(f"added token {name!r} has id {id}, but `tokenizers` gives it id {given} "
                      f"(the ids of added tokens must follow the vocabulary, in order)")
    return out


def hf_vocab(strings, added_names, bad):
    """"model.vocab" {"Ġthe": 279} -> {279: b" the"}. A string outside the byte-level alphabet
    can only be an added token listed in the vocab too; BPE never makes it."""
    vocab, seen = {}, set()
    for text, id in strings.items():
        if type(id) is not int or id < 0 or id in seen:
            raise bad(f"model.vocab gives {text!r} the id {id!r}; ids must be distinct "
                      f"non-negative integers")
        seen.add(id)
        data = from_byte_level(text)
        if data is None and text in added_names:
            continue
        if not data:
            raise bad(f"model.vocab token {text!r} (id {id}) is not in the byte-level alphabet")
        vocab[id] = data
    return vocab  # it need not hold every byte: see bpe.Tokenizer


def hf_read_merges(merges, strings, vocab, bad):
    """"model.merges" ["Ġ t", ...] or [["Ġ", "t"], ...] -> [(left, right, merged)] ids, the
    merged id being the vocab's id of the joined string."""
    if not isinstance(merges, list):
        raise bad("model.merges must be a list")
    out = []
    for r, m in enumerate(merges):
        pair = m.split(" ") if isinstance(m, str) else m
        left, right = pair if isinstance(pair, list) and len(pair) == 2 else (None, None)
        if not (isinstance(left, str) and isinstance(right, str)):
            raise bad(f'model.merges[{r}] is {m!r}; expected "left right" or ["left", "right"]')
        ids = (strings.get(left), strings.get(right), strings.get(left + right))
        if None in ids:
            missing = (left, right, left + right)[ids.index(None)]
            raise bad(f"model.merges[{r}] {m!r}: {missing!r} is not in model.vocab")
        if ids[0] in vocab and ids[1] in vocab:  # else it joins an added token: never applies
            out.append(ids)
    return out


def hf_post_processor(post):
    """"post_processor" -> (ids it puts before a text, ids after it); (None, None) if unknown.
    {"type": "TemplateProcessing", "single": [<|begin_of_text|>, $A], ...} -> ([128000], [])"""
    try:
        kind = None if post is None else post["type"]
        if kind in (None, "ByteLevel"):
            return [], []
        if kind == "Sequence":  # each processor wraps what the ones before it made
            before, after = [], []
            for p in post["processors"]:
                b, a = hf_post_processor(p)
                if b is None:
                    return None, None
                before, after = b + before, after + a
            return before, after
        if kind == "TemplateProcessing":
            before, after, seen_text = [], [], False
            for item in post["single"]:
                if "Sequence" in item:
                    seen_text = True
                else:
                    ids = post["special_tokens"][item["SpecialToken"]["id"]]["ids"]
                    (after if seen_text else before).extend(ids)
            return before, after
        if kind in ("RobertaProcessing", "BertProcessing"):
            return [post["cls"][1]], [post["sep"][1]]
    except (KeyError, TypeError, IndexError, AttributeError):
        pass
    return None, None



# ---------------------------------------------------------------------------------------------
# 2. Tokens as tokenizer.json and GGUF write them, and GGUF's token types
# ---------------------------------------------------------------------------------------------
# Both formats list every id's token as a string and every merge as "left right", in the
# byte-level alphabet; an export must refuse a vocabulary where two ids would read the same.

def hf_merges(tok):
    """The merges as tokenizer.json and GGUF write them: ["Ġ t", "h e", ...]."""
    model = tok.vocab
    return [f"{to_byte_level(model[a])} {to_byte_level(model[b])}" for a, b in tok.merges]


def token_strings(tok):
    """One string per id, as tokenizer.json and GGUF write tokens: an ordinary token in the
    byte-level alphabet ("Ġthe"), a special or added token as its name, an id that stands
    for nothing as "[PAD<id>]" (llama.cpp's convention)."""
    names = {id: name for name, id in {**tok.added_tokens, **tok.special_tokens}.items()}
    return [names[id] if id in names else
            to_byte_level(tok.vocab[id]) if id in tok.vocab else f"[PAD{id}]"
            for id in range(tok.vocab_size)]


TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5  # GGUF token types


def token_types(tok):
    """One GGUF token type per id (llama.cpp's numbers): TOKEN_NORMAL for ordinary tokens
    (the 256 bytes included: a byte-level BPE has no separate byte tokens), TOKEN_CONTROL
    for special tokens, TOKEN_USER_DEFINED for added tokens that are not special,
    TOKEN_UNUSED for ids that stand for nothing."""
    added = {*tok.added_tokens.values(), *tok.special_tokens.values()}
    return [TOKEN_CONTROL if tok.is_special(id) else
            TOKEN_USER_DEFINED if id in added and id not in tok.vocab else
            TOKEN_NORMAL if id in tok.vocab else TOKEN_UNUSED
            for id in range(tok.vocab_size)]


def duplicate_tokens(tok):
    """{token string: [ids]} for every string (see token_strings) that more than one id
    has: an export cannot tell those ids apart, so it must refuse. Empty for a sound
    vocabulary (every released one, and every one trained here so far)."""
    ids = collections.defaultdict(list)
    for id, text in enumerate(token_strings(tok)):
        ids[text].append(id)
    return {text: group for text, group in ids.items() if len(group) > 1}


def check_exportable(tok):
    """Raise UserError when two ids stand for the same token (see duplicate_tokens)."""
    dups = duplicate_tokens(tok)
    if dups:
        shown = "; ".join(f"ids {group} are all {text!r}" for text, group in
                          list(dups.items())[:3])
        raise UserError(f"cannot export this tokenizer: {len(dups)} tokens have more than "
                        f"one id ({shown})")


def gguf_vocab(tok):
    """What a GGUF file's tokenizer section needs (llama.cpp's "gpt2" tokenizer model):
    {"tokens": token_strings(), "token_type": token_types(), "merges": hf_merges()},
    after check_exportable()."""
    check_exportable(tok)
    return {"tokens": token_strings(tok), "token_type": token_types(tok),
            "merges": hf_merges(tok)}


# ---------------------------------------------------------------------------------------------
# 3. Writing tokenizer.json
# ---------------------------------------------------------------------------------------------
# The vocabulary, merges and added tokens as they are, the split
# patterns as Split + ByteLevel(use_regex: false) (so Llama 3's form, whatever the source was),
# and the post-processor as a TemplateProcessing when bos_added / eos_added hold ids.

def to_hf(tok):
    """A bpe.Tokenizer as a tokenizer.json dict (json.dump it to write the file), which
    `tokenizers` encodes every text with to exactly our ids. Refuses (UserError) a
    vocabulary where two ids stand for the same token (see duplicate_tokens)."""
    spm = isinstance(tok, sentencepiece_bpe.SentencePieceTokenizer)  # its strings, its steps
    if not spm:
        check_exportable(tok)
    strings = {to_byte_level(data): id for id, data in sorted(tok.vocab.items())} if not spm \
        else tok.to_hf()["model"]["vocab"]
    added = tok.added_list()
    for (id, name, _, _), given in zip(added, ids_tokenizers_would_give(
            strings, [name for _, name, _, _ in added])):
        if id != given:
            raise UserError(f"cannot write tokenizer.json: `tokenizers` would give {name!r} the "
                            f"id {given}, not {id} (ids must follow the vocabulary without gaps)")
    if spm:
        return tok.to_hf() | {"post_processor": hf_template(tok)}
    patterns = tok.split_patterns if tok.syntax == "tokenizers" else \
        [onig_regex(p) for p in tok.split_patterns]
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": id, "content": name, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": normalized, "special": special}
                         for id, name, special, normalized in added],
        "normalizer": {"type": tok.normalizer} if tok.normalizer else None,
        "pre_tokenizer": split_pre_tokenizer(patterns),
        "post_processor": hf_template(tok),
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": tok.ignore_merges,
                  "vocab": strings, "merges": hf_merges(tok)},
    }


def split_pre_tokenizer(patterns):
    """Split patterns (tokenizer.json's regex syntax) as a "pre_tokenizer": one Split each, then
    ByteLevel(use_regex: false), the form Llama 3's tokenizer.json has."""
    steps = [{"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": False}
             for p in patterns]
    return {"type": "Sequence", "pretokenizers": steps + [
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


def hf_template(tok):
    """bos_added / eos_added -> a TemplateProcessing post-processor (None when both are empty)."""
    before, after = tok.bos_added or [], tok.eos_added or []
    if not before and not after:
        return None
    names = {id: name for name, id in {**tok.added_tokens, **tok.special_tokens}.items()}
    if not set(before + after) <= set(names):
        raise UserError(f"bos_added {before} / eos_added {after}: ids of added tokens only")

    def items(ids, type_id):
        return [{"SpecialToken": {"id": names[i], "type_id": type_id}} for i in ids]
    single = items(before, 0) + [{"Sequence": {"id": "A", "type_id": 0}}] + items(after, 0)
    pair = single + items(before, 1) + [{"Sequence": {"id": "B", "type_id": 1}}] + items(after, 1)
    return {"type": "TemplateProcessing", "single": single, "pair": pair,
            "special_tokens": {names[i]: {"id": names[i], "ids": [i], "tokens": [names[i]]}
                               for i in before + after}}


def onig_regex(pattern):
    """A version-1 pattern (for `re`) -> a tokenizer.json regex that Oniguruma runs the same way.
    Each class that means something else there (\\w \\d \\s and their capitals, and [...] classes
    holding them) becomes the explicit list of the characters `re` matches with it, found by
    trying it on every character; the rest of the syntax means the same in both engines.
        r"\\d{1,3}" -> r"[\\x{30}-\\x{39}\\x{660}-\\x{669}...]{1,3}"   (every decimal digit)"""
    out, i = [], 0
    while i < len(pattern):
        if pattern[i] == "[":     # find the class's end: past a leading ^ or ], and escapes
            end = i + 1 + (pattern[i + 1:i + 2] == "^")
            end += pattern[end:end + 1] == "]"
            while pattern[end] != "]":
                end += 2 if pattern[end] == "\\" else 1
            end += 1
        elif pattern[i] == "\\":
            end = i + 2
        else:
            out.append(pattern[i])
            i += 1
            continue
        piece = pattern[i:end]
        if re.search(r"\\[wWdDsS]", piece):
            ranges = to_ranges(map(ord, re.findall(piece, all_characters())))
            piece = "[" + "".join(f"\\x{{{a:x}}}" if a == b else f"\\x{{{a:x}}}-\\x{{{b:x}}}"
                                  for a, b in ranges) + "]"
        elif re.fullmatch(r"\\[^rntfv]", piece) and piece[1].isalnum():
            raise ValueError(f"{piece} has no exact counterpart in tokenizer.json's regexes")
        out.append(piece)
        i = end
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# 4. Chat templates, and GGUF's tokenizer section
# ---------------------------------------------------------------------------------------------
# A release says how it wants chats written in tokenizer_config.json's "chat_template", a Jinja
# program (chat_templates.py knows the families, and writes them in Python).
def chat_template_of(folder):
    """The release's chat template (Jinja text), or None: tokenizer_config.json's "chat_template"
    (a string, or a list of named ones of which "default" is used), else chat_template.jinja."""
    config = folder / "tokenizer_config.json"
    settings = read_json(config) if config.exists() else {}
    if not isinstance(settings, dict):
        raise UserError(f"{config}: not a JSON object")
    template = settings.get("chat_template")
    if isinstance(template, list):
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if template is None and (folder / "chat_template.jinja").exists():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    return template if isinstance(template, str) else None


# tokenizer.ggml.pre: llama.cpp does not read a split regex from the file; it knows pre-tokenizers
# by name, each with its regexes (llama-vocab.cpp) and whether it takes a whole chunk that is in
# the vocabulary as one token ("ignore_merges", Llama 3's shortcut). Ours must be one of them, or
# llama.cpp would cut text into other chunks. GPT-4's pattern, which bpe.py trains with, is
# llama.cpp's "dbrx" (the Llama 3 regex without the shortcut: bpe.py always applies merges).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
GGUF_PRE = [  # (llama.cpp's name, the tokenizer's split patterns, ignore_merges)
    ("dbrx", [GPT4_SPLIT_PATTERN], False), ("dbrx", [LLAMA3_SPLIT], False),
    ("llama-bpe", [GPT4_SPLIT_PATTERN], True), ("llama-bpe", [LLAMA3_SPLIT], True),
    ("qwen2", [QWEN2_SPLIT], False), ("gpt-2", [GPT2_SPLIT_PATTERN], False),
    ("smollm", [r"\p{N}", GPT2_SPLIT_PATTERN], False),
    # Falcon's Digits after ByteLevel is in the merges, not in a pattern (digit_cuts); llama.cpp
    # has no Digits step, so it cuts the same given our merges. Its deepseek-llm joins digits
    # (\p{N}+) where the release splits each: left out, an export refuses it.
    ("falcon", [PUNCTUATION_CLASS + "+", GPT2_SPLIT_PATTERN, "[0-9][0-9][0-9]"], False),
    ("deepseek-coder", ["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+",
                        "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", r"\p{N}"], False),
    # the same patterns as above, under the names llama.cpp gives other releases: read only
    ("starcoder", [r"\p{N}", GPT2_SPLIT_PATTERN], False),
    ("refact", [r"\p{N}", GPT2_SPLIT_PATTERN], False), ("mpt", [GPT2_SPLIT_PATTERN], False)]


def gguf_pre(tok):
    """The name llama.cpp knows this tokenizer's split by, or a UserError saying why none fits."""
    pre = next((name for name, patterns, ignore in GGUF_PRE
                if tok.split_patterns == patterns and tok.ignore_merges == ignore), None)
    if pre is None:
        raise UserError(f"this tokenizer's split ({tok.split_patterns}) is none that llama.cpp "
                        f"knows by name ({', '.join(sorted({p for p, _, _ in GGUF_PRE}))}): "
                        f"it would cut text differently"
                        + ("; it is the pattern of version-1 tokenizer files, which an older "
                           "bpe.py trained: train the model again with a new tokenizer"
                           if tok.split_patterns == [V1_SPLIT_PATTERN] else ""))
    return pre


def gguf_tokenizer(tok, template, bos, eos, eot):
    """The tokenizer section of a GGUF file as (key, value, GGUF type) triples: llama.cpp's "gpt2"
    model (byte-level BPE) with our tokens and merges; the chat template (Jinja text) and the
    names of the tokens it calls bos_token (None: <|endoftext|>) and eos_token, which llama.cpp
    fills in when it renders the template, and of the token that ends a turn (eot)."""
    if isinstance(tok, sentencepiece_bpe.SentencePieceTokenizer):  # llama.cpp's "llama" model
        return sentencepiece_bpe.gguf_tokenizer(tok, template, bos, eos, eot)
    pre = gguf_pre(tok)
    # Qwen2's NFC normalizer: llama.cpp (and its own converter) leave it out; text already in NFC,
    # which is nearly all text, tokenizes the same.
    vocab = gguf_vocab(tok)
    s = tok.special_tokens
    return [("tokenizer.ggml.model", "gpt2", None), ("tokenizer.ggml.pre", pre, None),
            ("tokenizer.ggml.tokens", vocab["tokens"], "string"),
            ("tokenizer.ggml.token_type", vocab["token_type"], "int32"),
            ("tokenizer.ggml.merges", vocab["merges"], "string"),
            ("tokenizer.ggml.bos_token_id", s[bos or "<|endoftext|>"], "uint32"),
            ("tokenizer.ggml.eos_token_id", s[eos], "uint32"),
            ("tokenizer.ggml.eot_token_id", s[eot], "uint32"),
            ("tokenizer.ggml.padding_token_id", s["<|endoftext|>"], "uint32"),
            ("tokenizer.ggml.add_bos_token", False, None),  # our models never saw a BOS token
            ("tokenizer.ggml.add_eos_token", False, None),
            ("tokenizer.chat_template", template, None)]


# Reading GGUF's tokenizer section goes through the same reader as tokenizer.json: its tokens
# (one string per id, in the byte-level alphabet), token types and merges are the vocabulary,
# added tokens and merges of a tokenizer.json, and `pre` names a split of GGUF_PRE: the table the
# exporter writes by, read backwards (the first split listed under a name is the one taken; the
# others under it cut text the same way). llama.cpp leaves Qwen2's NFC normalizer out, so do we.
TOKEN_UNKNOWN = 2  # GGUF's <unk>, a special token of its own


def from_gguf(metadata, where):
    """A GGUF file's metadata (gguf_file.GGUFFile.metadata) -> the bpe.Tokenizer its
    tokenizer.ggml.* keys describe, through hf_arguments (a "llama" model: sentencepiece_bpe's
    from_gguf); UserError("<where>: ...") for another model, a `pre` no one here knows."""
    def get(key, default=None):
        value = metadata.get(f"tokenizer.ggml.{key}", default)
        if value is None:
            raise UserError(f"{where}: no tokenizer.ggml.{key}")
        return value
    if get("model") == "llama":  # SentencePiece's scores, not merges
        return sentencepiece_bpe.from_gguf(metadata, where)
    if get("model") != "gpt2":
        raise UserError(f"{where}: tokenizer.ggml.model {get('model')!r} is not supported "
                        f"('gpt2', a byte-level BPE, and 'llama', a SentencePiece-style one)")
    pre = get("pre", "default")
    split = next(((patterns, ignore) for name, patterns, ignore in GGUF_PRE if name == pre), None)
    if split is None:
        raise UserError(f"{where}: tokenizer.ggml.pre {pre!r} is not supported (known: "
                        f"{', '.join(sorted({name for name, _, _ in GGUF_PRE}))})")
    tokens = get("tokens")
    types = get("token_type", [TOKEN_NORMAL] * len(tokens))
    if len(types) != len(tokens) or len(set(tokens)) != len(tokens):
        raise UserError(f"{where}: tokenizer.ggml.token_type does not give one type per token, or "
                        f"a token is listed twice")
    special = {TOKEN_CONTROL, TOKEN_UNKNOWN}
    data = {"model": {"type": "BPE", "ignore_merges": split[1], "merges": get("merges", []),
                      "vocab": {t: i for i, t in enumerate(tokens) if types[i] != TOKEN_UNUSED}},
            "added_tokens": [{"id": i, "content": t, "special": types[i] in special,
                              "normalized": False} for i, t in enumerate(tokens)
                             if types[i] in special | {TOKEN_USER_DEFINED}],
            "pre_tokenizer": split_pre_tokenizer(split[0]), "decoder": {"type": "ByteLevel"}}
    # llama.cpp puts BOS in front of every text for Llama 3's split unless the file says otherwise
    return Tokenizer(**hf_arguments(data, where) | dict(
        bos_added=[get("bos_token_id")] if get("add_bos_token", pre == "llama-bpe") else [],
        eos_added=[get("eos_token_id")] if get("add_eos_token", False) else []))
