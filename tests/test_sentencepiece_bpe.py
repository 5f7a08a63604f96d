"""SentencePiece-style BPE (sentencepiece_bpe.py): hand-built tokenizer.json files in each variant
(expected ids checked once against `tokenizers`), the run-directory round trip, the refusals;
then, behind importorskip, models trained with `tokenizers` compared on mixed texts. Then GGUF's
"llama" tokenizer read back: hand-checked cases of llama.cpp's rule on scores, a rule written here
from its description as the oracle, a file round trip; behind importorskip, llama.cpp itself."""
import collections
import json
import random
import re

import pytest

import bpe
import chat_templates
import hf_tokenizer
import sentencepiece_bpe
from bpe import UserError

PIECES = ["▁", "a", "b", "c", "H", "e", "l", "o", "▁H", "▁Hel", "el", "lo", "He", "Hel", "Hello",
          "▁Hello", "▁a", "ab", "▁ab", "▁▁", "é"]
MERGES = [("▁", "H"), ("e", "l"), ("▁H", "el"), ("l", "o"), ("▁", "a"), ("a", "b"), ("▁a", "b"),
          ("▁", "▁"), ("H", "el")]
SPECIALS = ["<unk>", "<s>", "</s>"]
OLD_NORMALIZER = {"type": "Sequence", "normalizers": [
    {"type": "Prepend", "prepend": "▁"},
    {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
OLD_DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
    {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
BOS_TEMPLATE = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}


def metaspace(scheme, split=True):
    return {"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": split}


def tokenizer_json(normalizer=None, pre=None, decoder=OLD_DECODER, byte_fallback=True,
                   unk="<unk>", fuse_unk=True, pieces=PIECES, merges=MERGES):
    vocab = {name: i for i, name in enumerate(SPECIALS)}
    if byte_fallback:
        vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for p in pieces:
        vocab.setdefault(p, len(vocab))
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": i, "content": n, "single_word": False, "lstrip": False,
                              "rstrip": False, "normalized": False, "special": True}
                             for i, n in enumerate(SPECIALS)],
            "normalizer": normalizer, "pre_tokenizer": pre, "post_processor": BOS_TEMPLATE,
            "decoder": decoder,
            "model": {"type": "BPE", "dropout": None, "unk_token": unk,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": fuse_unk, "byte_fallback": byte_fallback,
                      "ignore_merges": False, "vocab": vocab, "merges": [list(m) for m in merges]}}


# text -> the tokens `tokenizers` 0.22 gives (checked once, by hand, against it)
TEXTS = ["Hello", "<s>Hello", "<s> Hello", " Hello", "", "ab ab", "Hello<s>ab", "日", "x",
         "  a", "Hello </s> ab"]
EXPECTED = {
    "prepend+replace": [["▁Hel", "lo"], ["<s>", "▁Hel", "lo"], ["<s>", "▁", "▁Hel", "lo"],
                        ["▁", "▁Hel", "lo"], [], ["▁ab", "▁ab"], ["▁Hel", "lo", "<s>", "▁ab"],
                        ["▁", "<0xE6>", "<0x97>", "<0xA5>"], ["▁", "<0x78>"], ["▁▁", "▁a"],
                        ["▁Hel", "lo", "▁", "</s>", "▁", "▁ab"]],
    "first": [["▁Hel", "lo"], ["<s>", "Hel", "lo"], ["<s>", "▁Hel", "lo"], ["▁Hel", "lo"], [],
              ["▁ab", "▁ab"], ["▁Hel", "lo", "<s>", "ab"], ["▁", "<0xE6>", "<0x97>", "<0xA5>"],
              ["▁", "<0x78>"], ["▁", "▁a"], ["▁Hel", "lo", "▁", "</s>", "▁ab"]],
    "always": [["▁Hel", "lo"], ["<s>", "▁Hel", "lo"], ["<s>", "▁Hel", "lo"], ["▁Hel", "lo"], [],
               ["▁ab", "▁ab"], ["▁Hel", "lo", "<s>", "▁ab"], ["▁", "<0xE6>", "<0x97>", "<0xA5>"],
               ["▁", "<0x78>"], ["▁", "▁a"], ["▁Hel", "lo", "▁", "</s>", "▁ab"]],
    "never": [["Hel", "lo"], ["<s>", "Hel", "lo"], ["<s>", "▁Hel", "lo"], ["▁Hel", "lo"], [],
              ["ab", "▁ab"], ["Hel", "lo", "<s>", "ab"], ["<0xE6>", "<0x97>", "<0xA5>"],
              ["<0x78>"], ["▁", "▁a"], ["Hel", "lo", "▁", "</s>", "▁ab"]],
}
DECODED = {  # the same texts' ids decoded (skip_special_tokens=False)
    "prepend+replace": ["Hello", "<s> Hello", "<s>  Hello", " Hello", "", "ab ab", "Hello<s> ab",
                        "日", "x", "  a", "Hello </s>  ab"],
    "first": ["Hello", "<s>Hello", "<s> Hello", "Hello", "", "ab ab", "Hello<s>ab",
              "<0xE6><0x97><0xA5>", "<0x78>", " a", "Hello </s> ab"],
}


