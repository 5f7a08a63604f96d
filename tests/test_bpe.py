"""Tests for bpe.py: a known worked example, lossless round trips on nasty strings, special
tokens, save/load (versions 1 and 2), determinism across hash seeds, clear errors, and the
command line. Released tokenizers (tokenizer.json) are tested in test_bpe_released.py."""
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bpe  # noqa: E402
from bpe import SPECIAL_TOKENS, Tokenizer, UserError  # noqa: E402
import tokenizer_v1  # noqa: E402
import unicode_regex  # noqa: E402


def sample_text():
    """~150 KB of English with code, plus some non-English text, from the standard library."""
    import pydoc_data.topics
    topics = pydoc_data.topics.topics
    text = "\n\n".join(topics[k] for k in sorted(topics))[:150_000]
    return text + "\n日本語のテキスト。Ελληνικά κείμενα. Привет, мир! 🙂🚀 café naïve 12345\n"


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(sample_text(), vocab_size=1024)


# -- the ideas one at a time ------------------------------------------------------------------

def test_pair_counts_and_merge_helpers():
    assert bpe.get_pair_counts([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert bpe.merge([1, 2, 3, 1, 2], (1, 2), 256) == [256, 3, 256]
    assert bpe.merge([5, 5, 5], (5, 5), 256) == [256, 5]


def test_worked_example_aaabdaaabac():
    # The classic example. (a, a) is most common (4 times, overlaps counted) -> 256 = "aa",
    # leaving 256 a b d 256 a b a c. Now (256, a) and (a, b) both occur twice: the tie goes to
    # the smaller pair, (97, 98) -> 257 = "ab". Then (256, 257) twice -> 258 = "aaab".
    t = Tokenizer.train("aaabdaaabac", vocab_size=256 + 3, special_tokens=[])
    assert t.merges == [(97, 97), (97, 98), (256, 257)]
    assert [t.id_to_bytes(i) for i in (256, 257, 258)] == [b"aa", b"ab", b"aaab"]
    assert t.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert t.decode([258, 100, 258, 97, 99]) == "aaabdaaabac"
    assert t.vocab_size == 259


def test_vocab_size_counts_everything_and_special_ids_are_last():
    t = Tokenizer.train("aaabdaaabac", vocab_size=256 + 3 + 3)
    assert t.vocab_size == 262
    assert t.special_tokens == {"<|endoftext|>": 259, "<|im_start|>": 260, "<|im_end|>": 261}
    assert SPECIAL_TOKENS == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    with pytest.raises(ValueError, match="too small"):
        Tokenizer.train("abc", vocab_size=200)


def test_split_pattern_keeps_words_numbers_and_spaces_apart():
    split = bpe.compile_split(bpe.GPT4_SPLIT_PATTERN)
    chunks = split("Hello world's 12345 foo_bar  x!!\n\n")
    assert chunks == ["Hello", " world", "'s", " ", "123", "45", " foo", "_bar", " ", " x",
                      "!!\n\n"]
    # The real \p{N} knows "²" and "½" are numbers; version 1's stand-in (\d, [^\W\d_]) took
    # them for letters. And \s is Oniguruma's: U+001C (a separator) is not a space.
    assert split("x² ½ a!\x1c") == ["x", "²", " ", "½", " a", "!\x1c"]
    v1 = bpe.compile_split(tokenizer_v1.V1_SPLIT_PATTERN, "python")
    assert v1("x² ½ a!\x1c") == ["x²", " ½", " a", "!", "\x1c"]


def test_unicode_classes_are_oniguruma_s():
    import unicodedata
    n = unicode_regex.unicode_class("N")
    assert n[:3] == ((48, 57), (178, 179), (185, 185))            # 0-9, ²³, ¹
    every = [chr(c) for a, b in n for c in range(a, b + 1)]
    # the fast path (str.isnumeric first) finds exactly the characters of category N*
    brute = [c for c in unicode_regex.all_characters() if unicodedata.category(c)[0] == "N"]
    assert every == brute
    space = {chr(c) for a, b in unicode_regex.unicode_class("space") for c in range(a, b + 1)}
    assert {"\t", "\n", "\x0b", "\x0c", "\r", " ", "\x85", "\xa0", "\u2028", "\u3000"} <= space
    assert not {"\x1c", "\x1d", "\x1e", "\x1f", "\u200b"} & space   # Python's \s has \x1c-\x1f


def test_python_regex_translation():
    assert unicode_regex.python_regex(r"\p{N}{1,3}").startswith("[\\u0030-\\u0039\\u00b2-\\u00b3")
    assert unicode_regex.python_regex(r"(a)(?:b)") == "(?:a)(?:b)"    # only compile_split's group captures
    assert unicode_regex.python_regex(r"\x{1F600}\r\n\'") == "\\U0001f600\\r\\n\\'"
    rx = re.compile(unicode_regex.python_regex(r"[^\s\P{L}]+"))   # letters, spelt twice negated
    assert rx.findall("ab1 é\u0301 日本") == ["ab", "é", "日本"]
    for bad in [r"\w", r"\bx", r"a.b", r"^a", r"[[a]]", r"[a&&b]", r"\p{Han}", r"(?<n>a)",
                r"a{2}+", r"[ab"]:
        with pytest.raises(ValueError):
            unicode_regex.python_regex(bad)


def test_apply_merges_lowest_rank_then_leftmost():
    ranks = {(97, 97): (0, 256), (256, 98): (1, 257)}
    assert bpe.apply_merges([97, 97, 97, 98], ranks) == [256, 97, 98]
    assert bpe.apply_merges([97, 97, 98], ranks) == [257]
    assert bpe.apply_merges([], ranks) == [] and bpe.apply_merges([97], ranks) == [97]
    # A merge made later in the chunk can outrank pairs still waiting: (x, ab) has rank 0 but
    # only exists once (a, b) made "ab" (rank 2): then it goes first, before the second (a, b),
    # and takes its "a". Replaying "all of the lowest rank, then the next" would give [X, A].
    x, a, b, ab, xab, big = 120, 97, 98, 300, 301, 302
    ranks = {(x, ab): (0, xab), (a, b): (2, ab), (xab, a): (1, big)}
    assert bpe.apply_merges([x, a, b, a, b], ranks) == [big, b]


def test_byte_level_alphabet():
    table = bpe.bytes_to_unicode()
    assert (table[65], table[32], table[10], table[0], table[0xAD]) == ("A", "Ġ", "Ċ", "Ā", "Ń")
    assert len(set(table.values())) == 256
    assert bpe.to_byte_level(" café".encode()) == "ĠcafÃ©"
    assert bpe.from_byte_level("ĠcafÃ©") == " café".encode()
    assert bpe.from_byte_level("a b") is None   # a plain space is not in the alphabet
    every = bytes(range(256))
    assert bpe.from_byte_level(bpe.to_byte_level(every)) == every


def test_training_from_an_iterable_of_documents(tok):
    docs = ["the cat sat on the mat", "the dog sat on the log"] * 50
    a = Tokenizer.train(docs, vocab_size=300)
    b = Tokenizer.train(iter(docs), vocab_size=300)
    assert a.merges == b.merges
    assert tok.vocab_size == 1024 and len(tok.merges) == 1024 - 256 - 3


# -- lossless round trip -----------------------------------------------------------------------

ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'\"()[]{}_-+=*/\\",
    "日本語中文字漢字かなカナ한국어",
    "🙂🚀👍🏽👨‍👩‍👧🇫🇷✨",
    "e\u0301a\u0308o\u0303\u0300\u0327",                      # combining marks
    "\x00\x01\x07\t\n\r\x0b\x0c\x1b\x7f\u200b\u2028\ufeff",     # control and odd spaces
    "ßéñøÅ²½Ⅻ٣४",                                               # the rare numbers the pattern
    "<|endoftext|>",                                            #   treats as letters; and a
]                                                               #   special name as plain text


def random_strings(n, seed=0):
    rng = random.Random(seed)
    out = [""]
    for _ in range(n):
        k = rng.randint(1, 3)
        pool = "".join(rng.sample(ALPHABETS, k))
        out.append("".join(rng.choice(pool) for _ in range(rng.randint(0, 40))))
    # lone surrogates cannot be UTF-8 encoded at all; they are not valid text, so not tested
    return out


def test_round_trip_on_thousands_of_random_strings(tok):
    for s in random_strings(3000):
        ids = tok.encode(s, allowed_special="none")
        assert tok.decode(ids) == s, repr(s)
        assert tok.decode_bytes(ids) == s.encode("utf-8")
        assert all(0 <= i < tok.vocab_size and not tok.is_special(i) for i in ids)
    assert tok.encode("") == [] and tok.decode([]) == ""


def test_round_trip_on_the_training_text_and_compression(tok):
    text = sample_text()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(text.encode("utf-8")) / len(ids) > 2.5  # BPE actually compresses (~3 here)


def test_decode_of_a_partial_utf8_sequence_replaces(tok):
    two_bytes = "é".encode("utf-8")               # b'\xc3\xa9'
    assert tok.decode([two_bytes[0]]) == "\ufffd"
    assert tok.decode([ord("a"), 0xF0, 0x9F, ord("b")]) == "a\ufffdb"  # cut emoji
    assert tok.decode_bytes([0xC3]) == b"\xc3"
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])


