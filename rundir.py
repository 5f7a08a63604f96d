"""rundir.py: the run directory, and the conventions every script shares (all chapters).

Every training script (train.py, sft.py, dpo.py) writes a run directory, and every script (eval.py,
quantize.py, chat.py, convert.py, and the training scripts' --init) reads one:

    model.pt         architecture, model config, weights, the stage (pretrain, sft or dpo), the
                     step, and, for an imported model, where it came from
    tokenizer.json   the tokenizer the model was trained with: a run directory is self-contained
    chat_template.json  the chat template's family and Jinja text (none: ChatML, as trained here)
    train_state.pt   optimizer, gradient scaler, RNG states, data position: what an exact
                     resume needs
    config.json      the script's config as it ran
    log.jsonl        one JSON object per logged step and per evaluation
    loss.svg         the curves a person looks at (open it in a browser)

This file holds what reads and writes those files, and the conventions every script follows. In
reading order: 1. errors -> 2. flags -> 3. device and precision -> 4. the models by name and
model.pt -> 5. checkpoints for an exact resume -> 6. the log and its picture.

Imports: bpe.py (the tokenizer, and UserError), chat_templates.py (a run's chat template), gpt.py
and minimind.py (the models by name), int8.py (the int8 layers an INT8 run directory, written by
quantize.py, is opened with), and decode.py (whether torch has the fp16 kernel its fast path
uses).
"""
import argparse
import contextlib
import dataclasses
import inspect
import json
import math
import os
import shutil
import sys
from pathlib import Path

import torch

import chat_templates
import decode
import gpt
import int8
import minimind
import sentencepiece_bpe
from bpe import UserError, jsonl_objects


# ---------------------------------------------------------------------------------------------
# 1. Errors: a user's mistake ends with one line "error: ...", exit status 2, no traceback
# ---------------------------------------------------------------------------------------------
# UserError (defined in bpe.py, which imports no script) is the one exception for a user's mistake:
# a missing file, a malformed line (named FILE:LINE), a bad flag value, weights that do not fit.
def run_cli(main_fn):
    """Call main_fn(); turn a UserError into one `error:` line and exit status 2."""
    try:
        return main_fn()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


# ---------------------------------------------------------------------------------------------
# 2. Flags: one dataclass per script, each field a flag; --preset fills defaults; flags win
# ---------------------------------------------------------------------------------------------
def in_notebook():
    """True inside a Jupyter kernel, whose own command line (-f kernel.json) is not for us."""
    return "ipykernel" in sys.modules


def option(default, help, **meta):
    """A config field with its --help text: `lr: float = option(1e-3, "peak learning rate")`.
    meta may add "positional" (an nargs, e.g. "?" for a RUN_DIR) or "short" (e.g. "-p")."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default),
                                 metadata={"help": help, **meta})
    return dataclasses.field(default=default, metadata={"help": help, **meta})


def field_type(f):
    """int, float or str: what argparse converts a dataclass field's flag to."""
    name = f.type if isinstance(f.type, str) else f.type.__name__
    return {"int": int, "float": float}.get(name, str)


def make_parser(cls, presets):
    """An argparse parser with one kebab-case flag per field of the dataclass `cls`, its help and
    default. A field's metadata may add "positional" (an nargs, e.g. "?" for a RUN_DIR) or "short"
    (e.g. "-p"). Defaults stay None here, so what the user typed can be told from a default."""
    epilog = None
    if presets:
        epilog = "presets:\n" + "\n".join(f"  {k:<11} {v[0]}" for k, v in presets.items())
    description = inspect.getdoc(sys.modules[cls.__module__]).split("\n")[0]
    parser = argparse.ArgumentParser(description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(cls):
        helptext = f.metadata.get("help", "")
        if f.default is not dataclasses.MISSING:
            helptext += f" (default: {f.default})"
        if "positional" in f.metadata:
            parser.add_argument(f.name, nargs=f.metadata["positional"], default=None, help=helptext)
            continue
        names = (["--" + f.name.replace("_", "-")]
                 + ([f.metadata["short"]] if "short" in f.metadata else []))
        if f.type in (bool, "bool"):
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, default=None,
                                help=helptext)
        else:
            parser.add_argument(*names, type=field_type(f), default=None, help=helptext)
    return parser