def tokens(tok, text):
    return [tok.token_string(i) for i in tok.encode(text, allowed_special="all")]


@pytest.mark.parametrize("variant, split", [("prepend+replace", None)] + [
    (scheme, split) for scheme in ("first", "always", "never") for split in (True, False)])
def test_each_variant_encodes_as_tokenizers_does(variant, split):
    if variant == "prepend+replace":
        data = tokenizer_json(OLD_NORMALIZER)
    else:
        data = tokenizer_json(None, metaspace(variant, split), metaspace(variant, split))
    tok = hf_tokenizer.from_hf(data)
    assert isinstance(tok, sentencepiece_bpe.SentencePieceTokenizer)
    assert [tokens(tok, t) for t in TEXTS] == EXPECTED[variant]
    assert tok.bos_added == [1] and tok.eos_added == []
    if variant in DECODED:
        assert [tok.decode(tok.encode(t, allowed_special="all")) for t in TEXTS] == DECODED[variant]


def test_split_decides_whether_merges_cross_a_space():
    # "▁a▁" joined by a merge: with split true the words are "▁a", "▁" and it never applies
    pieces, merges = PIECES + ["a▁", "▁a▁"], [("a", "▁"), ("▁", "a▁")] + MERGES
    whole = hf_tokenizer.from_hf(tokenizer_json(None, metaspace("always", False),
                                                metaspace("always"), pieces=pieces, merges=merges))
    words = hf_tokenizer.from_hf(tokenizer_json(None, metaspace("always", True),
                                                metaspace("always"), pieces=pieces, merges=merges))
    assert tokens(whole, "a b") == ["▁a▁", "b"]   # ("a", "▁") is merged first, then ("▁", "a▁")
    assert tokens(words, "a b") == ["▁a", "▁", "b"]
    assert whole.cut("▁a▁b") == ["▁a▁", "b"]   # a piece holds "a▁": never cut there for speed


def test_cutting_for_speed_gives_the_ids_of_the_whole_text():
    # a word is cut between two characters no merged piece holds side by side (by their kinds:
    # "▁", digit, letter, other), and every text still gets the ids of BPE over the whole text
    rng = random.Random(0)
    texts = ["".join(rng.choice("abcHelo é日x\n12,.") for _ in range(rng.randint(0, 30)))
             for _ in range(300)]
    for data in [tokenizer_json(OLD_NORMALIZER), tokenizer_json(None, metaspace("first", False),
                                                                metaspace("first", False))]:
        cut, whole = hf_tokenizer.from_hf(data), hf_tokenizer.from_hf(data)
        whole._cut = None
        assert cut.words(cut.normalize("ab ab Hello, 12"), True) == [
            "▁ab", "▁ab", "▁Hel", "lo", ",", "▁", "1", "2"]   # no merged piece holds "ll", "o,"
        assert [cut.encode(t) for t in texts] == [whole.encode(t) for t in texts]
    fused = hf_tokenizer.from_hf(tokenizer_json(OLD_NORMALIZER, byte_fallback=False))
    assert fused._cut is None   # unknown characters side by side become one <unk>: never cut
    full = hf_tokenizer.from_hf(tokenizer_json(OLD_NORMALIZER))
    full._cache.update({f"w{i}": [0] for i in range(200_000)})   # the word cache is full
    assert full.encode(texts[5]) == cut.encode(texts[5]) and len(full._cache) < 100


def test_unknown_characters_without_byte_fallback():
    fused = hf_tokenizer.from_hf(tokenizer_json(OLD_NORMALIZER, byte_fallback=False,
                                                decoder={"type": "Fuse"}))
    assert tokens(fused, "xy日a") == ["▁", "<unk>", "a"]
    assert fused.decode(fused.encode("xy日a")) == "▁<unk>a"
    apart = hf_tokenizer.from_hf(tokenizer_json(OLD_NORMALIZER, byte_fallback=False,
                                                fuse_unk=False, decoder={"type": "Fuse"}))
    assert tokens(apart, "xy日a") == ["▁", "<unk>", "<unk>", "<unk>", "a"]
    dropped = hf_tokenizer.from_hf(tokenizer_json(OLD_NORMALIZER, byte_fallback=False, unk=None,
                                                  decoder={"type": "Fuse"}))
    assert tokens(dropped, "x") == ["▁"]   # no unk token: `tokenizers` drops the character


def test_decoding_rules():
    tok = hf_tokenizer.from_hf(tokenizer_json(OLD_NORMALIZER))
    ids = [tok.piece_ids[s] for s in ["<0x41>", "<0xFF>", "a", "<0xE6>", "<0x97>", "▁▁"]]
    assert tok.decode(ids) == "\ufffd\ufffda\ufffd\ufffd  "   # one U+FFFD per byte of a bad run
    assert tok.id_to_bytes(tok.piece_ids["<0x0A>"]) == b"\n"
    assert tok.id_to_bytes(tok.piece_ids["▁Hello"]) == b" Hello"
    assert tok.strips_first_space
    meta = hf_tokenizer.from_hf(tokenizer_json(None, metaspace("first"), metaspace("first")))
    assert meta.decode([meta.piece_ids["▁▁"], meta.piece_ids["▁a"]]) == " a"  # first: all "▁" go
    assert meta.decode([1, meta.piece_ids["▁a"]]) == "<s> a"
    never = hf_tokenizer.from_hf(tokenizer_json(None, metaspace("never"), metaspace("never")))
    assert not never.strips_first_space


