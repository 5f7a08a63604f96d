"""train.py: pre-train a small language model (book chapters 6 and 8), with the one training loop
that pre-training, supervised fine-tuning (sft.py) and DPO (dpo.py) share, and LoRA (chapter 9).

    python train.py                          # CPU: a tiny MiniMind on Python's own docs, minutes
    python train.py --preset t4-small        # a free Colab T4: minimind2-small on TinyStories
    python train.py --init out/smollm --data notes.txt  # continue pre-training any run on your text
    python train.py --preset a100-base --dry-run          # the resource calculator, no training
    torchrun --nproc_per_node=2 train.py ...  # several GPUs (or CPU processes) with DDP

Reading order: the config and presets -> data (built in, downloads, your files) -> the tokenizer
and the token cache -> the model (a named size, or --init from any run directory) -> LoRA
(chapter 9; every stage can fine-tune through it, a chapter-6 reader can skip it) -> THE TRAINING
LOOP: several processes, one optimizer step, the loop itself -> pre-training as a stage of that
loop (its batches, its loss, its evaluation) -> the resource calculator -> main.

Pre-training, SFT and DPO are one loop with three loss functions. Each stage hands the loop a
Stage (how to make a batch, what the loss is averaged over, the loss, an evaluation); the loop does
gradient accumulation, DDP, mixed precision, torch.compile, the non-finite guard, checkpoints,
exact resume, --halt-at, Ctrl-C, the progress bar, log.jsonl and loss.svg once, for all three.

Imports: rundir.py (the run directory, flags, devices, errors), bpe.py (the tokenizer), gpt.py
and minimind.py (the models; gpt.py's optimizer and learning-rate schedule, chapter 2's, serve
here too).
"""
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import bpe
import data
import gpt
import minimind
from rundir import (UserError, arch_of, atomic_write, autocast, build_model, check_device,
                    check_positive, load_run, load_tokenizer, option, parse_config, pick_dtype,
                    read_saved_config, refuse_to_overwrite, run_cli, save_checkpoint,
                    load_checkpoint, unwrap, RunLog, write_json, write_loss_svg)


