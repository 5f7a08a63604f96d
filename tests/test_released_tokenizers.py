"""Tests for hf_tokenizer.py on the byte-level tokenizer families as they are released: GPT-2,
GPT-NeoX and MPT, StarCoder2, Refact, Falcon, DeepSeek LLM and DeepSeek Coder.

Each family's tokenizer.json is rebuilt here with the structure of the real file (pre-tokenizer,
normalizer, decoder, added tokens) around a small vocabulary. The first half needs no extra
package: a hand-built vocabulary of a few merges per family, and the ids each text gives, checked
once against `tokenizers`. The second half (skipped without `tokenizers`) trains a small BPE
with `tokenizers` itself in each family's structure and compares every id, and decode, on a few
hundred mixed texts.
"""
import json
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bpe  # noqa: E402
import hf_tokenizer  # noqa: E402
import unicode_regex  # noqa: E402
from bpe import UserError  # noqa: E402
from test_bpe_released import tokenizer_json  # noqa: E402

CHAR = bpe.bytes_to_unicode()


def byte_level(use_regex=True):
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
            "use_regex": use_regex}


def split(regex):
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def sequence(*steps):
    return {"type": "Sequence", "pretokenizers": list(steps)}


def digits(individual):
    return {"type": "Digits", "individual_digits": individual}


# DeepSeek LLM's letters (its second Split), as the release writes them (the escapes:
# characters that NFC would change in this file).
DEEPSEEK_LETTERS = (
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅ"
    "Ὀ-Ὅὐ-ὗὙὛὝὟ-\u1f7d"
    "ᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212a-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛ"
    "Ꜣ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+")
CJK = "[一-龥ࠀ-一가-퟿]+"
DEEPSEEK_CODER_ADDED = ["õ", "÷", "Á", "ý", "À", "ÿ", "ø", "ú", "þ", "ü", "ù", "ö", "û"]

# family -> (pre_tokenizer, normalizer, special tokens at the start of the vocabulary,
#            (added tokens after it: content, special, normalized), post_processor BOS)
FAMILIES = {
    "gpt2": (byte_level(), None, [], [("<|endoftext|>", True, True)], False),
    "gpt-neox": (byte_level(), {"type": "NFC"}, ["<|endoftext|>", "<|padding|>"],
                 [(" " * n, False, True) for n in range(8, 1, -1)], False),
    "mpt": (byte_level(), {"type": "NFC"}, ["<|endoftext|>", "<|padding|>"],
            [(" " * n, False, True) for n in range(8, 1, -1)], False),
    "starcoder2": (sequence(digits(True), byte_level()), None,
                   ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>",
                    "<fim_pad>", "<repo_name>", "<file_sep>"], [], False),
    "refact": (sequence(digits(True), byte_level()), None,
               ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>",
                "<empty_output>"], [], False),
    "falcon": (sequence({"type": "Punctuation", "behavior": "Contiguous"}, byte_level(),
                        digits(False), split("[0-9][0-9][0-9]")), None,
               [">>TITLE<<", ">>ABSTRACT<<", ">>INTRODUCTION<<", ">>SUMMARY<<",
                ">>COMMENT<<", ">>ANSWER<<", ">>QUESTION<<", ">>DOMAIN<<", ">>PREFIX<<",
                ">>SUFFIX<<", ">>MIDDLE<<", "<|endoftext|>"], [], False),
    "deepseek-llm": (sequence(split("[\r\n]"), split(DEEPSEEK_LETTERS),
                              split("\\s?[!-/:-~！-／：-～‘-‟　-。]+"), split("\\s+$"), split(CJK),
                              digits(True), byte_level(False)),
                     {"type": "Sequence", "normalizers": []}, [],
                     [("<｜begin▁of▁sentence｜>", True, True), ("<｜end▁of▁sentence｜>", True, True)],
                     True),
    "deepseek-coder": (sequence(split("[\r\n]"), split("\\s?\\p{L}+"), split("\\s?\\p{P}+"),
                                split(CJK), digits(True), byte_level(False)),
                       {"type": "Sequence", "normalizers": []}, [],
                       [(c, False, True) for c in DEEPSEEK_CODER_ADDED]
                       + [("<｜begin▁of▁sentence｜>", True, True),
                          ("<｜end▁of▁sentence｜>", True, True)], True),
}