def test_legacy_add_prefix_space_true_is_always():
    legacy = {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True}
    tok = hf_tokenizer.from_hf(tokenizer_json(None, legacy, legacy))
    assert tokens(tok, "<s>Hello") == ["<s>", "▁Hel", "lo"]


def test_saved_in_a_run_directory_and_loaded_back(tmp_path):
    tok = hf_tokenizer.from_hf(tokenizer_json(None, metaspace("first", False), OLD_DECODER))
    tok.reserve(400)
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    again = sentencepiece_bpe.load_tokenizer(path)
    assert isinstance(again, sentencepiece_bpe.SentencePieceTokenizer)
    assert again.vocab_size == 400 and again.bos_added == [1]
    for text in TEXTS + ["é日 x  y\n"]:
        assert again.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    with pytest.raises(UserError, match="sentencepiece_bpe.load_tokenizer"):
        bpe.Tokenizer.load(path)
    plain = bpe.Tokenizer.train("hello world " * 20, 300)   # the one loader reads bpe.py's too
    plain.save(tmp_path / "plain.json")
    assert type(sentencepiece_bpe.load_tokenizer(tmp_path / "plain.json")) is bpe.Tokenizer
    import rundir
    assert isinstance(rundir.load_tokenizer(tmp_path), sentencepiece_bpe.SentencePieceTokenizer)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(normalizer={"type": "NFKC"}), "normalizer"),
    (lambda d: d.update(pre_tokenizer={"type": "Whitespace"}), "pre_tokenizer"),
    (lambda d: d.update(decoder={"type": "WordPiece"}), "decoder"),
    (lambda d: d["model"]["merges"].append(["x", "y"]), r"model.merges\[9\]"),
    (lambda d: d["added_tokens"][1].update(id=7), "added token '<s>' has id 7"),
])
def test_refusals_are_one_line(change, message):
    data = tokenizer_json(OLD_NORMALIZER)
    change(data)
    with pytest.raises(UserError, match=message) as e:
        hf_tokenizer.from_hf(data)
    assert "\n" not in str(e.value)


def test_export_writes_the_same_file_back():
    data = tokenizer_json(OLD_NORMALIZER)
    out = hf_tokenizer.to_hf(hf_tokenizer.from_hf(data))
    assert out["model"]["vocab"] == data["model"]["vocab"]
    assert out["normalizer"] == data["normalizer"] and out["decoder"] == data["decoder"]
    assert hf_tokenizer.from_hf(out).encode("<s>Hello ab", allowed_special="all") == \
        [1, *hf_tokenizer.from_hf(data).encode("Hello ab")]


# ---------------------------------------------------------------------------------------------
# Against `tokenizers`: models it trains, in each variant, on mixed texts
# ---------------------------------------------------------------------------------------------
WORDS = ["the", "naïve", "café", "über", "Ελληνικά", "日本語", "中文", "한국어", "🙂", "👍🏽",
         "def", "f(x):", "return", "x**2", "12345", "3.14", "\t", "\n", "  ", "    ", "\x00",
         "\x1b[0m", "<s>", "</s>", "<unk>", "▁", "a▁b", "ẞ", "\u200b", "é", "e\u0301", "{}",
         "<0x41>", "ÿ", "Ω", "→"]


def mixed_texts(n, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(0, 8))]
        text = "".join(w + rng.choice(["", " ", "  ", "\n"]) for w in words)
        out.append(rng.choice(["", " ", "  "]) + text + rng.choice(["", " ", "\n"]))
    return out


def trained(normalizer, pre, decoder):
    """A small SentencePiece-style BPE trained by `tokenizers`, with <0xNN> byte tokens placed
    in model.vocab after <unk> <s> </s>, as Llama 2's file has them."""
    tk = pytest.importorskip("tokenizers")
    from tokenizers import models, trainers
    t = tk.Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    if normalizer:
        t.normalizer = normalizer
    if pre:
        t.pre_tokenizer = pre
    t.decoder = decoder
    corpus = mixed_texts(300, seed=1) + ["the quick brown fox jumps over the lazy dog"] * 20
    t.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, limit_alphabet=60, show_progress=False))
    data = json.loads(t.to_str())
    vocab = data["model"]["vocab"]
    ordered = SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + \
        [s for s in sorted(vocab, key=vocab.get) if s not in SPECIALS]
    data["model"]["vocab"] = {s: i for i, s in enumerate(dict.fromkeys(ordered))}
    data["post_processor"] = BOS_TEMPLATE
    return tk.Tokenizer.from_str(json.dumps(data)), data