# ---------------------------------------------------------------------------------------------
# Configuration: one dataclass, each field a flag; --preset fills defaults; explicit flags win.
# ---------------------------------------------------------------------------------------------
@dataclass
class LoopConfig:
    """The training loop's flags. sft.py's and dpo.py's configs build on it too, with their own
    defaults, so the three stages are driven by the same flags."""
    batch_size: int = option(16, "sequences per micro-batch (per process)")
    grad_accum: int = option(1, "micro-batches per optimizer step (gradient accumulation)")
    max_steps: int = option(1200, "optimizer steps (sft.py, dpo.py: 0 only evaluates the start "
                                  "model and writes it, e.g. --init with --adapter merged)")
    lr: float = option(2e-3, "peak learning rate")
    min_lr_ratio: float = option(0.1, "cosine floor as a fraction of lr")
    warmup_steps: int = option(100, "linear warmup steps")
    weight_decay: float = option(0.1, "AdamW decay (matrices only)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    grad_clip: float = option(1.0, "clip the gradient norm to this (0: off)")
    seed: int = option(1337, "random seed")
    device: str = option("auto", "auto | cpu | cuda | mps")
    dtype: str = option("auto", "auto | fp32 | bf16 | fp16 (fp16 on a GPU uses a gradient scaler)")
    compile: bool = option(False, "torch.compile the model")
    out_dir: str = option("out/pretrain", "run directory to write")
    eval_every: int = option(250, "steps between evaluations on held-out data")
    save_every: int = option(500, "steps between checkpoints")
    resume: bool = option(False, "continue the run in --out-dir exactly")
    overwrite: bool = option(False, "start a new run in an --out-dir that holds one")
    halt_at: int = option(0, "stop after this step with a checkpoint, as if interrupted "
                             "(split a schedule across sessions)")
    grad_checkpoint: bool = option(False, "gradient checkpointing: recompute each block in the "
                                          "backward pass (activations of ~one block, ~1/3 more "
                                          "compute)")
    lora_rank: int = option(0, "LoRA: rank r of the adapters (needs --init); 0: full fine-tuning")
    lora_alpha: float = option(32.0, "LoRA: the adapters' output is scaled by alpha / r")
    lora_dropout: float = option(0.0, "LoRA: dropout on the adapters' input")
    lora_targets: str = option("all", "LoRA: the layers adapted: all | attention | mlp | names "
                                      "(q_proj,v_proj)")
    lora_embeddings: bool = option(False, "LoRA: adapt the token embedding and the output head too "
                                          "(one change when they are tied)")
    save_adapter: bool = option(False, "LoRA: also write the adapters alone to adapter.pt (small)")
    adapter: str = option("", "start from the --init run with this adapter.pt (--save-adapter) "
                              "merged in; it must have been trained on that run")


@dataclass
class TrainConfig(LoopConfig):
    preset: str = option("", "named defaults, listed below; flags given explicitly win")
    init: str = option("", "continue pre-training this run directory (its model and tokenizer) "
                           "instead of a new model")
    model: str = option("minimind", "architecture of a new model: minimind | gpt")
    size: str = option("nano", "a named size from minimind.SIZES / gpt.SIZES")
    seq_len: int = option(0, "context length in tokens (0: 256, or the --init model's if shorter)")
    dropout: float = option(0.0, "dropout probability")
    data: str = option("python-docs", "python-docs (built in) | tinystories | shakespeare | "
                                      "a .txt/.jsonl file or folder")
    tokenizer: str = option("", "tokenizer.json to use; empty: train one with bpe.py")
    vocab_size: int = option(4096, "vocabulary size when training a tokenizer")
    val_fraction: float = option(0.05, "share of the data held out for validation")
    tokens_per_step: int = option(0, "tokens per optimizer step; sets --grad-accum (0: unused)")
    eval_batches: int = option(20, "batches per evaluation")
    sample_tokens: int = option(120, "tokens in each printed sample")
    dry_run: bool = option(False, "print the resource calculator and exit")


# Each preset: a one-line description of the hardware and time it expects, then its defaults.
PRESETS = {
    "cpu": ("2 CPU cores, about 7 minutes: a 1.3M MiniMind (nano) on Python's docs",
            dict(model="minimind", size="nano", seq_len=256, batch_size=16, max_steps=1200, lr=2e-3,
                 vocab_size=4096, dtype="fp32")),
    "t4-small": ("free Colab T4 (16 GB, fp16 + scaler), 1-2 hours: minimind2-small (26M) on "
                 "TinyStories",
                 dict(model="minimind", size="minimind2-small", data="tinystories", seq_len=512,
                      batch_size=32, tokens_per_step=65536, max_steps=6000, lr=1e-3,
                      vocab_size=6400, dtype="fp16", warmup_steps=300, eval_every=500,
                      save_every=500)),
    "l4-base": ("one L4 (24 GB, bf16), about 6 hours: minimind2 (104M) on TinyStories",
                dict(model="minimind", size="minimind2", data="tinystories", seq_len=512,
                     batch_size=32, tokens_per_step=131072, max_steps=10000, lr=6e-4,
                     vocab_size=6400, dtype="bf16", warmup_steps=500, eval_every=500,
                     save_every=1000)),
    "a100-base": ("one A100 (40/80 GB, bf16), about 5 hours: minimind2 (104M), context 1024, "
                  "TinyStories",
                  dict(model="minimind", size="minimind2", data="tinystories", seq_len=1024,
                       batch_size=64, tokens_per_step=262144, max_steps=10000, lr=6e-4,
                       vocab_size=6400, dtype="bf16", compile=True, warmup_steps=500,
                       eval_every=500, save_every=1000)),
    "a100-350m": ("one A100 80 GB (bf16), about 27 hours: a 361M MiniMind; bring more data than "
                  "TinyStories",
                  dict(model="minimind", size="minimind-350m", data="tinystories", seq_len=1024,
                       batch_size=32, tokens_per_step=524288, max_steps=8000, lr=3e-4,
                       vocab_size=6400, dtype="bf16", compile=True, warmup_steps=1000,
                       eval_every=1000, save_every=1000)),
    "gpt2-124m": ("one A100 (bf16), about 11 hours: the GPT of gpt.py at GPT-2 small's 124M",
                  dict(model="gpt", size="gpt2", data="tinystories", seq_len=1024, batch_size=32,
                       tokens_per_step=524288, max_steps=10000, lr=6e-4, vocab_size=50257,
                       dtype="bf16", compile=True, warmup_steps=700, eval_every=500,
                       save_every=1000)),
}


# ---------------------------------------------------------------------------------------------
# The model: a named size, or the model of any run directory (--init)
# ---------------------------------------------------------------------------------------------
def model_config(arch, size, vocab_size, seq_len, dropout=0.0):
    """The config dict of a named size with this tokenizer's vocab and this context length."""
    sizes = {"minimind": minimind.SIZES, "gpt": gpt.SIZES}
    if arch not in sizes:
        raise UserError(f"--model must be minimind or gpt; got {arch!r}")
    if size not in sizes[arch]:
        raise UserError(f"unknown --size {size!r} for {arch}; choose one of: "
                        f"{', '.join(sizes[arch])}")
    cfg = dict(sizes[arch][size], vocab_size=vocab_size, dropout=dropout)
    cfg["max_seq_len" if arch == "minimind" else "block_size"] = seq_len
    return cfg


def start_from(run_dir, device, dropout=None):
    """(model in training mode, tokenizer, payload) from any run directory: the start of
    continued pre-training, SFT and DPO. An INT8 run is for inference, not for more training."""
    if not Path(run_dir).is_dir():
        raise UserError(f"--init {run_dir}: no such run directory")
    model, tok, payload = load_run(run_dir, device)
    if payload.get("quantized"):
        raise UserError(f"--init {run_dir}: an INT8 run is for inference; start from the float run "
                        f"it was made from ({payload['quantized'].get('source', 'its source')})")
    if dropout:  # dropout is a training-time setting: a fine-tune may ask for it
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = dropout
    return model.train(), tok, payload


def origin_of(run_dir, payload):
    """What model.pt records about where a run started: the run it came from and, for an
    imported model, where that came from."""
    return {"init": str(run_dir), **({"source": payload["source"]} if "source" in payload else {})}


# ---------------------------------------------------------------------------------------------
# LoRA (chapter 9): fine-tune a large model by training two thin matrices beside each layer
# ---------------------------------------------------------------------------------------------
# Full fine-tuning keeps, for every weight, an fp32 copy, its gradient and AdamW's two moments:
# 16 bytes, 8 GB for a 0.5B model before a single activation. LoRA (Hu et al., 2021) freezes each
# weight W [out, in] and learns its change as the product of two thin matrices:
#
#     y = W x + (alpha / r) * B A x          A: [r, in],  B: [out, r],  r much smaller than in, out
#
# - B starts at zero, so B A x = 0: at step 0 the model IS the base model, to the last bit. A starts
#   small and random, so B's first gradient, (alpha/r) dL/dy (A x)^T, is not zero; A's gradient,
#   (alpha/r) B^T dL/dy x^T, is zero until B has moved (were both zero, neither would ever move).
# - alpha / r: Adam moves every entry of B by about lr per step whatever r is, and B A x sums r
#   such terms, so without the 1/r a larger rank would take larger steps. With it, --lora-rank can
#   change without re-tuning --lr; alpha scales the adapters' step like a learning rate would.
# - Merging: W x + (alpha/r) B A x = (W + (alpha/r) B A) x. After training the adapters fold into
#   W and the result is an ordinary model: no cost at inference, and every script opens it.
class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank change: y = W x + b + (alpha/r) B A drop(x).
    It takes over the layer's own weight and bias (the same tensors, not copies, under the same
    names), so the state_dict holds weight, bias, lora_A and lora_B."""

    def __init__(self, linear, rank, alpha, dropout=0.0):
        super().__init__()
        self.weight, self.bias = linear.weight, getattr(linear, "bias", None)  # frozen by add_lora
        out_features, in_features = linear.weight.shape
        device = linear.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, device=device))  # [r, in]
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=device))  # [out, r]
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear draws its weight
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.enabled = True  # adapters_off() sets it False: the base layer alone

    def forward(self, x):
        # A GPU run keeps the frozen W in fp16/bf16 and the adapters in fp32; each .to() meets the
        # other's dtype (a no-op in fp32, and autocast picks the dtype of the matmuls anyway).
        y = F.linear(x.to(self.weight.dtype), self.weight, self.bias)  # [..., out]
        if not self.enabled:
            return y
        h = F.linear(self.dropout(x), self.lora_A.to(x.dtype))  # [..., r]
        return y + self.scale * F.linear(h, self.lora_B.to(x.dtype))  # [..., out]

    def delta(self):
        """(alpha / r) B A, in fp32: what merging adds to W."""
        return self.scale * (self.lora_B.float() @ self.lora_A.float())  # [out, in]

    def plain(self, weight):
        """The plain layer this one merges into, holding `weight`."""
        out_features, in_features = weight.shape
        linear = nn.Linear(in_features, out_features, bias=self.bias is not None, device="meta")
        linear.weight, linear.bias = weight, self.bias
        return linear


class LoRAEmbedding(LoRALinear):
    """The token embedding E [vocab, dim] with the same kind of low-rank change, looked up by row:
    E[idx] + (alpha/r) B[idx] A. When the head shares E (tied weights) this layer shares the head's
    A and B too: one matrix, one change, seen from both ends, so merged they are still tied."""

    def forward(self, idx):
        y = F.embedding(idx, self.weight)  # [B, T, dim]
        if not self.enabled:
            return y
        return y + self.scale * F.embedding(idx, self.lora_B.to(y.dtype)) @ self.lora_A.to(y.dtype)

    def plain(self, weight):
        embedding = nn.Embedding(*weight.shape, device="meta")
        embedding.weight = weight
        return embedding


# Which linear layers --lora-targets names, in both models (minimind.py: Llama's names; gpt.py:
# GPT-2's). The output head shares its matrix with the token embedding: both or neither are
# adapted (--lora-embeddings).
LORA_TARGETS = {"attention": ("q_proj", "k_proj", "v_proj", "o_proj", "attn.c_attn", "attn.c_proj"),
                "mlp": ("gate_proj", "up_proj", "down_proj", "mlp.c_fc", "mlp.c_proj")}
LORA_TARGETS["all"] = LORA_TARGETS["attention"] + LORA_TARGETS["mlp"]


def add_lora(model, rank, alpha, dropout=0.0, targets="all", embeddings=False):
    """Freeze every parameter of `model`, then put a LoRALinear with fresh adapters in place of
    each nn.Linear whose name ends with a name of `targets` (all, attention, mlp, or a comma list
    such as "q_proj,v_proj"; MoE experts are adapted like any MLP). embeddings=True adapts the
    output head and the token embedding too, tied ones as one. Returns the adapted names."""
    wanted = LORA_TARGETS.get(targets) or tuple(t.strip() for t in targets.split(",") if t.strip())
    linears = {name: m for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and name != "lm_head"}
    chosen = [name for name in linears if ("." + name).endswith(tuple("." + w for w in wanted))]
    if not chosen:
        names = sorted({name.split(".")[-1] for name in linears})
        raise UserError(f"--lora-targets {targets}: no linear layer of this model is named so; "
                        f"its layers: {', '.join(names)} "
                        f"(the head and embedding: --lora-embeddings)")
    model.requires_grad_(False)
    for name in chosen:
        swap(model, name, LoRALinear(linears[name], rank, alpha, dropout))
    if embeddings:
        head = model.lm_head
        embeds = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
        tied = [n for n in embeds if model.get_submodule(n).weight is head.weight]
        embed = (tied + embeds)[0]  # the token embedding: GPT's first is wte, not its positions
        model.lm_head = LoRALinear(head, rank, alpha, dropout)
        lora_embed = LoRAEmbedding(model.get_submodule(embed), rank, alpha)
        if tied:
            lora_embed.lora_A, lora_embed.lora_B = model.lm_head.lora_A, model.lm_head.lora_B
        swap(model, embed, lora_embed)
        chosen += ["lm_head", embed]
    return chosen


def swap(model, name, module):
    """Put `module` where the submodule `name` ("layers.0.self_attn.q_proj") was."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def merged_state_dict(model):
    """The state_dict of the plain model, in fp32 on the CPU, without changing `model` (training
    goes on after a checkpoint): every adapted weight is W + (alpha/r) B A and the adapter tensors
    are left out, so model.pt opens with rundir.load_run like any run. Plain models: their own."""
    model = unwrap(model)
    # Tensors by the id of the parameter they come from: a weight two names share (a tied head)
    # is converted, or merged, once and written once. Frozen weights held in 16 bits on a GPU
    # start from their fp32 values (keep_frozen_in).
    done = dict(getattr(model, "frozen_fp32", {}))

    def exact(t):  # a tensor's fp32 value on the CPU
        if id(t) not in done:
            done[id(t)] = t.detach().cpu().float()
        return done[id(t)]

    merged = {}
    state = {k: exact(v) if v.is_floating_point() else v
             for k, v in model.state_dict(keep_vars=True).items()}
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            if id(m.weight) not in merged:
                merged[id(m.weight)] = exact(m.weight) + m.delta().detach().cpu()
            state[f"{name}.weight"] = merged[id(m.weight)]
            del state[f"{name}.lora_A"], state[f"{name}.lora_B"]
    return state


