"""train.py: pre-train a small language model (book chapters 6 and 8), with the one training loop
that pre-training, supervised fine-tuning (sft.py) and DPO (dpo.py) share.

    python train.py                          # CPU: a tiny MiniMind on Python's own docs, minutes
    python train.py --preset t4-small        # a free Colab T4: minimind2-small on TinyStories
    python train.py --init out/smollm --data notes.txt  # continue pre-training any run on your text
    python train.py --preset a100-base --dry-run          # the resource calculator, no training
    torchrun --nproc_per_node=2 train.py ...  # several GPUs (or CPU processes) with DDP

Reading order: the config and presets -> the model (a named size, or --init from any run
directory) -> THE TRAINING LOOP: several processes, one optimizer step, the loop itself ->
pre-training as a stage of that loop (its batches, its loss, its evaluation) -> main.

Pre-training, SFT and DPO are one loop with three loss functions. Each stage hands the loop a
Stage (how to make a batch, what the loss is averaged over, the loss, an evaluation); the loop does
gradient accumulation, DDP, mixed precision, torch.compile, the non-finite guard, checkpoints,
exact resume, --halt-at, Ctrl-C, the progress bar, log.jsonl and loss.svg once, for all three.

Imports: rundir.py (the run directory, flags, devices, errors), gpt.py and minimind.py (the
models; gpt.py's optimizer and learning-rate schedule, chapter 2's, serve here too), data.py (the
pre-training text, its tokens, the held-out figures), and the machinery the chapter uses without
teaching it: lora.py (LoRA, chapter 9: any stage can fine-tune through it), resources.py (the
resource calculator of --dry-run, tokens/s and MFU), interrupt.py (Ctrl-C between steps).
"""
import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import data
import gpt
import lora
import minimind
import resources
from interrupt import ctrl_c_between_steps
from rundir import (UserError, autocast, build_model, check_device, check_positive, load_run,
                    option, parse_config, pick_dtype, read_saved_config, refuse_to_overwrite,
                    run_cli, save_checkpoint, load_checkpoint, RunLog, write_json, write_loss_svg)


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
    net = wrap(model, cfg.compile, device)
    meter = resources.Meter(model, stage.seq_len, dtype, master)  # tokens/s and MFU
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
        state = {**state, "trainable": lora.trained_tensors(model),
                 "base": extra["base"]["sha256"]}
    save_checkpoint(out, model, tok, optimizer, scaler, step, state, extra,
                    lora.merged_state_dict(model))
    if cfg.save_adapter:
        lora.save_adapter(out / "adapter.pt", model, {**extra, "step": step})
    write_loss_svg(out / "log.jsonl", out / "loss.svg")


def print_if(master, text):
    if master:
        tqdm.write(text)


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
    lora.check_lora(cfg)
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
        extra.update(lora.adapt_model(cfg, model, rank == 0))  # --adapter, LoRA, checkpointing
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


def dry_run(cfg):
    """The resource calculator for train.py's flags (refusing what the run itself would refuse)."""
    lora.check_lora(cfg)
    config = None if cfg.init else model_config(cfg.model, cfg.size, cfg.vocab_size,
                                                 cfg.seq_len or 256, cfg.dropout)
    model = resources.meta_model(cfg.init, cfg.model, config)
    cfg = resolve(cfg, model.context_length if cfg.init else None)
    title = f"preset {cfg.preset or '(none)'}, " + (f"--init {cfg.init}" if cfg.init
                                                     else f"{cfg.model} {cfg.size}")
    return resources.resource_report(model, cfg, cfg.seq_len, title)


def main(argv=None, **overrides):
    """Train with flags from argv (or sys.argv) and keyword overrides (for notebooks)."""
    cfg = parse_config(TrainConfig, argv, PRESETS, overrides)
    if cfg.dry_run:
        print(dry_run(cfg)[0])
        return None
    return pretrain(cfg)


if __name__ == "__main__":
    run_cli(main)
