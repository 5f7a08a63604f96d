"""Tests for hf_tokenizer.py, bpe.py's released tokenizers: reading the `tokenizers` library's tokenizer.json
(GPT-2, Llama 3, Qwen2, SmolLM2 styles), writing it back, and the exports a GGUF writer needs.

The first half needs no extra package: small tokenizer.json files written by hand, with the ids
each text must give worked out by hand. The second half trains real tokenizers with the
`tokenizers` library (skipped when it is not installed) and checks every id against it.
"""
import copy
import functools
import json
import random
import re
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bpe  # noqa: E402
import hf_tokenizer  # noqa: E402
import tokenizer_v1  # noqa: E402
import unicode_regex  # noqa: E402
from bpe import Tokenizer, UserError  # noqa: E402

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

CHAR = bpe.bytes_to_unicode()   # byte -> its character in tokenizer.json ("Ġ" for a space)


def added(id, content, special=True, normalized=False):
    return {"id": id, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": normalized, "special": special}


def tokenizer_json(vocab, merges, added_tokens, pre_tokenizer, normalizer=None, post=None,
                   ignore_merges=False):
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": added_tokens, "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer, "post_processor": post,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                        "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False, "ignore_merges": ignore_merges,
                      "vocab": vocab, "merges": merges}}


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
              "use_regex": True}


def split_then_byte_level(pattern):
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        dict(BYTE_LEVEL, use_regex=False)]}


def gpt2_style():
    """GPT-2's layout: ByteLevel with its own regex, merges as "a b" strings, <|endoftext|> the
    last id, in the vocab and an added token. Here byte b has id 255 - b (so "H" is 183)."""
    vocab = {CHAR[b]: 255 - b for b in range(256)}
    vocab.update({"Ġw": 256, "or": 257, "Ġwor": 258, "ld": 259, "Ġworld": 260,
                  "<|endoftext|>": 261})
    merges = ["Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"]
    return tokenizer_json(vocab, merges, [added(261, "<|endoftext|>", normalized=True)],
                          BYTE_LEVEL)


def smollm2_style():
    """SmolLM2's layout: digits split one by one, then ByteLevel's regex; the special tokens are
    ids 0, 1, 2 (in the vocab too), merges as ["a", "b"] lists. Byte b has id 100 + b."""
    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2,
             "Ġt": 3, "he": 4, "Ġthe": 5, "12": 6}
    vocab.update({CHAR[b]: 100 + b for b in range(256)})
    merges = [["Ġ", "t"], ["h", "e"], ["Ġt", "he"], ["1", "2"]]
    pre = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, BYTE_LEVEL]}
    specials = [added(i, name) for i, name in enumerate(["<|endoftext|>", "<|im_start|>",
                                                         "<|im_end|>"])]
    return tokenizer_json(vocab, merges, specials, pre)


def llama3_style():
    """Llama 3's layout: Split(its regex) + ByteLevel(use_regex false), ignore_merges (a chunk
    that is a whole token is that token: "Ġhello" has no merges that make it), special tokens
    after the vocabulary and only in added_tokens, a post-processor that adds a BOS."""
    vocab = {CHAR[b]: b for b in range(256)}
    vocab.update({"Ġhello": 256, "ll": 257, "he": 258, "Ġh": 259})
    merges = ["l l", "h e", "Ġ h"]
    post = {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [], "special_tokens": {"<|begin_of_text|>": {
                "id": "<|begin_of_text|>", "ids": [260], "tokens": ["<|begin_of_text|>"]}}}
    return tokenizer_json(vocab, merges, [added(260, "<|begin_of_text|>"),
                                          added(261, "<|eot_id|>")],
                          split_then_byte_level(LLAMA3_PATTERN), post=post, ignore_merges=True)


def qwen2_style():
    """Qwen2's layout: NFC first, Split(its regex: one digit per chunk) + ByteLevel, special
    tokens after the vocabulary, and an added token that is not special (<tool_call>)."""
    vocab = {CHAR[b]: b for b in range(256)}
    vocab.update({"Ã©": 256, "caf": 257, "cafÃ©": 258, "ca": 259})
    merges = ["Ã ©", "c a", "ca f", "caf Ã©"]
    return tokenizer_json(vocab, merges, [added(260, "<|endoftext|>"),
                                          added(261, "<tool_call>", special=False)],
                          split_then_byte_level(QWEN2_PATTERN), normalizer={"type": "NFC"})


