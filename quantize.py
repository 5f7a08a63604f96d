"""quantize.py: INT8 weights, one scale per output channel, written by hand (book chapter 11).

    python quantize.py out/dpo                          # -> out/dpo-int8
                                                        # (embedding and head stay float)
    python quantize.py out/dpo --include-embeddings     # the embedding table
                                                        # (and the tied head) too
    python quantize.py out/pretrain --out /tmp/p8 --data my.txt   # perplexity measured on your text

A float32 weight takes 4 bytes; an int8 one takes 1. Every nn.Linear weight of the model is
replaced by int8 numbers plus one float scale per output row, the layer runs straight from them,
and the new run directory holds the int8 tensors on disk. Norms (and biases) stay float: they are
tiny and sensitive. The command prints a per-layer error table and the perplexity before and after.

Reading order: the quantizer (scale, round, clamp) and its error bound -> a Linear that runs from
int8 weights (a readable reference path and a fast CPU kernel, proven equal in the tests) -> an
int8 embedding table that the tied output head shares -> swapping a model's layers -> writing an
INT8 run directory (rundir.load_run opens it again, with prepare_int8_skeleton) -> the command line.

Imports: rundir.py (run directories, flags, errors) and data.py (the validation text and its
perplexity, as train.py measures it).
"""
import functools
import os
import shutil
import types
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import rundir
from rundir import UserError, option, parse_config, run_cli

SCHEME = "int8-per-channel-symmetric"


# ---------------------------------------------------------------------------------------------
# 1. The quantizer
# ---------------------------------------------------------------------------------------------
def quantize_per_channel(w):
    """w: float [N, K] (N output channels) -> (q int8 [N, K], scale float32 [N]).

    Symmetric, one scale per output channel (row):

        scale[n] = max_k |w[n, k]| / 127
        q[n, k]  = clamp(round(w[n, k] / scale[n]), -127, 127)
        w_hat    = q * scale                    (dequantized weight)

    Symmetric: 0.0 maps to the integer 0 exactly, and no zero-point is needed, so the matmul is
    just x @ q^T times the scales. -128 is left out so the range is the same on both sides.
    Per channel: one outlier row no longer spoils the resolution of every other row, as one scale
    for the whole matrix would.

    Error bound. round() moves a number by at most 1/2, so |w/scale - q| <= 1/2, i.e.

        |w - w_hat| <= scale / 2      elementwise,

    and the clamp never bites, because |w/scale| <= 127 by the choice of scale. An all-zero row
    would give scale 0 and 0/0; its scale is set to 1 instead (any positive value: q is 0 anyway).
    """
    w = w.detach().float()
    scale = w.abs().amax(dim=1) / 127.0                      # [N]
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero row: avoid 0/0
    q = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)  # [N, K]
    return q, scale


def dequantize(q, scale):
    """int8 [N, K] and scales [N] -> float32 [N, K]: w_hat = q * scale, row by row."""
    return q.float() * scale[:, None]


# ---------------------------------------------------------------------------------------------
# 2. A linear layer that runs from int8 weights
# ---------------------------------------------------------------------------------------------
# The fast CPU path: torch's weight-only int8 matmul, y = x @ q^T * scales, which reads the int8
# weight directly (4x less memory traffic than fp32, and decoding one token at a time is bound by
# memory traffic). It needs in_features to be a multiple of 16 (other sizes crash or give
# garbage), so it is used only there. Why this kernel, of those torch 2.13 offers on a CPU
# (tests/benchmarks/bench_decode.py --part kernels,accuracy: every matrix of minimind2-small, one
# thread, against nn.Linear in fp32; agreement: teacher-forced greedy picks of a trained model):
#
#   _weight_int8pack_mm, bf16 activations   2.3x, 99.9% agree: the fastest that stays accurate
#   _weight_int8pack_mm, fp32 activations   0.3x: no fast kernel for fp32 activations
#   quantized.linear_dynamic (fbgemm, what  3.1x, but it rounds the activations to 7 bits too:
#   quantize_dynamic uses)                  98.7% agree, under the 99% this project asks
#   _int_mm (int8 x int8 -> int32)          quantized activations too, and slow for one row
#
# Activations lose a little precision in bf16 (8 bits of mantissa); the tests bound the difference
# to the reference path.
HAS_INT8_KERNEL = hasattr(torch, "_weight_int8pack_mm")