def merge_lora(model):
    """Fold every adapter into its weight, in place: each LoRALinear becomes a plain nn.Linear
    (a LoRAEmbedding a plain nn.Embedding) holding W + (alpha/r) B A, in W's dtype; tied layers
    stay tied. The model is the base architecture again."""
    merged = {}  # id of a base weight -> its merged Parameter, shared by the layers that shared it
    for name, m in list(model.named_modules()):
        if isinstance(m, LoRALinear):
            if id(m.weight) not in merged:
                merged[id(m.weight)] = nn.Parameter((m.weight.float() + m.delta())
                                                    .to(m.weight.dtype).detach())
            swap(model, name, m.plain(merged[id(m.weight)]))
    return model


@contextlib.contextmanager
def adapters_off(model):
    """Inside the block every LoRALinear computes W x + b alone: the model is its base again, with
    no copy made. DPO's reference model under LoRA (dpo.py)."""
    layers = [m for m in unwrap(model).modules() if isinstance(m, LoRALinear)]
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m in layers:
            m.enabled = True


def trained_tensors(model):
    """{name: tensor} of the parameters that train: a LoRA run's adapters, what its train_state.pt
    and adapter.pt hold."""
    return {n: p.detach() for n, p in unwrap(model).named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------------------------
# LoRA runs: the frozen base they sit on, the adapter file, the model setup every stage shares
# ---------------------------------------------------------------------------------------------
def weights_fingerprint(model):
    """sha256 of the model's tensors (names and bytes): which exact weights a LoRA run's adapters
    sit on. A resumed run and an applied adapter.pt check their base against it."""
    digest = hashlib.sha256()
    for name, t in unwrap(model).state_dict().items():
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def save_adapter(path, model, extra):
    """adapter.pt: the trained tensors alone (a few MB where model.pt is hundreds), the LoRA
    settings and the base run they belong to (its path and weights' sha256), plain tensors and
    dicts so torch.load(..., weights_only=True) opens it."""
    payload = {"format": "slm-adapter", "version": 1, "arch": arch_of(model),
               "config": dataclasses.asdict(unwrap(model).config), **extra,
               "weights": {k: v.cpu() for k, v in trained_tensors(model).items()}}
    atomic_write(path, lambda f: torch.save(payload, f))


def apply_adapter(model, path, fingerprint=None):
    """Merge a saved adapter.pt into `model`, a plain model of the run it was trained on (checked:
    `fingerprint`, its weights_fingerprint, must be the one the adapter records). The model comes
    back plain, every parameter trainable, as start_from gives it."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: cannot be loaded as an adapter ({str(e).splitlines()[0]})")
    if not isinstance(payload, dict) or payload.get("format") != "slm-adapter":
        raise UserError(f"{path}: not an slm adapter file (sft.py ... --save-adapter writes one)")
    base = payload["base"]
    fingerprint = fingerprint or weights_fingerprint(model)
    if base["sha256"] != fingerprint:
        raise UserError(f"{path}: trained on the weights of {base['run']} (sha256 "
                        f"{base['sha256'][:12]}), not on these (sha256 {fingerprint[:12]}); "
                        f"apply it to the run it was trained on")
    lora = payload["lora"]
    add_lora(model, lora["rank"], lora["alpha"], 0.0, lora["targets"], lora["embeddings"])
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in payload["weights"].items()}, strict=False)
    return merge_lora(model).requires_grad_(True)


def adapt_model(cfg, model):
    """The model setup every stage shares, once its start weights are loaded: --adapter merged in,
    then LoRA (--lora-rank) with, on a GPU in fp16/bf16, the frozen weights kept in that dtype (a
    frozen weight needs no fp32 master copy), then --grad-checkpoint. Returns what model.pt records
    about it: the LoRA settings and the base run's identity ({} for full fine-tuning)."""
    record = {}
    if cfg.adapter:
        apply_adapter(model, cfg.adapter)
        record["adapter"] = cfg.adapter
    if cfg.lora_rank:
        base = {"run": str(cfg.init), "sha256": weights_fingerprint(model),
                **({"adapter": cfg.adapter} if cfg.adapter else {})}
        names = add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets,
                         cfg.lora_embeddings)
        device = str(next(model.parameters()).device)
        if device.startswith("cuda"):
            keep_frozen_in(model, pick_dtype(device, cfg.dtype))
        record["lora"] = {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha,
                          "dropout": cfg.lora_dropout, "targets": cfg.lora_targets,
                          "embeddings": cfg.lora_embeddings}
        record["base"] = base
        trained, total = sum(t.numel() for t in trained_tensors(model).values()), model.num_params()
        print_if(is_master(), f"LoRA rank {cfg.lora_rank}, alpha {cfg.lora_alpha:g}, "
                              f"on {len(names)} layers ({cfg.lora_targets}): "
                              f"{trained:,} parameters train, "
                              f"{trained / total:.2%} of {total:,}; the others are frozen")
    model.grad_checkpoint = cfg.grad_checkpoint
    return record


