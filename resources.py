"""resources.py: the resource calculator (book chapter 6): what a training run needs before you
pay for it (memory, FLOPs, hours and cost on common GPUs), and what it reaches while it runs
(tokens per second and MFU, the share of the device's peak FLOP/s).

    python train.py --preset a100-base --dry-run              # pre-training: the calculator alone
    python sft.py --init out/smollm --preset t4-lora --dry-run   # fine-tuning, LoRA included
    python dpo.py --init out/sft --dry-run                    # DPO: two rows a pair, a reference

What it holds, in reading order: the FLOPs of a training token (one rule, for frozen weights and
extra forward passes too) -> peak FLOP/s and the Meter the training loop logs with -> the run's
model on the meta device (shapes only) -> memory -> the FLOPs of one step -> the report.

Imports: gpt.py (the device), rundir.py (the models), lora.py (a LoRA run's adapters, counted on
the meta model). Imported by train.py (the Meter, and its --dry-run), sft.py and dpo.py (their
--dry-run).
"""
import time
from pathlib import Path

import torch

import gpt
from lora import LoRALinear, add_lora
from rundir import build_model


# ---------------------------------------------------------------------------------------------
# FLOPs, peak FLOP/s, and the speed of the running loop
# ---------------------------------------------------------------------------------------------
def flops_per_token(model, seq_len, forwards=1, frozen=None):
    """Training FLOPs per token. The matmuls: a forward pass costs 2N (N the parameters one token
    uses), the backward pass 2N for the activations' gradients and 2N for the weights', which a
    frozen weight (LoRA) needs none of: 6 per trained weight, 4 per frozen one. Then the attention
    scores and values, 12 * layers * width * context, 4 a pass (the same accounting as PaLM's MFU;
    minimind.flops_per_token prints it per named size). forwards: forward passes a step makes
    (gradient checkpointing runs each twice, DPO's live reference one more): each adds 2N and
    4 * layers * width * context. frozen: the parameters that get no gradient (default: those of
    `model` that are frozen now)."""
    active, total = model.num_params(active=True), model.num_params()
    if frozen is None:
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    frozen = frozen * active / total  # the frozen share of the parameters a token uses
    return ((2 * forwards + 4) * active - 2 * frozen
            + 4 * (forwards + 2) * model.n_layers * model.width * seq_len)


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


# ---------------------------------------------------------------------------------------------
# The calculator: the memory, FLOPs, time and cost of a run, before it starts
# ---------------------------------------------------------------------------------------------
# name: (peak dense TFLOPS at 16-bit, memory GB, assumed on-demand price in USD per hour)
GPUS = {"T4": (65, 16, 0.35), "L4": (121, 24, 0.80), "A100": (312, 80, 1.80)}
ASSUMED_MFU = 0.35  # the share of peak a well-tuned small-model run reaches; T4s often do less


def meta_model(init, arch=None, config=None):
    """The model of run directory `init` or, when init is empty, a new `arch` model of `config`
    (train.py's model_config), built on the meta device: shapes only, no memory, any size."""
    if init:
        payload = torch.load(Path(init) / "model.pt", map_location="meta", weights_only=True,
                             mmap=True)
        arch, config = payload["arch"], payload["config"]
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
    """(tokens, FLOPs) of one optimizer step of `cfg`'s run on rows of `length` tokens, counted by
    flops_per_token on `model` (a meta model without adapters yet)."""
    tokens = cfg.batch_size * length * cfg.grad_accum * rows
    # Under LoRA every weight of the model is frozen (the adapters' own FLOPs are negligible).
    # Checkpointing runs every forward twice, a live DPO reference once more.
    forwards = 1 + bool(cfg.grad_checkpoint) + bool(reference)
    frozen = model.num_params() if cfg.lora_rank else 0
    return tokens, flops_per_token(model, length, forwards, frozen) * tokens


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

