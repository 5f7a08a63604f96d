"""eval.py: how good is a model? Perplexity, bits per byte, baselines, generation figures,
multiple-choice benchmarks and a readiness report (book chapter 7).

    python eval.py out/pretrain                                   # one run
    python eval.py out/pretrain out/sft out/dpo out/dpo-int8      # one table, runs side by side
    python eval.py out/sft --data my.txt --json figures.json      # your text; the figures as JSON
    python eval.py out/sft --chat-data my_chats.jsonl             # chat runs judged on your chats
    python eval.py out/sft --tasks pydoc,arc_easy=ARC-Easy-Test.jsonl --num-fewshot 5
    python eval.py out/sft out/safe --safety builtin       # harmful compliance, over-refusal

Every run is measured on the same text: the validation split of --data (as train.py splits it),
encoded with that run's own tokenizer. Runs with different tokenizers cut the same text into
different tokens, so their losses per token are not comparable; bits per byte is, which is why it
is reported. A chat model (stage sft or dpo) is also measured on held-out conversations
(--chat-data, the assistant's tokens only), and judged on those: a model fine-tuned to answer
questions is not made to continue documentation. Each run directory gets a readiness.md: checks
with PASS/FAIL and the reason, and which text each figure was measured on; and benchmarks.json,
the --tasks figures (the built-in pydoc task by default) in lm-evaluation-harness's layout.

Reading order: the figures on text (perplexity and bits per byte, built on data.evaluate) ->
the baselines any model must beat (uniform, unigram, bigram) -> the same figures on held-out chats
-> generation figures over a fixed prompt suite -> multiple-choice benchmarks (each choice's
log-likelihood, acc, acc_norm, centred, as lm-evaluation-harness scores them) -> the readiness
checks -> one run, then the table across runs -> the command line.

Imports: rundir.py (opening any run directory, float or INT8), data.py (the validation text and
the held-out figures on it), sft.py (the chat template and the held-out conversations), tasks.py
(the task files, the built-in task, the contamination check), safety.py (--safety: the
prompts and the judging rule).
"""
import hashlib
import json
import math
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import chat_templates
import data
import safety
import sft
import tasks
from rundir import (UserError, atomic_write, check_device, check_positive, is_chat, load_run,
                    option, parse_config, run_cli, write_json)
from data import byte_lengths  # noqa: F401  (UTF-8 bytes per token id; special tokens count 0)


# ---------------------------------------------------------------------------------------------
# Configuration: each field is a flag; the run directories are positional arguments.
# ---------------------------------------------------------------------------------------------
@dataclass
class EvalConfig:
    run_dirs: list = option([], "run directories to evaluate (one or more)", positional="*")
    data: str = option("python-docs", "text to measure on, as train.py's --data: python-docs | "
                                      "tinystories | shakespeare | a file or folder")
    chat_data: str = option("python-docs", "held-out conversations chat runs are judged on: "
                                           "python-docs (sft.py's built-in held-out set) | "
                                           "a MiniMind SFT .jsonl")
    val_fraction: float = option(0.05, "share of --data held out (as in train.py)")
    max_tokens: int = option(16384, "predicted tokens per run, at most (keeps CPU runs fast)")
    seq_len: int = option(0, "window length (0: the model's context)")
    batch_size: int = option(8, "windows per forward pass")
    add_k: float = option(0.1, "add-k smoothing of the unigram and bigram baselines")
    baseline_tokens: int = option(5_000_000, "training tokens the baselines are fitted on, at most")
    max_new_tokens: int = option(48, "tokens per generation of the prompt suite")
    temperature: float = option(0.7, "sampling temperature of the prompt suite (0: greedy)")
    top_k: int = option(50, "sample among the k most likely tokens (0: all)")
    seed: int = option(0, "seed of the prompt suite's sampling")
    min_share: float = option(0.5, "chat runs: share of answers that must stop and follow the "
                                   "format to PASS")
    tasks: str = option("pydoc", "multiple-choice tasks, comma-separated: pydoc (built in) | "
                                 "LAYOUT=FILE, LAYOUT one of " + ", ".join(tasks.LAYOUTS)
                                 + " | none")
    task_format: str = option("auto", "auto (each task's usual format) | cloze | letters")
    num_fewshot: int = option(0, "solved items before each item (k-shot)")
    fewshot_seed: int = option(1234, "seed that draws the k-shot items")
    limit: int = option(0, "items per task, at most (0: all)")
    task_batch_size: int = option(32, "rows per forward pass when scoring choices")
    contamination: str = option("data", "check the items for shared 13-grams with: data (all of "
                                        "--data) | a file or folder | none")
    safety: str = option("", "chat runs: harmful compliance and over-refusal on builtin | a "
                         "file in XSTest's layout (prompt, type, label), safety.py")
    safety_judge: str = option("", "a command judging each reply (stdin; prints refuse|comply)")
    json: str = option("", "also write the figures to this JSON file")
    report: bool = option(True, "write readiness.md into each run directory")
    device: str = option("auto", "auto | cpu | cuda | mps")