def keep_frozen_in(model, dtype):
    """Store every frozen parameter in `dtype` (a GPU run's fp16 or bf16): a frozen weight is never
    updated, so it needs no fp32 master copy on the GPU, half the memory. The adapters stay fp32:
    AdamW's small updates would vanish in fp16's rounding, and fp16's gradient scaler insists on
    fp32. The fp32 values wait in CPU memory (model.frozen_fp32, by parameter), so the model.pt a
    run writes is the base's own weights plus the adapters, not their 16-bit roundings."""
    model.frozen_fp32 = getattr(model, "frozen_fp32", {})
    for p in model.parameters():
        if not p.requires_grad and p.dtype != dtype:
            model.frozen_fp32.setdefault(id(p), p.detach().to("cpu", torch.float32, copy=True))
            p.data = p.data.to(dtype)


def check_lora(cfg):
    """The LoRA flags, checked before anything is loaded or written."""
    if cfg.lora_rank < 0 or (cfg.lora_rank and cfg.lora_alpha <= 0):
        raise UserError("--lora-rank must be 0 (full fine-tuning) or more, --lora-alpha positive")
    if not 0 <= cfg.lora_dropout < 1:
        raise UserError(f"--lora-dropout must be in [0, 1); got {cfg.lora_dropout}")
    if (cfg.lora_rank or cfg.adapter) and not cfg.init:
        raise UserError("--lora-rank and --adapter need --init: the run whose weights they adapt")
    if cfg.save_adapter and not cfg.lora_rank:
        raise UserError("--save-adapter needs --lora-rank: full fine-tuning has no adapter to save")
    if cfg.adapter and not Path(cfg.adapter).is_file():
        raise UserError(f"--adapter {cfg.adapter}: no such file")


# ---------------------------------------------------------------------------------------------
# The training loop, shared by pre-training (below), SFT (sft.py) and DPO (dpo.py)
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def processes(device_name):
    """Yields (rank, world size, device). Started by torchrun (WORLD_SIZE > 1), every process trains
    a copy of the model on its own rows of each batch and DDP averages the gradients (NCCL between
    GPUs, gloo between CPU processes); otherwise (0, 1, device). Every process leaves its last
    collective before any tears the group down."""
    device = check_device(device_name)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield 0, 1, device
        return
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    try:
        yield dist.get_rank(), dist.get_world_size(), device
    finally:
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def rank_zero_first():
    """Process 0 runs the block first (it trains the tokenizer, writes the token cache) while the
    others wait, then they run it and read what it wrote: no two processes write one file."""
    ddp = dist.is_initialized()
    if ddp and dist.get_rank() != 0:
        dist.barrier()
    yield
    if ddp and dist.get_rank() == 0:
        dist.barrier()


class StepSampler:
    """The examples of every optimizer step, drawn at random (with replacement) by its own
    generator, whose state goes into train_state.pt: a resumed run draws exactly what it would have.

    Each step draws grad_accum x world x batch_size indices in [0, n); micro-batch m of process r
    takes row [m, r] of that draw. So N processes see exactly what one process with an N-times
    larger batch sees, and k accumulated micro-batches what one k-times larger batch sees."""

    def __init__(self, n, batch_size, grad_accum, seed, rank=0, world=1):
        self.n, self.shape, self.rank = n, (grad_accum, world, batch_size), rank
        self.gen = torch.Generator().manual_seed(seed)

    def next_step(self):
        draw = torch.randint(self.n, self.shape, generator=self.gen)  # [accum, world, batch]
        return draw[:, self.rank].tolist()  # this process's micro-batches of indices


@dataclass
class Stage:
    """What one training stage gives the loop; pre-training, SFT and DPO differ only here.

    A micro-batch is a tuple whose first item is the input ids [B, T] (the loop counts its tokens).
    The step's loss is an average over units (tokens, pairs): counts(batch) says how many units a
    micro-batch holds, and loss(model, batch, totals) returns this micro-batch's SHARE of the step's
    loss, its sum over units divided by totals, the units of the whole step (all micro-batches, all
    processes). evaluate(model, full) measures held-out data: full=True (at the start and the end)
    may add slow figures such as exact match."""
    name: str  # "pretrain", "sft" or "dpo": model.pt records it
    n_examples: int  # the sampler draws example indices in [0, n_examples)
    batch: Callable  # batch(indices) -> a micro-batch
    counts: Callable  # counts(batch) -> {unit: n}
    loss: Callable  # loss(model, batch, totals) -> (share of the step's loss, {name: float to log})
    evaluate: Callable  # evaluate(model, full) -> {metric: float}
    labels: dict  # {metric: label} of the before/after table
    seq_len: int  # the longest sequence, for the FLOP count