def parse_config(cls, argv=None, presets=None, overrides=None):
    """Build a config dataclass from defaults < preset < command-line flags < overrides.

    An unknown flag is an error (a typo must not be silently ignored), except in a notebook, whose
    kernel's own argv is not read at all, so `main()` works in a cell. `overrides` are keyword
    arguments from Python: main(max_steps=100)."""
    if argv is None and in_notebook():
        argv = []
    presets = presets or {}
    args, unknown = make_parser(cls, presets).parse_known_args(argv)
    if unknown[:1] == ["-f"]:  # Jupyter's "-f kernel.json", when a notebook passes sys.argv on
        unknown = unknown[2:]
    if unknown:
        raise UserError(f"unknown argument(s): {' '.join(unknown)} (see --help)")
    given = {k: v for k, v in vars(args).items() if v is not None and v != []}
    given.update(overrides or {})
    name = given.get("preset", "")
    if name and name not in presets:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(presets)}")
    values = dict(presets[name][1]) if name else {}
    values.update(given)
    bad = set(values) - {f.name for f in dataclasses.fields(cls)}
    if bad:
        raise UserError(f"unknown option(s): {', '.join(sorted(bad))}")
    return cls(**values)


def check_positive(cfg, names):
    """Each named flag must be at least 1: caught here, not deep inside torch."""
    for name in names:
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1; "
                            f"got {getattr(cfg, name)}")


