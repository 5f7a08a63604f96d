"""Benchmark: full fine-tuning against LoRA and LoRA + gradient checkpointing, on CPU.

    python tests/benchmarks/bench_lora.py [--batch-size 2] [--seq-len 128] [--rounds 3] [--rank 16]

The model has SmolLM2-135M's shape (dim 576, 30 layers, 9 query / 3 KV heads of 64, FFN 1536,
vocab 49152, tied embeddings) with random weights: speed and memory do not depend on the values.
Each optimizer step is train.py's own (train.train_step: forward, backward, clipping, AdamW over
the trained parameters only) on random token ids.

Printed, for each of full / LoRA / LoRA + checkpointing:
- trained parameters and their share, and AdamW's state in bytes (exact, from the optimizer);
- peak memory: the peak resident set (VmHWM) of a fresh child process that builds the model and
  takes two steps, each configuration alone, and "added": that peak less the process's size right
  after building the model, i.e. what training adds to the weights (gradients, AdamW's state,
  activations);
- step time: the median over --rounds rounds in THIS process, the three configurations taking turns
  each round, so a busy shared machine slows them alike; the ratio to full fine-tuning is the figure.
One thread (torch.set_num_threads(1)): on a loaded 2-core machine two threads collapse.
Targets (issue 13): trained share < 3%, optimizer state < 5% of full's, LoRA step time <= full's.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import gpt  # noqa: E402
import lora  # noqa: E402
import minimind  # noqa: E402
import train  # noqa: E402

SMOLLM2_135M = dict(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64, ffn_hidden=1536,
                    vocab_size=49152, rope_theta=1e5, max_seq_len=2048, tie_embeddings=True)
SETUPS = ("full", "lora", "lora+ckpt")


def build(setup, rank):
    """(model, optimizer) for one setup, weights from seed 0."""
    torch.manual_seed(0)
    model = minimind.MiniMind(minimind.MiniMindConfig(**SMOLLM2_135M)).train()
    if setup != "full":
        lora.add_lora(model, rank, 2.0 * rank, targets="all")
    model.grad_checkpoint = setup.endswith("ckpt")
    return model, gpt.make_optimizer(model, 1e-4, 0.0, (0.9, 0.95))


def stage(batch_size, seq_len):
    """A train.Stage whose every micro-batch is the same random ids: next-token loss on all tokens."""
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(SMOLLM2_135M["vocab_size"], (batch_size, seq_len + 1), generator=g)
    b = (rows[:, :-1], rows[:, 1:])

    def loss(net, b, totals):
        logits, _ = net(b[0])
        return F.cross_entropy(logits.float().flatten(0, 1), b[1].flatten(), reduction="sum") / totals["tokens"], {}
    return train.Stage("sft", 1, lambda ix: b, lambda b: {"tokens": b[1].numel()}, loss, None, {}, seq_len)


def one_step(model, opt, st):
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    t0 = time.perf_counter()
    train.train_step(model, model, st, [[0]], opt, scaler, 1.0, torch.float32)
    return time.perf_counter() - t0


def memory_mb(field):
    """VmRSS (resident now) or VmHWM (its peak) of this process, MB, from Linux's /proc. Not
    getrusage's ru_maxrss, which a child inherits from the parent it was forked from."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB


def child(setup, args):
    """Run in a fresh process: build, two steps; print the peak and the size after building."""
    torch.set_num_threads(1)
    model, opt = build(setup, args.rank)
    built = memory_mb("VmRSS")
    st = stage(args.batch_size, args.seq_len)
    for _ in range(2):
        one_step(model, opt, st)
    print(json.dumps({"built_mb": built, "peak_mb": memory_mb("VmHWM")}))


def peak_memory(setup, args):
    cmd = [sys.executable, __file__, "--child", setup, "--rank", str(args.rank), "--batch-size",
           str(args.batch_size), "--seq-len", str(args.seq_len)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def share_table(rank):
    """Trained share for a few LoRA settings (counting only: meta models)."""
    out = []
    for r, targets in ((rank, "all"), (rank, "attention"), (rank, "mlp"), (12, "all"), (8, "all")):
        with torch.device("meta"):
            model = minimind.MiniMind(minimind.MiniMindConfig(**SMOLLM2_135M))
        base = model.num_params()
        lora.add_lora(model, r, 2.0 * r, targets=targets)
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        out.append(f"rank {r:>2} {targets:<10}{trained:>12,}  {trained / (base + trained):6.2%}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--child", default="")
    args = ap.parse_args()
    if args.child:
        return child(args.child, args)
    torch.set_num_threads(1)
    memory = {s: peak_memory(s, args) for s in SETUPS}  # first, while this process is still small
    st = stage(args.batch_size, args.seq_len)
    runs = {s: build(s, args.rank) for s in SETUPS}
    for model, opt in runs.values():  # a first step each: AdamW's state exists, caches are warm
        one_step(model, opt, st)
    times = {s: [] for s in SETUPS}
    for _ in range(args.rounds):
        for s in SETUPS:
            times[s].append(one_step(*runs[s], st))
    base = runs["full"][0].num_params()
    print(f"SmolLM2-135M shape, random weights: {base:,} parameters; batch {args.batch_size} x {args.seq_len} "
          f"tokens, 1 thread, LoRA rank {args.rank}, alpha {2 * args.rank}, all linear layers")
    print(f"{'setup':<11}{'trained':>13}{'share':>8}{'AdamW MB':>10}{'peak MB':>9}{'added MB':>10}"
          f"{'step s':>8}{'vs full':>9}")
    figures = {}
    for s in SETUPS:
        model, opt = runs[s]
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        state = sum(t.numel() * t.element_size() for v in opt.state.values() for t in v.values() if t.dim())
        mem = memory[s]
        step = statistics.median(times[s])
        figures[s] = dict(trained=trained, state=state, step=step, **mem)
        print(f"{s:<11}{trained:>13,}{trained / model.num_params():>8.2%}{state / 2**20:>10.1f}{mem['peak_mb']:>9.0f}"
              f"{mem['peak_mb'] - mem['built_mb']:>10.0f}{step:>8.2f}{step / figures['full']['step']:>8.2f}x")
    full, lora, ckpt = (figures[s] for s in SETUPS)
    print(f"ratios: AdamW state LoRA/full {lora['state'] / full['state']:.2%} (target < 5%); step time LoRA/full "
          f"{lora['step'] / full['step']:.2f}x, LoRA+checkpointing/full {ckpt['step'] / full['step']:.2f}x (target <= 1); "
          f"peak memory LoRA/full {lora['peak_mb'] / full['peak_mb']:.2f}x, LoRA+checkpointing/full "
          f"{ckpt['peak_mb'] / full['peak_mb']:.2f}x; trained share {lora['trained'] / (base + lora['trained']):.2%} "
          f"(target < 3%)")
    print("trained share by setting (parameters, share of base + adapters):")
    print("\n".join("  " + line for line in share_table(args.rank)))


if __name__ == "__main__":
    main()