STYLES = {"gpt2": gpt2_style, "smollm2": smollm2_style, "llama3": llama3_style,
          "qwen2": qwen2_style}


# -- reading the four styles, ids worked out by hand -------------------------------------------

def test_gpt2_style():
    tok = hf_tokenizer.from_hf(gpt2_style())
    # "Hello" has no merge: its bytes H e l l o, each at 255 - b. " world": (Ġ, w) rank 0,
    # (o, r) rank 1, (Ġw, or) rank 2, (l, d) rank 3, (Ġwor, ld) rank 4 -> "Ġworld" = 260.
    ids = tok.encode("Hello world<|endoftext|>", allowed_special="all")
    assert ids == [183, 154, 147, 147, 144, 260, 261]
    assert tok.decode(ids) == "Hello world<|endoftext|>"
    assert tok.special_tokens == {"<|endoftext|>": 261} and tok.vocab_size == 262
    assert tok.id_to_bytes(183) == b"H" and tok.id_to_bytes(258) == b" wor"
    # GPT-2's regex keeps a run of digits whole
    assert tok.encode("x 2024") == [255 - ord("x"), 255 - 32, 255 - 50, 255 - 48, 255 - 50,
                                    255 - 52]


def test_smollm2_style_digits_one_by_one():
    tok = hf_tokenizer.from_hf(smollm2_style())
    # Digits first: "the 12" -> "the ", "1", "2"; then GPT-2's regex: "the", " ". "the": (h, e)
    # -> "he" = 4, and no (t, he) merge: [t = 216, 4]. The merge "1 2" never applies.
    assert tok.encode("the 12<|im_end|>", allowed_special="all") == [216, 4, 132, 149, 150, 2]
    # " the": (Ġ, t) -> 3, (h, e) -> 4, (Ġt, he) -> "Ġthe" = 5
    assert tok.encode(" the") == [5]
    assert tok.special_tokens == {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    assert tok.is_special(0) and not tok.is_special(100)
    assert tok.decode([5, 2]) == " the<|im_end|>"


def test_llama3_style_ignore_merges_and_rank_order():
    tok = hf_tokenizer.from_hf(llama3_style())
    # " hello" is a whole token: ignore_merges uses it as is, though no merge makes it
    assert tok.encode(" hello hello") == [256, 256]
    # " hellos" is not: BPE on Ġ h e l l o s applies the lowest rank first: (l, l) -> 257,
    # then (h, e) -> 258, and then (Ġ, h) is gone, though it was the leftmost pair.
    assert tok.encode(" hellos") == [32, 258, 257, 111, 115]
    # Llama 3's regex: at most three digits per chunk
    assert tok.encode("12345") == [49, 50, 51, 52, 53]
    assert tok.encode("<|begin_of_text|>hello", allowed_special="all") == [260, 258, 257, 111]
    assert tok.bos_added == [260] and tok.eos_added == []
    assert tok.special_tokens == {"<|begin_of_text|>": 260, "<|eot_id|>": 261}


def test_qwen2_style_nfc_and_added_tokens():
    tok = hf_tokenizer.from_hf(qwen2_style())
    # NFC turns "e" + U+0301 into "é" first: both spellings give the same ids.
    # "café" = c a f Ã © -> (Ã, ©) -> 256, (c, a) -> 259, (ca, f) -> 257, (caf, Ã©) -> 258
    assert tok.encode("café") == tok.encode("cafe\u0301") == [258]
    assert tok.decode([258]) == "café"
    # <tool_call> is an added token that is not special: found whole in any mode
    assert tok.encode("<tool_call>café", allowed_special="none") == [261, 258]
    assert tok.encode("<|endoftext|>", allowed_special="all") == [260]
    assert tok.added_tokens == {"<tool_call>": 261} and not tok.is_special(261)
    # Qwen's regex: one digit per chunk
    assert tok.encode("2024") == [50, 48, 50, 52]
    # NFC inside a Sequence is the same normalizer
    data = qwen2_style()
    data["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFC"}]}
    assert hf_tokenizer.from_hf(data).encode("cafe\u0301") == [258]