def parse_args(argv=None, overrides=None):
    """rundir.parse_config's flags, with the run directories as positional arguments."""
    cfg = parse_config(EvalConfig, argv, None, overrides)
    if isinstance(cfg.run_dirs, (str, Path)):
        cfg.run_dirs = [cfg.run_dirs]
    if not cfg.run_dirs:
        raise UserError("give at least one run directory: "
                        "python eval.py out/pretrain [out/sft ...]")
    check_positive(cfg, ("max_tokens", "batch_size", "baseline_tokens", "task_batch_size"))
    if cfg.task_format not in ("auto", "cloze", "letters") or min(cfg.num_fewshot, cfg.limit) < 0:
        raise UserError("--task-format is auto, cloze or letters; --num-fewshot and --limit >= 0")
    tasks.parse_tasks(cfg.tasks)  # a misspelt task fails now, not after the first run
    return cfg


# ---------------------------------------------------------------------------------------------
# 1. Figures on text: perplexity and bits per byte
# ---------------------------------------------------------------------------------------------
def contiguous_windows(tokens, seq_len, batch_size, max_tokens):
    """Cut tokens[0 .. n] into consecutive windows so that each of the first n tokens after the
    first is predicted exactly once (n = min(max_tokens, len - 1)). Window i is the input
    tokens[iT : iT+T] with targets tokens[iT+1 : iT+T+1], so consecutive windows overlap by one
    token. Returns [(x [B, T], y [B, T])]; a last, shorter window comes alone in its own batch."""
    n = min(max_tokens, len(tokens) - 1)
    rows = [np.asarray(tokens[s:min(s + seq_len, n) + 1], dtype=np.int64)
            for s in range(0, n, seq_len)]
    full = [r for r in rows if len(r) == seq_len + 1]
    batches = [torch.from_numpy(np.stack(full[i:i + batch_size]))
               for i in range(0, len(full), batch_size)]
    batches += [torch.from_numpy(r[None]) for r in rows if 1 < len(r) < seq_len + 1]
    return [(b[:, :-1], b[:, 1:]) for b in batches]


def perplexity(model, windows, lengths, device):
    """Loss, perplexity and bits per byte of the model on the windows' targets (-100: not counted).

    With N predicted tokens and NLL_i = -ln p(token_i | the tokens before it):

        loss       = (sum_i NLL_i) / N                         nats per token
        perplexity = exp(loss)                                 "as unsure as a uniform choice
                                                                among this many"
        bpb        = (sum_i NLL_i) / (ln 2 * total UTF-8 bytes of the N tokens)

    The sum is over ALL tokens before dividing: a mean of per-batch means would weigh a short last
    batch like a full one. Perplexity depends on the tokenizer (a bigger vocabulary predicts fewer,
    harder tokens); bits per byte does not, so it compares runs with different tokenizers. Note
    bpb = (N / bytes) * loss / ln 2. The computation is data.evaluate, the one train.py logs and
    quantize.py reports before and after, so the three always agree."""
    result = data.evaluate(model, windows, lengths, device, torch.float32)
    count = sum(int((y != sft.IGNORE).sum()) for _, y in windows)
    nbytes = int(sum(lengths[y[y != sft.IGNORE].numpy()].sum() for _, y in windows))
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
    return {"V": vocab_size, "k": k, "unigram": unigram, "codes": codes, "counts": counts,
            "follows": follows}


