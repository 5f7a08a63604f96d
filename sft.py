"""sft.py: supervised fine-tuning on chat conversations, loss on assistant tokens only (book
chapter 9).

    python sft.py --init out/pretrain        # built-in Python-docs conversations -> out/sft
    python sft.py --show-example             # one rendered conversation: token, target, trained?
    python sft.py --init out/pretrain --data my_sft.jsonl   # MiniMind's format:
                                                            # {"conversations": [...]}
    python sft.py --init out/smollm --preset t4             # a released model (convert.py) on a T4
    python sft.py --init out/pretrain --halt-at 300; python sft.py --resume  # split across sessions

Reading order: the chat template and its loss mask (render_chat, shared by dpo.py, eval.py and
chat.py) -> the shift, truncation and padding -> the loss written by hand -> data (MiniMind jsonl
and the built-in Python-docs conversations) -> evaluation (held-out loss, greedy exact match) ->
SFT as a stage of train.py's training loop (its batches, its loss, its evaluation) -> the config,
presets and the start from an --init run that dpo.py shares -> main. The run directory it writes
(stage "sft") is what dpo.py, eval.py and chat.py take as input.

Imports: chat_templates.py (the template families), train.py (the training loop, the start from
a run), lora.py (LoRA and --adapter), resources.py (--dry-run), data.py, rundir.py (flags, errors).
"""
import dataclasses
import functools
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import chat_templates
import data
import lora
import resources
import safety
import train
from rundir import (UserError, autocast, check_device, check_positive, load_run, load_tokenizer,
                    option, parse_config, pick_dtype, read_jsonl, read_saved_config,
                    refuse_to_overwrite, run_cli)

ROLES = ("system", "user", "assistant")


def render_chat(tok, messages, add_generation_prompt=False):
    """Render messages in the run's chat template and say which tokens are trained.

    A run trained here writes ChatML, each message  <|im_start|>{role}\\n{content}<|im_end|>\\n ;
    an imported run keeps its release's template (Llama 3, [INST], Gemma, Phi-3, Zephyr: one
    small function each in chat_templates.py). The template's special tokens are inserted as
    ids; role and content are encoded as ordinary text (allowed_special="none"), so a user who
    types "<|im_end|>" cannot forge the end of a turn.

    Returns (ids, trained): trained[i] is True when ids[i] is a token the model must learn to
    produce: the content of an assistant message and the token that ends its turn (<|im_end|>).
    Everything else (system and user turns, the role headers, the newline after <|im_end|>) is
    context only. With add_generation_prompt=True the ids end with the assistant's header
    ("<|im_start|>assistant\\n"), ready for the model to write the answer."""
    return chat_templates.render(tok, messages, add_generation_prompt)


# ---------------------------------------------------------------------------------------------
# From a rendered conversation to a training row: the shift, the truncation rule, the padding
# ---------------------------------------------------------------------------------------------
IGNORE = -100  # a target the loss skips (PyTorch's ignore_index convention)


def chat_example(tok, messages, seq_len):
    """Render messages and cut them to fit: (ids, trained) of at most seq_len + 1 tokens, or None.

    The truncation rule: keep the FIRST seq_len + 1 tokens and drop the tail. ids and trained are
    cut at the same place, so no token ever changes its trained flag (a cut assistant answer simply
    loses its end). A conversation whose kept part trains no token at all is dropped (None): it
    would only add padding."""
    ids, trained = render_chat(tok, messages)
    ids, trained = ids[:seq_len + 1], trained[:seq_len + 1]
    return (ids, trained) if any(trained[1:]) else None


def collate(examples, pad_id):
    """Rows of (ids, trained) -> inputs x and targets y, both [B, T], padded to the longest row of
    THIS batch (dynamic padding: a batch of short questions costs little).

    The shift: the model at position t predicts token t+1, so x = ids[:-1], y = ids[1:], and y[t]
    keeps its id only when token t+1 is trained; otherwise (and on padding) it is IGNORE.
    Example: ids [S, u, E, S, a, b, E], trained [0, 0, 0, 0, 1, 1, 1]
             x   [S, u, E, S, a, b],    y       [-, -, -, a, b, E]"""
    T = max(len(ids) for ids, _ in examples) - 1
    x = torch.full((len(examples), T), pad_id, dtype=torch.long)
    y = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for row, (ids, trained) in enumerate(examples):
        n = len(ids) - 1
        x[row, :n] = torch.tensor(ids[:-1])
        y[row, :n] = torch.tensor([t if keep else IGNORE for t, keep in zip(ids[1:], trained[1:])])
    return x, y