def is_master():
    """True in the process that logs, evaluates and writes (the only one without DDP)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def moe_balance(model):
    """MiniMind's load-balancing term of the last forward with gradients (0 for dense models): added
    here, once, for every stage."""
    aux = getattr(model, "aux_loss", None)
    return aux if torch.is_tensor(aux) and aux.requires_grad else 0.0


def step_totals(stage, batches):
    """The units of the whole step: summed over this process's micro-batches,
    then over processes."""
    keys = list(stage.counts(batches[0]))
    totals = torch.tensor([[stage.counts(b)[k] for k in keys] for b in batches],
                          dtype=torch.float64).sum(0)
    if dist.is_initialized():
        dist.all_reduce(totals)
    return {k: max(float(v), 1.0) for k, v in zip(keys, totals)}


def train_step(net, model, stage, micro_indices, optimizer, scaler, grad_clip, dtype):
    """One optimizer step over this process's micro-batches. Returns (loss, gradient norm, tokens,
    logs): the step's loss summed over all micro-batches and processes, tokens of all processes.

    Each micro-batch's loss is its share of the step's loss (see Stage), so accumulating k
    micro-batches, or splitting the batch over N processes, gives exactly the gradient of one big
    batch, even when the micro-batches hold different numbers of trained tokens (SFT's do)."""
    device = str(next(model.parameters()).device)
    world = dist.get_world_size() if dist.is_initialized() else 1
    batches = [stage.batch(ix) for ix in micro_indices]
    totals = step_totals(stage, batches)
    loss_sum, tokens, logs = torch.zeros((), device=device), 0, []
    for i, batch in enumerate(batches):
        # DDP averages gradients across processes, on the last micro-batch only; the shares must be
        # summed instead of averaged, hence the factor `world` below.
        sync = i == len(batches) - 1 or world == 1
        with contextlib.nullcontext() if sync else net.no_sync():
            with autocast(device, dtype):
                loss, micro_logs = stage.loss(net, batch, totals)
                loss = loss + moe_balance(model) / (len(batches) * world)
            scaler.scale(loss * world).backward()
        loss_sum += loss.detach()
        tokens += batch[0].numel()
        logs.append(micro_logs)
    scaler.unscale_(optimizer)  # true gradients (a no-op without fp16's scaler)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf")).item()
    if world > 1:
        dist.all_reduce(loss_sum)
    # Checked before the update, so bad numbers never reach the weights or a checkpoint. With fp16
    # an overflowing gradient is normal: the scaler skips that step and lowers its scale.
    if not math.isfinite(loss_sum.item()) or not (math.isfinite(grad_norm) or scaler.is_enabled()):
        raise UserError(f"loss {loss_sum.item()}, gradient norm {grad_norm}; stopped. The last "
                        f"good checkpoint is untouched (try a lower --lr, or --dtype bf16/fp32)")
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum.item(), grad_norm, tokens * world, {k: sum(l[k] for l in logs) / len(logs)
                                                        for k in logs[0]}


def flops_per_token(model, seq_len):
    """Training FLOPs per token: 6N for the matmuls (2 forward + 4 backward per weight, N the
    parameters one token uses) plus the attention scores and values, 12 * layers * width * context
    (the same accounting as PaLM's MFU; minimind.flops_per_token prints it per named size).
    A frozen weight (LoRA) needs no gradient of its own, 2 of its 6: 4 per frozen weight."""
    active, total = model.num_params(active=True), model.num_params()
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad) * active / total
    return 6 * active - 2 * frozen + 12 * model.n_layers * model.width * seq_len