def int8_linear(x, q, scale, bias=None, fast=True):
    """y = x @ (q * scale)^T + bias, for x [..., K], q int8 [N, K], scale [N].

    Reference path: dequantize, then an ordinary float matmul (clear, and works on any device).
    Fast path (CPU): the int8 kernel with bf16 activations and unit scales, then the float32
    scales applied to its output: x @ (q * s)^T = (x @ q^T) * s, since s is one number per output
    column. Scaling afterwards in fp32 keeps the scales exact (a bf16 scale would be off by up to
    0.4%, the same way for a whole channel)."""
    if fast and HAS_INT8_KERNEL and x.device.type == "cpu" and q.size(1) % 16 == 0:
        x2 = x.reshape(-1, x.size(-1)).to(torch.bfloat16).contiguous()           # [M, K]
        y = torch._weight_int8pack_mm(x2, q, unit_scales(q.size(0))) * scale      # [M, N], fp32
        y = y.reshape(*x.shape[:-1], q.size(0))                                   # [..., N]
        if bias is not None:
            y = y + bias.float()
        return y.to(x.dtype)
    return F.linear(x, dequantize(q, scale).to(x.dtype), None if bias is None else bias.to(x.dtype))


@functools.lru_cache(maxsize=64)
def unit_scales(n):
    """n ones in bf16: the kernel's own scales, made once per size instead of once per call."""
    return torch.ones(n, dtype=torch.bfloat16)


class Int8ForDecoding:
    """minimind's decoding path fuses the layers that read one input (q, k, v; gate, up): their
    int8 rows stacked into one matrix, one kernel call. Its input is always fp32 [N, K], so the
    fast path is int8_linear's without the reshapes: three tensor ops (to bf16, the kernel, the
    scales), which matters at 33 matmuls a token. The float `dtype` minimind asks for does not
    apply: these weights stay int8."""

    def __init__(self, layers, q, scale, bias):
        self.q, self.scale, self.bias = q, scale, bias
        kernel_fits = HAS_INT8_KERNEL and q.device.type == "cpu" and q.size(1) % 16 == 0
        self.fast = kernel_fits and all(layer.fast for layer in layers)  # set_fast later: no effect
        self.ones = torch.ones(q.size(0), dtype=torch.bfloat16, device=q.device)

    def __call__(self, x):
        if not self.fast:
            return int8_linear(x, self.q, self.scale, self.bias, fast=False)
        y = torch._weight_int8pack_mm(x.to(torch.bfloat16), self.q, self.ones) * self.scale  # fp32
        return y if self.bias is None else y + self.bias


class QuantizedLinear(nn.Module):
    """nn.Linear with an int8 weight and a float32 scale per output channel, stored as buffers
    (they are not trained, and buffers are what state_dict saves besides parameters)."""

    def __init__(self, in_features, out_features, bias=False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8",
                             torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self.fast = True  # False: always the reference path (the tests compare the two)

    @classmethod
    def from_float(cls, linear):
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        layer.weight_int8, layer.scale = quantize_per_channel(linear.weight)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach().float())
        return layer

    def forward(self, x):
        return int8_linear(x, self.weight_int8, self.scale, self.bias, self.fast)

    @staticmethod
    def for_decoding(layers, dtype):
        """The fused form minimind.fuse_linears asks for (see Int8ForDecoding)."""
        bias = [layer.bias for layer in layers]
        bias = None if bias[0] is None else torch.cat(bias).detach()
        return Int8ForDecoding(layers, torch.cat([layer.weight_int8 for layer in layers]),
                               torch.cat([layer.scale for layer in layers]), bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


class QuantizedEmbedding(nn.Module):
    """An int8 embedding table with one scale per row (per token): a lookup gathers the rows and
    dequantizes only those, q[idx] * scale[idx]. The rows of the table are exactly the output
    channels of a tied lm_head, so the same int8 numbers and scales serve both
    (TiedQuantizedHead)."""

    def __init__(self, num_embeddings, embedding_dim):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("weight_int8",
                             torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings))

    @classmethod
    def from_float(cls, embedding):
        layer = cls(embedding.num_embeddings, embedding.embedding_dim)
        layer.weight_int8, layer.scale = quantize_per_channel(embedding.weight)
        return layer

    @property
    def weight(self):
        """The dequantized float table. minimind.new_kv_cache reads embed_tokens.weight
        (for its device and dtype, once per call), so the quantized table answers with its float
        view."""
        return dequantize(self.weight_int8, self.scale)

    def forward(self, idx):
        return self.weight_int8[idx].float() * self.scale[idx].unsqueeze(-1)  # [..., dim]