# -- special tokens ----------------------------------------------------------------------------

def test_special_tokens_in_each_allowed_special_mode(tok):
    eot, ims, ime = (tok.special_tokens[n] for n in SPECIAL_TOKENS)
    assert (eot, ims, ime) == (1021, 1022, 1023)
    text = "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>"
    # "all": every special name becomes its id
    ids = tok.encode(text, allowed_special="all")
    assert ids[0] == ims and ids[-1] == eot and ime in ids
    assert tok.decode(ids) == text
    # "none": names are plain text, several ordinary tokens each
    ids = tok.encode(text, allowed_special="none")
    assert not any(tok.is_special(i) for i in ids) and tok.decode(ids) == text
    # "none_raise" (the default): refuse
    with pytest.raises(ValueError, match="special token"):
        tok.encode(text)
    with pytest.raises(ValueError, match="special token"):
        tok.encode(text, allowed_special="none_raise")
    assert tok.encode("plain text") == tok.encode("plain text", allowed_special="none_raise")
    # a set: the named ones are special, the others plain text
    ids = tok.encode(text, allowed_special={"<|endoftext|>"})
    assert ids[-1] == eot and ims not in ids and ime not in ids
    assert tok.decode(ids) == text
    with pytest.raises(ValueError, match="unknown special"):
        tok.encode(text, allowed_special={"<|nope|>"})
    with pytest.raises(ValueError):
        tok.encode(text, allowed_special="some")
    # special tokens stand for their names' bytes; is_special tells them apart
    assert tok.id_to_bytes(eot) == b"<|endoftext|>" and tok.is_special(eot)
    assert not tok.is_special(ord("a"))