def added(id, content, special, normalized):
    return {"id": id, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": normalized, "special": special}


def family_json(family, vocab, merges):
    """A tokenizer.json of the family's structure around a vocabulary {string: id} and merges;
    the special tokens that lead the vocabulary are expected in it already."""
    pre, normalizer, first, after, bos = FAMILIES[family]
    items = [added(vocab[name], name, True, False) for name in first]
    for content, special, normalized in after:
        items.append(added(len(vocab) + len(items) - len(first), content, special, normalized))
    post = None
    if bos:
        name = after[-2][0]
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": name, "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": name, "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": name, "type_id": 1}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {name: {"id": name, "ids": [items[-2]["id"]],
                                          "tokens": [name]}}}
    return tokenizer_json(vocab, merges, items, pre, normalizer, post)


# ---------------------------------------------------------------------------------------------
# Without reference packages: a hand-built vocabulary in each family's structure
# ---------------------------------------------------------------------------------------------
# The leading special tokens, then every byte but c0 c1 f5-ff (absent from many released
# vocabularies: dropped where they occur), then a few merges, one of them ("Ã ¼", the two bytes
# of "ü") across the cut Falcon's Digits makes after ByteLevel.
HAND_MERGES = ["Ġ t", "h e", "Ġt he", "Ã ¼", "1 2", "12 3", "Ġ Ġ", "ĠĠ ĠĠ", "i n", "Ġ in"]
MISSING = {0xC0, 0xC1, *range(0xF5, 0x100)}


def hand_json(family):
    vocab = {}
    for name in FAMILIES[family][2]:
        vocab[name] = len(vocab)
    for b in range(256):
        if b not in MISSING:
            vocab[CHAR[b]] = len(vocab)
    for m in HAND_MERGES:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    return family_json(family, vocab, list(HAND_MERGES))


HAND_TEXTS = ["the theme in 1234567", "über  ²12 in\n\n  the  ", "a, b!! (c) -- 2½ 日本",
              "x<|endoftext|>y   õ÷ \x00\u0301 ÿ"]