def test_special_names_as_plain_text_and_the_default_refusal():
    tok = hf_tokenizer.from_hf(smollm2_style())
    assert tok.encode("<|im_end|>", allowed_special="none") == [
        100 + b for b in b"<|"] + [100 + b for b in b"im"] + [100 + ord("_")] + [
        100 + b for b in b"end"] + [100 + b for b in b"|>"]
    with pytest.raises(ValueError, match="special token"):
        tok.encode("<|im_end|>")


def test_adding_chat_tokens_to_a_gpt2_import():
    tok = hf_tokenizer.from_hf(gpt2_style())
    assert tok.add_special_tokens(["<|im_start|>", "<|im_end|>"]) == [262, 263]
    assert tok.vocab_size == 264
    assert tok.encode("<|im_start|> world<|im_end|>", allowed_special="all") == [262, 260, 263]
    back = hf_tokenizer.from_hf(hf_tokenizer.to_hf(tok))
    assert back.special_tokens == tok.special_tokens


# -- saving, and round trips through tokenizer.json ---------------------------------------------

TEXTS = ["Hello world<|endoftext|>", " the 12 the", " hello hellos 12345", "café cafe\u0301",
         "<tool_call>x<|im_end|>", "日本語 🙂 x² ½\r\n\t  end", ""]


def same_tokenizer(a, b):
    assert hf_tokenizer.token_strings(a) == hf_tokenizer.token_strings(b)
    assert a.special_tokens == b.special_tokens and a.added_tokens == b.added_tokens
    assert hf_tokenizer.token_types(a) == hf_tokenizer.token_types(b) and hf_tokenizer.hf_merges(a) == hf_tokenizer.hf_merges(b)
    assert (a.bos_added, a.eos_added, a.normalizer) == (b.bos_added, b.eos_added, b.normalizer)
    for text in TEXTS:
        for mode in ("all", "none"):
            assert a.encode(text, allowed_special=mode) == b.encode(text, allowed_special=mode)


@pytest.mark.parametrize("style", STYLES)
def test_save_and_load_a_released_tokenizer(style, tmp_path):
    tok = hf_tokenizer.from_hf(STYLES[style]())
    tok.save(tmp_path / "tok.json")
    data = json.loads((tmp_path / "tok.json").read_text(encoding="utf-8"))
    assert data["version"] == 2 and len(data["vocab"]) == len(STYLES[style]()["model"]["vocab"])
    same_tokenizer(tok, Tokenizer.load(tmp_path / "tok.json"))


@pytest.mark.parametrize("style", STYLES)
def test_to_hf_and_back_gives_the_same_tokenizer(style):
    tok = hf_tokenizer.from_hf(STYLES[style]())
    same_tokenizer(tok, hf_tokenizer.from_hf(json.loads(json.dumps(hf_tokenizer.to_hf(tok)))))


def test_to_hf_and_back_for_the_project_s_own_tokenizers(tmp_path):
    text = "the cat sat on the mat; 12345 cafés, x² ½ 日本語\n" * 20
    own = Tokenizer.train(text, 256 + 3 + 25)
    same_tokenizer(own, hf_tokenizer.from_hf(hf_tokenizer.to_hf(own)))
    # a version-1 file keeps its `re` pattern: to_hf writes it out as explicit classes
    (tmp_path / "v1.json").write_text(json.dumps({
        "format": "slm-bpe", "version": 1, "pattern": tokenizer_v1.V1_SPLIT_PATTERN,
        "special_tokens": {"<|endoftext|>": 258}, "merges": [[194, 178], [120, 256]]}))
    v1 = Tokenizer.load(tmp_path / "v1.json")
    hf = hf_tokenizer.to_hf(v1)
    assert "\\p{" not in json.dumps(hf) and "\\x{b2}" in hf["pre_tokenizer"]["pretokenizers"][0][
        "pattern"]["Regex"]
    back = hf_tokenizer.from_hf(hf)
    same_tokenizer(v1, back)
    assert back.encode("x² ½") == v1.encode("x² ½") == [257, 32, 194, 189]