# ---------------------------------------------------------------------------------------------
# The loss, by hand (dpo.py sums the same per-token log-probabilities per sequence)
# ---------------------------------------------------------------------------------------------
def token_logprobs(logits, targets):
    """log p(target) at every position ([B, T]), 0 where the target is IGNORE, and the mask."""
    logp = F.log_softmax(logits.float(), dim=-1)                   # [B, T, V], fp32 for stability
    mask = targets != IGNORE                                       # [B, T]
    # [B, T]; clamp: -100 is no index
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def masked_cross_entropy(logits, targets, total=None):
    """Cross-entropy over the trained tokens: the SUM of their -log p divided by their COUNT
    (or by `total`, the trained tokens of a whole optimizer step, when this batch is one
    part of it).

    Why not the mean of each conversation's own mean: that would give the one token of "7" in a
    short arithmetic answer the same total weight as a 40-token explanation, so short answers
    would dominate and the loss would depend on how conversations are grouped into batches.
    Summing over tokens makes every trained token count the same, which is what
    F.cross_entropy(..., ignore_index=-100) computes (tests/test_sft.py checks they agree)."""
    picked, mask = token_logprobs(logits, targets)
    return -picked.sum() / (total if total is not None else mask.sum().clamp(min=1))


# ---------------------------------------------------------------------------------------------
# Data: MiniMind's jsonl, and the built-in Python-docs conversations
# ---------------------------------------------------------------------------------------------
def check_messages(messages, where):
    """Raise UserError(`where: ...`) unless messages is a non-empty list of {role, content}
    with known roles, string contents and at least one assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: empty conversation (expected a non-empty list of messages)")
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict) or "role" not in m:
            raise UserError(f'{where}: message {i} has no "role"')
        if m["role"] not in ROLES:
            raise UserError(f"{where}: message {i} has unknown role {m['role']!r} "
                            f"(expected {', '.join(ROLES)})")
        if not isinstance(m.get("content"), str):
            raise UserError(f'{where}: message {i} has no "content" string')
    if not any(m["role"] == "assistant" for m in messages):
        raise UserError(f"{where}: no assistant turn, so nothing to learn")


def parse_sft_line(obj, where):
    if safety.is_hh(obj):  # HH-RLHF's transcripts: the chosen one is the conversation
        return {"messages": safety.hh_pair(obj, where)["chosen"]}
    if not isinstance(obj, dict) or "conversations" not in obj:
        raise UserError(f'{where}: expected an object with a "conversations" list')
    check_messages(obj["conversations"], where)
    return {"messages": obj["conversations"]}


PHRASINGS = ("What does `{}` do?", "Explain `{}`.", "What is `{}` for?",
             "Describe `{}` in one sentence.", "In Python, what does {} do?")


def doc_summary(doc):
    """The first sentence of a docstring's first paragraph, if it makes a short plain answer."""
    para = " ".join(doc.strip().split("\n\n")[0].split())
    sentence = re.split(r"(?<=[.!?])\s", para)[0]
    ok = 12 <= len(sentence) <= 150 and sentence[0].isalpha() and "(" not in sentence[:20]
    return sentence if ok else None


def spaced(word):
    return " ".join(word)


