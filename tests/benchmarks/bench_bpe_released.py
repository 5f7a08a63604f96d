"""Benchmark for bpe.py and hf_tokenizer.py with a released-size tokenizer (run by hand, not
collected by pytest):

    python tests/benchmarks/bench_bpe_released.py            # 20 MB of training text
    python tests/benchmarks/bench_bpe_released.py --mb 5     # a smaller vocabulary, faster

Needs the `tokenizers` package (the reference). It trains a Qwen2-style tokenizer (NFC, Qwen2's
split regex, byte-level BPE) of 151,643 tokens, Qwen2's size, with `tokenizers` on perturbed
Python docs, adds Qwen2's kind of special tokens, saves it as tokenizer.json, then measures:

(a) hf_tokenizer.from_hf: the first call in a fresh process (which also builds the Unicode
    classes for the regex) and later ones; save() in our version-2 format, its size, and
    Tokenizer.load() of it;
(b) encoding the Python-docs corpus as one string and line by line, against `tokenizers`'
    encode of the same (one thread: a single encode call does not use more), with a cold and a
    warm chunk cache, and the same text with an emoji every ~200 characters (characters beyond
    U+FFFF take the slower full regex); every id is checked equal.

Figures are ratios against the reference measured in the same run: the machines are shared.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]

from bench_bpe import best_of, corpus, perturbed_documents  # noqa: E402
from bpe import Tokenizer  # noqa: E402
from hf_tokenizer import from_hf  # noqa: E402

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(19)]


def train_reference(text, mb, vocab_size):
    from tokenizers import Regex, Tokenizer as HF, decoders, models, normalizers, pre_tokenizers
    from tokenizers import trainers
    hf = HF(models.BPE())
    hf.normalizer = normalizers.NFC()
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    docs = list(perturbed_documents(text, mb * 1_000_000))
    hf.train_from_iterator(docs, trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    hf.add_special_tokens(SPECIALS)
    return hf


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=20, help="training text for the reference (MB)")
    p.add_argument("--vocab-size", type=int, default=151_643)
    p.add_argument("--repeat", type=int, default=3, help="runs per timing (the best is kept)")
    args = p.parse_args()
    import tokenizers
    text, source = corpus()
    n_bytes = len(text.encode("utf-8"))
    print(f"corpus: {source}, {n_bytes:,} bytes; python {sys.version.split()[0]}, "
          f"tokenizers {tokenizers.__version__}, {os.cpu_count()} cpus")
    t0 = time.perf_counter()
    hf = train_reference(text, args.mb, args.vocab_size)
    print(f"reference trained in {time.perf_counter() - t0:.1f}s: {hf.get_vocab_size():,} tokens")

    with tempfile.TemporaryDirectory() as tmp:
        path, ours_path = Path(tmp) / "tokenizer.json", Path(tmp) / "ours.json"
        hf.save(str(path))
        # the first call in a fresh process, as a script loading a model would make it
        child = ("import sys, time; t0 = time.perf_counter(); sys.path.insert(0, sys.argv[1]); "
                 "import hf_tokenizer; hf_tokenizer.from_hf(sys.argv[2]); "
                 "print(time.perf_counter() - t0)")
        first = float(subprocess.run([sys.executable, "-c", child, str(HERE.parents[1]),
                                      str(path)], capture_output=True, text=True,
                                     check=True).stdout)
        t_from_hf, tok = best_of(args.repeat, lambda: from_hf(path))
        t_save, _ = best_of(args.repeat, lambda: tok.save(ours_path))
        t_load, loaded = best_of(args.repeat, lambda: Tokenizer.load(ours_path))
        t_hf_load, _ = best_of(args.repeat, lambda: tokenizers.Tokenizer.from_file(str(path)))
        print(f"\n(a) {tok.vocab_size:,} tokens, {len(tok.merges):,} merges; tokenizer.json "
              f"{path.stat().st_size / 1e6:.1f} MB, ours (version 2) "
              f"{ours_path.stat().st_size / 1e6:.1f} MB")
        print(f"    import hf_tokenizer + from_hf in a fresh process {first:.2f}s (with building "
              f"the Unicode classes); from_hf {t_from_hf:.2f}s; save {t_save:.2f}s; "
              f"load {t_load:.2f}s")
        print(f"    tokenizers.Tokenizer.from_file {t_hf_load:.2f}s")

    lines = [line for line in text.splitlines() if line.strip()]
    emoji = "".join(c + ("🙂" if i % 200 == 199 else "") for i, c in enumerate(text))
    print("\n(b) encode (ids checked equal)")
    for name, texts in [("corpus, one string", [text]), (f"{len(lines):,} lines", lines),
                        ("with emoji, one string", [emoji])]:
        want = [hf.encode(t, add_special_tokens=False).ids for t in texts]

        def cold():
            tok._cache.clear()
            return [tok.encode(t) for t in texts]
        t_cold, got = best_of(args.repeat, cold)
        t_warm, got_warm = best_of(args.repeat, lambda: [tok.encode(t) for t in texts])
        assert got == want == got_warm, f"{name}: ids differ from tokenizers"
        t_hf, _ = best_of(args.repeat, lambda: [hf.encode(t, add_special_tokens=False)
                                                for t in texts])
        size = sum(len(t.encode("utf-8")) for t in texts)
        print(f"    {name}: bpe.py {t_cold:.2f}s cold ({size / t_cold / 1e6:.1f} MB/s), "
              f"{t_warm:.2f}s warm; tokenizers {t_hf:.2f}s ({size / t_hf / 1e6:.1f} MB/s); "
              f"speed ratio tokenizers time / bpe.py time: {t_hf / t_cold:.2f}x cold, "
              f"{t_hf / t_warm:.2f}x warm")
    assert loaded.encode(text) == tok.encode(text)
    print(json.dumps({"ok": True}))


if __name__ == "__main__":
    main()