def peak_flops(device, dtype):
    """Peak FLOP/s for MFU: a table for known GPUs; on CPU, a short measured matmul."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        for key, tflops in {"H100": 989, "A100": 312, "L4": 121, "T4": 65, "V100": 125}.items():
            if key in name:
                return tflops * 1e12
        return None
    a = torch.ones(512, 512)  # not randn: measuring must not move the RNG a resumed run restored
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.2:
        a @ a
        n += 1
    return 2 * 512**3 * n / (time.perf_counter() - t0)


def wrap(model, compile_it, device):
    """The module the loop calls: torch.compile'd if asked, inside DDP when several
    processes run."""
    net = torch.compile(model) if compile_it else model
    if dist.is_initialized():
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device] if device.startswith("cuda") else None)
    return net


def open_run(cfg, model, stage, dtype, master, extra):
    """The optimizer, gradient scaler and sampler of a run, at step 0 or, with cfg.resume, restored
    from the checkpoint in cfg.out_dir; config.json and log.jsonl (process 0 only). The optimizer
    holds the parameters that train only (under LoRA, the adapters). A resumed LoRA run must sit
    on the base it started from: extra["base"] (see adapt_model) is checked against the checkpoint.
    Returns (optimizer, scaler, sampler, step, before, log); before: the step-0 evaluation."""
    out, device = Path(cfg.out_dir), str(next(model.parameters()).device)
    optimizer = gpt.make_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                                   fused=device.startswith("cuda"))
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=dtype == torch.float16)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    sampler = StepSampler(stage.n_examples, cfg.batch_size, cfg.grad_accum, cfg.seed, rank, world)
    step, before, log = 0, None, None
    if cfg.resume:
        state = load_checkpoint(out, model, optimizer, scaler)
        base = extra.get("base", {}).get("sha256")
        if state.get("base") != base:
            raise UserError(f"{cfg.init}: not the weights this run's adapters were trained on "
                            f"(sha256 {str(state.get('base'))[:12]}, now {str(base)[:12]}); "
                            f"resume needs that base")
        step, before = state["step"], state["before"]
        sampler.gen.set_state(state["sampler"])
    if master:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", dataclasses.asdict(cfg))
        log = RunLog(out, step if cfg.resume else None)
    return optimizer, scaler, sampler, step, before, log


def train_loop(cfg, model, tok, stage, extra=None):
    """Run the steps of `stage` on `model` (on its device) from step 0 or, with cfg.resume, from
    the checkpoint in cfg.out_dir, writing that run directory. Evaluates held-out data at step 0,
    every cfg.eval_every steps and at the end, then prints the before/after table. `extra`: what
    model.pt records besides the stage (where the run started). Returns {"step", "before", "after"}
    ("after" absent when the run halted or was interrupted)."""
    out, device, extra = Path(cfg.out_dir), str(next(model.parameters()).device), extra or {}
    master, dtype = is_master(), pick_dtype(device, cfg.dtype)
    optimizer, scaler, sampler, step, before, log = open_run(cfg, model, stage, dtype, master,
                                                             extra)

    def evaluation(at_step, kind):  # kind: "before", "during" or "after"; process 0 only
        if not master:
            return {}
        metrics = stage.evaluate(model, full=kind != "during")
        log.write(step=at_step, eval=kind, **metrics)
        tqdm.write(f"step {at_step}: " + ", ".join(f"{stage.labels.get(k, k)} {v:.4f}"
                                                   for k, v in metrics.items()))
        return metrics

    def checkpoint(at_step):
        if master:
            write_checkpoint(cfg, model, tok, optimizer, scaler, at_step,
                             {"sampler": sampler.gen.get_state(), "before": before},
                             {"stage": stage.name, **extra})

    def stop(message):  # --halt-at or Ctrl-C: the run ends on a checkpoint, to be resumed
        bar.close()
        print_if(master, f"{message}; continue with --resume --out-dir {out}")
        return {"step": step, "before": before}

    before = before if before is not None else evaluation(0, "before")
    net, meter = wrap(model, cfg.compile, device), Meter(model, stage.seq_len, dtype, master)
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not master, unit="step",
               dynamic_ncols=True)
    with ctrl_c_between_steps(device) as pressed:
        while step < cfg.max_steps:
            lr = set_lr(cfg, optimizer, step)
            loss, grad_norm, tokens, logs = train_step(net, model, stage, sampler.next_step(),
                                                       optimizer, scaler, cfg.grad_clip, dtype)
            step += 1
            if master:
                row = dict(step=step, loss=loss, lr=lr, grad_norm=grad_norm, **meter.speed(tokens),
                           **logs)
                log.write(**row)
                bar.set_postfix(meter.postfix(row))
                bar.update()
            if step % cfg.eval_every == 0 and step < cfg.max_steps:
                evaluation(step, "during")
            if step % cfg.save_every == 0 or step == cfg.halt_at:
                checkpoint(step)
            meter.restart()  # time spent evaluating and saving is not training speed
            if step == cfg.halt_at:
                return stop(f"halted at step {step} (--halt-at)")
            if pressed():  # Ctrl-C: this step is finished and logged; save it and stop
                checkpoint(step)
                return stop(f"\ninterrupted: saved step {step} to {out}")
    bar.close()
    after = evaluation(step, "after")
    checkpoint(step)  # after the last evaluation, so the picture shows it
    if master:
        print_before_after(stage.labels, before, after)
        print(f"done: {step} steps. Run directory: {out}")
    return {"step": step, "before": before, "after": after, **after}


@contextlib.contextmanager
def ctrl_c_between_steps(device):
    """Inside the block Ctrl-C (SIGINT) only asks the loop to stop: pressed() says so at the end of
    a step, when the weights, the optimizer, the step count and log.jsonl agree (a
    KeyboardInterrupt between the optimizer's update and the step count would save a checkpoint
    that resumes one step off). Pressed again, it stops at once, saving nothing. Under torchrun
    the processes agree on it, so they all stop after the same step."""
    pressed = []

    def handler(signum, frame):
        if pressed:
            raise KeyboardInterrupt
        pressed.append(signum)
        tqdm.write("Ctrl-C: saving after this step (press it again to stop at once, unsaved)")

    def asked():
        if not dist.is_initialized():
            return bool(pressed)
        flag = torch.tensor([float(bool(pressed))], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    if threading.current_thread() is not threading.main_thread():  # signals reach the main one
        yield asked
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield asked
    finally:
        signal.signal(signal.SIGINT, previous)


def set_lr(cfg, optimizer, step):
    """The learning rate of `step` (warm-up, then cosine decay: gpt.get_lr), set in every group."""
    lr = gpt.get_lr(step, cfg.lr, cfg.lr * cfg.min_lr_ratio, cfg.warmup_steps, cfg.max_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def write_checkpoint(cfg, model, tok, optimizer, scaler, step, state, extra):
    """The run directory at `step`: model.pt (under LoRA, the adapters merged into the weights, so
    every script opens it), train_state.pt (under LoRA with the adapters themselves: the frozen
    base comes back from --init, checked by its fingerprint), adapter.pt with --save-adapter, and
    the picture."""
    out = Path(cfg.out_dir)
    if "lora" in extra:
        state = {**state, "trainable": trained_tensors(model), "base": extra["base"]["sha256"]}
    save_checkpoint(out, model, tok, optimizer, scaler, step, state, extra,
                    merged_state_dict(model))
    if cfg.save_adapter:
        save_adapter(out / "adapter.pt", model, {**extra, "step": step})
    write_loss_svg(out / "log.jsonl", out / "loss.svg")


def print_if(master, text):
    if master:
        tqdm.write(text)


class Meter:
    """Tokens per second and MFU (model FLOPs utilisation: the share of the device's peak FLOP/s
    the training step reaches) of each step, for the log and the progress bar."""

    def __init__(self, model, seq_len, dtype, master):
        device = str(next(model.parameters()).device)
        self.flops_per_token = flops_per_token(model, seq_len)
        self.peak = peak_flops(device, dtype) if master else None
        self.t = time.perf_counter()

    def restart(self):
        self.t = time.perf_counter()

    def speed(self, tokens):
        tokens_per_s = tokens / max(time.perf_counter() - self.t, 1e-9)
        out = {"tokens_per_s": round(tokens_per_s)}
        if self.peak:
            out["mfu"] = self.flops_per_token * tokens_per_s / self.peak
        return out

    @staticmethod
    def postfix(row):
        shown = dict(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.1e}",
                     tok_s=f"{row['tokens_per_s']:,}")
        return {**shown, **({"mfu": f"{row['mfu']:.1%}"} if "mfu" in row else {})}


def print_before_after(labels, before, after):
    """The held-out figures at step 0 and at the end, side by side."""
    print(f"{'held-out figure':<34}{'before':>10}{'after':>10}")
    for key, label in labels.items():
        print(f"{label:<34}{before[key]:>10.4f}{after[key]:>10.4f}")


# ---------------------------------------------------------------------------------------------
# Pre-training: next-token prediction on every token, as a stage of the loop
# ---------------------------------------------------------------------------------------------
def sample(model, tok, prompt, max_new_tokens, seed=0, temperature=0.8, top_k=50):
    """A continuation of `prompt` (of a new document when prompt is empty), as text."""
    eot = tok.special_tokens["<|endoftext|>"]
    ids = tok.encode(prompt, allowed_special="all") if prompt else [eot]
    out = model.generate(ids, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed,
                         stop_tokens={eot})
    # the end-of-text marker is not text
    return tok.decode([t for t in out if not tok.is_special(t)])


def pretrain_stage(cfg, model, tok, train_tokens, val_tokens, dtype):
    """Pre-training as a Stage: random windows of seq_len + 1 tokens; the loss, the mean
    cross-entropy of every next token; held-out loss, perplexity and bits per byte on fixed windows
    of the validation split, with a sample to read."""
    device, T = str(next(model.parameters()).device), cfg.seq_len
    windows = data.eval_windows(val_tokens, T, cfg.batch_size, cfg.eval_batches)
    lengths = data.byte_lengths(tok)

    def batch(starts):
        rows = torch.from_numpy(np.stack([train_tokens[s:s + T + 1] for s in starts])
                                .astype(np.int64))
        return rows[:, :-1].to(device, non_blocking=True), rows[:, 1:].to(device, non_blocking=True)

    def loss(net, b, totals):
        logits, _ = net(b[0])
        nll = F.cross_entropy(logits.float().flatten(0, 1), b[1].flatten(), reduction="sum")
        return nll / totals["tokens"], {}

    def evaluate_and_sample(model, full):
        metrics = data.evaluate(model, windows, lengths, device, dtype)
        text = sample(model, tok, "", cfg.sample_tokens)
        tqdm.write(f"--- sample ---\n{text.strip()[:600]}\n--------------")
        return metrics

    labels = {"val_loss": "validation loss (nats/token)", "val_ppl": "validation perplexity",
              "val_bpb": "validation bits per byte"}
    return Stage("pretrain", len(train_tokens) - T - 1, batch, lambda b: {"tokens": b[1].numel()},
                 loss, evaluate_and_sample, labels, T)


def check_config(cfg):
    check_positive(cfg, ("batch_size", "grad_accum", "max_steps", "eval_every", "eval_batches",
                         "save_every"))
    if not 0 < cfg.val_fraction < 0.5:
        raise UserError(f"--val-fraction must be between 0 and 0.5; got {cfg.val_fraction}")
    if cfg.lr <= 0 or cfg.warmup_steps < 0 or cfg.tokens_per_step < 0 or cfg.seq_len < 0:
        raise UserError("--lr must be positive; --warmup-steps, --tokens-per-step, --seq-len "
                        "not negative")
    if not 0 <= cfg.dropout < 1:
        raise UserError(f"--dropout must be in [0, 1); got {cfg.dropout}")
    if cfg.init and cfg.tokenizer:
        raise UserError("--init brings its run's tokenizer; --tokenizer cannot replace it")
    check_lora(cfg)
    check_device(cfg.device)
    refuse_to_overwrite(cfg)


def resolve(cfg, context=None, world=1):
    """Settle the flags whose value depends on the model and the processes: --seq-len 0 (256, or
    the --init model's context if shorter), --tokenizer (the --init run's), --grad-accum from
    --tokens-per-step. The config saved in config.json is this one, so a resume repeats it."""
    seq_len = cfg.seq_len or min(256, context or 256)
    if context and seq_len > context:
        raise UserError(f"--seq-len {seq_len}: the model in {cfg.init} takes at most "
                        f"{context} tokens")
    accum = cfg.grad_accum
    if cfg.tokens_per_step:
        accum = max(1, cfg.tokens_per_step // (cfg.batch_size * seq_len * world))
    tokenizer = str(Path(cfg.init) / "tokenizer.json") if cfg.init else cfg.tokenizer
    return dataclasses.replace(cfg, seq_len=seq_len, grad_accum=accum, tokenizer=tokenizer)


def pretrain(cfg):
    if cfg.resume:  # continue with the saved config; only these may differ from it
        keep = {k: getattr(cfg, k) for k in ("resume", "overwrite", "halt_at", "device", "out_dir")}
        cfg = read_saved_config(TrainConfig, Path(cfg.out_dir) / "config.json", keep)
    check_config(cfg)
    with processes(cfg.device) as (rank, world, device):
        torch.manual_seed(cfg.seed + rank)
        model, extra = None, {}
        if cfg.init:
            model, _, payload = start_from(cfg.init, device, cfg.dropout)
            extra = origin_of(cfg.init, payload)
        cfg = resolve(cfg, model.context_length if model else None, world)
        with rank_zero_first():  # process 0 trains the tokenizer and writes the token cache first
            tok, train_tokens, val_tokens = data.prepare_data(cfg)
        if model is None:
            mcfg = model_config(cfg.model, cfg.size, tok.vocab_size, cfg.seq_len, cfg.dropout)
            model = build_model(cfg.model, mcfg).to(device)
        extra.update(adapt_model(cfg, model))  # --adapter, LoRA, --grad-checkpoint
        dtype = pick_dtype(device, cfg.dtype)
        if rank == 0:
            what = f"{cfg.init} (continued)" if cfg.init else f"{cfg.model} {cfg.size}"
            print(f"{what}: {model.num_params() / 1e6:.2f}M parameters, vocab {tok.vocab_size}, "
                  f"context {cfg.seq_len}, {len(train_tokens):,} train / {len(val_tokens):,} val "
                  f"tokens, {device} {dtype}, "
                  f"{cfg.batch_size * cfg.seq_len * cfg.grad_accum * world:,} tokens per step"
                  + (f", {world} processes" if world > 1 else ""))
        stage = pretrain_stage(cfg, model, tok, train_tokens, val_tokens, dtype)
        return train_loop(cfg, model, tok, stage, extra)


# ---------------------------------------------------------------------------------------------
# The resource calculator (book ch. 6): what a run needs before you pay for it
# ---------------------------------------------------------------------------------------------
# name: (peak dense TFLOPS at 16-bit, memory GB, assumed on-demand price in USD per hour)
GPUS = {"T4": (65, 16, 0.35), "L4": (121, 24, 0.80), "A100": (312, 80, 1.80)}
ASSUMED_MFU = 0.35  # the share of peak a well-tuned small-model run reaches; T4s often do less


def meta_model(cfg, vocab_size):
    """The run's model built on the meta device: shapes only, no memory, works for any size."""
    if cfg.init:
        payload = torch.load(Path(cfg.init) / "model.pt", map_location="meta", weights_only=True,
                             mmap=True)
        arch, config = payload["arch"], payload["config"]
    else:
        arch = cfg.model
        config = model_config(cfg.model, cfg.size, vocab_size, cfg.seq_len or 256, cfg.dropout)
    with torch.device("meta"):
        return build_model(arch, config)


