"""eval.py: how good is a model? Perplexity, bits per byte, baselines, generation figures and a
readiness report (book chapter 7).

    python eval.py out/pretrain                                   # one run
    python eval.py out/pretrain out/sft out/dpo out/dpo-int8      # one table, runs side by side
    python eval.py out/sft --data my.txt --json figures.json      # your text; the figures as JSON

Every run is measured on the same text: the validation split of --data (as train.py splits it),
encoded with that run's own tokenizer. Runs with different tokenizers cut the same text into
different tokens, so their losses per token are not comparable; bits per byte is, which is why it
is reported. Each run directory gets a readiness.md: checks with PASS/FAIL and the reason.

Reading order: the figures on text (perplexity and bits per byte, built on train.evaluate) ->
the baselines any model must beat (uniform, unigram, bigram) -> generation figures over a fixed
prompt suite -> the readiness checks -> one run, then the table across runs -> the command line.
"""
import hashlib
import json
import math
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import train
from quantize import load_run  # reads every run directory: float or INT8, MiniMind or GPT
from sft import render_chat
from train import UserError, parse_config, run_cli


# ---------------------------------------------------------------------------------------------
# Configuration: each field is a flag; the run directories are positional arguments.
# ---------------------------------------------------------------------------------------------
@dataclass
class EvalConfig:
    run_dirs: list = field(default_factory=list, metadata={"help": "run directories to evaluate (one or more)",
                                                            "positional": "*"})
    data: str = field(default="python-docs", metadata={
        "help": "text to measure on, as train.py's --data: python-docs | tinystories | shakespeare | a file or folder"})
    val_fraction: float = field(default=0.05, metadata={"help": "share of --data held out (as in train.py)"})
    max_tokens: int = field(default=16384, metadata={"help": "predicted tokens per run, at most (keeps CPU runs fast)"})
    seq_len: int = field(default=0, metadata={"help": "window length (0: the model's context)"})
    batch_size: int = field(default=8, metadata={"help": "windows per forward pass"})
    add_k: float = field(default=0.1, metadata={"help": "add-k smoothing of the unigram and bigram baselines"})
    baseline_tokens: int = field(default=5_000_000, metadata={
        "help": "training tokens the baselines are fitted on, at most"})
    max_new_tokens: int = field(default=48, metadata={"help": "tokens per generation of the prompt suite"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature of the prompt suite (0: greedy)"})
    top_k: int = field(default=50, metadata={"help": "sample among the k most likely tokens (0: all)"})
    seed: int = field(default=0, metadata={"help": "seed of the prompt suite's sampling"})
    min_share: float = field(default=0.5, metadata={
        "help": "chat runs: share of answers that must stop and follow the format to PASS"})
    json: str = field(default="", metadata={"help": "also write the figures to this JSON file"})
    report: bool = field(default=True, metadata={"help": "write readiness.md into each run directory"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | mps"})


def parse_args(argv=None, overrides=None):
    """train.parse_config's flags, with the run directories as positional arguments."""
    cfg = parse_config(EvalConfig, argv, None, overrides)
    if isinstance(cfg.run_dirs, (str, Path)):
        cfg.run_dirs = [cfg.run_dirs]
    if not cfg.run_dirs:
        raise UserError("give at least one run directory: python eval.py out/pretrain [out/sft ...]")
    train.check_positive(cfg, ("max_tokens", "batch_size", "baseline_tokens"))
    return cfg


# ---------------------------------------------------------------------------------------------
# 1. Figures on text: perplexity and bits per byte
# ---------------------------------------------------------------------------------------------
def byte_lengths(tok):
    """UTF-8 bytes each token id stands for; special tokens stand for no text, so they count 0."""
    return np.array([0 if tok.is_special(i) else len(tok.id_to_bytes(i)) for i in range(tok.vocab_size)])


def contiguous_windows(tokens, seq_len, batch_size, max_tokens):
    """Cut tokens[0 .. n] into consecutive windows so that each of the first n tokens after the
    first is predicted exactly once (n = min(max_tokens, len - 1)). Window i is the input
    tokens[iT : iT+T] with targets tokens[iT+1 : iT+T+1], so consecutive windows overlap by one token.
    Returns [(x [B, T], y [B, T])]; a last, shorter window comes alone in its own batch."""
    n = min(max_tokens, len(tokens) - 1)
    rows = [np.asarray(tokens[s:min(s + seq_len, n) + 1], dtype=np.int64) for s in range(0, n, seq_len)]
    full = [r for r in rows if len(r) == seq_len + 1]
    batches = [torch.from_numpy(np.stack(full[i:i + batch_size])) for i in range(0, len(full), batch_size)]
    batches += [torch.from_numpy(r[None]) for r in rows if 1 < len(r) < seq_len + 1]
    return [(b[:, :-1], b[:, 1:]) for b in batches]


def perplexity(model, windows, lengths, device):
    """Loss, perplexity and bits per byte of the model on the windows' targets.

    With N predicted tokens and NLL_i = -ln p(token_i | the tokens before it):

        loss       = (sum_i NLL_i) / N                         nats per token
        perplexity = exp(loss)                                 "as unsure as a uniform choice among this many"
        bpb        = (sum_i NLL_i) / (ln 2 * total UTF-8 bytes of the N tokens)

    The sum is over ALL tokens before dividing: a mean of per-batch means would weigh a short last
    batch like a full one. Perplexity depends on the tokenizer (a bigger vocabulary predicts fewer,
    harder tokens); bits per byte does not, so it compares runs with different tokenizers. Note
    bpb = (N / bytes) * loss / ln 2. The computation is train.evaluate, the one train.py logs and
    quantize.py reports before and after, so the three always agree."""
    result = train.evaluate(model, windows, lengths, device, torch.float32)
    model.eval()  # train.evaluate leaves the model in training mode
    count = sum(y.numel() for _, y in windows)
    nbytes = int(sum(lengths[y.numpy()].sum() for _, y in windows))
    return {"loss": result["val_loss"], "ppl": result["val_ppl"], "bpb": result["val_bpb"],
            "tokens": count, "bytes": nbytes, "nll_sum": result["val_loss"] * count}


# ---------------------------------------------------------------------------------------------
# 2. Baselines: what a model must beat to have learned more than counting
# ---------------------------------------------------------------------------------------------
def fit_baselines(train_tokens, vocab_size, k):
    """Unigram and bigram counts from the training tokens, for add-k smoothed probabilities:

        unigram  p(b)     = (c(b) + k) / (N + k V)
        bigram   p(b | a) = (c(a, b) + k) / (c(a) + k V)     c(a): times a is followed by anything

    Add-k gives every unseen pair a little probability, so no validation token costs infinity.
    A V x V table would be 6400^2 numbers, so the pairs are kept sparse: a sorted array of the
    codes a * V + b that occur, and their counts."""
    t = np.asarray(train_tokens, dtype=np.int64)
    unigram = np.bincount(t, minlength=vocab_size)
    codes, counts = np.unique(t[:-1] * vocab_size + t[1:], return_counts=True)
    follows = np.bincount(t[:-1], minlength=vocab_size)
    return {"V": vocab_size, "k": k, "unigram": unigram, "codes": codes, "counts": counts, "follows": follows}


def baseline_losses(fit, windows, lengths):
    """Mean NLL (nats per token) and bits per byte of the uniform, unigram and bigram models on the
    windows' targets: the same predicted tokens as the model. The bigram sees the input token x[t]
    (the token before y[t])."""
    V, k = fit["V"], fit["k"]
    prev = np.concatenate([x.numpy().ravel() for x, _ in windows])
    nxt = np.concatenate([y.numpy().ravel() for _, y in windows])
    nbytes = max(int(lengths[nxt].sum()), 1)
    uni = -np.log((fit["unigram"][nxt] + k) / (fit["unigram"].sum() + k * V))
    code = prev * V + nxt
    pos = np.clip(np.searchsorted(fit["codes"], code), 0, max(len(fit["codes"]) - 1, 0))
    pair = np.where(fit["codes"][pos] == code, fit["counts"][pos], 0) if len(fit["codes"]) else 0 * code
    bi = -np.log((pair + k) / (fit["follows"][prev] + k * V))
    out = {"uniform": math.log(V) * len(nxt), "unigram": uni.sum(), "bigram": bi.sum()}
    return {name: {"loss": s / len(nxt), "bpb": s / (math.log(2) * nbytes)} for name, s in out.items()}


# ---------------------------------------------------------------------------------------------
# 3. Generation over a fixed prompt suite
# ---------------------------------------------------------------------------------------------
TEXT_PROMPTS = ["The", "Return a new list", "This module provides", "If the argument is",
                "def ", "Raise an exception"]
CHAT_PROMPTS = ["What does `len` do?", "What is 7 + 5?", "Reverse the letters: c a t",
                "Explain `json.dumps`.", "Which is larger, 4 or 9?", "Write in capitals: d o g"]


def is_chat(payload):
    return payload.get("stage") in ("sft", "dpo")


@torch.no_grad()
def generate_ids(model, arch, prompt, stop, cfg, seed, device):
    """New token ids for one prompt: at most max_new_tokens, ending with a stop token if one came."""
    gen = torch.Generator(device=device).manual_seed(seed)
    if arch == "gpt":  # gpt.GPT.generate has no stop tokens: generate the budget, cut at the first stop
        out = model.generate(torch.tensor([prompt[-model.config.block_size:]], device=device), cfg.max_new_tokens,
                             temperature=cfg.temperature, top_k=cfg.top_k or None, generator=gen)[0]
        new = out[min(len(prompt), model.config.block_size):].tolist()
        cut = next((i for i, t in enumerate(new) if t in stop), None)
        return new if cut is None else new[:cut + 1]
    return list(model.generate(prompt, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                               top_k=cfg.top_k or None, stop_tokens=stop, generator=gen))


def ngrams(ids, n):
    return [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]


def generation_figures(outputs, stop, end_id=None):
    """outputs: the new ids of each generation. distinct-n: distinct n-grams / all n-grams, pooled
    over the suite (low: the model says the same things). repetition: share of 4-grams that already
    occurred earlier in the same generation (high: it loops). stopped: share ending on a stop token.
    format (chat, end_id = <|im_end|>): share that end on <|im_end|> with a non-empty answer and no
    other special token inside (everything stops at <|im_start|> and <|endoftext|> too)."""
    bodies = [o[:-1] if o and o[-1] in stop else o for o in outputs]
    figures = {}
    for n in (1, 2):
        grams = [g for b in bodies for g in ngrams(b, n)]
        figures[f"distinct_{n}"] = len(set(grams)) / max(len(grams), 1)
    repeated = total = 0
    for b in bodies:
        grams = ngrams(b, 4)
        repeated += len(grams) - len(set(grams)) if grams else 0
        total += len(grams)
    figures["repetition"] = repeated / max(total, 1)
    figures["stopped"] = sum(bool(o) and o[-1] in stop for o in outputs) / len(outputs)
    figures["mean_length"] = sum(map(len, bodies)) / len(outputs)
    if end_id is not None:
        figures["format"] = sum(bool(o) and o[-1] == end_id and len(b) > 0 and not any(t in stop for t in b)
                                for o, b in zip(outputs, bodies)) / len(outputs)
    return figures


def prompt_suite(model, tok, payload, cfg, device):
    """Run the suite: chat runs get CHAT_PROMPTS in the ChatML template (sft.render_chat) and stop
    at <|im_end|>; pre-trained runs continue TEXT_PROMPTS after <|endoftext|> and stop at it."""
    special = tok.special_tokens
    chat = is_chat(payload)
    stop = {special["<|endoftext|>"]} | ({special["<|im_end|>"], special["<|im_start|>"]} if chat else set())
    outputs, samples = [], []
    for i, text in enumerate(CHAT_PROMPTS if chat else TEXT_PROMPTS):
        if chat:
            prompt = render_chat(tok, [{"role": "user", "content": text}], add_generation_prompt=True)[0]
        else:
            prompt = [special["<|endoftext|>"]] + tok.encode(text, allowed_special="none")
        out = generate_ids(model, payload["arch"], prompt, stop, cfg, cfg.seed + i, device)
        outputs.append(out)
        samples.append({"prompt": text, "output": tok.decode(out)})
    figures = generation_figures(outputs, stop, special["<|im_end|>"] if chat else None)
    return figures, samples


# ---------------------------------------------------------------------------------------------
# 4. Readiness checks
# ---------------------------------------------------------------------------------------------
SHORT = {"beats the bigram baseline": "bigram", "no non-finite values": "finite", "tokenizer round trip":
         "round-trip", "generation terminates": "stops", "chat format adherence": "format"}  # for the table


def readiness_checks(r, model, tok, text, cfg):
    """[(check, PASS/FAIL, reason)] for one evaluated run r."""
    checks = []
    bigram = r["baselines"]["bigram"]["loss"]
    checks.append(("beats the bigram baseline", r["loss"] < bigram,
                   f"loss {r['loss']:.3f} vs bigram {bigram:.3f} nats/token on the same tokens"))
    bad = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
           if t.is_floating_point() and not torch.isfinite(t).all()]
    finite = math.isfinite(r["loss"]) and not bad
    checks.append(("no non-finite values", finite, "weights and loss are finite" if finite else
                   f"non-finite: {', '.join(bad[:3]) or 'loss'}"))
    again = tok.decode(tok.encode(text, allowed_special="all"))
    checks.append(("tokenizer round trip", again == text, f"decode(encode(text)) on the {len(text):,}-character "
                   "eval text " + ("gives it back exactly" if again == text else "differs")))
    g = r["generation"]
    if r["chat"]:
        checks.append(("generation terminates", g["stopped"] >= cfg.min_share,
                       f"{g['stopped']:.0%} of answers stopped within {cfg.max_new_tokens} tokens "
                       f"(need {cfg.min_share:.0%})"))
        checks.append(("chat format adherence", g["format"] >= cfg.min_share,
                       f"{g['format']:.0%} end with <|im_end|>, non-empty, nothing stray (need {cfg.min_share:.0%})"))
    else:  # a pre-trained model continues text: it must end a document or run to the cap without looping
        ok = g["repetition"] <= 0.5
        checks.append(("generation terminates", ok, f"{g['stopped']:.0%} ended on <|endoftext|>, the rest ran to "
                       f"{cfg.max_new_tokens} tokens; repeated 4-grams {g['repetition']:.0%} (a model stuck in "
                       f"a loop never ends: the limit is 50%)"))
    return [{"check": c, "status": "PASS" if ok else "FAIL", "reason": why} for c, ok, why in checks]


def readiness_markdown(r, cfg):
    lines = [f"# Readiness report: {r['name']}", "",
             f"stage {r['stage']}, {r['arch']}" + (f", {r['quantized']}" if r["quantized"] else "") +
             f"; measured by eval.py on the validation split of `{cfg.data}` ({r['tokens']:,} tokens, "
             f"{r['bytes']:,} bytes)", "",
             f"**{'READY' if all(c['status'] == 'PASS' for c in r['readiness']) else 'NOT READY'}**", "",
             "| check | result | reason |", "|---|---|---|"]
    lines += [f"| {c['check']} | {c['status']} | {c['reason']} |" for c in r["readiness"]]
    b = r["baselines"]
    lines += ["", "| figure | value |", "|---|---|", f"| loss (nats/token) | {r['loss']:.4f} |",
              f"| perplexity | {r['ppl']:.3f} |", f"| bits per byte | {r['bpb']:.4f} |"]
    lines += [f"| {name} baseline loss / bpb | {b[name]['loss']:.4f} / {b[name]['bpb']:.4f} |" for name in b]
    lines += [f"| {k} | {v:.3f} |" for k, v in r["generation"].items()]
    lines += ["", "## Samples", ""] + [f"- `{s['prompt']}` -> {json.dumps(s['output'])}" for s in r["samples"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# 5. One run, then the table across runs
# ---------------------------------------------------------------------------------------------
def validation_data(run_dir, tok, cfg, fits):
    """(train tokens, val tokens) of --data in this run's tokenizer: train.prepare_data with the
    run's tokenizer.json (it caches the encoded tokens), and the baselines fitted once per tokenizer."""
    data_cfg = types.SimpleNamespace(data=cfg.data, tokenizer=str(Path(run_dir) / "tokenizer.json"),
                                     vocab_size=tok.vocab_size, val_fraction=cfg.val_fraction)
    _, train_tokens, val_tokens = train.prepare_data(data_cfg)
    key = hashlib.sha1((Path(run_dir) / "tokenizer.json").read_bytes()).hexdigest()
    if key not in fits:
        fits[key] = fit_baselines(train_tokens[:cfg.baseline_tokens], tok.vocab_size, cfg.add_k)
    return val_tokens, fits[key]


def evaluate_run(run_dir, cfg, device, fits):
    model, tok, payload = load_run(run_dir, device)
    val_tokens, fit = validation_data(run_dir, tok, cfg, fits)
    context = payload["config"].get("max_seq_len") or payload["config"]["block_size"]
    seq_len = min(cfg.seq_len or context, context)
    if len(val_tokens) < 2:
        raise UserError(f"{cfg.data}: the validation split has {len(val_tokens)} tokens; nothing to measure")
    windows = contiguous_windows(val_tokens, seq_len, cfg.batch_size, cfg.max_tokens)
    lengths = byte_lengths(tok)
    r = {"run": str(run_dir), "name": Path(run_dir).resolve().name, "arch": payload["arch"],
         "stage": payload.get("stage", "pretrain"), "chat": is_chat(payload),
         "quantized": (payload.get("quantized") or {}).get("scheme", ""),
         "file_mb": (Path(run_dir) / "model.pt").stat().st_size / 2**20}
    r.update(perplexity(model, windows, lengths, device))
    r["baselines"] = baseline_losses(fit, windows, lengths)
    r["generation"], r["samples"] = prompt_suite(model, tok, payload, cfg, device)
    text = tok.decode(val_tokens[:min(cfg.max_tokens, len(val_tokens) - 1) + 1].tolist())
    r["readiness"] = readiness_checks(r, model, tok, text, cfg)
    if cfg.report:
        md = readiness_markdown(r, cfg)
        train.atomic_write(Path(run_dir) / "readiness.md", lambda f: f.write(md.encode()))
    return r


def format_table(results):
    """One table: a column per run, a row per figure."""
    rows = [("stage", lambda r: r["stage"] + (" int8" if r["quantized"] else "")),
            ("model.pt MB", lambda r: f"{r['file_mb']:.2f}"),
            ("tokens / bytes", lambda r: f"{r['tokens']}/{r['bytes']}"),
            ("loss (nats/token)", lambda r: f"{r['loss']:.4f}"),
            ("perplexity", lambda r: f"{r['ppl']:.3f}"),
            ("bits per byte", lambda r: f"{r['bpb']:.4f}")]
    rows += [(f"{name} baseline bpb", lambda r, n=name: f"{r['baselines'][n]['bpb']:.4f}")
             for name in ("uniform", "unigram", "bigram")]
    rows += [(label, lambda r, k=key: f"{r['generation'][k]:.3f}" if k in r["generation"] else "-")
             for label, key in (("distinct-1", "distinct_1"), ("distinct-2", "distinct_2"),
                                ("repetition (4-grams)", "repetition"), ("stopped", "stopped"),
                                ("mean length", "mean_length"), ("chat format", "format"))]
    rows += [("readiness", lambda r: "READY" if all(c["status"] == "PASS" for c in r["readiness"]) else
              "FAIL: " + ",".join(SHORT[c["check"]] for c in r["readiness"] if c["status"] != "PASS"))]
    width = max(14, *(len(r["name"]) + 2 for r in results))
    lines = [f"{'':<22}" + "".join(f"{r['name']:>{width}}" for r in results)]
    lines += [f"{label:<22}" + "".join(f"{get(r):>{width}}" for r in results) for label, get in rows]
    return "\n".join(lines)


def main(argv=None, **overrides):
    """Evaluate the run directories; print the table, write readiness.md (and --json); return the figures."""
    cfg = parse_args(argv, overrides)
    device = train.check_device(cfg.device)
    fits, results = {}, []
    for run_dir in cfg.run_dirs:
        results.append(evaluate_run(run_dir, cfg, device, fits))
    print(format_table(results))
    for r in results:
        failed = [c for c in r["readiness"] if c["status"] != "PASS"]
        print(f"{r['name']}: " + ("ready" if not failed else "; ".join(f"{c['check']}: {c['reason']}" for c in failed)))
    if cfg.json:
        out = {"data": cfg.data, "runs": [{k: v for k, v in r.items()} for r in results]}
        train.atomic_write(cfg.json, lambda f: f.write(json.dumps(out, indent=2).encode()))
    return results


if __name__ == "__main__":
    run_cli(main)
