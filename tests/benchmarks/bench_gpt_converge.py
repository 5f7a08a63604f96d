"""Where does `python gpt.py` end, next to nanoGPT on its CPU configuration, and why?

nanoGPT's README trains a character GPT on Tiny Shakespeare on a CPU (4 layers, 4 heads, 128 wide,
block 64, batch 12, 2000 iterations, lr 1e-3 -> 1e-4, warmup 100, beta2 0.99, dropout 0) and
reports a validation loss of about 1.88; gpt.py's `cpu` size is the same model. This benchmark
trains, on the same text and with the same seeds, side by side:

    gpt.py          gpt.train exactly as `python gpt.py` runs it (Linear and LayerNorm biases)
    gpt.py no bias  the same with GPTConfig(bias=False), which is what nanoGPT's train.py passes
    nanoGPT-style   a reference loop written below with nanoGPT's choices: no biases, warmup to
                    lr * (it + 1) / (warmup + 1), the loss estimated over eval_iters random batches

and prints each run's final validation loss twice: as both programs report it (20 random
batches, noisy) and over 500 batches (close to the true value), with mean and spread over seeds.

    python tests/benchmarks/bench_gpt_converge.py --data input.txt          # Tiny Shakespeare
    python tests/benchmarks/bench_gpt_converge.py --seeds 1337 1338 1339 --iters 2000
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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import gpt  # noqa: E402

CPU = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0)


class Ref(nn.Module):
    """A GPT as nanoGPT's train.py builds it for this run: no biases anywhere (bias=False)."""

    def __init__(self, vocab_size):
        super().__init__()
        C, L = CPU["n_embd"], CPU["n_layer"]
        self.tok, self.pos = nn.Embedding(vocab_size, C), nn.Embedding(CPU["block_size"], C)
        self.blocks = nn.ModuleList(nn.ModuleDict(dict(
            ln1=nn.LayerNorm(C, bias=False), qkv=nn.Linear(C, 3 * C, bias=False),
            proj=nn.Linear(C, C, bias=False), ln2=nn.LayerNorm(C, bias=False),
            fc=nn.Linear(C, 4 * C, bias=False), out=nn.Linear(4 * C, C, bias=False))) for _ in range(L))
        self.ln_f = nn.LayerNorm(C, bias=False)
        self.head = nn.Linear(C, vocab_size, bias=False)
        self.head.weight = self.tok.weight
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * L) if name.endswith(("proj.weight", "out.weight"))
                                else 0.02)

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.tok(idx) + self.pos(torch.arange(T))
        for b in self.blocks:
            q, k, v = b["qkv"](b["ln1"](x)).view(B, T, 3, CPU["n_head"], -1).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1)
            x = x + b["proj"](y)
            x = x + b["out"](F.gelu(b["fc"](b["ln2"](x))))
        logits = self.head(self.ln_f(x))
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def nanogpt_lr(it, args):
    """nanoGPT's schedule: warmup to lr * (it + 1) / (warmup + 1), then cosine to min_lr."""
    if it < args.warmup:
        return args.lr * (it + 1) / (args.warmup + 1)
    ratio = (it - args.warmup) / (args.iters - args.warmup)
    return args.min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (args.lr - args.min_lr)


def train_reference(train_data, vocab_size, args):
    model = Ref(vocab_size)
    opt = gpt.make_optimizer(model, args.lr, 0.1, (0.9, 0.99))
    for it in range(args.iters):
        for group in opt.param_groups:
            group["lr"] = nanogpt_lr(it, args)
        x, y = gpt.get_batch(train_data, CPU["block_size"], 12)
        loss = model(x, y)[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="a text file (default: Python's help topics)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338, 1339])
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    args.lr, args.min_lr, args.warmup = 1e-3, 1e-4, 100
    torch.set_num_threads(args.threads)
    text = gpt.load_text(args.data)
    tok = gpt.CharTokenizer(text)
    train_data, val_data = gpt.split_data(tok.encode(text))
    print(f"{len(text):,} characters, vocab {tok.vocab_size}, {args.iters} iterations, seeds {args.seeds}")
    cfg = gpt.TrainConfig(max_iters=args.iters, eval_interval=args.iters, eval_iters=20)
    runs = {"gpt.py": {}, "gpt.py no bias": {}, "nanoGPT-style": {}}
    for seed in args.seeds:
        for name in runs:
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            if name == "nanoGPT-style":
                model = train_reference(train_data, tok.vocab_size, args)
            else:
                model = gpt.GPT(gpt.GPTConfig(**CPU, vocab_size=tok.vocab_size, bias=name == "gpt.py"))
                gpt.train(model, train_data, val_data, cfg, "cpu")
            torch.manual_seed(seed + 10_000)  # the same evaluation batches for every model
            reported = gpt.estimate_loss(model, {"val": val_data}, 20, CPU["block_size"], 12, "cpu")["val"]
            torch.manual_seed(seed + 20_000)
            precise = gpt.estimate_loss(model, {"val": val_data}, 500, CPU["block_size"], 12, "cpu")["val"]
            runs[name][seed] = (reported, precise)
            print(f"seed {seed} {name:<15} val {reported:.4f} (20 batches) {precise:.4f} (500 batches) "
                  f"in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\n{'':<16}{'20 batches: mean':>18}{'spread':>8}{'500 batches: mean':>19}{'spread':>8}")
    for name, by_seed in runs.items():
        rep, pre = zip(*by_seed.values())
        spread = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
        print(f"{name:<16}{statistics.mean(rep):>18.4f}{spread(rep):>8.4f}{statistics.mean(pre):>19.4f}"
              f"{spread(pre):>8.4f}")


if __name__ == "__main__":
    main()