def training_memory(model, cfg, seq_len, rows=1, reference=None):
    """{what: bytes} a run of `cfg` needs on `model` (a meta model, to which cfg's LoRA adapters
    are added here). rows: sequences per example (DPO: 2, chosen and rejected); reference="copy":
    DPO's frozen copy of the weights (full fine-tuning; under LoRA the reference is the same
    weights with the adapters off, and --precompute-ref frees it)."""
    half = cfg.dtype in ("bf16", "fp16") or (cfg.dtype == "auto"
                                             and gpt.pick_device(cfg.device) == "cuda")
    total = model.num_params()
    if cfg.lora_rank:
        add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets,
                 cfg.lora_embeddings)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adapted_inputs = sum(m.weight.shape[1] for m in model.modules() if type(m) is LoRALinear)
    # Activations kept for backward, per layer and token: about 17 width-sized tensors (inputs of
    # norms, q/k/v, attention output, MLP in/out: Korthikanti et al. 2022, with fused attention so
    # no T x T score matrix), and with LoRA's dropout the dropped input of each adapted layer. LoRA
    # keeps as many as full fine-tuning: frozen layers must still pass gradients down to the
    # adapters below them. Checkpointing keeps each block's input only, and one block's
    # activations while that block is recomputed. Then the logits: fp32 logits, the log-probs
    # kept for backward and their gradient, 3 x 4 bytes per token and vocabulary entry.
    per_layer = 17 * model.width + (adapted_inputs // model.n_layers if cfg.lora_dropout else 0)
    if cfg.grad_checkpoint:
        kept = model.n_layers * model.width + per_layer
    else:
        kept = model.n_layers * per_layer
    tokens = cfg.batch_size * seq_len * rows
    activations = tokens * (kept * (2 if half else 4) + 12 * model.config.vocab_size)
    # Trained parameters: an fp32 master copy, its fp32 gradient, AdamW's two fp32 moments (16
    # bytes). Frozen ones (LoRA): only the weights, in the run's half precision on a GPU.
    frozen_bytes = 2 if half and cfg.lora_rank else 4
    weights = "weights (fp32 master)" if not cfg.lora_rank else \
        f"weights (frozen {'16' if frozen_bytes == 2 else '32'}-bit, adapters fp32)"
    memory = {weights: frozen_bytes * (model.num_params() - trained) + 4 * trained,
              "gradients (fp32)": 4 * trained, "optimizer (AdamW m and v, fp32)": 8 * trained,
              "activations (one micro-batch)": activations}
    if reference == "copy":
        memory["DPO reference (frozen copy, fp32)"] = 4 * total
    return memory, trained


def step_flops(model, cfg, length, rows=1, reference=None):
    """(tokens, FLOPs) of one optimizer step of `cfg`'s run on rows of `length` tokens."""
    tokens = cfg.batch_size * length * cfg.grad_accum * rows
    # FLOPs per token: the forward pass 2N; the backward pass 2N for the activations' gradients and
    # 2N for the weights', which frozen weights skip (LoRA: ~4N in all; the adapters' own are
    # negligible). Checkpointing runs every forward twice, a live DPO reference once more: +2N each.
    # Attention itself (flops_per_token's 12 * layers * width * context) grows alike, by 4 a pass.
    passes = 3 - bool(cfg.lora_rank) + bool(cfg.grad_checkpoint) + bool(reference)
    attention = 4 * (3 + bool(cfg.grad_checkpoint) + bool(reference))
    active = model.num_params(active=True)
    return tokens, (2 * passes * active
                    + attention * model.n_layers * model.width * length) * tokens


def resource_report(model, cfg, seq_len, title, rows=1, reference=None, mean_len=None):
    """Memory, FLOPs, and time and cost on common GPUs of `cfg`'s run on `model` (a meta model;
    rows and reference: see training_memory, reference="live" for a reference forward each step
    that costs no memory). mean_len: the average row of the data (SFT and DPO pad a batch to its
    longest row only): compute and time follow it, memory still allows rows of seq_len.
    Returns (text, figures)."""
    total, active = model.num_params(), model.num_params(active=True)
    tokens_step, flops_step = step_flops(model, cfg, round(mean_len or seq_len), rows, reference)
    memory, trained = training_memory(model, cfg, seq_len, rows, reference)  # adds LoRA to model
    length = f"{mean_len:.0f} on average" if mean_len else seq_len
    lines = [f"resource calculator: {title}, vocab {model.config.vocab_size}, context {seq_len}",
             f"  parameters           {total:,}"
             + (f" ({active:,} active per token)" if active != total else ""),
             *([f"  trained (LoRA)       {trained:,} ({trained / (total + trained):.2%}): "
                f"rank {cfg.lora_rank}, {cfg.lora_targets}"] if cfg.lora_rank else []),
             *[f"  {k:<33}{v / 2**30:8.2f} GiB" for k, v in memory.items()],
             f"  total (training)                 {sum(memory.values()) / 2**30:8.2f} GiB"
             + ("   (gradient checkpointing)" if cfg.grad_checkpoint else ""),
             f"  tokens per step      {tokens_step:,} ({cfg.batch_size} x {length} x "
             f"{cfg.grad_accum} accumulation" + (f" x {rows} rows" if rows > 1 else "") + ")",
             f"  FLOPs per step       {flops_step:.3e}   "
             f"({cfg.max_steps:,} steps: {flops_step * cfg.max_steps:.3e})",
             f"  estimated time and cost for {cfg.max_steps:,} steps at {ASSUMED_MFU:.0%} of peak "
             f"(assumed on-demand prices):"]
    for name, (tflops, mem_gb, price) in GPUS.items():
        hours = flops_step * cfg.max_steps / (tflops * 1e12 * ASSUMED_MFU) / 3600
        fits = ("fits" if sum(memory.values()) < mem_gb * 2**30 * 0.9
                else "does NOT fit: lower --batch-size")
        lines.append(f"    {name:<5} {tflops:>4} TFLOPS  {hours:8.2f} h  ${hours * price:8.2f}   "
                     f"{mem_gb} GB: {fits}")
    if gpt.pick_device(cfg.device) == "cpu":  # no GPU here: the time on this machine's CPU too
        peak = peak_flops("cpu", torch.float32)
        minutes = flops_step * cfg.max_steps / (peak * ASSUMED_MFU) / 60
        lines.append(f"    this CPU: {peak / 1e9:.0f} GFLOP/s on a matmul "
                     f"({torch.get_num_threads()} threads), {minutes:.1f} min at "
                     f"{ASSUMED_MFU:.0%} of it")
    return "\n".join(lines), {"params": total, "active_params": active, "trained_params": trained,
                              "memory": memory, "tokens_per_step": tokens_step,
                              "flops_per_step": flops_step}


def dry_run(cfg):
    """The resource calculator for train.py's flags (refusing what the run itself would refuse)."""
    check_lora(cfg)
    model = meta_model(cfg, cfg.vocab_size)
    cfg = resolve(cfg, model.context_length if cfg.init else None)
    title = f"preset {cfg.preset or '(none)'}, " + (f"--init {cfg.init}" if cfg.init
                                                     else f"{cfg.model} {cfg.size}")
    return resource_report(model, cfg, cfg.seq_len, title)


def main(argv=None, **overrides):
    """Train with flags from argv (or sys.argv) and keyword overrides (for notebooks)."""
    cfg = parse_config(TrainConfig, argv, PRESETS, overrides)
    if cfg.dry_run:
        print(dry_run(cfg)[0])
        return None
    return pretrain(cfg)


if __name__ == "__main__":
    run_cli(main)