def exercises(words):
    """Every generated exercise as (kind, question, answer, wrong): exact answers, plus a plausible
    wrong one (off by one, the smaller number, a reversal left undone...) that dpo.py rejects.
    Words are written letter by letter, so the model sees each letter as its own token."""
    out = []
    for a in range(21):
        for b in range(21):
            out.append(("add", f"What is {a} + {b}?", str(a + b),
                        str(a + b + (1 if (a + b) % 2 else -1))))
            if b <= a:
                out.append(("subtract", f"What is {a} - {b}?", str(a - b), str(a - b + 1)))
            if a != b:
                out.append(("larger", f"Which is larger, {a} or {b}?", str(max(a, b)),
                            str(min(a, b))))
    for n in range(100):
        out.append(("next", f"What number comes after {n}?", str(n + 1), str(n + 2)))
    for w in words:
        out.append(("count", f"How many letters are in {spaced(w)}?", str(len(w)), str(len(w) - 1)))
        out.append(("upper", f"Write in capitals: {spaced(w)}", spaced(w.upper()),
                    spaced(w[:-1].upper() + w[-1])))
        out.append(("repeat", f"Repeat {w} three times.", " ".join([w] * 3), " ".join([w] * 2)))
        if w != w[::-1]:
            out.append(("reverse", f"Reverse the letters: {spaced(w)}", spaced(w[::-1]), spaced(w)))
    return out


@functools.lru_cache(maxsize=1)
def python_docs_conversations(seed=0):
    """The built-in SFT set: (train items, held-out items), the same on every run.

    An item is {"kind", "question", "answer", "wrong", "messages"}: "doc" items ask about a stdlib
    name in one of several phrasings and are answered with its docstring's summary (their wrong
    answer is another name's summary); the other kinds are exercises with exact answers. One name
    in ten and one exercise in ten are held out: never trained on, used for held-out loss and exact
    match here, and for held-out preference accuracy in dpo.py (which builds its pairs from the
    same items: chosen = answer, rejected = wrong)."""
    rng = random.Random(seed)
    entries = [(name, doc_summary(doc)) for name, doc in data.python_docs_entries() if "." in name]
    entries = [(n, s) for n, s in entries if s]
    words = sorted({p for n, _ in data.python_docs_entries() for p in n.split(".")
                    if re.fullmatch("[a-z]{3,6}", p)})
    items = {"train": [], "heldout": []}

    def add(split, kind, question, answer, wrong):
        items[split].append({"kind": kind, "question": question, "answer": answer, "wrong": wrong,
                             "messages": [{"role": "user", "content": question},
                                          {"role": "assistant", "content": answer}]})

    for i, (name, summary) in enumerate(entries):
        wrong = summary
        while wrong == summary:
            wrong = rng.choice(entries)[1]
        split = "heldout" if i % 10 == 9 else "train"
        for phrasing in rng.sample(PHRASINGS, 1 if split == "heldout" else 2):
            add(split, "doc", phrasing.format(name), summary, wrong)
    tasks = exercises(words)
    rng.shuffle(tasks)
    for i, task in enumerate(tasks):
        add("heldout" if i % 10 == 9 else "train", *task)
    rng.shuffle(items["train"])
    return items["train"], items["heldout"]


def load_sft_data(data, tok, seq_len, heldout_every=20, quiet=False):
    """--data -> (train examples, held-out examples, held-out exercises with exact answers).
    A jsonl is split by position (every 20th conversation held out); it has no exact-match set."""
    if data == "python-docs":
        train_items, heldout = python_docs_conversations()
        exact = [it for it in heldout if it["kind"] != "doc"]
    elif data == "safety":  # the built-in refusals and look-alikes; eval.py measures the rest
        train_items, heldout, exact = (safety.builtin_conversations(),
                                       safety.builtin_conversations("test"), [])
    else:
        items = read_jsonl(data, parse_sft_line)
        train_items = [it for i, it in enumerate(items) if i % heldout_every != heldout_every - 1]
        heldout = [it for i, it in enumerate(items) if i % heldout_every == heldout_every - 1]
        exact = []
    to_rows = lambda its: [e for e in (chat_example(tok, it["messages"], seq_len) for it in its)
                           if e]
    rows, held = to_rows(train_items), to_rows(heldout)
    dropped = len(train_items) + len(heldout) - len(rows) - len(held)
    if dropped and not quiet:
        print(f"dropped {dropped} conversation(s) whose first {seq_len + 1} tokens train nothing")
    if not rows:
        raise UserError(f"{data}: no conversation has an assistant token within "
                        f"--seq-len {seq_len}")
    return rows, held, exact