def test_export_helpers_for_gguf():
    tok = hf_tokenizer.from_hf(qwen2_style())
    tok.add_special_tokens(["<|im_end|>"])
    vocab = hf_tokenizer.gguf_vocab(tok)
    assert vocab["tokens"][:3] == ["Ā", "ā", "Ă"] and vocab["tokens"][32] == "Ġ"
    assert vocab["tokens"][256:] == ["Ã©", "caf", "cafÃ©", "ca", "<|endoftext|>", "<tool_call>",
                                     "<|im_end|>"]
    assert vocab["token_type"][255:] == [hf_tokenizer.TOKEN_NORMAL] * 5 + [
        hf_tokenizer.TOKEN_CONTROL, hf_tokenizer.TOKEN_USER_DEFINED, hf_tokenizer.TOKEN_CONTROL]
    assert vocab["merges"] == ["Ã ©", "c a", "ca f", "caf Ã©"]
    assert hf_tokenizer.duplicate_tokens(tok) == {}


def test_exports_refuse_two_ids_for_one_token():
    # A special token named like an ordinary token: tokenizer.json and GGUF could not tell
    # the two ids apart.
    tok = Tokenizer.train("aaabdaaabac", vocab_size=256 + 3, special_tokens=[])
    tok.add_special_tokens(["aa"])
    assert hf_tokenizer.duplicate_tokens(tok) == {"aa": [256, 259]}
    for export in (hf_tokenizer.to_hf, hf_tokenizer.gguf_vocab):
        with pytest.raises(UserError, match="more than one id"):
            export(tok)


def test_to_hf_refuses_ids_tokenizers_would_change():
    # special tokens after a gap: `tokenizers` would renumber them, so the file would lie
    data = llama3_style()
    tok = Tokenizer(**hf_tokenizer.hf_arguments(data, "x"))
    tok._add_token(300, "<|late|>", True)
    with pytest.raises(UserError, match="would give '<|late|>' the id 262"):
        hf_tokenizer.to_hf(tok)


# -- what is refused, and how ------------------------------------------------------------------

def changed(path, value, style=gpt2_style):
    """A copy of a style's dict with data[path[0]][path[1]]... = value."""
    data = copy.deepcopy(style())
    *parents, last = path
    target = data
    for key in parents:
        target = target[key]
    target[last] = value
    return data


def without_byte_0():
    data = gpt2_style()
    del data["model"]["vocab"]["Ā"]
    return data


METASPACE = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}


@pytest.mark.parametrize("data, message", [
    (changed(["pre_tokenizer"], METASPACE),
     "pre_tokenizer type Metaspace is not supported (byte-level BPE only)"),
    (changed(["pre_tokenizer"], None), "pre_tokenizer null is not supported"),
    (changed(["model", "type"], "WordPiece"), "model type WordPiece is not supported"),
    (changed(["model", "type"], "Unigram"), "model type Unigram is not supported"),
    (changed(["model", "byte_fallback"], True), "model.byte_fallback true is not supported"),
    (changed(["model", "dropout"], 0.1), "model.dropout 0.1 is not supported"),
    (changed(["model", "continuing_subword_prefix"], "##"),
     'model.continuing_subword_prefix "##" is not supported'),
    (changed(["model", "end_of_word_suffix"], "</w>"),
     'model.end_of_word_suffix "</w>" is not supported'),
    (changed(["pre_tokenizer", "add_prefix_space"], True),
     "ByteLevel add_prefix_space true is not supported"),
    (changed(["normalizer"], {"type": "Lowercase"}), "normalizer type Lowercase is not supported"),
    (changed(["normalizer"], {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}]}), "normalizer type Prepend is not supported"),
    (changed(["decoder"], {"type": "Metaspace"}), "decoder type Metaspace is not supported"),
    (changed(["pre_tokenizer", "pretokenizers", 0, "behavior"], "Removed", llama3_style),
     "Split behavior Removed is not supported"),
    (changed(["pre_tokenizer", "pretokenizers", 0, "invert"], True, llama3_style),
     "Split invert true is not supported"),
    (changed(["pre_tokenizer", "pretokenizers", 0, "pattern"], {"String": ""}, llama3_style),
     'Split pattern {"String": ""} is not supported'),
    (changed(["pre_tokenizer", "pretokenizers", 0, "pattern"], {"Regex": r"\w+"}, llama3_style),
     r"Split regex '\\w+' is not supported: \w is not supported"),
    (changed(["pre_tokenizer", "pretokenizers"], [BYTE_LEVEL, BYTE_LEVEL], llama3_style),
     "pre_tokenizer type ByteLevel after ByteLevel is not supported"),
    (changed(["added_tokens", 0, "lstrip"], True), "lstrip true is not supported"),
    (changed(["added_tokens", 0, "id"], 262, llama3_style),
     "has id 262, but `tokenizers` gives it id 260"),
    (changed(["model", "vocab", "a b"], 300), "'a b' (id 300) is not in the byte-level alphabet"),
    (changed(["model", "merges"], ["Ġ x"]), "model.merges[0] 'Ġ x': 'Ġx' is not in model.vocab"),
    (changed(["model", "merges"], ["a b c"]), 'expected "left right"'),
    (changed(["model", "vocab", "Ā"], None), "model.vocab gives 'Ā' the id None"),
])
def test_unsupported_tokenizer_json_is_one_clear_error(data, message):
    with pytest.raises(UserError, match=re.escape(message)) as info:
        hf_tokenizer.from_hf(data)
    assert str(info.value).startswith("tokenizer.json: ")
    assert "\n" not in str(info.value)


