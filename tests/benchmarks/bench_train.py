"""Benchmark: train.py's training loop against a clean nanoGPT-style loop on the same model.

    python tests/benchmarks/bench_train.py [--size nano] [--steps 40] [--seq-len 256] [--batch-size 16]

Both loops train the same MiniMind size on the same tokens (the built-in corpus, cached by
train.py). Our figure is the median tokens/s that train.py itself logs to log.jsonl; the reference
is a bare loop written below (random windows, forward, backward, clip, AdamW step). It prints
tokens/s, MFU against this machine's measured fp32 matmul peak, and the ratio ours/reference, for
fp32 and bf16 autocast. Both run in this process, one after the other, so the ratio is what counts
on a shared, noisy machine.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import data  # noqa: E402
import resources  # noqa: E402
import train  # noqa: E402


def reference_loop(tokens, mcfg, steps, batch_size, seq_len, dtype):
    """The nanoGPT shape of a training loop, nothing else: the yardstick."""
    torch.manual_seed(0)
    model = train.build_model("minimind", mcfg)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95))
    data = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    rates = []
    for _ in range(steps):
        t0 = time.perf_counter()
        ix = torch.randint(len(data) - seq_len - 1, (batch_size,))
        x = torch.stack([data[i:i + seq_len] for i in ix])
        y = torch.stack([data[i + 1:i + 1 + seq_len] for i in ix])
        with train.autocast("cpu", dtype):
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        rates.append(batch_size * seq_len / (time.perf_counter() - t0))
    return statistics.median(rates[3:])


def ours(size, steps, batch_size, seq_len, dtype_name):
    with tempfile.TemporaryDirectory() as out:
        train.main(["--size", size, "--max-steps", str(steps), "--batch-size", str(batch_size),
                    "--seq-len", str(seq_len), "--dtype", dtype_name, "--eval-every", str(10**9),
                    "--save-every", str(10**9), "--eval-batches", "1", "--sample-tokens", "1", "--out-dir", out])
        rows = [json.loads(l) for l in (Path(out) / "log.jsonl").read_text().splitlines()]
    return statistics.median([r["tokens_per_s"] for r in rows if "tokens_per_s" in r][3:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="nano")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    cfg = train.resolve(train.TrainConfig(size=args.size, seq_len=args.seq_len))
    tok, train_tokens, _ = data.prepare_data(cfg)
    mcfg = train.model_config("minimind", args.size, tok.vocab_size, args.seq_len)
    model = train.build_model("minimind", mcfg)
    flops_token = resources.flops_per_token(model, args.seq_len)
    peak = resources.peak_flops("cpu", torch.float32)
    print(f"MiniMind {args.size}: {model.num_params() / 1e6:.2f}M params, batch {args.batch_size} x "
          f"{args.seq_len}, {torch.get_num_threads()} threads, measured fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'precision':<10}{'ours tok/s':>12}{'ref tok/s':>12}{'ours MFU':>10}{'ref MFU':>10}{'ratio':>8}")
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        ref = reference_loop(train_tokens, mcfg, args.steps, args.batch_size, args.seq_len, dtype)
        mine = ours(args.size, args.steps, args.batch_size, args.seq_len, name)
        print(f"{name:<10}{mine:>12,.0f}{ref:>12,.0f}{flops_token * mine / peak:>10.1%}"
              f"{flops_token * ref / peak:>10.1%}{mine / ref:>8.2f}")


if __name__ == "__main__":
    main()