def test_training_never_learns_pieces_of_special_names():
    text = ("<|endoftext|>hello world " * 200)
    t = Tokenizer.train(text, vocab_size=256 + 20)
    learned = {t.id_to_bytes(256 + r) for r in range(len(t.merges))}
    assert not any(b"<|" in piece or b"endoftext" in piece for piece in learned)


# -- save / load -------------------------------------------------------------------------------

def test_save_load_round_trip(tok, tmp_path):
    path = tmp_path / "tok.json"
    tok.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "slm-bpe" and data["version"] == 2
    assert data["split"] == [bpe.GPT4_SPLIT_PATTERN] and data["normalizer"] is None
    assert {t["content"]: t["id"] for t in data["added_tokens"]} == tok.special_tokens
    assert len(data["merges"]) == len(tok.merges) and data["merges"][0][2] == 256
    assert data["vocab"]["32"] == "Ġ" and len(data["vocab"]) == 1024 - 3
    loaded = Tokenizer.load(path)
    assert loaded.vocab_size == tok.vocab_size and loaded.special_tokens == tok.special_tokens
    for s in [sample_text()[:20_000], "<|im_start|>ok<|im_end|>"] + random_strings(200, seed=1):
        assert loaded.encode(s, allowed_special="all") == tok.encode(s, allowed_special="all")
    assert not list(tmp_path.glob("*.tmp*"))  # the temporary file was renamed, not left behind