def test_a_byte_without_a_token_is_dropped_as_tokenizers_drops_it():
    """SmolLM2's vocabulary has no token for 21 bytes (0x04, 0xff, ...): `tokenizers` (with no
    unk token) and llama.cpp leave such a byte out of the ids, and so does bpe.Tokenizer."""
    tok = hf_tokenizer.from_hf(without_byte_0())
    assert tok.encode("a\x00b c\x00") == tok.encode("ab c") != []
    tokenizers = pytest.importorskip("tokenizers")
    reference = tokenizers.Tokenizer.from_str(json.dumps(without_byte_0()))
    for text in ["a\x00b c\x00", "\x00", "x \x00\x00 y"] + MIXED:
        assert tok.encode(text, allowed_special="all") == reference.encode(text, add_special_tokens=False).ids, text


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(changed(["pre_tokenizer"], METASPACE)), encoding="utf-8")
    with pytest.raises(UserError, match=f"^{path}: pre_tokenizer type Metaspace"):
        hf_tokenizer.from_hf(path)
    with pytest.raises(UserError, match=f"^{tmp_path / 'nope.json'}: cannot read"):
        hf_tokenizer.from_hf(tmp_path / "nope.json")
    path.write_text(json.dumps(gpt2_style()), encoding="utf-8")
    with pytest.raises(UserError, match="hf_tokenizer.from_hf reads it"):
        Tokenizer.load(path)
    assert hf_tokenizer.from_hf(path).encode(" world") == [260]
    Tokenizer.train("hello", 260).save(path)
    with pytest.raises(UserError, match="slm tokenizer file.*Tokenizer.load reads it"):
        hf_tokenizer.from_hf(path)


def test_the_post_processor_is_read_not_applied():
    assert hf_tokenizer.hf_post_processor(None) == ([], [])
    assert hf_tokenizer.hf_post_processor({"type": "ByteLevel"}) == ([], [])
    roberta = {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0]}
    assert hf_tokenizer.hf_post_processor(roberta) == ([0], [2])
    llama = llama3_style()["post_processor"]
    assert hf_tokenizer.hf_post_processor({"type": "Sequence", "processors": [
        {"type": "ByteLevel"}, llama]}) == ([260], [])
    assert hf_tokenizer.hf_post_processor({"type": "SomethingNew"}) == (None, None)


def test_ids_tokenizers_would_give():
    assert hf_tokenizer.ids_tokenizers_would_give({"a": 0, "b": 1}, ["<x>", "b", "<y>"]) == [2, 1, 3]
    # SmolLM2: the special tokens are in the vocab, so they keep the vocab's ids
    assert hf_tokenizer.ids_tokenizers_would_give({"<s>": 0, "a": 1}, ["<s>", "<t>"]) == [0, 2]


# -- against the `tokenizers` library itself, when it is installed ----------------------------

def sample_text():
    import pydoc_data.topics
    topics = pydoc_data.topics.topics
    return "\n\n".join(topics[k] for k in sorted(topics))[:120_000]