def reference_variants():
    tk = pytest.importorskip("tokenizers")
    from tokenizers import decoders, normalizers, pre_tokenizers
    old = (normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]), None,
           decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                              decoders.Fuse(), decoders.Strip(" ", 1, 0)]))
    out = {"prepend+replace": old}
    for scheme in ("first", "always", "never"):
        for split in (True, False):
            out[f"{scheme}-{split}"] = (None, pre_tokenizers.Metaspace("▁", scheme, split),
                                        old[2] if split else decoders.Metaspace("▁", scheme))
    assert tk
    return out


@pytest.mark.parametrize("variant", ["prepend+replace", "first-True", "first-False", "always-True",
                                     "always-False", "never-True", "never-False"])
def test_equal_to_tokenizers_on_mixed_texts(variant):
    ref, data = trained(*reference_variants()[variant])
    ours = hf_tokenizer.from_hf(data)
    assert ours.bos_added == [1]
    texts = mixed_texts(300, seed=2)
    for text in texts:
        ids = ref.encode(text, add_special_tokens=False).ids
        assert ours.encode(text, allowed_special="all") == ids, text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=False), text
        assert [1] + ids == ref.encode(text).ids
    rng = random.Random(3)  # decoding any ids, byte tokens out of order included
    for _ in range(200):
        ids = [rng.randrange(len(data["model"]["vocab"])) for _ in range(rng.randint(0, 6))]
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=False), ids
    back = pytest.importorskip("tokenizers").Tokenizer.from_str(
        json.dumps(hf_tokenizer.to_hf(ours)))
    for text in texts[:100]:
        assert back.encode(text).ids == ref.encode(text).ids, text


def test_a_llama_release_imports_chats_and_exports(tmp_path):
    """A tiny LlamaForCausalLM saved with a SentencePiece-style tokenizer.json: import, the same
    ids and logits, streamed answers equal to `tokenizers`' decode, bits per byte, export back."""
    transformers = pytest.importorskip("transformers")
    import torch

    import chat
    import convert
    import data
    import rundir
    from test_convert_reference import tiny_hf_model
    ref, spec = trained(*reference_variants()["prepend+replace"])
    model = tiny_hf_model(transformers, "llama", len(spec["model"]["vocab"]))
    model.save_pretrained(tmp_path / "release")
    (tmp_path / "release" / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    convert.main([str(tmp_path / "release"), str(tmp_path / "run"), "--max-seq-len", "256"])
    ours, tok, _ = rundir.load_run(tmp_path / "run")
    assert isinstance(tok, sentencepiece_bpe.SentencePieceTokenizer)
    texts = mixed_texts(50, seed=4)
    for text in texts:
        assert tok.encode(text, allowed_special="all") == ref.encode(text).ids[1:], text
    ids = torch.tensor([ref.encode(" ".join(texts)).ids[:120]])
    with torch.no_grad():
        diff = (ours(ids)[0][..., :len(spec["model"]["vocab"])] - model(ids).logits).abs().max()
    assert diff <= 1e-4
    lengths = data.byte_lengths(tok)
    assert lengths[tok.piece_ids["▁the"]] == 4 and lengths[tok.piece_ids["<0x0A>"]] == 1
    assert lengths[1] == 0   # <s> stands for no text

    class Engine:  # what chat.Answer reads of an engine: the tokenizer and the stop ids
        stop_ids = {2}
    Engine.tok = tok
    # (a reply holding a run of byte tokens that is not UTF-8 is where streaming differs: the
    # incremental decoder gives one U+FFFD per broken sequence, `tokenizers` one per byte)
    for text in texts + ["  lead", "日本語", "\n x", "▁▁x"]:
        reply = [i for i in ref.encode(text, add_special_tokens=False).ids if i != 2] + [2]
        answer = chat.Answer(Engine, [], 50, tokens=(t for t in reply))
        streamed = "".join(answer.stream())
        assert streamed == answer.text == ref.decode(reply[:-1]), (text, reply)
    convert.main([str(tmp_path / "run"), str(tmp_path / "hf"), "--to", "hf"])
    back = pytest.importorskip("tokenizers").Tokenizer.from_file(str(tmp_path / "hf" /
                                                                    "tokenizer.json"))
    for text in texts:
        assert back.encode(text).ids == ref.encode(text).ids, text


@pytest.mark.parametrize("variant", ["prepend+replace", "always-False"])
def test_llama_cpp_tokenizes_our_gguf_export_like_us(tmp_path, variant):
    """The GGUF export's "llama" tokenizer (scores replaying the merge order) read by llama.cpp:
    the same ids on mixed texts, special tokens included for the Prepend normalizer (which puts
    "▁" after each special token, as llama.cpp does)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import convert
    from test_convert import our_run
    ref, spec = trained(*reference_variants()[variant])
    tok = hf_tokenizer.from_hf(spec)
    tok.add_special_tokens(bpe.SPECIAL_TOKENS)
    our_run(tmp_path / "run", tok, "minimind")
    convert.main([str(tmp_path / "run"), str(tmp_path / "m.gguf"), "--to", "gguf", "--type", "f32"])
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), vocab_only=True, verbose=False)
    texts = mixed_texts(300, seed=6)
    if variant != "prepend+replace":  # Metaspace puts no "▁" before a text starting with one,
        # llama.cpp always does (also after each special token): texts without either
        texts = [t.replace("<s>", "").replace("</s>", "").replace("<unk>", "").lstrip(" ▁")
                 for t in texts]
    differ = [t for t in texts if llm.tokenize(t.encode(), add_bos=False, special=True)
              != tok.encode(t, allowed_special="all")]
    assert differ == []
    assert llm.tokenize(b"ab", add_bos=True, special=True)[0] == 1


# ---------------------------------------------------------------------------------------------
# GGUF's "llama" tokenizer read back (sentencepiece_bpe.from_gguf): llama.cpp's rule on scores
# ---------------------------------------------------------------------------------------------
def llama_cpp_rule(tokens, scores, text, add_space_prefix=True):
    """llama.cpp's SPM tokenizer on a text holding no special token, written here from the
    description in src/llama-vocab.cpp, the slow way: again and again join the neighbouring pair
    whose joined string is a token of the highest score, the leftmost among equals; then a
    symbol that is no token becomes its UTF-8 bytes' <0xNN> tokens."""
    ids = {t: i for i, t in enumerate(tokens)}
    if not text:
        return []
    symbols = list(((" " if add_space_prefix else "") + text).replace(" ", "▁"))
    while True:
        best = None
        for k in range(len(symbols) - 1):
            joined = symbols[k] + symbols[k + 1]
            if joined in ids and (best is None or scores[ids[joined]] > best[0]):
                best = (scores[ids[joined]], k)
        if best is None:
            break
        k = best[1]
        symbols[k:k + 2] = [symbols[k] + symbols[k + 1]]
    return [i for s in symbols for i in ([ids[s]] if s in ids else
                                         [ids[f"<0x{b:02X}>"] for b in s.encode("utf-8")])]


def gguf_section(pieces, scores, types=None, add_space_prefix=True, **more):
    """A GGUF tokenizer section as gguf_file.GGUFFile.metadata gives it: <unk> <s> </s>, the 256
    byte tokens, then `pieces` (a list, or the keys of a dict) with `scores` (the others score
    0, as SentencePiece's do)."""
    tokens = SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + list(pieces)
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": [0.0] * 259 + list(scores),
            "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + (types or [1] * len(pieces)),
            "tokenizer.ggml.add_space_prefix": add_space_prefix,
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            **{f"tokenizer.ggml.{k}": v for k, v in more.items()}}