# A version-1 file, as bpe.py wrote them before version 2: the merges make "²", "x²", " a" and
# "½". Its pattern took "²" and "½" for letters; the ids below are what that bpe.py gave.
V1_FILE = """{
  "format": "slm-bpe",
  "version": 1,
  "pattern": %s,
  "special_tokens": {"<|endoftext|>": 260},
  "merges": [
    [194, 178],
    [120, 256],
    [32, 97],
    [194, 189]
  ]
}
""" % json.dumps(tokenizer_v1.V1_SPLIT_PATTERN)


def test_version_1_files_load_and_encode_exactly_as_before(tmp_path):
    assert tokenizer_v1.V1_SPLIT_PATTERN == (
        "'(?i:[sdmt]|ll|ve|re)|(?:[^\\r\\n\\w]|_)?[^\\W\\d_]+|\\d{1,3}| ?(?:[^\\s\\w]|_)+"
        "[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+")       # the pattern of every version-1 file
    path = tmp_path / "v1.json"
    path.write_text(V1_FILE, encoding="utf-8")
    t = Tokenizer.load(path)
    assert t.syntax == "python" and t.vocab_size == 261
    assert t.encode("x² ½ a<|endoftext|>", allowed_special="all") == [257, 32, 259, 258, 260]
    assert t.encode(" a²b ⅫⅫ ٣٣٣٣") == [258, 256, 98, 32, 226, 133, 171, 226, 133, 171, 32,
                                         217, 163, 217, 163, 217, 163, 217, 163]
    assert t.encode("foo_bar x\x1c\x1c y") == list(b"foo_bar x\x1c\x1c y")
    # saved again, it stays a version-1 file, byte for byte; a special token added keeps it so
    t.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text(encoding="utf-8") == V1_FILE
    assert t.add_special_tokens(["<|im_start|>", "<|endoftext|>"]) == [261, 260]
    t.save(tmp_path / "more.json")
    again = Tokenizer.load(tmp_path / "more.json")
    assert again.special_tokens == {"<|endoftext|>": 260, "<|im_start|>": 261}


def test_adding_special_tokens(tok):
    t = Tokenizer.train("aaabdaaabac", vocab_size=256 + 3, special_tokens=[])
    assert t.add_special_tokens(["<|im_start|>", "<|im_end|>"]) == [259, 260]
    assert t.add_special_tokens(["<|im_end|>"]) == [260] and t.vocab_size == 261
    assert t.encode("<|im_start|>aaab", allowed_special="all") == [259, 258]
    assert t.is_special(260) and t.id_to_bytes(260) == b"<|im_end|>"
    with pytest.raises(UserError, match="non-empty"):
        t.add_special_tokens([""])