MIXED = [
    "Hello, world! It's the user's book; they'll say we've I'm he'd. IT'S SHOUTED'LL",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\r\n\tif x >= 10_000: pass\n",
    "3.14159 2024-06-01 1234567890123456789012345 +44 (0)20 7946 0958 0x1F $1,000.50",
    "  two spaces,\t\ttabs, \n\n\nnewlines\r\n\r\nand  \u00a0non-breaking\u3000ideographic  \n ",
    "café naïve Ångström résumé " + unicodedata.normalize("NFD", "café naïve Ångström résumé"),
    "日本語のテキスト。中文字符，한국어 텍스트。Ελληνικά κείμενα. Привет, мир! مرحبا بالعالم",
    "emoji 🙂🚀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ 🏳️‍🌈 ✨",
    "x² + y³ = z¹ ½ ¾ Ⅻ ٣٤٥ ४२ ①②",
    "<|endoftext|>a<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<tool_call>{}</tool_call>"
    "<|im_end|><|endoftext|><|endoftext|>",
    "separators \x1c\x1d\x1e\x1f, \x85next line\u2028line\u2029para \u200bzero-width \x00\x07\x7f",
    "ſtraße 'S 'T 'Ll 'ſ ǅ ﬁ ﬆ K Å",
    "",
]

ALPHABETS = ["abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'\"()_-+=*/\\",
             "日本語中文字漢字かなカナ한국어", "🙂🚀👍🏽👨‍👩‍👧🇫🇷✨", "e\u0301a\u0308o\u0303\u0300\u0327",
             "\x00\t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u2028\u3000\u200b\ufeff", "ßéñøÅ²½Ⅻ٣४①",
             "<|endoftext|><|im_start|><|im_end|><tool_call>", "   \n\n\t\r\n"]