# ---------------------------------------------------------------------------------------------
# Evaluation: held-out loss on assistant tokens, and greedy exact match
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def heldout_loss(model, rows, pad_id, device, dtype, batch_size=32):
    """Summed -log p over every held-out trained token / their count (one number for the set)."""
    if not rows:
        return float("nan")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        x, y = collate(rows[i:i + batch_size], pad_id)
        with autocast(device, dtype):
            logits, _ = model(x.to(device))
        picked, mask = token_logprobs(logits, y.to(device))
        total, count = total - picked.sum().item(), count + mask.sum().item()
    model.train(was_training)
    return total / max(count, 1)


@torch.no_grad()
def greedy_reply(model, tok, messages, max_new_tokens=24):
    """The model's answer to messages, greedy (temperature 0), stopping where the template's turn
    ends (<|im_end|> in ChatML)."""
    stop = chat_templates.stop_ids(tok)
    ids, _ = render_chat(tok, messages, add_generation_prompt=True)
    out = list(model.generate(ids, max_new_tokens=max_new_tokens, temperature=0, stop_tokens=stop))
    return tok.decode([t for t in out if t not in stop]).strip()


def exact_match(model, tok, items, max_new_tokens=24):
    """Share of items whose greedy answer equals the expected answer exactly."""
    if not items:
        return float("nan")
    return sum(greedy_reply(model, tok, it["messages"][:-1], max_new_tokens) == it["answer"]
               for it in items) / len(items)


# ---------------------------------------------------------------------------------------------
# SFT as a stage of the training loop (train.train_loop does the rest)
# ---------------------------------------------------------------------------------------------
def sft_stage(cfg, model, tok, rows, held, exact, dtype):
    """SFT as a train.Stage: batches of conversations padded to their longest; the loss, the masked
    cross-entropy over the step's trained tokens; held-out assistant loss, and (at the start and
    the end) greedy exact match on held-out exercises."""
    device, pad = str(next(model.parameters()).device), tok.special_tokens["<|endoftext|>"]

    def batch(indices):
        x, y = collate([rows[i] for i in indices], pad)
        return x.to(device), y.to(device)

    def loss(net, b, totals):
        logits, _ = net(b[0])
        return masked_cross_entropy(logits, b[1], totals["tokens"]), {}

    def evaluate(model, full):
        metrics = {"val_loss": heldout_loss(model, held, pad, device, dtype)}
        if full:
            metrics["exact_match"] = exact_match(model, tok, exact, cfg.max_new_tokens)
        return metrics

    labels = {"val_loss": "held-out assistant loss", "exact_match": "held-out exact match"}
    return train.Stage("sft", len(rows), batch, lambda b: {"tokens": int((b[1] != IGNORE).sum())},
                       loss, evaluate, labels, cfg.seq_len)


# ---------------------------------------------------------------------------------------------
# The config, presets and the start from a run, shared with dpo.py
# ---------------------------------------------------------------------------------------------
@dataclass
class FineTuneConfig(train.LoopConfig):
    """The flags sft.py and dpo.py share: the training loop's, with fine-tuning's defaults, and
    where to start from. Each script's config adds its own."""
    preset: str = option("", "named defaults, listed below; flags given explicitly win")
    init: str = option("out/pretrain", "run directory to start from (a pre-training run)")
    data: str = option("python-docs", "python-docs | safety (built in) | a .jsonl: "
                                 "MiniMind SFT or HH-RLHF")
    seq_len: int = option(0, "longest conversation in tokens (0: the model's context)")
    batch_size: int = option(32, "conversations per micro-batch (per process)")
    lr: float = option(1e-3, "peak learning rate (below pre-training's)")
    warmup_steps: int = option(50, "linear warmup steps")
    weight_decay: float = option(0.0, "AdamW decay (matrices only)")
    dropout: float = option(0.0, "dropout probability while fine-tuning")
    out_dir: str = option("out/sft", "run directory to write")
    eval_exact: int = option(200, "held-out exercises for exact match (0: all)")
    eval_heldout: int = option(0, "held-out conversations (dpo.py: pairs) evaluated (0: all)")
    max_new_tokens: int = option(24, "longest generated answer in exact match")
    dry_run: bool = option(False, "print the resource calculator for this run and exit")
    chat_template: str = option("", f"{chat_templates.CHOICES}: the template to fine-tune in "
                                    f"(default: the --init run's; ChatML for a run trained here)")