@pytest.mark.parametrize("content, message", [
    ('{"format": "slm-bpe", "version": 1, "merg', "not a valid JSON"),
    (b"\xff\xfe\x00garbage", "not a valid JSON"),
    ('{"model": {"type": "BPE"}, "pre_tokenizer": null}', "Hugging Face"),
    ("[1, 2, 3]", "not an slm tokenizer"),
    ('{"format": "slm-bpe", "version": 99}', "version 99"),
    ('{"format": "slm-bpe", "version": 1, "pattern": "(", "merges": [], "special_tokens": {}}',
     "regular expression"),
    ('{"format": "slm-bpe", "version": 1, "pattern": "a", "merges": [[1, 300]], '
     '"special_tokens": {}}', "merge 0"),
    ('{"format": "slm-bpe", "version": 1, "pattern": "a", "merges": [], '
     '"special_tokens": {"<|x|>": 3}}', "special_tokens"),
    ('{"format": "slm-bpe", "version": 2, "split": ["\\\\w"], "normalizer": null}', "split"),
    ('{"format": "slm-bpe", "version": 2, "split": [], "normalizer": "NFX"}', "normalizer"),
    ('{"format": "slm-bpe", "version": 2, "split": [], "vocab": {"0": "a b"}}', "vocab"),
    ('{"format": "slm-bpe", "version": 2, "split": [], "vocab": {"0": "a"}, "merges": []}',
     "added_tokens"),
    ('{"format": "slm-bpe", "version": 2, "split": [], "vocab": {"0": "a", "1": "b"}, '
     '"merges": [[0, 1, 1]]}', "merge 0"),
    ('{"format": "slm-bpe", "version": 2, "split": [], "vocab": {"0": "a"}, "merges": [], '
     '"added_tokens": [{"id": 0, "content": "<s>", "special": true}]}', "vocab gives"),
])
def test_loading_a_corrupt_or_foreign_file_gives_a_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message) as info:
        Tokenizer.load(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_loading_a_missing_file(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        Tokenizer.load(tmp_path / "nope.json")


# -- determinism -------------------------------------------------------------------------------

def test_training_is_deterministic_across_hash_seeds(tmp_path):
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import bpe, pydoc_data.topics as t\n"
        "text = ''.join(t.topics[k] for k in sorted(t.topics))[:60000]\n"
        "bpe.Tokenizer.train(text.split('\\n\\n'), 700).save(sys.argv[2])\n"
    )
    outputs = []
    for seed in ("0", "1", "12345"):
        out = tmp_path / f"tok{seed}.json"
        env = dict(os.environ, PYTHONHASHSEED=seed)
        subprocess.run([sys.executable, "-c", script, str(ROOT), str(out)], env=env, check=True)
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]


# -- command line ------------------------------------------------------------------------------

def run_cli(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "bpe.py"), *args], cwd=cwd,
                          capture_output=True, text=True, encoding="utf-8")