def texts_to_compare():
    rng = random.Random(0)
    out = list(MIXED)
    for _ in range(1000):
        pool = "".join(rng.sample(ALPHABETS, rng.randint(1, 3)))
        out.append("".join(rng.choice(pool) for _ in range(rng.randint(0, 60))))
    out.append(sample_text())
    return out


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def train_hf(pre_tokenizer, *, normalizer=None, ignore_merges=False, specials_first=True):
    """A tokenizer trained by `tokenizers` on Python's docs plus the mixed texts."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers
    hf = tokenizers.Tokenizer(models.BPE(ignore_merges=ignore_merges))
    hf.pre_tokenizer = pre_tokenizer
    hf.normalizer = normalizer
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=SPECIALS if specials_first
                                  else [], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    hf.train_from_iterator([sample_text()] + MIXED * 3, trainer)
    if not specials_first:  # Llama 3 and Qwen: special tokens after the vocabulary
        hf.add_special_tokens(SPECIALS)
    hf.add_tokens(["<tool_call>"])  # not special, and matched after normalizing (the default)
    return hf


def hf_styles():
    pytest.importorskip("tokenizers")
    from tokenizers import Regex, normalizers, pre_tokenizers
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)

    def split(pattern):
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), "isolated"),
                                        byte_level])
    return {
        "gpt2": lambda: train_hf(pre_tokenizers.ByteLevel(add_prefix_space=False)),
        "llama3": lambda: train_hf(split(LLAMA3_PATTERN), ignore_merges=True,
                                   specials_first=False),
        "qwen2": lambda: train_hf(split(QWEN2_PATTERN), normalizer=normalizers.NFC(),
                                  specials_first=False),
        "smollm2": lambda: train_hf(pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False)])),
    }


@functools.lru_cache(maxsize=1)
def every_kind_of_character():
    """A text with every 50th character Python's Unicode knows, and all of its numbers, spaces,
    separators, controls and rarer letters, each doubled, after a letter, punctuation, a space."""
    kinds = ("Nd", "Nl", "No", "Zs", "Zl", "Zp", "Cc", "Cf", "Lm", "Lt")
    chars = [c for i, c in enumerate(unicode_regex.all_characters()) if unicodedata.category(c) != "Cn"
             and (i % 50 == 0 or unicodedata.category(c) in kinds or c.isspace())]
    return "".join(f"{c}{c} x{c}!{c}\t{c}\n" for c in chars)


def compare(ours, hf, texts, nfc=False):
    """Every text in both modes: "all" (the library's default) and "none" (its
    encode_special_tokens), and the chunks of its pre-tokenizer on every kind of character.
    Returns the number of characters compared."""
    if hf.pre_tokenizer is not None:
        text = every_kind_of_character()
        want = [piece for piece, _ in hf.pre_tokenizer.pre_tokenize_str(text)]
        assert [bpe.to_byte_level(c.encode()) for c in ours.split_text(text)] == want
    chars = 0
    for special_as_text in (False, True):
        hf.encode_special_tokens = special_as_text
        for text in texts:
            want = hf.encode(text, add_special_tokens=False).ids
            got = ours.encode(text, allowed_special="none" if special_as_text else "all")
            assert got == want, (text, got, want)
            assert ours.decode(got) == (unicodedata.normalize("NFC", text) if nfc else text)
            chars += len(text)
    hf.encode_special_tokens = False
    return chars


@pytest.mark.parametrize("style", ["gpt2", "llama3", "qwen2", "smollm2"])
def test_from_hf_encodes_exactly_like_tokenizers(style, tmp_path):
    hf = hf_styles()[style]()
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    ours = hf_tokenizer.from_hf(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert ours.vocab_size == hf.get_vocab_size() > len(data["model"]["vocab"])
    texts = texts_to_compare()
    chars = compare(ours, hf, texts, nfc=style == "qwen2")
    print(f"{style}: {len(texts)} texts, {chars // 2:,} characters, in two modes: all ids equal")
    # saved in our format and loaded again, and written back as tokenizer.json: still equal
    ours.save(tmp_path / "ours.json")
    compare(Tokenizer.load(tmp_path / "ours.json"), hf, texts[:50], nfc=style == "qwen2")
    tokenizers = pytest.importorskip("tokenizers")
    back = tokenizers.Tokenizer.from_str(json.dumps(hf_tokenizer.to_hf(ours)))
    compare(ours, back, texts, nfc=style == "qwen2")


def test_the_project_s_tokenizers_written_as_tokenizer_json_encode_the_same(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    texts = texts_to_compare()
    own = Tokenizer.train(sample_text() + "".join(MIXED), 1024)
    own.add_special_tokens(["<tool_call>"])
    hf = tokenizers.Tokenizer.from_str(json.dumps(hf_tokenizer.to_hf(own)))
    chars = compare(own, hf, texts)
    # a version-1 tokenizer: its `re` pattern written out as explicit classes for Oniguruma
    (tmp_path / "v1.json").write_text(json.dumps({
        "format": "slm-bpe", "version": 1, "pattern": tokenizer_v1.V1_SPLIT_PATTERN,
        "special_tokens": {"<|endoftext|>": 261},
        "merges": [[194, 178], [120, 256], [32, 97], [194, 189], [32, 116]]}))
    v1 = Tokenizer.load(tmp_path / "v1.json")
    chars += compare(v1, tokenizers.Tokenizer.from_str(json.dumps(hf_tokenizer.to_hf(v1))), texts)
    print(f"own tokenizers via to_hf: {len(texts)} texts, {chars // 4:,} characters, two "
          f"tokenizers, two modes: all ids equal")


def test_merges_can_make_tokens_anywhere_and_strings_or_lists_both_load():
    tokenizers = pytest.importorskip("tokenizers")
    data = llama3_style()
    data["model"]["merges"] = [m.split(" ") for m in data["model"]["merges"]]
    hf = tokenizers.Tokenizer.from_str(json.dumps(data))
    compare(hf_tokenizer.from_hf(data), hf, TEXTS + MIXED)
    for make in STYLES.values():
        compare(hf_tokenizer.from_hf(make()), tokenizers.Tokenizer.from_str(json.dumps(make())),
                TEXTS + MIXED, nfc=make is qwen2_style)


def test_dropping_possessive_quantifiers_changes_nothing_for_these_patterns(monkeypatch):
    # Python 3.10's `re` has no "?+" or "++": there python_regex drops them. Simulated here.
    text = every_kind_of_character() + "".join(texts_to_compare())
    patterns = [bpe.GPT4_SPLIT_PATTERN, hf_tokenizer.GPT2_SPLIT_PATTERN, LLAMA3_PATTERN,
                QWEN2_PATTERN]
    kept = [bpe.compile_split(p)(text) for p in patterns]
    monkeypatch.setattr(unicode_regex, "POSSESSIVE_OK", False)
    unicode_regex.python_regex.cache_clear()
    bpe.compile_split.cache_clear()
    try:
        assert "?+" not in unicode_regex.python_regex(bpe.GPT4_SPLIT_PATTERN)
        assert [bpe.compile_split(p)(text) for p in patterns] == kept
    finally:
        unicode_regex.python_regex.cache_clear()
        bpe.compile_split.cache_clear()
    # and GPT-4's pattern cuts exactly as Llama 3's (which llama.cpp knows as "llama-bpe")
    assert kept[0] == kept[2]
