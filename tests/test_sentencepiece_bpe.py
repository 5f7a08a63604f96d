"""SentencePiece-style BPE (sentencepiece_bpe.py): hand-built tokenizer.json files in each variant
(expected ids checked once against `tokenizers`), the run-directory round trip, the refusals;
then, behind importorskip, models trained with `tokenizers` compared on mixed texts."""
import json
import random

import pytest

import bpe
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