def test_cli_trains_and_encodes(tmp_path):
    (tmp_path / "a.txt").write_text(sample_text()[:30_000], encoding="utf-8")
    with open(tmp_path / "b.jsonl", "w", encoding="utf-8") as f:
        for line in ["hello world", "the quick brown fox", "café 🙂"]:
            f.write(json.dumps({"text": line}) + "\n")
    r = run_cli("--input", "a.txt", "b.jsonl", "--vocab-size", "400", "--out", "tok.json",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "bytes/token" in r.stdout
    assert Tokenizer.load(tmp_path / "tok.json").vocab_size == 400
    r = run_cli("--tokenizer", "tok.json", "--encode", "Hello, world!<|endoftext|>", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "[<|endoftext|>]" in r.stdout and "tokens" in r.stdout


def test_cli_reports_a_malformed_jsonl_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    r = run_cli("--input", "bad.jsonl", "--vocab-size", "300", "--out", "tok.json", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: bad.jsonl:2:")
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "tok.json").exists()


def test_cli_reports_a_file_that_is_not_utf8(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    r = run_cli("--input", "latin1.txt", "--vocab-size", "300", "--out", "tok.json", cwd=tmp_path)
    assert r.returncode == 2 and "error: latin1.txt: not UTF-8" in r.stderr
    assert not (tmp_path / "tok.json").exists()


def test_cli_refuses_input_without_text_and_writes_nothing(tmp_path):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "blank.jsonl").write_text('\n{"text": ""}\n', encoding="utf-8")
    for name in ("empty.txt", "blank.jsonl"):
        r = run_cli("--input", name, "--out", "tok.json", cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == [f"error: {name}: no text to train on"]
        assert not (tmp_path / "tok.json").exists()
    with pytest.raises(UserError, match="no text"):
        Tokenizer.train(["", ""], 300)


def test_cli_refuses_unknown_flags(tmp_path):
    for args, why in [(["--input", "a.txt", "--vocab", "300"], "unrecognized arguments: --vocab"),
                      (["--nope"], "unrecognized arguments: --nope"),
                      (["--vocab-size", "many"], "invalid int value"),
                      ([], "give --input")]:
        r = run_cli(*args, cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and why in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def run_as_notebook_cells(paths, cwd):
    """What a Jupyter kernel does with cells: run each one's code as __main__, in one namespace,
    with the kernel's own argv and ipykernel imported. Faked in a fresh Python whose path does
    not hold the project (as in Colab, where only the pasted code exists)."""
    script = ("import os, sys, types\n"
              "sys.modules['ipykernel'] = types.ModuleType('ipykernel')\n"
              "sys.argv = ['ipykernel_launcher.py', '-f', '/tmp/kernel-1.json']\n"
              "namespace = {'__name__': '__main__'}\n"
              f"for path in {[str(p) for p in paths]!r}:\n"
              "    with open(path, encoding='utf-8') as f:\n"
              "        exec(compile(f.read(), path, 'exec'), namespace)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True,
                          text=True, encoding="utf-8", env=env)


def test_pasted_into_notebook_cells_it_runs_a_demo(tmp_path):
    # bpe.py's cell after unicode_regex.py's (the one project file it needs at once)
    r = run_as_notebook_cells([ROOT / "unicode_regex.py", ROOT / "bpe.py"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "bpe.py demo:" in r.stdout and "gave back each text exactly" in r.stdout
    assert "[<|im_start|>]" in r.stdout and "SystemExit" not in r.stderr
    # alone, it says in one line what it needs
    r = run_as_notebook_cells([ROOT / "bpe.py"], tmp_path)
    assert r.returncode != 0 and "bpe.py demo:" not in r.stdout
    assert "ImportError: bpe.py needs unicode_regex.py" in r.stderr, r.stderr
    # with real arguments after the kernel's, the command line runs as usual
    sys.modules.setdefault("ipykernel", None)
    try:
        assert bpe.main(["-f", "kernel.json", "--tokenizer", str(tmp_path / "none.json"),
                         "--encode", "hi"]) == 2
    finally:
        if sys.modules.get("ipykernel", 1) is None:
            del sys.modules["ipykernel"]


def test_cli_reports_a_corrupt_tokenizer_file(tmp_path):
    (tmp_path / "tok.json").write_text("{not json", encoding="utf-8")
    r = run_cli("--tokenizer", "tok.json", "--encode", "hi", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("error: tok.json: not a valid JSON") and "Traceback" not in r.stderr


# -- against a trusted reference, when it is installed -----------------------------------------

def test_compression_matches_huggingface_tokenizers_with_the_same_split():
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    text = sample_text()
    ours = Tokenizer.train(text, vocab_size=1024)
    # The same GPT-4 pre-split (the original \p{L} pattern), then bytes: the only difference
    # left is the tie-breaking between equally common pairs.
    original = (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+")
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(original), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=1024, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    n_ours, n_hf = len(ours.encode(text)), len(hf.encode(text).ids)
    assert abs(n_ours - n_hf) / n_hf < 0.01, (n_ours, n_hf)
    assert hf.decode(hf.encode(text).ids) == text