def baseline_losses(fit, windows, lengths):
    """Mean NLL (nats per token) and bits per byte of the uniform, unigram and bigram models on the
    windows' targets (those not -100): the same predicted tokens as the model. The bigram sees the
    input token x[t] (the token before y[t])."""
    V, k = fit["V"], fit["k"]
    masks = [y != sft.IGNORE for _, y in windows]
    prev = np.concatenate([x[m].numpy() for (x, _), m in zip(windows, masks)])
    nxt = np.concatenate([y[m].numpy() for (_, y), m in zip(windows, masks)])
    nbytes = max(int(lengths[nxt].sum()), 1)
    uni = -np.log((fit["unigram"][nxt] + k) / (fit["unigram"].sum() + k * V))
    code = prev * V + nxt
    pos = np.clip(np.searchsorted(fit["codes"], code), 0, max(len(fit["codes"]) - 1, 0))
    pair = (np.where(fit["codes"][pos] == code, fit["counts"][pos], 0) if len(fit["codes"])
            else 0 * code)
    bi = -np.log((pair + k) / (fit["follows"][prev] + k * V))
    out = {"uniform": math.log(V) * len(nxt), "unigram": uni.sum(), "bigram": bi.sum()}
    return {name: {"loss": s / len(nxt), "bpb": s / (math.log(2) * nbytes)}
            for name, s in out.items()}


def chat_figures(model, tok, cfg, device):
    """The text figures again, on held-out conversations (--chat-data), counting the assistant's
    tokens only (sft.py's mask): what a chat model is for. The baselines are fitted on the training
    conversations, rendered the same way."""
    rows, held, _ = sft.load_sft_data(cfg.chat_data, tok, model.context_length, quiet=True)
    pad = tok.special_tokens["<|endoftext|>"]
    windows = [sft.collate(held[i:i + cfg.batch_size], pad)
               for i in range(0, len(held), cfg.batch_size)]
    fit = fit_baselines(np.concatenate([np.array(ids) for ids, _ in rows]), tok.vocab_size,
                        cfg.add_k)
    lengths = byte_lengths(tok)
    figures = perplexity(model, windows, lengths, device)
    figures["baselines"] = baseline_losses(fit, windows, lengths)
    return figures


# ---------------------------------------------------------------------------------------------
# 3. Generation over a fixed prompt suite
# ---------------------------------------------------------------------------------------------
TEXT_PROMPTS = ["The", "Return a new list", "This module provides", "If the argument is",
                "def ", "Raise an exception"]
CHAT_PROMPTS = ["What does `len` do?", "What is 7 + 5?", "Reverse the letters: c a t",
                "Explain `json.dumps`.", "Which is larger, 4 or 9?", "Write in capitals: d o g"]


@torch.no_grad()
def generate_ids(model, prompt, stop, cfg, seed):
    """New token ids for one prompt: at most max_new_tokens, ending with a stop token
    if one came."""
    return list(model.generate(prompt, max_new_tokens=cfg.max_new_tokens,
                               temperature=cfg.temperature, top_k=cfg.top_k or None,
                               stop_tokens=stop, seed=seed))


def ngrams(ids, n):
    return [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]


def generation_figures(outputs, stop, end_id=None):
    """outputs: the new ids of each generation. distinct-n: distinct n-grams / all n-grams, pooled
    over the suite (low: the model says the same things). repetition: share of 4-grams that already
    occurred earlier in the same generation (high: it loops). stopped: share ending on a stop token.
    format (chat, end_id: the template's end of turn, <|im_end|> in ChatML): share that end on it
    with a non-empty answer and no other stop token inside (<|endoftext|> always stops too)."""
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
        figures["format"] = sum(bool(o) and o[-1] == end_id and len(b) > 0
                                and not any(t in stop for t in b)
                                for o, b in zip(outputs, bodies)) / len(outputs)
    return figures


def prompt_suite(model, tok, payload, cfg, device):
    """Run the suite: chat runs get CHAT_PROMPTS in the run's template (sft.render_chat: ChatML,
    or an imported release's) and stop where it ends a turn; pre-trained runs continue TEXT_PROMPTS
    after <|endoftext|> and stop at it."""
    special, chat = tok.special_tokens, is_chat(payload)
    stop = {special["<|endoftext|>"]} | (chat_templates.stop_ids(tok) if chat else set())
    outputs, samples = [], []
    for i, text in enumerate(CHAT_PROMPTS if chat else TEXT_PROMPTS):
        if chat:
            prompt = sft.render_chat(tok, [{"role": "user", "content": text}],
                                     add_generation_prompt=True)[0]
        else:
            prompt = [special["<|endoftext|>"]] + tok.encode(text, allowed_special="none")
        out = generate_ids(model, prompt, stop, cfg, cfg.seed + i)
        outputs.append(out)
        samples.append({"prompt": text, "output": tok.decode(out)})
    figures = generation_figures(outputs, stop, chat_templates.end_id(tok) if chat else None)
    return figures, samples