# The ids of `tokenizers` 0.23 (encode(text, add_special_tokens=False)), checked once.
HAND_IDS = {
    "deepseek-coder": [[116, 244, 245, 109, 101, 252, 32, 49, 50, 51, 52, 53, 54, 55], [262, 98,
        101, 114, 249, 192, 178, 49, 50, 252, 10, 10, 32, 245, 249], [97, 44, 32, 98, 33, 33, 32,
        40, 99, 41, 32, 45, 45, 32, 50, 192, 189, 32, 228, 151, 165, 228, 156, 172], [120, 60,
        124, 101, 110, 100, 111, 102, 116, 101, 120, 116, 124, 62, 121, 249, 32, 253, 254, 32, 0,
        202, 129, 32, 258]],
    "deepseek-llm": [[116, 244, 245, 109, 101, 252, 32, 49, 50, 51, 52, 53, 54, 55], [246, 98,
        101, 114, 249, 192, 178, 49, 50, 252, 10, 10, 32, 245, 249], [97, 44, 32, 98, 33, 33, 32,
        40, 99, 41, 32, 45, 45, 32, 50, 192, 189, 32, 228, 151, 165, 228, 156, 172], [120, 60,
        124, 101, 110, 100, 111, 102, 116, 101, 120, 116, 124, 62, 121, 249, 32, 193, 181, 193,
        183, 32, 0, 202, 129, 32, 193, 191]],
    "falcon": [[128, 256, 257, 121, 113, 264, 44, 260, 64, 65, 66, 67], [205, 200, 110, 113, 126,
        44, 44, 204, 190, 259, 264, 22, 22, 44, 257, 261], [109, 56, 44, 110, 45, 45, 44, 52,
        111, 53, 44, 57, 57, 44, 62, 204, 201, 44, 240, 163, 177, 240, 168, 184], [132, 11, 133,
        261, 44, 205, 193, 205, 195, 44, 12, 214, 141, 44, 205, 203]],
    "gpt-neox": [[118, 246, 247, 111, 103, 254, 34, 250, 54, 55, 56, 57], [248, 100, 103, 116,
        261, 194, 180, 249, 254, 12, 12, 261, 118, 246, 261], [99, 46, 34, 100, 35, 35, 34, 42,
        101, 43, 34, 47, 47, 34, 52, 194, 191, 34, 230, 153, 167, 230, 158, 174], [122, 0, 123,
        260, 195, 183, 195, 185, 34, 2, 204, 131, 34, 195, 193]],
    "gpt2": [[116, 244, 245, 109, 101, 252, 32, 248, 52, 53, 54, 55], [246, 98, 101, 114, 32, 32,
        192, 178, 247, 252, 10, 10, 32, 245, 249], [97, 44, 32, 98, 33, 33, 32, 40, 99, 41, 32,
        45, 45, 32, 50, 192, 189, 32, 228, 151, 165, 228, 156, 172], [120, 253, 121, 249, 32,
        193, 181, 193, 183, 32, 0, 202, 129, 32, 193, 191]],
    "mpt": [[118, 246, 247, 111, 103, 254, 34, 250, 54, 55, 56, 57], [248, 100, 103, 116, 261,
        194, 180, 249, 254, 12, 12, 261, 118, 246, 261], [99, 46, 34, 100, 35, 35, 34, 42, 101,
        43, 34, 47, 47, 34, 52, 194, 191, 34, 230, 153, 167, 230, 158, 174], [122, 0, 123, 260,
        195, 183, 195, 185, 34, 2, 204, 131, 34, 195, 193]],
    "refact": [[121, 249, 250, 114, 106, 257, 37, 54, 55, 56, 57, 58, 59, 60], [251, 103, 106,
        119, 254, 197, 183, 54, 55, 257, 15, 15, 37, 250, 254], [102, 49, 37, 103, 38, 38, 37,
        45, 104, 46, 37, 50, 50, 37, 55, 197, 194, 37, 233, 156, 170, 233, 161, 177], [125, 0,
        126, 254, 37, 198, 186, 198, 188, 37, 5, 207, 134, 37, 198, 196]],
    "starcoder2": [[123, 251, 252, 116, 108, 259, 39, 56, 57, 58, 59, 60, 61, 62], [253, 105,
        108, 121, 256, 199, 185, 56, 57, 259, 17, 17, 39, 252, 256], [104, 51, 39, 105, 40, 40,
        39, 47, 106, 48, 39, 52, 52, 39, 57, 199, 196, 39, 235, 158, 172, 235, 163, 179], [127,
        0, 128, 256, 39, 200, 188, 200, 190, 39, 7, 209, 136, 39, 200, 198]],
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_loads_and_encodes_as_tokenizers_does(family):
    tok = hf_tokenizer.from_hf(hand_json(family))
    got = [tok.encode(t, allowed_special="all") for t in HAND_TEXTS]
    assert got == HAND_IDS[family]
    assert tok.decode(got[0]) == HAND_TEXTS[0]


def test_falcon_cuts_inside_characters_after_byte_level():
    """Falcon's Digits sees "ü" as "Ã¼" and cuts before "¼": the merge "Ã ¼" never applies."""
    falcon, gpt2 = (hf_tokenizer.from_hf(hand_json(f)) for f in ("falcon", "gpt2"))
    assert len(falcon.encode("über")) == 5 and len(gpt2.encode("über")) == 4
    assert len(falcon.merges) == len(gpt2.merges) - 1   # "Ã ¼" left out


def test_dollar_is_oniguruma_end_of_line():
    split = bpe.compile_split(r"\s+$")
    assert split("a  \nb  ") == ["a", "  ", "\nb", "  "]
    assert split("x\n\ny ") == ["x", "\n", "\ny", " "]


def test_deepseek_coder_added_characters_decode_as_their_byte():
    """"õ" in the text is DeepSeek Coder's added token, matched literally; `tokenizers` decodes
    it as the byte its character stands for (f5, not UTF-8), so "\ufffd"."""
    tok = hf_tokenizer.from_hf(hand_json("deepseek-coder"))
    ids = tok.encode("aõb")
    assert ids[1] == tok.added_tokens["õ"] and len(ids) == 3
    assert tok.decode(ids) == "a\ufffdb"


def refusal(change):
    data = hand_json("gpt2")
    change(data)
    with pytest.raises(UserError) as e:
        hf_tokenizer.from_hf(data)
    return str(e.value)


@pytest.mark.parametrize("change, words", [
    (lambda d: d.update(pre_tokenizer=dict(byte_level(), add_prefix_space=True)),
     "ByteLevel add_prefix_space true"),
    (lambda d: d.update(pre_tokenizer=sequence({"type": "Punctuation", "behavior": "Removed"},
                                                byte_level())),
     "Punctuation behavior Removed"),
    (lambda d: d.update(pre_tokenizer=sequence(dict(split("a"), behavior="MergedWithNext"),
                                                byte_level())),
     "Split behavior MergedWithNext"),
    (lambda d: d.update(pre_tokenizer=sequence(byte_level(), split("\\p{L}+"))),
     "Split after ByteLevel"),
    (lambda d: d.update(pre_tokenizer=sequence(byte_level(), {"type": "Whitespace"})),
     "type Whitespace after ByteLevel"),
    (lambda d: d.update(pre_tokenizer=sequence(split("^a"), byte_level())), "^ is not supported"),
    (lambda d: d.update(normalizer={"type": "Prepend", "prepend": "▁"}), "normalizer type Prepend"),
    (lambda d: d.update(normalizer={"type": "Sequence", "normalizers": [
        {"type": "NFC"}, {"type": "NFKC"}]}), "normalizer Sequence"),
    (lambda d: d["added_tokens"][0].update(lstrip=True), "lstrip true"),
    (lambda d: d.update(normalizer={"type": "NFKC"}, added_tokens=[
        added(len(d["model"]["vocab"]), "ﬁx", False, True)]), "NFKC changes it"),
])
def test_refusals_name_the_field(change, words):
    message = refusal(change)
    assert words in message and message.startswith("tokenizer.json: ")


def test_normal_forms_load_and_save():
    data = hand_json("gpt-neox")
    data["normalizer"] = {"type": "NFKC"}
    tok = hf_tokenizer.from_hf(data)
    assert tok.encode("ﬁ") == tok.encode("fi")
    assert hf_tokenizer.to_hf(tok)["normalizer"] == {"type": "NFKC"}


def test_gguf_names_of_the_new_families():
    for family, name in [("falcon", "falcon"), ("deepseek-coder", "deepseek-coder"),
                         ("starcoder2", "smollm"), ("gpt-neox", "gpt-2")]:
        assert hf_tokenizer.gguf_pre(hf_tokenizer.from_hf(hand_json(family))) == name
    with pytest.raises(UserError):   # llama.cpp's deepseek-llm joins digits: not the file's
        hf_tokenizer.gguf_pre(hf_tokenizer.from_hf(hand_json("deepseek-llm")))


# ---------------------------------------------------------------------------------------------
# With `tokenizers`: a BPE trained by it in each family's structure, every id compared
# ---------------------------------------------------------------------------------------------
PIECES = ["the", " quick", " brown", "fox", "café", " naïve", "e\u0301", "über", "βγδ", "²³",
          "½", "Ⅻ", "日本語", "中文字符", "한국어", "🙂", "👍🏽", "def f(x):\n    return x**2",
          "  # comment", "12345", " 3.14159", "1000000", "\t", "\n", "\n\n", "   ", "  \n ",
          "\r\n", "\x00", "\x07", "\x1b[0m", "\ufffd", "õ÷ÁýÀÿ", "¡¿«»—…", "!!!", "(a, b)",
          "<|endoftext|>", "<fim_prefix>", ">>TITLE<<", "<｜begin▁of▁sentence｜>", "$x+y<=z^2|~`",
          "ﬁ", "Ω", "\u200b", "ǅ", "ß", "İ", "\u0300\u0301", "a\u0308", "٣٤٥", "१२३"]


def mixed_texts(n, seed):
    rng = random.Random(seed)
    texts = ["", " ", "  ", "a  ", "a \n", "x\n\ny ", "end   "]
    for _ in range(n):
        texts.append("".join(rng.choice(PIECES) for _ in range(rng.randint(1, 8)))
                     + rng.choice(["", " ", "  ", "\n", " \n"]))
    return texts


@pytest.fixture(scope="module")
def tokenizers_lib():
    return pytest.importorskip("tokenizers")


def trained_json(tokenizers_lib, family):
    """A BPE of ~600 ids trained by `tokenizers` in the family's structure (bytes it never saw
    have no token); for Falcon also merges across its cuts inside characters, which
    `tokenizers` must never apply."""
    tk = tokenizers_lib
    skeleton = family_json(family, {n: i for i, n in enumerate(FAMILIES[family][2])}, [])
    skeleton["added_tokens"] = []
    ref = tk.Tokenizer.from_str(json.dumps(skeleton))
    trainer = tk.trainers.BpeTrainer(vocab_size=600, special_tokens=FAMILIES[family][2],
                                     show_progress=False)
    ref.train_from_iterator(mixed_texts(300, 1) * 3, trainer=trainer)
    model = json.loads(ref.to_str())["model"]
    vocab, merges = model["vocab"], model["merges"]
    for a, b in [("Ã", "¼"), ("Î", "²"), ("Ã", "³"), ("Â", "²")]:
        if a in vocab and b in vocab and a + b not in vocab:
            vocab[a + b] = len(vocab)
            merges.insert(0, [a, b])
    return family_json(family, vocab, merges)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_ids_and_decode_equal_tokenizers(tokenizers_lib, family):
    data = trained_json(tokenizers_lib, family)
    ref = tokenizers_lib.Tokenizer.from_str(json.dumps(data))
    tok = hf_tokenizer.from_hf(data)
    for text in mixed_texts(300, 2):
        ids = ref.encode(text, add_special_tokens=False).ids
        assert tok.encode(text, allowed_special="all") == ids, (family, text)
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=False), (family, text)
    assert tok.bos_added == ref.encode("", add_special_tokens=True).ids
    rng = random.Random(3)
    known = [i for i in range(ref.get_vocab_size()) if ref.id_to_token(i) is not None]
    for _ in range(200):   # any ids: incomplete UTF-8, added tokens among bytes
        ids = [rng.choice(known) for _ in range(rng.randint(1, 6))]
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=False), (family, ids)


def test_punctuation_is_that_of_tokenizers_on_every_character(tokenizers_lib):
    pre = tokenizers_lib.pre_tokenizers.Punctuation("isolated")
    chars = unicode_regex.all_characters()
    ours = bpe.compile_split(hf_tokenizer.PUNCTUATION_CLASS)
    for k in range(0, len(chars), 20000):
        text = "a".join(chars[k:k + 20000])
        assert ours(text) == [p for p, _ in pre.pre_tokenize_str(text)]
