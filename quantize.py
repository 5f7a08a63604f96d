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

Reading order: the quantizer (scale, round, clamp) and its error bound -> the layers that run from
int8 weights (int8.py: a readable reference path and a fast CPU kernel, proven equal in the tests;
an int8 embedding table that the tied output head shares) -> swapping a model's layers and the
error table -> writing an INT8 run directory (rundir.load_run opens it again) -> the command line.

Imports: int8.py (the int8 layers), rundir.py (run directories, flags, errors) and data.py (the
validation text and its perplexity, as train.py measures it).
"""
import os
import shutil
import types
from dataclasses import dataclass
from pathlib import Path

import torch

import data
import int8
import rundir
from rundir import UserError, option, parse_config, run_cli


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


# The inverse, w_hat = q * scale row by row, is int8.dequantize: the int8 layers run from it (it is
# their reference path), so it lives with them in int8.py.
dequantize = int8.dequantize


# ---------------------------------------------------------------------------------------------
# 2. Layers that run from int8 weights (int8.py)
# ---------------------------------------------------------------------------------------------
# int8.QuantizedLinear keeps q and the scales as buffers and computes y = x @ (q * scale)^T + b in
# one of two ways: the reference path dequantizes and does an ordinary float matmul (clear, any
# device); the fast path (CPU) runs torch's weight-only int8 kernel on the int8 numbers themselves
# and applies the float32 scales to its output, x @ (q * s)^T = (x @ q^T) * s, reading a quarter
# of fp32's bytes. int8.QuantizedEmbedding holds the token table the same way, one scale per
# token's row, and those rows are exactly the output channels of a tied head, so
# int8.TiedQuantizedHead reuses the same int8 table: quantized once, stored once.


# ---------------------------------------------------------------------------------------------
# 3. Swapping the layers of a model
# ---------------------------------------------------------------------------------------------
def error_row(name, w, q, scale):
    """How far the dequantized weight is from the float one: max |w - w_hat|, relative error
    ||w - w_hat|| / ||w|| (Frobenius), and max |w - w_hat| / (scale / 2), which the bound keeps
    <= 1."""
    w = w.detach().float()
    err = (w - dequantize(q, scale)).abs()
    return {"layer": name, "shape": list(w.shape), "max_abs_err": err.max().item(),
            "rel_err": (err.norm() / w.norm().clamp(min=1e-30)).item(),
            "bound_ratio": (err / (scale[:, None] / 2)).max().item()}


def quantize_model(model, include_embeddings=False):
    """Replace, in place, every nn.Linear of the model except the output head by a QuantizedLinear
    made with quantize_per_channel; with include_embeddings, the token embedding and the head too
    (quantized once if they are tied). Returns the per-layer error rows. Norms, position embeddings
    and biases stay float. Which layers are swapped is int8.swap_layers's rule, the same one
    rundir.load_run follows when it opens the run again."""
    swapped = int8.swap_layers(model, include_embeddings, quantize_per_channel)
    return [error_row(name, w, layer.weight_int8, layer.scale) for name, w, layer in swapped]


# ---------------------------------------------------------------------------------------------
# 4. Writing an INT8 run directory
# ---------------------------------------------------------------------------------------------
def copy_atomic(src, dst):
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def write_int8_run(src_dir, out_dir, model, payload, include_embeddings):
    """model.pt with the int8 state_dict and payload["quantized"], plus the source's tokenizer,
    config, log and loss picture. train_state.pt is not copied: it holds the float optimizer's
    state, and an INT8 model is for inference, not for more training."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "chat_template.json", "config.json", "log.jsonl", "loss.svg"):
        if (src_dir / name).exists():
            copy_atomic(src_dir / name, out_dir / name)
    new = {**payload, "model": model.state_dict(),
           "quantized": {"scheme": int8.SCHEME, "include_embeddings": include_embeddings,
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
