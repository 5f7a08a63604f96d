"""Benchmark for minimind.py (issue targets), run by hand:

    python tests/benchmarks/bench_generate.py            # both parts, about a minute on 2 CPU cores
    python tests/benchmarks/bench_generate.py --part decode --size tiny

1. decode: greedy generation of 512 new tokens with minimind.py's readable KV cache (generate's
   default) vs without it (the whole context through the model for every token). Target: cached
   >= 5x faster. Both produce the same tokens. (decode.py's fast path: bench_decode.py.)
2. train: one training step (forward, backward, AdamW) of MiniMind `tiny` vs the GPT of gpt.py
   with the same depth, width, heads, vocabulary and context. Target: within 20%.

Each figure is a ratio against a reference measured in the same process, alternating the two, so
load from other processes on a shared machine hits both alike. It runs on one thread by default
(--threads): on a busy two-core machine PyTorch's worker threads spend most of their time waiting
for each other on every small operation (one-token decoding was ~40x slower with 2 threads than
with 1 while other jobs ran), which would measure the machine's load, not the code.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from minimind import SIZES, MiniMind, MiniMindConfig  # noqa: E402


def bench_decode(size, new_tokens, prompt_len, vocab_size):
    torch.manual_seed(0)
    cfg = MiniMindConfig(**SIZES[size], vocab_size=vocab_size, max_seq_len=prompt_len + new_tokens)
    model = MiniMind(cfg).eval()
    prompt = torch.randint(0, vocab_size, (prompt_len,)).tolist()
    list(model.generate(prompt, max_new_tokens=8, temperature=0))  # warm-up
    times, outs = {}, {}
    for use_cache in (True, False):
        t = time.perf_counter()
        outs[use_cache] = list(model.generate(prompt, max_new_tokens=new_tokens, temperature=0, use_cache=use_cache))
        times[use_cache] = time.perf_counter() - t
    print(f"decode: MiniMind {size} ({model.num_params() / 1e6:.2f}M params), prompt {prompt_len}, "
          f"{new_tokens} new tokens, greedy, {torch.get_num_threads()} threads")
    for use_cache, name in ((True, "with KV cache"), (False, "without cache")):
        print(f"  {name:<14} {times[use_cache]:7.2f} s  {new_tokens / times[use_cache]:8.1f} tokens/s")
    ratio = times[False] / times[True]
    same = outs[True] == outs[False]
    print(f"  speed-up {ratio:.1f}x (target >= 5x: {'met' if ratio >= 5 else 'NOT met'}); "
          f"same tokens: {same}")
    return ratio


def bench_train(batch_size, seq_len, vocab_size, repeats):
    try:
        from gpt import GPT, GPTConfig
    except ImportError:
        print("train: gpt.py not found, skipped")
        return None
    kw = SIZES["tiny"]
    torch.manual_seed(0)
    mm = MiniMind(MiniMindConfig(**kw, vocab_size=vocab_size, max_seq_len=seq_len))
    gpt = GPT(GPTConfig(n_layer=kw["n_layers"], n_head=kw["n_heads"], n_embd=kw["dim"], block_size=seq_len,
                        vocab_size=vocab_size, dropout=0.0))
    models = {"minimind": mm, "gpt": gpt}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    x = torch.randint(0, vocab_size, (batch_size, seq_len))
    y = torch.randint(0, vocab_size, (batch_size, seq_len))

    def step(name):
        t = time.perf_counter()
        _, loss = models[name](x, y)
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()
        return time.perf_counter() - t

    for name in models:  # warm-up
        step(name)
    times = {name: [] for name in models}
    for _ in range(repeats):  # alternate, so a burst of load elsewhere hits both
        for name in models:
            times[name].append(step(name))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    tokens = batch_size * seq_len
    print(f"train: one step, batch {batch_size} x {seq_len} tokens, AdamW, fp32, median of {repeats}")
    for name, n in (("minimind", mm.num_params()), ("gpt", gpt.num_params())):
        print(f"  {name:<9} tiny-size ({n / 1e6:.2f}M params) {med[name] * 1000:8.1f} ms  {tokens / med[name]:8.0f} tokens/s")
    ratio = med["minimind"] / med["gpt"]
    print(f"  MiniMind / GPT step time {ratio:.2f} (target within 20%: {'met' if abs(ratio - 1) <= 0.2 else 'NOT met'})")
    return ratio


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["all", "decode", "train"], default="all")
    p.add_argument("--size", default="nano", help="MiniMind size for the decode benchmark")
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--vocab-size", type=int, default=6400)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = PyTorch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.part in ("all", "decode"):
        bench_decode(args.size, args.new_tokens, args.prompt_len, args.vocab_size)
    if args.part in ("all", "train"):
        bench_train(args.batch_size, args.seq_len, args.vocab_size, args.repeats)


if __name__ == "__main__":
    main()