def strings(tok, text, allowed="all"):
    return [tok.token_string(i) for i in tok.encode(text, allowed_special=allowed)]


HAND = {  # piece: score. Not a merge order: ties, and tokens a merge list would not make
    "▁": -9.0, "a": -9.0, "b": -9.0, "c": -9.0, "d": -9.0, "x": -9.0,
    "cd": -1.0, "ab": -1.0, "abc": 0.5, "bc": -2.0, "▁a": -5.0, "▁x": -0.5, "xa": -0.5,
    "<u>": -9.0}


@pytest.mark.parametrize("text, prefix, expected", [
    # ab and cd tie: the leftmost (ab) goes first, then abc (0.5) beats cd; with the lower id
    # (cd) first it would be ab cd. Short words and long ones (bpe.apply_merges' heap) alike.
    ("abcd", False, ["abc", "d"]),
    ("abcd" * 4, False, ["abc", "d"] * 4),
    ("cdab", False, ["cd", "ab"]),
    # bc (-2) is below ab: ab c -> abc; "abc" is made from (a, bc) too, where bc comes first
    ("abc", False, ["abc"]), ("bc", False, ["bc"]),
    # ▁x and xa tie: the leftmost; "▁" then goes in front (add_space_prefix)
    ("xa", True, ["▁x", "a"]), ("xa", False, ["xa"]), (" xa", False, ["▁x", "a"]),
    ("a b", True, ["▁a", "▁", "b"]), ("", True, []),
    # a character without a token: its UTF-8 bytes
    ("é", False, ["<0xC3>", "<0xA9>"]),
    # control tokens cut out when allowed, a "▁" after each; the user-defined one always
    ("a<s>a", True, ["▁a", "<s>", "▁a"]), ("x<u>", False, ["x", "<u>"]),
])
def test_llama_cpp_rule_by_hand(text, prefix, expected):
    types = [4 if p == "<u>" else 1 for p in HAND]
    tok = hf_tokenizer.from_gguf(gguf_section(HAND, HAND.values(), types, prefix), "m.gguf")
    assert strings(tok, text) == expected
    if "<" not in text:
        tokens = SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + list(HAND)
        scores = [0.0] * 259 + list(HAND.values())
        assert [tok.token_string(i) for i in llama_cpp_rule(tokens, scores, text, prefix)] == \
            expected


