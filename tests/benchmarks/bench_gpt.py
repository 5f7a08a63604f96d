"""Benchmark gpt.py's training step: ms/step and tokens/s for the hand-written attention path and
the fused (F.scaled_dot_product_attention) path, against a clean nanoGPT-style reference GPT of the
same size written below and measured in the same process, in interleaved rounds (the machine is
shared and noisy, so the ratios are what to read, and each figure is the median over rounds).

    python tests/benchmarks/bench_gpt.py                      # cpu size, batch 12, on the CPU
    python tests/benchmarks/bench_gpt.py --threads 1 --steps 100
    python tests/benchmarks/bench_gpt.py --size shakespeare-char --batch-size 64 --device cuda
"""
import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))
from gpt import GPT, SIZES, GPTConfig, make_optimizer  # noqa: E402


# ---- the reference: a minimal GPT-2 style model as the well-known minimal trainers write it ----

class RefAttention(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.out = nn.Linear(n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class RefBlock(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = RefAttention(n_embd, n_head)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RefGPT(nn.Module):
    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, n_embd)
        self.pos = nn.Embedding(block_size, n_embd)
        self.blocks = nn.Sequential(*[RefBlock(n_embd, n_head) for _ in range(n_layer)])
        self.norm = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.head.weight = self.tok.weight
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("out.weight", "2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        x = self.tok(idx) + self.pos(torch.arange(idx.size(1), device=idx.device))
        logits = self.head(self.norm(self.blocks(x)))
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def ref_optimizer(model, lr):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.99))


# ---- the measurement ----

def time_steps(model, opt, batches, device):
    """Seconds per training step (forward, backward, clip, AdamW) over the given batches."""
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
    sync()
    t0 = time.perf_counter()
    for x, y in batches:
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    sync()
    return (time.perf_counter() - t0) / len(batches)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="cpu", choices=[s for s in SIZES if s != "gpt2"])
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--vocab-size", type=int, default=103, help="103: the character vocabulary of the built-in text")
    p.add_argument("--steps", type=int, default=50, help="steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = {**SIZES[args.size], "dropout": 0.0}
    T, B, dev = size["block_size"], args.batch_size, args.device

    models = {}
    for name, fused in [("gpt.py hand", False), ("gpt.py fused", True)]:
        torch.manual_seed(0)
        m = GPT(GPTConfig(**size, vocab_size=args.vocab_size, fused_attention=fused)).to(dev)
        models[name] = (m, make_optimizer(m, 1e-3, 0.1, (0.9, 0.99)))
    torch.manual_seed(0)
    ref = RefGPT(args.vocab_size, T, size["n_layer"], size["n_head"], size["n_embd"]).to(dev)
    models["reference"] = (ref, ref_optimizer(ref, 1e-3))
    n_ours, n_ref = models["gpt.py fused"][0].num_params(), sum(p.numel() for p in ref.parameters())
    assert n_ours == n_ref, (n_ours, n_ref)

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, args.vocab_size, (B, T), generator=g).to(dev),
                torch.randint(0, args.vocab_size, (B, T), generator=g).to(dev)) for _ in range(args.steps)]
    print(f"size {args.size} ({n_ours / 1e6:.2f}M params), batch {B} x block {T}, device {dev}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds x {args.steps} steps")
    for m, opt in models.values():  # warm-up: allocator, kernels, AdamW state
        time_steps(m, opt, batches[:5], dev)
    times = {name: [] for name in models}
    for _ in range(args.rounds):  # interleaved, so a burst of load hits all three alike
        for name, (m, opt) in models.items():
            times[name].append(time_steps(m, opt, batches, dev))
    ref_s = statistics.median(times["reference"])
    print(f"{'':14s} {'ms/step':>9s} {'tokens/s':>10s} {'time vs reference':>18s}")
    for name, ts in times.items():
        s = statistics.median(ts)
        print(f"{name:14s} {s * 1e3:9.2f} {B * T / s:10,.0f} {s / ref_s:17.2f}x")


if __name__ == "__main__":
    main()
