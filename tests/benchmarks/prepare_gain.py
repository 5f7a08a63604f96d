"""The measured gain of prepare.py: the built-in corpus (Python's docs) with injected noise,
trained on as it is and after prepare.py, for the same number of tokens, both measured on the
same clean held-out text with the same tokenizer.

    python tests/benchmarks/prepare_gain.py --work /tmp/gain               # build, clean, train
    python tests/benchmarks/prepare_gain.py --work /tmp/gain --scale 10 --only-corpus
                                           # a corpus 10x the built-in one, for bench_prepare.py

Steps: every 20th document is held out (clean); the rest get noise: exact copies (15% of them),
near copies (15%: a few words changed, a line added), a header and footer on 30% (boilerplate),
spam documents (keyword stuffing, lorem ipsum, link lists: 8% as many), e-mail addresses and
phone numbers in 10%; shuffled with a fixed seed. Then prepare.py --preset code cleans it, one
BPE tokenizer is trained on the held-in clean documents, train.py trains a run on each corpus
with that tokenizer and the same steps, and eval.py measures both on the held-out text.
"""
import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import data  # noqa: E402

SPAM = ["Buy cheap python hosting best price click here now limited offer",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.",
        "Home | About | Contact | Login | Register | Blog | Shop | Cart | Help"]
HEADER = "ACME Corp internal documentation portal, confidential, do not distribute"
FOOTER = "Copyright 2024 ACME Corp. All rights reserved. Page {} of {}"


def noisy_corpus(docs, rng, scale=1):
    out = []
    for copy in range(scale):
        tag = f" (copy {copy})" if copy else ""
        for d in docs:
            d = d.replace("\n", f"{tag}\n", 1) if tag else d
            if rng.random() < 0.3:
                n = rng.randint(1, 40)
                d = f"{HEADER}\n{d}\n{FOOTER.format(n, n + rng.randint(0, 9))}"
            if rng.random() < 0.1:
                user = "".join(rng.choice("abcdefgh") for _ in range(6))
                d += (f"\nQuestions: {user}@example.com or +1 415 555 {rng.randint(1000, 9999)}"
                      f", server 10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.7")
            out.append(d)
            if rng.random() < 0.15:
                out.append(d)                                        # an exact copy
            if rng.random() < 0.15:
                words = d.split(" ")
                for _ in range(max(1, len(words) // 30)):
                    words[rng.randrange(len(words))] = rng.choice(["the", "a", "value", "data"])
                out.append(" ".join(words) + "\nSee also the index.")   # a near copy
        for _ in range(int(0.08 * len(docs))):
            line = rng.choice(SPAM)
            out.append("\n".join(line for _ in range(rng.randint(5, 40))))
    rng.shuffle(out)
    return out


def write_jsonl(path, docs):
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")


def run(cmd):
    print("$", " ".join(map(str, cmd)), flush=True)
    t = time.time()
    subprocess.run(["nice", sys.executable, *map(str, cmd)], check=True, cwd=ROOT)
    return time.time() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="/tmp/prepare-gain")
    p.add_argument("--scale", type=int, default=1, help="copies of the corpus (with noise)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--only-corpus", action="store_true")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    docs = data.python_docs_documents()
    held = [d for i, d in enumerate(docs) if i % 20 == 19]
    kept = [d for i, d in enumerate(docs) if i % 20 != 19]
    noisy = noisy_corpus(kept, random.Random(0), args.scale)
    write_jsonl(work / "noisy.jsonl", noisy)
    write_jsonl(work / "heldout.jsonl", held)
    size = (work / "noisy.jsonl").stat().st_size
    print(f"{len(noisy)} noisy documents, {size / 1e6:.2f} MB; {len(held)} held out")
    if args.only_corpus:
        return
    write_jsonl(work / "clean-train.jsonl", kept)
    seconds = run(["prepare.py", work / "noisy.jsonl", "--out", work / "clean", "--preset",
                   "code", "--min-doc-words", "3", "--eval-files", work / "heldout.jsonl"])
    print(f"prepare.py: {seconds:.1f} s")
    run(["bpe.py", "--input", work / "clean-train.jsonl", "--vocab-size", "4096",
         "--out", work / "tok.json"])
    for name, source in (("noisy", work / "noisy.jsonl"), ("clean", work / "clean")):
        seconds = run(["train.py", "--preset", "cpu", "--data", source, "--tokenizer",
                       work / "tok.json", "--max-steps", args.steps, "--eval-every",
                       args.steps, "--save-every", args.steps, "--out-dir", work / f"run-{name}",
                       "--overwrite", "--sample-tokens", 0])
        print(f"train.py on {name}: {seconds:.0f} s")
    run(["eval.py", work / "run-noisy", work / "run-clean", "--data", work / "heldout.jsonl",
         "--val-fraction", "0.5", "--json", work / "figures.json", "--no-report"])


if __name__ == "__main__":
    main()