def test_from_gguf_reads_the_rest_of_the_section():
    types = [4 if p == "<u>" else 1 for p in HAND]
    tok = hf_tokenizer.from_gguf(gguf_section(HAND, HAND.values(), types), "m.gguf")
    assert tok.bos_added == [1] and tok.eos_added == [] and tok.unk_token == "<unk>"
    assert set(tok.special_tokens) == {"<unk>", "<s>", "</s>"} and tok.added_tokens == {"<u>": 259 + 13}
    assert strings(tok, "a<s>", "none") == ["▁a", "<0x3C>", "<0x73>", "<0x3E>"]  # not cut out
    assert tok.decode(tok.encode("xa ab é")) == "xa ab é"
    none = hf_tokenizer.from_gguf(gguf_section(HAND, HAND.values(), add_bos_token=False,
                                               add_eos_token=True, add_space_prefix=False), "m")
    assert none.bos_added == [] and none.eos_added == [2] and none.decode(none.encode(" a")) == " a"


@pytest.mark.parametrize("pieces, types, message", [
    (["ab", "b"], None, r"'ab': llama.cpp joins 'a' and 'b' into it, but 'a' is no token"),
    (["a", "b", "ab"], [1, 1, 5], "it is unused"),
    (["a"], [5], "unused token of one character"),
    (["a", "a"], None, "empty or a repeated token"),
    (["a", "<s>"], None, "empty or a repeated token"),
])
def test_from_gguf_refuses_what_it_cannot_encode_as_llama_cpp(pieces, types, message):
    with pytest.raises(UserError, match=message) as e:
        hf_tokenizer.from_gguf(gguf_section(pieces, [-1.0] * len(pieces), types), "m.gguf")
    assert str(e.value).startswith("m.gguf: ") and "\n" not in str(e.value)


ALPHABET_LEFT_OUT = "🙂Ω→ẞ\x00"  # characters without a token: byte fallback (llama.cpp reads
# a token "\x00" as an empty string)


