"""Benchmark: eval.py's multiple-choice scoring against lm-evaluation-harness's `hf` model.

    python tests/benchmarks/bench_tasks.py [--items 1000] [--threads 1] [--batch-size 32]

The model has SmolLM2-135M's shape (dim 576, 30 layers, 9 query / 3 KV heads, FFN 1536, vocab
49152, tied embeddings) with random weights, saved as a run directory and exported with
`convert.py --to hf`; the harness loads the export through transformers. The items are --items
four-choice cloze items cut from the built-in Python documentation (a context of --context
characters and four endings of 20-60), the same strings for both. Each side is timed from the
strings to the log-likelihoods (tokenizing included): eval.py's encode_pair and
continuation_logprobs against HFLM.loglikelihood, same threads, same batch size, in this process,
taking turns on --chunks slices of the items. Printed: both times, the ratio ours / harness (target <= 1.0x), and the
largest difference of a log-likelihood and the agreement of the chosen answers (a check that both
computed the same thing). Needs lm_eval and transformers.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))

SMOLLM2_135M = dict(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64, ffn_hidden=1536,
                    vocab_size=49152, max_seq_len=2048, rope_theta=100000.0, norm_eps=1e-5)


def build(folder):
    """A random SmolLM2-135M-shaped run directory and its transformers export."""
    import convert
    import minimind
    import rundir
    from bench_convert import synthetic_tokenizer
    torch.manual_seed(0)
    model = minimind.MiniMind(minimind.MiniMindConfig(**SMOLLM2_135M)).eval()
    run = folder / "run"
    run.mkdir()
    rundir.save_model(run, model, synthetic_tokenizer(SMOLLM2_135M["vocab_size"]))
    convert.main([str(run), str(folder / "hf"), "--to", "hf"])
    return run, folder / "hf"


def make_items(n, context_chars, seed=0):
    import data
    text = " ".join(data.python_docs_text().split())
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n):
        s = rng.integers(0, len(text) - 1000, 5)
        items.append({"context": text[s[0]:s[0] + context_chars].strip(),
                      "choices": [text[t:t + rng.integers(20, 60)].strip() for t in s[1:]],
                      "label": int(rng.integers(0, 4))})
    return items


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--context", type=int, default=200, help="characters of each context")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--chunks", type=int, default=4, help="slices the two sides take turns on")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import eval as evaluation
    import rundir
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    with tempfile.TemporaryDirectory() as tmp:
        run, hf = build(Path(tmp))
        items = make_items(args.items, args.context)
        per_item = evaluation.prompts(items, "cloze")
        pairs = [(c, a) for choices in per_item for c, a, _ in choices]
        model, tok, _ = rundir.load_run(run)
        harness = HFLM(pretrained=str(hf), dtype="float32", batch_size=args.batch_size,
                       device="cpu")
        requests = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i)
                    for i, pair in enumerate(pairs)]
        # the items in --chunks slices, the two sides taking turns slice by slice, so a change in
        # the machine's load falls on both alike
        ours, theirs, spent = [], [], [0.0, 0.0]
        step = -(-len(pairs) // args.chunks)
        for s in range(0, len(pairs), step):
            t0 = time.perf_counter()
            ours.append(evaluation.continuation_logprobs(
                model, [evaluation.encode_pair(tok, c, a) for c, a in pairs[s:s + step]], "cpu",
                args.batch_size))
            t1 = time.perf_counter()
            theirs += [ll for ll, _ in harness.loglikelihood(requests[s:s + step],
                                                             disable_tqdm=True)]
            t2 = time.perf_counter()
            spent[0] += t1 - t0
            spent[1] += t2 - t1
        ours, theirs = np.concatenate(ours), np.array(theirs)
    t0, t1, t2 = 0.0, spent[0], spent[0] + spent[1]
    tokens = sum(len(c) + len(a) for c, a in pairs)
    agree = np.mean(ours.reshape(-1, 4).argmax(1) == theirs.reshape(-1, 4).argmax(1))
    print(f"{args.items} four-choice items ({len(pairs)} requests, {tokens:,} characters), "
          f"SmolLM2-135M shape, {args.threads} thread(s), batch {args.batch_size}")
    print(f"  eval.py   {t1 - t0:8.1f} s")
    print(f"  harness   {t2 - t1:8.1f} s   (lm_eval {__import__('lm_eval').__version__}, hf)")
    print(f"  ratio ours / harness: {(t1 - t0) / (t2 - t1):.2f}x   largest log-likelihood "
          f"difference {np.abs(ours - theirs).max():.2e}, same answer on {agree:.1%} of items")


if __name__ == "__main__":
    main()