# ---------------------------------------------------------------------------------------------
# 4. Benchmarks: multiple choice, scored the way lm-evaluation-harness scores it
# ---------------------------------------------------------------------------------------------
# A multiple-choice item is scored without generating anything: for each choice, how likely does
# the model find the choice's text as the continuation of the context? The figure is the
# log-likelihood SUMMED over the continuation's tokens, log p(c | x) = sum_t log p(c_t | x, c_<t):
# the log of the probability of the whole continuation, which is what "the model's preferred
# answer" means. The sum is not comparable across choices of different lengths (every extra token
# costs a little probability), hence acc_norm below.
def encode_pair(tok, context, continuation):
    """(context ids, continuation ids) as the harness cuts them. Spaces at the end of the context
    move to the continuation ("Answer:" + " yes"): a BPE token carries its leading space, so " yes"
    is one token; a context ending in a space would leave a stray space token the model never saw
    before a word. Then context+continuation is encoded WHOLE and the continuation is what follows
    the context's own length: the pieces are then the tokens the model reads in one text, even
    where a merge crosses the boundary. An empty context gets <|endoftext|> to condition on."""
    encode = lambda text: tok.encode(text, allowed_special="none")
    if not context:
        cont, eot = encode(continuation), tok.special_tokens["<|endoftext|>"]
        return ([eot], cont) if cont[:1] != [eot] else (cont[:1], cont[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    ctx = encode(context)
    return ctx, encode(context + continuation)[len(ctx):]


@torch.no_grad()
def continuation_logprobs(model, requests, device, batch_size=32, desc="score"):
    """requests: [(context ids, continuation ids)] -> np.array of sum log p(continuation | context).

    Each request is one row context + continuation (without its last token, which is only a
    target), cut on the left to the model's context length as the harness does. Rows are sorted by
    length, longest first, and padded on the right to the longest in their batch: a causal model's
    outputs at real positions never see the padding after them. Requests with the very same row
    share one (four one-token answers " A" .. " D" after one prompt cost one row, not four). The
    head (the largest matrix, V x dim) is applied only where a continuation token is predicted."""
    T = model.context_length
    rows, row_of = {}, []
    for ctx, cont in requests:
        row_of.append(rows.setdefault(tuple((list(ctx) + list(cont))[-(T + 1):-1]), len(rows)))
    inputs = list(rows)
    order = sorted(range(len(inputs)), key=lambda r: -len(inputs[r]))
    readers = {}  # row -> the requests that read it
    for i, r in enumerate(row_of):
        readers.setdefault(r, []).append(i)
    head = model.lm_head
    model.lm_head = torch.nn.Identity()  # the model returns its final hidden states
    out = np.zeros(len(requests))
    try:
        for s in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
            batch = order[s:s + batch_size]
            x = torch.zeros(len(batch), len(inputs[batch[0]]), dtype=torch.long)
            for b, r in enumerate(batch):
                x[b, :len(inputs[r])] = torch.tensor(inputs[r])
            hidden = model(x.to(device))[0]  # [B, L, dim]
            owner, b_idx, t_idx, target = [], [], [], []
            for b, r in enumerate(batch):
                for i in readers[r]:
                    n = len(inputs[r])
                    # the row's last len(cont) positions predict the continuation's tokens (the
                    # last n of them, for a continuation longer than the model's context)
                    cont = requests[i][1][-n:]
                    owner += [i] * len(cont)
                    b_idx += [b] * len(cont)
                    t_idx += range(n - len(cont), n)
                    target += list(cont)
            logits = head(hidden[b_idx, t_idx]).float()  # [N, V]
            lp = F.log_softmax(logits, dim=-1)[torch.arange(len(target)), torch.tensor(target)]
            np.add.at(out, owner, lp.double().cpu().numpy())
    finally:
        model.lm_head = head
    return out


def choice_figures(items, lls, lengths, headline):
    """acc: the share where the likeliest choice is the right one. acc_norm: the same with each
    log-likelihood divided by its choice's length in characters, as the harness defines it: a long
    ending pays for every token, so the raw sum favours short choices; per character is
    independent of the tokenizer (per token would not be). centred: (figure - chance) / (1 -
    chance), CORE's rescaling, so 0 is guessing and 1 is perfect whatever the number of choices,
    and tasks with 2 and 4 choices can be averaged. Also the standard error of each mean."""
    labels = np.array([it["label"] for it in items])
    acc = np.array([int(np.argmax(ll)) for ll in lls]) == labels
    norm = np.array([int(np.argmax(np.array(ll) / np.maximum(n, 1)))
                     for ll, n in zip(lls, lengths)]) == labels
    chance = float(np.mean([1 / len(it["choices"]) for it in items]))
    f = {"acc": float(acc.mean()), "acc_norm": float(norm.mean()), "chance": chance,
         "items": len(items)}
    for k, v in (("acc", acc), ("acc_norm", norm)):
        f[k + "_stderr"] = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
    f["metric"], f["centred"] = headline, (f[headline] - chance) / (1 - chance)
    return f


def benchmark_figures(model, tok, cfg, device, cache):
    """{task: figures} for one run: prompts, encoding, scoring, then acc, acc_norm, centred."""
    if "tasks" not in cache:  # read (and checked for contamination) once for all runs
        cache["tasks"] = tasks.load_tasks(cfg.tasks, cfg.limit, cfg.task_format, cfg.contamination,
                                          cfg.data)
    results = {}
    for name, layout, items, style, headline, dirty in cache["tasks"]:
        per_item = tasks.prompts(items, style, cfg.num_fewshot, cfg.fewshot_seed)
        requests = [encode_pair(tok, c, a) for choices in per_item for c, a, _ in choices]
        flat = continuation_logprobs(model, requests, device, cfg.task_batch_size, name)
        lls, start = [], 0
        for choices in per_item:
            lls.append(flat[start:start + len(choices)])
            start += len(choices)
        f = choice_figures(items, lls, [[n for _, _, n in ch] for ch in per_item], headline)
        f.update(layout=layout, format=style, num_fewshot=cfg.num_fewshot,
                 contaminated=None if dirty is None else len(dirty))
        results[name] = f
    return results


# ---------------------------------------------------------------------------------------------
# 5. Readiness checks
# ---------------------------------------------------------------------------------------------
SHORT = {"beats the bigram baseline": "bigram", "no non-finite values": "finite",
         "tokenizer round trip": "round-trip", "generation terminates": "stops",
         "chat format adherence": "format"}  # for the table


def readiness_checks(r, model, tok, text, cfg):
    """[(check, PASS/FAIL, reason)] for one evaluated run r."""
    checks = []
    # A chat model is judged on what it is for, held-out conversations; a base model on text.
    judged, on = ((r["chats"], f"the assistant's tokens of held-out chats ({cfg.chat_data})")
                  if r["chat"] else (r, f"the validation split of {cfg.data}"))
    bigram = judged["baselines"]["bigram"]["loss"]
    checks.append(("beats the bigram baseline", judged["loss"] < bigram,
                   f"loss {judged['loss']:.3f} vs bigram {bigram:.3f} nats/token "
                   f"on the same tokens: {on}"))
    bad = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
           if t.is_floating_point() and not torch.isfinite(t).all()]
    finite = math.isfinite(r["loss"]) and not bad
    checks.append(("no non-finite values", finite, "weights and loss are finite" if finite else
                   f"non-finite: {', '.join(bad[:3]) or 'loss'}"))
    again = tok.decode(tok.encode(text, allowed_special="all"))
    checks.append(("tokenizer round trip", again == text,
                   f"decode(encode(text)) on the {len(text):,}-character "
                   "eval text " + ("gives it back exactly" if again == text else "differs")))
    g = r["generation"]
    if r["chat"]:
        checks.append(("generation terminates", g["stopped"] >= cfg.min_share,
                       f"{g['stopped']:.0%} of answers stopped within {cfg.max_new_tokens} tokens "
                       f"(need {cfg.min_share:.0%})"))
        checks.append(("chat format adherence", g["format"] >= cfg.min_share,
                       f"{g['format']:.0%} end their turn, non-empty, nothing stray "
                       f"(need {cfg.min_share:.0%})"))
    else:
        # a pre-trained model continues text: it must end a document or run to the cap
        # without looping
        ok = g["repetition"] <= 0.5
        checks.append(("generation terminates", ok,
                       f"{g['stopped']:.0%} ended on <|endoftext|>, the rest ran to "
                       f"{cfg.max_new_tokens} tokens; repeated 4-grams {g['repetition']:.0%} "
                       f"(a model stuck in a loop never ends: the limit is 50%)"))
    return [{"check": c, "status": "PASS" if ok else "FAIL", "reason": why}
            for c, ok, why in checks]


def figure_lines(f, on):
    """Markdown table rows of one set of figures (loss, perplexity, bpb, baselines) and its text."""
    b = f["baselines"]
    lines = [f"| loss (nats/token), {on} | {f['loss']:.4f} |",
             f"| perplexity, {on} | {f['ppl']:.3f} |",
             f"| bits per byte, {on} | {f['bpb']:.4f} |"]
    return lines + [f"| {name} baseline loss / bpb, {on} | "
                    f"{b[name]['loss']:.4f} / {b[name]['bpb']:.4f} |" for name in b]


def readiness_markdown(r, cfg):
    ready = all(c["status"] == "PASS" for c in r["readiness"])
    lines = [f"# Readiness report: {r['name']}", "",
             f"stage {r['stage']}, {r['arch']}" + (f", {r['quantized']}" if r["quantized"] else "")
             + f"; measured by eval.py on the validation split of `{cfg.data}` "
             f"({r['tokens']:,} tokens, {r['bytes']:,} bytes)"
             + (f" and on the assistant's tokens of held-out conversations "
                f"(`{cfg.chat_data}`, {r['chats']['tokens']:,} tokens)" if r["chat"] else ""),
             "", f"**{'READY' if ready else 'NOT READY'}**", "", "| check | result | reason |",
             "|---|---|---|"]
    lines += [f"| {c['check']} | {c['status']} | {c['reason']} |" for c in r["readiness"]]
    lines += ["", "| figure | value |", "|---|---|"] + figure_lines(r, "text")
    if r["chat"]:
        lines += figure_lines(r["chats"], "held-out chats")
    lines += [f"| {k} (prompt suite) | {v:.3f} |" for k, v in r["generation"].items()]
    lines += [f"| {k} (safety, {cfg.safety}) | {r['safety'][k]:.3f} |" for k in
              ("harmful_compliance", "over_refusal") if "safety" in r]
    lines += ["", "## Samples", ""] + [f"- `{s['prompt']}` -> {json.dumps(s['output'])}"
                                       for s in r["samples"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# 6. One run, then the table across runs
# ---------------------------------------------------------------------------------------------
def validation_data(run_dir, tok, cfg, fits):
    """(train tokens, val tokens) of --data in this run's tokenizer: data.prepare_data with the
    run's tokenizer.json (it caches the encoded tokens), and the baselines fitted once
    per tokenizer."""
    data_cfg = types.SimpleNamespace(data=cfg.data, tokenizer=str(Path(run_dir) / "tokenizer.json"),
                                     vocab_size=tok.vocab_size, val_fraction=cfg.val_fraction)
    _, train_tokens, val_tokens = data.prepare_data(data_cfg)
    key = hashlib.sha1((Path(run_dir) / "tokenizer.json").read_bytes()).hexdigest()
    if key not in fits:
        fits[key] = fit_baselines(train_tokens[:cfg.baseline_tokens], tok.vocab_size, cfg.add_k)
    return val_tokens, fits[key]


def evaluate_run(run_dir, cfg, device, fits):
    model, tok, payload = load_run(run_dir, device)
    val_tokens, fit = validation_data(run_dir, tok, cfg, fits)
    seq_len = min(cfg.seq_len or model.context_length, model.context_length)
    if len(val_tokens) < 2:
        raise UserError(f"{cfg.data}: the validation split has {len(val_tokens)} tokens; "
                        f"nothing to measure")
    windows = contiguous_windows(val_tokens, seq_len, cfg.batch_size, cfg.max_tokens)
    lengths = byte_lengths(tok)
    r = {"run": str(run_dir), "name": Path(run_dir).resolve().name, "arch": payload["arch"],
         "stage": payload.get("stage", "pretrain"), "chat": is_chat(payload),
         "quantized": (payload.get("quantized") or {}).get("scheme", ""),
         "file_mb": (Path(run_dir) / "model.pt").stat().st_size / 2**20}
    r.update(perplexity(model, windows, lengths, device))
    r["baselines"] = baseline_losses(fit, windows, lengths)
    if r["chat"]:
        r["chats"] = chat_figures(model, tok, cfg, device)
    if r["chat"] and cfg.safety:  # greedy replies to the prompts, judged (safety.py)
        reply = lambda p: sft.greedy_reply(model, tok, [{"role": "user", "content": p}],
                                           cfg.max_new_tokens)
        r["safety"] = safety.safety_figures(safety.read_prompts(cfg.safety), reply,
                                            cfg.safety_judge)
    r["generation"], r["samples"] = prompt_suite(model, tok, payload, cfg, device)
    r["benchmarks"] = benchmark_figures(model, tok, cfg, device, fits)
    if r["benchmarks"] and cfg.report:
        write_json(Path(run_dir) / "benchmarks.json", tasks.results_file(
            run_dir, r["benchmarks"], cfg.task_batch_size, cfg.contamination, cfg.fewshot_seed))
    text = tok.decode(val_tokens[:min(cfg.max_tokens, len(val_tokens) - 1) + 1].tolist())
    r["readiness"] = readiness_checks(r, model, tok, text, cfg)
    if cfg.report:
        md = readiness_markdown(r, cfg)
        atomic_write(Path(run_dir) / "readiness.md", lambda f: f.write(md.encode()))
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
    chats = lambda key: lambda r: key(r["chats"]) if r["chat"] else "-"
    rows += [("chats: loss", chats(lambda f: f"{f['loss']:.4f}")),
             ("chats: bits per byte", chats(lambda f: f"{f['bpb']:.4f}")),
             ("chats: bigram bpb", chats(lambda f: f"{f['baselines']['bigram']['bpb']:.4f}"))]
    rows += [(label, lambda r, k=key: f"{r['generation'][k]:.3f}" if k in r["generation"] else "-")
             for label, key in (("distinct-1", "distinct_1"), ("distinct-2", "distinct_2"),
                                ("repetition (4-grams)", "repetition"), ("stopped", "stopped"),
                                ("mean length", "mean_length"), ("chat format", "format"))]
    rows += [(label, lambda r, k=k: f"{r['safety'][k]:.3f}" if "safety" in r else "-")
             for label, k in (("harmful compliance", "harmful_compliance"),
                              ("over-refusal", "over_refusal"))
             if any("safety" in r for r in results)]
    for t, f in results[0]["benchmarks"].items():  # every run has the same tasks
        rows += [(f"{t}: {k}", lambda r, t=t, k=k: f"{r['benchmarks'][t][k]:.3f}")
                 for k in ("acc", "acc_norm", "centred")]
        rows.append((f"{t}: chance, items", lambda r, t=t: "{chance:.3f}, {items}".format(
            **r["benchmarks"][t])))
    rows += [("readiness", lambda r: "READY" if all(c["status"] == "PASS" for c in r["readiness"])
              else "FAIL: " + ",".join(SHORT[c["check"]] for c in r["readiness"]
                                       if c["status"] != "PASS"))]
    cells = [(label, [get(r) for r in results]) for label, get in rows]
    width = 2 + max(12, *(len(r["name"]) for r in results),
                    *(len(c) for _, cs in cells for c in cs))
    left = max(22, *(len(label) + 2 for label, _ in cells))
    lines = [f"{'':<{left}}" + "".join(f"{r['name']:>{width}}" for r in results)]
    lines += [f"{label:<{left}}" + "".join(f"{c:>{width}}" for c in cs) for label, cs in cells]
    return "\n".join(lines)


def main(argv=None, **overrides):
    """Evaluate the run directories; print the table, write readiness.md (and --json); return the
    figures."""
    cfg = parse_args(argv, overrides)
    device = check_device(cfg.device)
    fits, results = {}, []
    for run_dir in cfg.run_dirs:
        results.append(evaluate_run(run_dir, cfg, device, fits))
    print(format_table(results))
    for r in results:
        failed = [c for c in r["readiness"] if c["status"] != "PASS"]
        print(f"{r['name']}: " + ("ready" if not failed else
                                  "; ".join(f"{c['check']}: {c['reason']}" for c in failed)))
    if cfg.json:
        out = {"data": cfg.data, "chat_data": cfg.chat_data, "runs": results}
        atomic_write(cfg.json, lambda f: f.write(json.dumps(out, indent=2).encode()))
    return results


if __name__ == "__main__":
    run_cli(main)