def train_pieces(texts, n_merges):
    """A tiny SentencePiece-style BPE trainer (characters, "▁" for spaces, words cut before
    each "▁", the most frequent pair merged first): (characters, merges) for tokenizer_json."""
    words = collections.Counter()
    for text in texts:
        for word in re.split("(?=▁)", "▁" + text.replace(" ", "▁")):
            if word:
                words[tuple(word)] += 1
    chars = sorted({c for w in words for c in w})
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for w, count in words.items():
            for pair in zip(w, w[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        joined = collections.Counter()
        for w, count in words.items():
            out, k = [], 0
            while k < len(w):
                if w[k:k + 2] == best:
                    out.append(w[k] + w[k + 1])
                    k += 2
                else:
                    out.append(w[k])
                    k += 1
            joined[tuple(out)] += count
        words = joined
    return chars, merges


@pytest.fixture(scope="module")
def trained_spm():
    """A SentencePiece-style tokenizer.json trained here (no reference package), as Llama 2's."""
    corpus = [re.sub(f"[{ALPHABET_LEFT_OUT}]", "", t) for t in mixed_texts(400, seed=11)]
    chars, merges = train_pieces(corpus, 300)
    pieces = chars + ["".join(m) for m in merges]
    tok = hf_tokenizer.from_hf(tokenizer_json(OLD_NORMALIZER, pieces=pieces, merges=merges))
    tok.add_special_tokens(bpe.SPECIAL_TOKENS)
    return tok


def test_gguf_export_refuses_a_token_holding_a_nul():
    tok = hf_tokenizer.from_hf(tokenizer_json(OLD_NORMALIZER, pieces=PIECES + ["\x00"]))
    tok.add_special_tokens(bpe.SPECIAL_TOKENS)
    with pytest.raises(UserError, match="NUL character"):
        gguf_metadata(tok)


def gguf_metadata(tok):
    return {k: v for k, v, _ in hf_tokenizer.gguf_tokenizer(
        tok, **chat_templates.export_tokens(tok, True))}


def sentencepiece_scores(tok, seed, levels):
    """Scores as SentencePiece's (0 for control and byte tokens, a negative score for each
    piece), but not in the merge order: drawn from `levels` values, so many tie."""
    rng = random.Random(seed)
    return [0.0 if tok.is_special(i) or i < 259 else -float(rng.randrange(levels))
            for i in range(tok.vocab_size)]


def test_gguf_export_then_import_gives_the_same_ids(tmp_path, trained_spm):
    """Through a real file (gguf_file's writer and reader): the same ids as the tokenizer.json
    it came from on mixed texts, special tokens included, and the same file written again."""
    import gguf_file
    w = gguf_file.GGUFWriter()
    for key, value, kind in hf_tokenizer.gguf_tokenizer(
            trained_spm, **chat_templates.export_tokens(trained_spm, True)):
        w.add(key, value, kind)
    with open(tmp_path / "t.gguf", "wb") as f:
        w.write(f)
    metadata = gguf_file.GGUFFile(tmp_path / "t.gguf").metadata
    back = hf_tokenizer.from_gguf(metadata, "t.gguf")
    texts = mixed_texts(300, seed=12) + ["日本語 🙂 x**2\n\t  café", "<s>Hello</s> <|im_start|>x"]
    for text in texts:
        assert back.encode(text, allowed_special="all") == \
            trained_spm.encode(text, allowed_special="all"), text
    again = gguf_metadata(back)
    assert again == {**metadata, "tokenizer.chat_template": again["tokenizer.chat_template"]}


@pytest.mark.parametrize("prefix", [True, False])
def test_sentencepiece_scores_give_llama_cpps_ids(tmp_path, trained_spm, prefix):
    """Scores that are not a merge order, many tied: the merges rebuilt from them give the ids of
    llama.cpp's rule on mixed texts; saved in a run directory's file and loaded, still."""
    metadata = gguf_metadata(trained_spm)
    scores = sentencepiece_scores(trained_spm, seed=13, levels=6)
    metadata.update({"tokenizer.ggml.scores": scores, "tokenizer.ggml.add_space_prefix": prefix})
    tok = hf_tokenizer.from_gguf(metadata, "m.gguf")
    tokens = metadata["tokenizer.ggml.tokens"]
    tok.save(tmp_path / "tokenizer.json")
    loaded = sentencepiece_bpe.load_tokenizer(tmp_path / "tokenizer.json")
    differ = []
    for text in mixed_texts(300, seed=14):
        text = text.replace("<s>", "").replace("</s>", "").replace("<unk>", "")
        expected = llama_cpp_rule(tokens, scores, text, prefix)
        if tok.encode(text) != expected or loaded.encode(text) != expected:
            differ.append(text)
    assert differ == []
    assert gguf_metadata(loaded)["tokenizer.ggml.scores"] == scores


@pytest.mark.parametrize("prefix", [True, False])
def test_llama_cpp_reads_sentencepiece_scores_as_we_do(tmp_path, trained_spm, prefix):
    """A GGUF file with SentencePiece-like scores (many tied, not a merge order), add_space_prefix
    true and false: our import gives llama.cpp's ids on mixed texts, special tokens parsed or not."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import convert
    import gguf_file
    from test_convert import our_run
    from test_gguf_import import rewrite
    our_run(tmp_path / "run", trained_spm, "minimind")
    convert.main([str(tmp_path / "run"), str(tmp_path / "m.gguf"), "--to", "gguf", "--type", "f32"])
    scores = sentencepiece_scores(trained_spm, seed=15, levels=6)
    rewrite(tmp_path / "m.gguf", tmp_path / "s.gguf", change={
        "tokenizer.ggml.scores": (scores, "float32"),
        "tokenizer.ggml.add_space_prefix": (prefix, "bool")})
    tok = hf_tokenizer.from_gguf(gguf_file.GGUFFile(tmp_path / "s.gguf").metadata, "s.gguf")
    llm = llama_cpp.Llama(model_path=str(tmp_path / "s.gguf"), vocab_only=True, verbose=False)
    texts = mixed_texts(300, seed=16) + ["<|im_start|>user\nHi<|im_end|>", "a<s>b</s><unk>"]
    for special, allowed in ((True, "all"), (False, "none")):
        differ = [t for t in texts if llm.tokenize(t.encode(), add_bos=False, special=special)
                  != tok.encode(t, allowed_special=allowed)]
        assert differ == [], special
    assert llm.tokenize(b"ab", add_bos=True, special=True)[0] == 1 and tok.bos_added == [1]


def test_the_token_cache_key_tells_apart_tokenizers_that_encode_differently(tmp_path):
    """data.py caches token ids under a hash of the tokenizer: tokenizers that differ only in a
    step, byte fallback, the unk token, fuse_unk, the merge order or the scores (which all give
    the same token strings) must get different keys, and the same tokenizer loaded back the same."""
    import data
    swapped = MERGES[:4] + [MERGES[5], MERGES[4]] + MERGES[6:]   # ("a", "b") before ("▁", "a")
    nofall = dict(byte_fallback=False, decoder={"type": "Fuse"})
    variants = {"prepend": tokenizer_json(OLD_NORMALIZER),
                "metaspace": tokenizer_json(None, metaspace("always", False), OLD_DECODER),
                "first": tokenizer_json(None, metaspace("first", False), OLD_DECODER),
                "swapped": tokenizer_json(OLD_NORMALIZER, merges=swapped),
                "unk": tokenizer_json(OLD_NORMALIZER, **nofall),
                "no unk": tokenizer_json(OLD_NORMALIZER, unk=None, **nofall),
                "apart": tokenizer_json(OLD_NORMALIZER, fuse_unk=False, **nofall)}
    toks = {name: hf_tokenizer.from_hf(d) for name, d in variants.items()}
    for name, sign in (("scored", -1.0), ("rescored", 1.0)):  # the same pieces, other scores
        toks[name] = hf_tokenizer.from_gguf(gguf_section(PIECES, [sign * i for i in
                                                                  range(len(PIECES))]), "m")
    texts = ["Hello", "<s>Hello", "xy日a ab", " Hello ab", "Hel lo", "aab"]
    names = sorted(toks)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert any(toks[a].encode(t, allowed_special="all") !=
                       toks[b].encode(t, allowed_special="all") for t in texts), (a, b)
            assert data.tokenizer_key(toks[a]) != data.tokenizer_key(toks[b]), (a, b)
    for name, tok in toks.items():
        tok.save(tmp_path / "t.json")
        assert data.tokenizer_key(sentencepiece_bpe.load_tokenizer(tmp_path / "t.json")) == \
            data.tokenizer_key(tok), name


# ---- end to end: a Llama-2-style release (SentencePiece tokenizer, [INST] template) ------------
LETTERS = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.!?'," if c not in PIECES]
QA = [("What is the capital of France?", "Paris."), ("Name a primary colour.", "Red."),
      ("What is two plus two?", "Four."), ("Say hello.", "Hello!")]


@pytest.fixture(scope="module")
def llama2_sft(tmp_path_factory):
    """A tiny LlamaForCausalLM with a SentencePiece-style tokenizer.json and Llama 2's chat
    template, imported by convert.py, then fine-tuned by sft.py until it answers four questions."""
    import convert
    import rundir
    import safetensors_file
    import sft
    from test_chat_templates import jinja
    from test_convert import FAMILIES, release_tensors
    d = tmp_path_factory.mktemp("llama2")
    spec = tokenizer_json(OLD_NORMALIZER, pieces=PIECES + LETTERS)
    config = dict(FAMILIES["llama"], vocab_size=len(spec["model"]["vocab"]))
    (d / "release").mkdir()
    (d / "release" / "config.json").write_text(json.dumps(config))
    (d / "release" / "tokenizer.json").write_text(json.dumps(spec))
    (d / "release" / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": jinja("Llama-2-7b-chat-hf"), "bos_token": "<s>", "eos_token": "</s>"}))
    tensors = release_tensors("llama", config, config["vocab_size"])
    rundir.atomic_write(d / "release" / "model.safetensors",
                        lambda f: safetensors_file.write_safetensors(f, tensors))
    convert.main([str(d / "release"), str(d / "imported")])
    lines = [{"conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
             for q, a in QA] * 10
    (d / "chats.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    sft.main(["--init", str(d / "imported"), "--data", str(d / "chats.jsonl"), "--out-dir",
              str(d / "sft"), "--max-steps", "60", "--batch-size", "8", "--lr", "1e-2",
              "--warmup-steps", "5", "--eval-exact", "0", "--eval-heldout", "2", "--dtype", "fp32"])
    return d


def test_sft_from_a_llama2_style_release_ends_its_turn_and_exports(llama2_sft):
    import convert
    import gguf_file
    import rundir
    from test_chat_templates import chat_answer, jinja
    tok = rundir.load_tokenizer(llama2_sft / "sft")
    assert isinstance(tok, sentencepiece_bpe.SentencePieceTokenizer)
    assert tok.chat_template.family == "llama2"
    eos = tok.special_tokens["</s>"]
    for question, answer in QA:
        out, engine = chat_answer(llama2_sft / "sft", question)
        assert engine.prompt_ids([{"role": "user", "content": question}])[:1] == [1]   # <s>
        assert out[-1] == eos and tok.decode(out[:-1]).strip() == answer, tok.decode(out)
    convert.main([str(llama2_sft / "sft"), str(llama2_sft / "m.gguf"), "--to", "gguf",
                  "--type", "f32"])
    meta = gguf_file.GGUFFile(llama2_sft / "m.gguf").metadata
    assert meta["tokenizer.ggml.model"] == "llama"
    assert meta["tokenizer.ggml.eos_token_id"] == eos
    assert meta["tokenizer.chat_template"] == jinja("Llama-2-7b-chat-hf")
    back = hf_tokenizer.from_gguf(meta, "m.gguf")   # the GGUF's tokenizer reads back the same
    texts = [q for q, _ in QA] + mixed_texts(100, seed=9)
    assert [back.encode(t, allowed_special="none") for t in texts] == [
        tok.encode(t, allowed_special="none") for t in texts]
    modelfile = (llama2_sft / "Modelfile").read_text()
    assert "[INST]" in modelfile and 'PARAMETER stop "</s>"' in modelfile


def test_llama_cpp_answers_the_llama2_style_run_as_chat_py(llama2_sft):
    llama_cpp = pytest.importorskip("llama_cpp")
    import rundir
    from test_chat_templates import chat_answer
    if not (llama2_sft / "m.gguf").exists():
        pytest.skip("the export test did not run")
    llm = llama_cpp.Llama(model_path=str(llama2_sft / "m.gguf"), n_ctx=128, n_threads=1,
                          verbose=False)
    tok = rundir.load_tokenizer(llama2_sft / "sft")
    for question, _ in QA:
        ours, engine = chat_answer(llama2_sft / "sft", question)
        reply = llm.create_chat_completion([{"role": "user", "content": question}],
                                           temperature=0.0, top_k=1, top_p=1.0,
                                           repeat_penalty=1.0, max_tokens=24)
        choice = reply["choices"][0]
        assert choice["finish_reason"] == "stop"
        assert choice["message"]["content"].strip() == tok.decode(ours[:-1]).strip()
    llm.close()