def use_template(cfg, tok):
    """--chat-template: the run's template becomes that family's (the release's text is kept when
    it is of that family); saved with the tokenizer, so every later stage uses it too."""
    if cfg.chat_template:
        tok.chat_template = chat_templates.recognise(chat_templates.of(tok).jinja, tok,
                                                     f"--init {cfg.init}", cfg.chat_template)
    return tok


def start(cfg, device):
    """The --init run on the device, in training mode, set up as the flags ask (--adapter, LoRA,
    --grad-checkpoint: lora.adapt_model), and --seq-len 0 set to the model's context.
    Returns (cfg, model, tok, payload, extra); extra: what model.pt records about the start."""
    model, tok, payload = train.start_from(cfg.init, device, cfg.dropout)
    tok = use_template(cfg, tok)
    window = model.context_length
    if cfg.seq_len > window:
        raise UserError(f"--seq-len {cfg.seq_len}: the model in {cfg.init} takes at most "
                        f"{window} tokens")
    cfg = dataclasses.replace(cfg, seq_len=cfg.seq_len or window)
    extra = {**train.origin_of(cfg.init, payload),
             **lora.adapt_model(cfg, model, train.is_master())}
    return cfg, model, tok, payload, extra


def settle(cfg, cls):
    """The config of a run about to start: the saved one on --resume; every value checked, before
    anything is loaded or written."""
    if cfg.resume:
        keep = {k: getattr(cfg, k) for k in ("resume", "overwrite", "halt_at", "device", "out_dir")}
        cfg = read_saved_config(cls, Path(cfg.out_dir) / "config.json", keep)
    check_positive(cfg, ("batch_size", "grad_accum", "save_every", "eval_every"))
    if cfg.lr <= 0 or cfg.seq_len < 0 or cfg.max_steps < 0 or not 0 <= cfg.dropout < 1:
        raise UserError("--lr must be positive, --seq-len and --max-steps not negative, "
                        "--dropout in [0, 1)")
    lora.check_lora(cfg)
    check_device(cfg.device)
    refuse_to_overwrite(cfg)
    return cfg


def dry_run(cfg, stage="sft", rows=1, reference=None, load_rows=None):
    """The resource calculator for a fine-tuning run of the --init model, built on the meta device
    (no weights are read, so it answers for any size), with the average length of --data's rows
    (conversations are often far shorter than the context): load_rows(tok, seq_len) -> the
    training rows (default: SFT's). rows, reference: see resources.training_memory (dpo.py: 2 rows a
    pair, and its reference). Flags the run itself would refuse are refused here too."""
    lora.check_lora(cfg)
    if not (Path(cfg.init) / "model.pt").is_file():
        raise UserError(f"--init {cfg.init}: no model.pt there to size the run on")
    model = resources.meta_model(cfg.init)
    seq_len = cfg.seq_len or model.context_length
    load_rows = load_rows or (lambda tok, n: load_sft_data(cfg.data, tok, n, quiet=True)[0])
    examples = load_rows(use_template(cfg, load_tokenizer(cfg.init)), seq_len)
    mean_len = sum(len(ids) - 1 for ids, _ in examples) / len(examples)
    title = f"{stage} --init {cfg.init}, preset {cfg.preset or '(none)'}"
    return resources.resource_report(model, cfg, seq_len, title, rows, reference, mean_len)


def announce(stage, cfg, model, payload, device, dtype, what):
    """One line saying what is about to be trained (process 0 only)."""
    if train.is_master():
        print(f"{stage}: {payload['arch']} from {cfg.init} ({payload.get('stage', 'pretrain')}, "
              f"{model.num_params() / 1e6:.2f}M parameters), {device} {dtype}, {what}")


# ---------------------------------------------------------------------------------------------
# SFT itself
# ---------------------------------------------------------------------------------------------
@dataclass
class SFTConfig(FineTuneConfig):
    show_example: bool = option(False, "print one rendered conversation as a table and exit")