class TiedQuantizedHead(nn.Module):
    """The output head tied to a QuantizedEmbedding: logits = x @ (q * scale)^T with the
    embedding's own int8 table, so the matrix is quantized once and stored once."""

    def __init__(self, embedding):
        super().__init__()
        self.embedding = embedding  # the same module object: its buffers are shared, not copied
        self.fast = True

    def forward(self, x):
        return int8_linear(x, self.embedding.weight_int8, self.embedding.scale, None, self.fast)

    def for_decoding(self, layers, dtype):
        return Int8ForDecoding(layers, self.embedding.weight_int8, self.embedding.scale, None)


# ---------------------------------------------------------------------------------------------
# 3. Swapping the layers of a model
# ---------------------------------------------------------------------------------------------
# class name -> module path
TOKEN_EMBEDDING = {"MiniMind": "embed_tokens", "GPT": "transformer.wte"}


def error_row(name, w, q, scale):
    """How far the dequantized weight is from the float one: max |w - w_hat|, relative error
    ||w - w_hat|| / ||w|| (Frobenius), and max |w - w_hat| / (scale / 2), which the bound keeps
    <= 1."""
    w = w.detach().float()
    err = (w - dequantize(q, scale)).abs()
    return {"layer": name, "shape": list(w.shape), "max_abs_err": err.max().item(),
            "rel_err": (err.norm() / w.norm().clamp(min=1e-30)).item(),
            "bound_ratio": (err / (scale[:, None] / 2)).max().item()}


def replace_module(model, name, new):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def quantize_model(model, include_embeddings=False):
    """Replace, in place, every nn.Linear of the model except the output head by a QuantizedLinear;
    with include_embeddings, the token embedding and the head too (quantized once if they are tied).
    Returns the per-layer error rows. Norms, position embeddings and biases stay float."""
    rows = []
    linears = [(n, m) for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and n != "lm_head"]
    for name, linear in linears:
        layer = QuantizedLinear.from_float(linear)
        rows.append(error_row(name, linear.weight, layer.weight_int8, layer.scale))
        replace_module(model, name, layer)
    if include_embeddings:
        emb_name = TOKEN_EMBEDDING[type(model).__name__]
        emb, head = model.get_submodule(emb_name), model.lm_head
        tied = head.weight is emb.weight
        q_emb = QuantizedEmbedding.from_float(emb)
        rows.append(error_row(emb_name + (" (+ tied lm_head)" if tied else ""), emb.weight,
                              q_emb.weight_int8, q_emb.scale))
        if tied:
            q_head = TiedQuantizedHead(q_emb)
        else:
            q_head = QuantizedLinear.from_float(head)
            rows.append(error_row("lm_head", head.weight, q_head.weight_int8, q_head.scale))
        replace_module(model, emb_name, q_emb)
        replace_module(model, "lm_head", q_head)
    return rows


def set_fast(model, fast):
    """Switch every int8 layer of the model between the fast kernel and the reference path."""
    for m in model.modules():
        if hasattr(m, "fast"):
            m.fast = fast
    return model


# ---------------------------------------------------------------------------------------------
# 4. Run directories: load any of them, write an INT8 one
# ---------------------------------------------------------------------------------------------
def prepare_int8_skeleton(model, quantized, run_dir):
    """Make a float model (just built: right shapes, random weights) ready to receive an INT8 run's
    saved tensors: its layers swapped exactly as quantize_model swapped them when the run was
    written. rundir.load_run calls this for a model.pt with a "quantized" entry."""
    if quantized.get("scheme") != SCHEME:
        raise UserError(f"{Path(run_dir) / 'model.pt'}: unknown quantization scheme "
                        f"{quantized.get('scheme')!r}")
    quantize_model(model, quantized["include_embeddings"])