def read_saved_config(cls, path, keep):
    """The config a run saved in config.json, with the fields in `keep` replaced (--resume)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file; nothing to resume")
    try:
        return cls(**{**json.loads(path.read_text()), **keep})
    except (json.JSONDecodeError, TypeError) as e:
        raise UserError(f"{path}: not a config this script wrote ({e})")


def refuse_to_overwrite(cfg):
    """A fresh run must not clobber a run directory that already holds a run."""
    if not cfg.resume and not cfg.overwrite and (Path(cfg.out_dir) / "model.pt").exists():
        raise UserError(f"{cfg.out_dir} already holds a run: --resume continues it, "
                        f"--overwrite starts again there, or choose another --out-dir")


# ---------------------------------------------------------------------------------------------
# 3. Device and precision
# ---------------------------------------------------------------------------------------------
def check_device(name):
    """gpt.pick_device (cuda, then mps, then cpu), refusing a device this machine lacks."""
    device = gpt.pick_device(name)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible to PyTorch here")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: Apple's MPS backend is not available here")
    return device


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_dtype(device, name="auto"):
    """bf16 where the GPU has it, fp16 (with a gradient scaler) on older GPUs like the T4,
    fp32 on CPU."""
    if name != "auto":
        if name not in DTYPES:
            raise UserError(f"--dtype must be one of auto, {', '.join(DTYPES)}; got {name!r}")
        return DTYPES[name]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def pick_inference_dtype(device, name="auto"):
    """The precision of the weights when generating text (chat.py's --dtype): by default the
    fastest one that keeps the model's greedy picks (tests/test_decode.py checks >= 99% agree).

    CPU: fp16 where torch has fbgemm's fp16 kernel (x86 builds): half the bytes of fp32 to read
    per token, the activations still fp32 (decode.FastLinear); 1.2-1.5x fp32's tokens/s on
    minimind2-small. bf16 has no such kernel on CPUs without bf16 instructions and runs slower than
    fp32 there. Elsewhere fp32. GPU: bf16 where it has it, else fp16. Apple's mps: fp16."""
    if name != "auto":
        return pick_dtype(device, name)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float16 if decode.HAS_FBGEMM_FP16 else torch.float32


def autocast(device, dtype):
    """Mixed precision: the weights stay as they are, matmuls run in dtype."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


# ---------------------------------------------------------------------------------------------
# 4. The models by name, model.pt, and opening a run directory
# ---------------------------------------------------------------------------------------------
ARCHS = {"minimind": (minimind.MiniMind, minimind.MiniMindConfig), "gpt": (gpt.GPT, gpt.GPTConfig)}


def build_model(arch, config):
    """A model from its architecture name and config dict (as model.pt stores them)."""
    if arch not in ARCHS:
        raise UserError(f"unknown architecture {arch!r} (this project has {', '.join(ARCHS)})")
    model_cls, config_cls = ARCHS[arch]
    return model_cls(config_cls(**config))


def arch_of(model):
    """The architecture name of a model (unwrapping DDP and torch.compile)."""
    model = unwrap(model)
    return next(name for name, (cls, _) in ARCHS.items() if isinstance(model, cls))


def unwrap(model):
    """The model itself, inside DDP (.module) and torch.compile (._orig_mod) wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def atomic_write(path, write):
    """Write through a temporary file, flush to disk, then rename: a killed run never leaves a
    half-written file where a good one was."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def read_jsonl(path, parse, what="conversations", hint="or use --data python-docs"):
    """parse(obj, "FILE:LINE") for every non-blank line of a .jsonl file, as a list. Bad JSON,
    or a parse that raises UserError, stops with `FILE:LINE: ...`. sft.py and dpo.py read their
    data with it, eval.py's task files (tasks.py) theirs."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file ({hint})")
    items = []
    with open(path, encoding="utf-8") as f:
        for lineno, obj in jsonl_objects(path, enumerate(f, 1)):
            items.append(parse(obj, f"{path}:{lineno}"))
    if not items:
        raise UserError(f"{path}: no {what} in this file")
    return items


def write_folder(out, fill):
    """Fill a new folder through a temporary one, renamed into place at the end: an export that
    fails half-way leaves nothing at `out`, and an --overwrite replaces the old folder only then."""
    out = Path(out)
    tmp, old = out.with_name(out.name + ".partial"), out.with_name(out.name + ".old")
    for folder in (tmp, old):
        shutil.rmtree(folder, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def save_model(run_dir, model, tokenizer, extra=None, weights=None):
    """model.pt and tokenizer.json of a model: see write_model_file. `weights`: the state_dict to
    write instead of the model's own (a LoRA run writes its adapters merged into the weights)."""
    model = unwrap(model)
    write_model_file(run_dir, arch_of(model), dataclasses.asdict(model.config),
                     model.state_dict() if weights is None else weights, tokenizer, extra)


def write_model_file(run_dir, arch, config, state, tokenizer, extra=None):
    """model.pt (architecture, config dict, weights: plain tensors and dicts, so weights_only
    loading works) and the tokenizer the model was trained with. `extra`: the stage, the step,
    where an imported model came from, an INT8 run's scheme."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {"format": "slm-run", "version": 1, "arch": arch, "config": dict(config),
               "model": state, **(extra or {})}
    atomic_write(run_dir / "model.pt", lambda f: torch.save(payload, f))
    tokenizer.save(run_dir / "tokenizer.json")  # bpe.py writes atomically too
    # the chat template travels with the tokenizer (ChatML, a run trained here's, has no file)
    text = chat_templates.as_json(getattr(tokenizer, "chat_template", None))
    if text:
        atomic_write(run_dir / chat_templates.FILE, lambda f: f.write(text.encode("utf-8")))
    else:
        (run_dir / chat_templates.FILE).unlink(missing_ok=True)


def read_model_file(run_dir, mmap=False):
    """Load model.pt safely (weights_only=True: never unpickle code from a downloaded file) and
    check it is one of ours. mmap=True leaves the weights on disk until they are copied into a
    model, so a large model is not held twice in memory; the file must then not be rewritten in
    place while the tensors live (atomic_write renames a new file over it, which is safe)."""
    path = Path(run_dir) / "model.pt"
    if not path.exists():
        raise UserError(f"{path}: no such file (is {run_dir} a run directory?)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        raise UserError(f"{path}: cannot be loaded ({str(e).splitlines()[0]})")
    if not isinstance(payload, dict) or payload.get("format") != "slm-run":
        raise UserError(f"{path}: not an slm model file")
    return payload


def load_tokenizer(run_dir):
    """The run's tokenizer, with its chat template attached (tok.chat_template: chat_templates)."""
    path = Path(run_dir) / "tokenizer.json"
    try:
        tok = sentencepiece_bpe.load_tokenizer(path)  # bpe.py's files, and version 3
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: {e}")
    tok.chat_template = chat_templates.load(Path(run_dir), tok)
    return tok


def load_run(run_dir, device="cpu"):
    """Any run directory -> (model in eval mode, tokenizer, payload without the weights).

    A float run: the model is built from its architecture and config, then its weights loaded.
    An INT8 run (payload["quantized"]): built the same way, its layers swapped exactly as
    quantize.py swapped them when it wrote the run (int8.prepare_int8_skeleton), then the saved
    int8 tensors are loaded."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    payload = read_model_file(run_dir, mmap=True)
    tok = load_tokenizer(run_dir)
    if tok.vocab_size != payload["config"]["vocab_size"]:
        raise UserError(f"{run_dir}: tokenizer has {tok.vocab_size} tokens, model expects "
                        f"{payload['config']['vocab_size']}")
    try:
        model = build_model(payload["arch"], payload["config"])
        quantized = payload.get("quantized")
        if quantized:
            if quantized.get("scheme") != int8.SCHEME:
                raise UserError(f"{run_dir / 'model.pt'}: unknown quantization scheme "
                                f"{quantized.get('scheme')!r}")
            int8.prepare_int8_skeleton(model, quantized)
        model.load_state_dict(payload.pop("model"))
    except (RuntimeError, TypeError, KeyError, AssertionError) as e:
        why = " ".join(line.strip() for line in str(e).splitlines()[:2])[:300]
        raise UserError(f"{run_dir / 'model.pt'}: weights do not fit the model it describes "
                        f"({why})")
    return model.to(device).eval(), tok, payload


def is_chat(payload):
    """A model fine-tuned on chat conversations (or imported with a chat template)."""
    return payload.get("stage") in ("sft", "dpo")


# ---------------------------------------------------------------------------------------------
# 5. Checkpoints: model.pt + train_state.pt, enough to continue exactly
# ---------------------------------------------------------------------------------------------
def rng_state():
    """Torch's RNG (dropout, sampling); the data order has its own generator,
    saved by the caller."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir, model, tok, optimizer, scaler, step, state=None, extra=None,
                    weights=None):
    """model.pt and train_state.pt, both stamped with the step. The state is written in full under
    a side name first, then model.pt is replaced, then the state is renamed into place: a kill
    leaves the old pair or the new one (or, for the instant between two renames, a pair whose steps
    differ, which resume refuses). `state`: the caller's own (data position, ...); `extra`: what
    model.pt records besides the weights (the stage, which tells chat.py and eval.py whether the
    model speaks the chat template); `weights`: see save_model. A LoRA run puts its trained tensors
    in `state` as "trainable": model.pt holds them only merged into the weights."""
    state = {"step": step, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
             "rng": rng_state(), **(state or {})}
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    side = run_dir / "train_state.pt.next"
    atomic_write(side, lambda f: torch.save(state, f))
    save_model(run_dir, model, tok, {**(extra or {}), "step": step}, weights)
    os.replace(side, run_dir / "train_state.pt")


def load_checkpoint(run_dir, model, optimizer, scaler):
    """Restore weights, optimizer, scaler and RNG from run_dir; return the train state dict.
    A LoRA run restores only its trained tensors (state["trainable"]): its frozen base came from
    the --init run, and model.pt's merged weights are for the other scripts."""
    payload = read_model_file(run_dir, mmap=True)  # weights read only where they are used
    path = Path(run_dir) / "train_state.pt"
    if not path.exists():
        raise UserError(f"{path}: no such file; nothing to resume")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["step"] != payload.get("step"):
        raise UserError(f"{run_dir}: model.pt (step {payload.get('step')}) and train_state.pt "
                        f"(step {state['step']}) disagree")
    if "trainable" in state:
        missing, unexpected = unwrap(model).load_state_dict(state["trainable"], strict=False)
        trained = {n for n, p in unwrap(model).named_parameters() if p.requires_grad}
        if unexpected or trained & set(missing):
            raise UserError(f"{path}: its trained tensors do not fit this model "
                            f"(LoRA flags changed?)")
    else:
        unwrap(model).load_state_dict(payload["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return state


# ---------------------------------------------------------------------------------------------
# 6. log.jsonl and the picture a person looks at (loss.svg)
# ---------------------------------------------------------------------------------------------
def read_log(path):
    """The rows of a log.jsonl; a line torn by a kill is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class RunLog:
    """log.jsonl, one JSON object per line; on resume, lines after the checkpoint are dropped."""

    def __init__(self, run_dir, keep_until_step=None):
        self.path = Path(run_dir) / "log.jsonl"
        if keep_until_step is None or not self.path.exists():
            self.path.write_text("")
        else:
            kept = "".join(json.dumps(r) + "\n" for r in read_log(self.path)
                           if r["step"] <= keep_until_step)
            atomic_write(self.path, lambda f: f.write(kept.encode()))

    def write(self, **row):
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def nice_ticks(lo, hi, n=5):
    """About n round numbers covering [lo, hi] (1, 2 or 5 times a power of ten apart), for an axis
    a reader can read values off.  nice_ticks(0.3, 4.1) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]"""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    return [round(first + i * step, 10)
            for i in range(int(math.ceil((hi - first) / step - 1e-9)) + 1)]


COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]


def svg_panel(series, top, title, step_range, W=720, H=360):
    """One chart at height `top` of the picture: a title, a legend under it, axes with round-number
    ticks and light gridlines, and a line per series (with a dot at each point when there are few,
    as for evaluations). series: [(label, [(step, value), ...])]. Returns SVG elements."""
    left, right, plot_top, bottom = 60, W - 20, top + 30 + 16 * len(series), top + H - 40
    values = [v for _, pts in series for _, v in pts]
    xs, ys = nice_ticks(*step_range), nice_ticks(min(values), max(values))
    sx = lambda s: left + (right - left) * (s - xs[0]) / (xs[-1] - xs[0])
    sy = lambda v: bottom - (bottom - plot_top) * (v - ys[0]) / (ys[-1] - ys[0])
    out = [f'<text x="{left}" y="{top + 16}" font-weight="bold">{title}</text>']
    for t in xs:
        out.append(f'<line x1="{sx(t):.1f}" y1="{plot_top}" x2="{sx(t):.1f}" y2="{bottom}" '
                   f'stroke="#e5e5e5"/>'
                   f'<text x="{sx(t):.1f}" y="{bottom + 16}" text-anchor="middle">{t:g}</text>')
    for v in ys:
        out.append(f'<line x1="{left}" y1="{sy(v):.1f}" x2="{right}" y2="{sy(v):.1f}" '
                   f'stroke="#e5e5e5"/>'
                   f'<text x="{left - 6}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
    out.append(f'<rect x="{left}" y="{plot_top}" width="{right - left}" '
               f'height="{bottom - plot_top}" fill="none" stroke="#888"/>'
               f'<text x="{(left + right) / 2}" y="{bottom + 32}" text-anchor="middle">step</text>')
    for i, (label, pts) in enumerate(series):
        color, y = COLORS[i % len(COLORS)], top + 34 + 16 * i
        coords = " ".join(f"{sx(s):.1f},{sy(v):.1f}" for s, v in pts)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{coords}"/>')
        if len(pts) <= 30:
            out += [f'<circle cx="{sx(s):.1f}" cy="{sy(v):.1f}" r="3" fill="{color}"/>'
                    for s, v in pts]
        out.append(f'<line x1="{left}" y1="{y - 4}" x2="{left + 20}" y2="{y - 4}" stroke="{color}" '
                   f'stroke-width="3"/><text x="{left + 26}" y="{y}">{label}</text>')
    return out


# What the picture shows: panels of (title, [(label, log key, kind)]); a panel appears when its
# keys are in the log. kind "train": the per-step lines (a running mean, one batch is noisy);
# "eval": the evaluations on held-out data.
PANELS = [("loss (nats per token)",
           [("training", "loss", "train"), ("held-out", "val_loss", "eval")]),
          ("DPO: how often the chosen answer wins",
           [("reward accuracy, training batches", "rewards/accuracies", "train"),
            ("preference accuracy, held-out", "pref_accuracy", "eval")]),
          ("DPO: reward margin (chosen - rejected)",
           [("training batches", "rewards/margins", "train")])]


def running_mean(points, n):
    """[(step, mean of the last n values up to that step)]."""
    values = [v for _, v in points]
    return [(s, sum(values[max(0, i - n + 1):i + 1]) / len(values[max(0, i - n + 1):i + 1]))
            for i, (s, _) in enumerate(points)]


def write_loss_svg(log_path, svg_path, smooth=20):
    """Draw log.jsonl as an SVG a browser opens (no plotting library needed): the training loss (a
    running mean over `smooth` steps) and the held-out loss of every evaluation, and for DPO the
    reward accuracy and margin."""
    rows = read_log(log_path)
    steps = [r["step"] for r in rows]
    if len(rows) < 2 or max(steps) == min(steps):
        return
    panels = []
    for title, wanted in PANELS:
        series = []
        for label, key, kind in wanted:
            pts = [(r["step"], r[key]) for r in rows if ("eval" in r) == (kind == "eval")
                   and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            if kind == "train" and len(pts) > smooth:
                pts, label = running_mean(pts, smooth), f"{label} (mean of {smooth} steps)"
            if pts:
                series.append((label, pts))
        if series:
            panels.append((title, series))
    H = 360
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="720" height="{H * len(panels)}" '
           f'font-family="sans-serif" font-size="12">'
           f'<rect width="100%" height="100%" fill="white"/>']
    for i, (title, series) in enumerate(panels):
        svg += svg_panel(series, i * H, title, (min(steps), max(steps)), H=H)
    svg.append("</svg>")
    atomic_write(svg_path, lambda f: f.write("\n".join(svg).encode()))