# Each preset: the hardware and model sizes it is for, then its defaults. The batch sizes keep a
# step at 32-64 conversations of up to 512 tokens; fp16 on a T4 runs with the gradient scaler.
PRESETS = {
    "cpu": ("2 CPU cores, about 2.5 minutes: the CPU pre-training run (nano) on the built-in chats",
            dict(batch_size=32, max_steps=1200, dtype="fp32")),
    "t4": ("free Colab T4 (16 GB, fp16 + scaler): models up to ~100M (minimind2-small, minimind2), "
           "full fine-tuning",
           dict(batch_size=16, grad_accum=4, seq_len=512, max_steps=2000, lr=5e-4, dtype="fp16",
                eval_every=250, save_every=250)),
    "a100": ("one A100 (bf16): models up to ~400M, full fine-tuning",
             dict(batch_size=64, seq_len=1024, max_steps=2000, lr=3e-4, dtype="bf16", compile=True,
                  eval_every=250, save_every=500)),
    "t4-lora": ("free Colab T4 (16 GB, fp16 + scaler): imported models of 135M-600M (SmolLM2-135M/"
                "360M, Qwen2.5-0.5B, Qwen3-0.6B), LoRA rank 16 on every linear layer, "
                "checkpointing",
                dict(lora_rank=16, lora_alpha=32.0, batch_size=8, grad_accum=4, seq_len=512,
                     max_steps=1000, lr=2e-4, warmup_steps=30, dtype="fp16", grad_checkpoint=True,
                     eval_every=250, save_every=250, eval_exact=100, eval_heldout=256)),
    "cpu-lora": ("2 CPU cores, minutes: a 135M imported model (SmolLM2-135M), LoRA rank 16, "
                 "40 steps",
                 dict(lora_rank=16, lora_alpha=32.0, batch_size=8, seq_len=256, max_steps=40,
                      lr=1e-3, warmup_steps=4, dtype="fp32", eval_every=1000, save_every=20,
                      eval_exact=20, eval_heldout=32, max_new_tokens=16)),
}


def show_example(tok, messages):
    """Print a conversation token by token: the input, the target the model must predict there,
    and whether that target is trained. Lines marked `yes` are the only ones the loss sees."""
    ids, trained = render_chat(tok, messages)
    shown = lambda t: repr(tok.decode_bytes([t]).decode("utf-8", "replace"))
    print(f"{'pos':>4}  {'input token':<20}{'target':<20}trained")
    for t in range(len(ids) - 1):
        print(f"{t:>4}  {shown(ids[t]):<20}{shown(ids[t + 1]):<20}"
              f"{'yes' if trained[t + 1] else '-'}")
    end = tok.decode_bytes([chat_templates.end_id(tok)]).decode("utf-8", "replace")
    print(f"{sum(trained[1:])} of {len(ids) - 1} targets trained: the assistant's words and its "
          f"{end}")


def sft(cfg):
    if cfg.show_example:
        tok = use_template(cfg, load_run(cfg.init)[1])
        items = python_docs_conversations()[0]
        show_example(tok, [{"role": "system", "content": "You are a helpful assistant."},
                           *items[0]["messages"], *items[1]["messages"]])
        return None
    if cfg.dry_run:
        print(dry_run(cfg)[0])
        return None
    cfg = settle(cfg, SFTConfig)
    with train.processes(cfg.device) as (rank, world, device):
        torch.manual_seed(cfg.seed)
        cfg, model, tok, payload, extra = start(cfg, device)
        dtype = pick_dtype(device, cfg.dtype)
        rows, held, exact = load_sft_data(cfg.data, tok, cfg.seq_len)
        exact = exact[:cfg.eval_exact] if cfg.eval_exact else exact
        held = held[:cfg.eval_heldout] if cfg.eval_heldout else held
        announce("sft", cfg, model, payload, device, dtype,
                 f"{len(rows):,} training conversations, {len(held):,} held out, "
                 f"{len(exact)} held-out exercises")
        stage = sft_stage(cfg, model, tok, rows, held, exact, dtype)
        return train.train_loop(cfg, model, tok, stage, extra)


def main(argv=None, **overrides):
    """Fine-tune with flags from argv (or sys.argv) and keyword overrides (for notebooks)."""
    return sft(parse_config(SFTConfig, argv, PRESETS, overrides))


if __name__ == "__main__":
    run_cli(main)
