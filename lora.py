"""lora.py: LoRA, low-rank adapters that fine-tune a large model by training two thin matrices
beside each layer (the machinery of book chapter 9; every training stage can use it).

    python sft.py --init out/smollm --lora-rank 16            # LoRA on every linear layer
    python sft.py --init out/smollm --lora-rank 16 --save-adapter   # also adapter.pt, a few MB
    python sft.py --init out/smollm --adapter out/sft/adapter.pt --max-steps 0   # merge one in

What it holds, in reading order: the math of LoRA -> the adapted layers (LoRALinear,
LoRAEmbedding) -> putting them into a model (add_lora) -> merging them back into plain weights
(merged_state_dict for model.pt, merge_lora in place) -> the adapters switched off (DPO's
reference) -> LoRA runs: the base they sit on (weights_fingerprint), the adapter file
(save_adapter, apply_adapter), the model setup every stage shares (adapt_model), frozen weights
in 16 bits (keep_frozen_in), the flags' checks (check_lora).

Imports: rundir.py (errors, the run directory's writers, devices) and torch. Imported by
train.py (the loop's checkpoints, continued pre-training), sft.py and dpo.py (fine-tuning, DPO's
reference), resources.py (the calculator counts the adapters of a real model).
"""
import contextlib
import dataclasses
import hashlib
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from rundir import UserError, arch_of, atomic_write, pick_dtype, unwrap


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
def lora_delta(lora_A, lora_B, scale):
    """scale B A in fp32, for A [r, in] and B [out, r]: the change merging adds to W [out, in]."""
    return scale * (lora_B.float() @ lora_A.float())  # [out, in]


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
        return lora_delta(self.lora_A, self.lora_B, self.scale)

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


def apply_adapter(model, path):
    """Merge a saved adapter.pt into `model`, a plain model of the run it was trained on (checked:
    its weights_fingerprint must be the one the adapter records). Each adapted weight W becomes
    W + (alpha/r) B A in place, in W's dtype, with no LoRA layer built: the model stays plain,
    its parameters the same tensors. A tied head and embedding share one weight and one A, B
    (adapter.pt holds them once), so they are merged once and stay tied."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: cannot be loaded as an adapter ({str(e).splitlines()[0]})")
    if not isinstance(payload, dict) or payload.get("format") != "slm-adapter":
        raise UserError(f"{path}: not an slm adapter file (sft.py ... --save-adapter writes one)")
    base, fingerprint = payload["base"], weights_fingerprint(model)
    if base["sha256"] != fingerprint:
        raise UserError(f"{path}: trained on the weights of {base['run']} (sha256 "
                        f"{base['sha256'][:12]}), not on these (sha256 {fingerprint[:12]}); "
                        f"apply it to the run it was trained on")
    scale, adapters = payload["lora"]["alpha"] / payload["lora"]["rank"], payload["weights"]
    weights = model.state_dict(keep_vars=True)  # every name, a tied head's too
    with torch.no_grad():
        for name in [k.removesuffix(".lora_A") for k in adapters if k.endswith(".lora_A")]:
            w = weights[f"{name}.weight"]
            delta = lora_delta(adapters[f"{name}.lora_A"].to(w.device),
                               adapters[f"{name}.lora_B"].to(w.device), scale)
            w.copy_((w.float() + delta).to(w.dtype))
    return model


def adapt_model(cfg, model, master=True):
    """The model setup every stage shares, once its start weights are loaded: --adapter merged in,
    then LoRA (--lora-rank) with, on a GPU in fp16/bf16, the frozen weights kept in that dtype (a
    frozen weight needs no fp32 master copy), then --grad-checkpoint. Returns what model.pt records
    about it: the LoRA settings and the base run's identity ({} for full fine-tuning). master: this
    process prints the summary (train.is_master(): one line, not one per DDP process)."""
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
        if master:
            tqdm.write(f"LoRA rank {cfg.lora_rank}, alpha {cfg.lora_alpha:g}, on {len(names)} "
                       f"layers ({cfg.lora_targets}): {trained:,} parameters train, "
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