def copy_atomic(src, dst):
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def write_int8_run(src_dir, out_dir, model, payload, include_embeddings):
    """model.pt with the int8 state_dict and payload["quantized"], plus the source's tokenizer,
    config, log and loss picture. train_state.pt is not copied: it holds the float optimizer's
    state, and an INT8 model is for inference, not for more training."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "config.json", "log.jsonl", "loss.svg"):
        if (src_dir / name).exists():
            copy_atomic(src_dir / name, out_dir / name)
    new = {**payload, "model": model.state_dict(),
           "quantized": {"scheme": SCHEME, "include_embeddings": include_embeddings,
                         "source": str(src_dir)}}
    rundir.atomic_write(out_dir / "model.pt", lambda f: torch.save(new, f))


# ---------------------------------------------------------------------------------------------
# 5. The command line
# ---------------------------------------------------------------------------------------------
@dataclass
class QuantizeConfig:
    run_dir: str = option("out/dpo", "run directory to quantize (float)", positional="?")
    out: str = option("", "run directory to write (default: RUN_DIR-int8)")
    include_embeddings: bool = option(False, "quantize the token embedding (and the output "
                                             "head tied to it) too")
    data: str = option("python-docs", "text for the perplexity before/after, as train.py's --data "
                                      "(its validation split)")
    val_fraction: float = option(0.05, "share of --data held out (as in train.py)")
    eval_batches: int = option(8, "validation batches for perplexity (0: skip it)")
    batch_size: int = option(8, "sequences per validation batch")
    device: str = option("cpu", "where to measure perplexity: cpu | cuda | mps")


def validation_perplexity(model, tok, cfg, device):
    """Perplexity on --data's validation split, with data.evaluate (summed NLL / token count), the
    same definition eval.py reports, on the same evenly spaced windows before and after."""
    data_cfg = types.SimpleNamespace(data=cfg.data,
                                     tokenizer=str(Path(cfg.run_dir) / "tokenizer.json"),
                                     vocab_size=tok.vocab_size, val_fraction=cfg.val_fraction)
    _, _, val = data.prepare_data(data_cfg)
    seq_len = min(model.context_length, len(val) - 1)
    if seq_len < 2:
        raise UserError(f"{cfg.data}: only {len(val)} validation tokens; "
                        "too few to measure perplexity")
    windows = data.eval_windows(val, seq_len, cfg.batch_size, cfg.eval_batches)
    return data.evaluate(model, windows, data.byte_lengths(tok), device, torch.float32)


def main(argv=None, **overrides):
    """Quantize RUN_DIR into a new run directory; returns the error rows and the perplexities."""
    cfg = parse_config(QuantizeConfig, argv, None, overrides)
    rundir.check_positive(cfg, ("batch_size",))
    if cfg.eval_batches < 0:
        raise UserError(f"--eval-batches must not be negative; got {cfg.eval_batches}")
    src = Path(cfg.run_dir.rstrip("/\\") or cfg.run_dir)
    out = Path(cfg.out) if cfg.out else src.with_name(src.name + "-int8")
    model, tok, payload = rundir.load_run(src, "cpu")
    if payload.get("quantized"):
        raise UserError(f"{src / 'model.pt'}: already quantized ({payload['quantized']['scheme']})")
    if out.resolve() == src.resolve():
        raise UserError(f"--out {out} is the source run directory; choose another one")
    device = rundir.check_device(cfg.device)
    before = validation_perplexity(model.to(device), tok, cfg, device) if cfg.eval_batches else None

    rows = quantize_model(model.cpu(), cfg.include_embeddings)
    print(f"{'layer':<40}{'shape':>14}{'max |w - w_hat|':>17}{'relative':>11}{'/ (scale/2)':>13}")
    for r in rows:
        print(f"{r['layer']:<40}{'x'.join(map(str, r['shape'])):>14}{r['max_abs_err']:>17.3e}"
              f"{r['rel_err']:>11.2e}{r['bound_ratio']:>13.3f}")
    write_int8_run(src, out, model, payload, cfg.include_embeddings)
    # Measure the model as it was saved: loaded back from disk, the way eval.py and chat.py see it.
    model, _, _ = rundir.load_run(out, device)
    after = validation_perplexity(model, tok, cfg, device) if cfg.eval_batches else None

    size_before, size_after = (src / "model.pt").stat().st_size, (out / "model.pt").stat().st_size
    print(f"model.pt: {size_before / 2**20:.2f} MB -> {size_after / 2**20:.2f} MB "
          f"({size_after / size_before:.3f}x)"
          + (", embeddings included" if cfg.include_embeddings else ""))
    if before and after:
        print(f"validation perplexity: {before['val_ppl']:.3f} -> {after['val_ppl']:.3f} "
              f"({100 * (after['val_ppl'] / before['val_ppl'] - 1):+.2f}%), bits per byte "
              f"{before['val_bpb']:.4f} -> {after['val_bpb']:.4f}")
    print(f"wrote {out}")
    return {"out": str(out), "layers": rows, "before": before, "after": after,
            "size_before": size_before, "size_after": size_after}


if __name__ == "__main__":
    run_cli(main)
