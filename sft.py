"""sft.py: supervised fine-tuning on chat conversations, loss on assistant tokens only (book chapter 9).

    python sft.py --init out/pretrain        # built-in Python-docs conversations -> out/sft
    python sft.py --show-example             # one rendered conversation: token, target, trained?

    python sft.py --init out/pretrain --data my_sft.jsonl   # MiniMind's format: {"conversations": [...]}
    python sft.py --init out/pretrain --halt-at 300; python sft.py --resume   # split across sessions

Reading order: the chat template and its loss mask (render_chat, shared by dpo.py, eval.py and
chat.py) -> the shift, truncation and padding -> the loss written by hand -> data (MiniMind jsonl
and the built-in Python-docs conversations) -> evaluation (held-out loss, greedy exact match) ->
the fine-tuning loop dpo.py reuses -> SFT itself. The run directory it writes (stage "sft") is
what dpo.py, eval.py and chat.py take as input.
"""
import dataclasses
import functools
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import train
from bpe import Tokenizer  # noqa: F401  (the run directory's tokenizer is a bpe.Tokenizer)
from train import UserError, run_cli

ROLES = ("system", "user", "assistant")


def render_chat(tok, messages, add_generation_prompt=False):
    """Render messages in ChatML and say which tokens are trained.

    Each message becomes  <|im_start|>{role}\\n{content}<|im_end|>\\n . The special tokens are
    inserted as ids; role and content are encoded as ordinary text (allowed_special="none"), so a
    user who types "<|im_end|>" cannot forge the end of a turn.

    Returns (ids, trained): trained[i] is True when ids[i] is a token the model must learn to
    produce: the content of an assistant message and its closing <|im_end|>. Everything else
    (system and user turns, the role headers, the newline after <|im_end|>) is context only.
    With add_generation_prompt=True the ids end with "<|im_start|>assistant\\n", ready for the
    model to write the answer."""
    start, end = tok.special_tokens["<|im_start|>"], tok.special_tokens["<|im_end|>"]
    newline = tok.encode("\n", allowed_special="none")
    ids, trained = [], []
    for m in messages:
        head = [start] + tok.encode(m["role"] + "\n", allowed_special="none")
        body = tok.encode(m["content"], allowed_special="none") + [end]
        learn = m["role"] == "assistant"
        ids += head + body + newline
        trained += [False] * len(head) + [learn] * len(body) + [False] * len(newline)
    if add_generation_prompt:
        head = [start] + tok.encode("assistant\n", allowed_special="none")
        ids += head
        trained += [False] * len(head)
    return ids, trained


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
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # [B, T]; clamp: -100 is no index
    return picked * mask, mask


def masked_cross_entropy(logits, targets):
    """Cross-entropy over the trained tokens: the SUM of their -log p divided by their COUNT.

    Why not the mean of each conversation's own mean: that would give the one token of "7" in a
    short arithmetic answer the same total weight as a 40-token explanation, so short answers
    would dominate and the loss would depend on how conversations are grouped into batches.
    Summing over tokens makes every trained token count the same, which is what
    F.cross_entropy(..., ignore_index=-100) computes (tests/test_sft.py checks they agree)."""
    picked, mask = token_logprobs(logits, targets)
    return -picked.sum() / mask.sum().clamp(min=1)


def model_loss(model, x, y, device, dtype):
    """Forward pass and the hand-written loss, plus MiniMind's MoE balancing term when it has one."""
    with train.autocast(device, dtype):
        logits, _ = model(x.to(device))
    loss = masked_cross_entropy(logits, y.to(device))
    aux = getattr(model, "aux_loss", None)
    return loss + aux if torch.is_tensor(aux) and aux.requires_grad else loss


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
            raise UserError(f"{where}: message {i} has unknown role {m['role']!r} (expected {', '.join(ROLES)})")
        if not isinstance(m.get("content"), str):
            raise UserError(f'{where}: message {i} has no "content" string')
    if not any(m["role"] == "assistant" for m in messages):
        raise UserError(f"{where}: no assistant turn, so nothing to learn")


def read_jsonl(path, parse):
    """parse(obj, "FILE:LINE") for every non-blank line of a .jsonl file, as a list. Bad JSON,
    or a parse that raises UserError, stops with `FILE:LINE: ...`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (or use --data python-docs)")
    items = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})")
                items.append(parse(obj, f"{path}:{lineno}"))
    if not items:
        raise UserError(f"{path}: no conversations in this file")
    return items


def parse_sft_line(obj, where):
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
            out.append(("add", f"What is {a} + {b}?", str(a + b), str(a + b + (1 if (a + b) % 2 else -1))))
            if b <= a:
                out.append(("subtract", f"What is {a} - {b}?", str(a - b), str(a - b + 1)))
            if a != b:
                out.append(("larger", f"Which is larger, {a} or {b}?", str(max(a, b)), str(min(a, b))))
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
    entries = [(name, doc_summary(doc)) for name, doc in train.python_docs_entries() if "." in name]
    entries = [(n, s) for n, s in entries if s]
    words = sorted({p for n, _ in train.python_docs_entries() for p in n.split(".")
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


def load_sft_data(data, tok, seq_len, heldout_every=20):
    """--data -> (train examples, held-out examples, held-out exercises with exact answers).
    A jsonl is split by position (every 20th conversation held out); it has no exact-match set."""
    if data == "python-docs":
        train_items, heldout = python_docs_conversations()
        exact = [it for it in heldout if it["kind"] != "doc"]
    else:
        items = read_jsonl(data, parse_sft_line)
        train_items = [it for i, it in enumerate(items) if i % heldout_every != heldout_every - 1]
        heldout = [it for i, it in enumerate(items) if i % heldout_every == heldout_every - 1]
        exact = []
    to_rows = lambda its: [e for e in (chat_example(tok, it["messages"], seq_len) for it in its) if e]
    rows, held = to_rows(train_items), to_rows(heldout)
    dropped = len(train_items) + len(heldout) - len(rows) - len(held)
    if dropped:
        print(f"dropped {dropped} conversation(s) whose first {seq_len + 1} tokens train nothing")
    if not rows:
        raise UserError(f"{data}: no conversation has an assistant token within --seq-len {seq_len}")
    return rows, held, exact


# ---------------------------------------------------------------------------------------------
# Evaluation: held-out loss on assistant tokens, and greedy exact match
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def heldout_loss(model, rows, pad_id, device, dtype, batch_size=32):
    """Summed -log p over every held-out trained token / their count (one number for the set)."""
    if not rows:
        return float("nan")
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        x, y = collate(rows[i:i + batch_size], pad_id)
        with train.autocast(device, dtype):
            logits, _ = model(x.to(device))
        picked, mask = token_logprobs(logits, y.to(device))
        total, count = total - picked.sum().item(), count + mask.sum().item()
    model.train()
    return total / max(count, 1)


@torch.no_grad()
def greedy_reply(model, tok, messages, max_new_tokens=24):
    """The model's answer to messages, greedy (temperature 0), stopping at <|im_end|>."""
    end = tok.special_tokens["<|im_end|>"]
    ids, _ = render_chat(tok, messages, add_generation_prompt=True)
    if hasattr(model, "new_kv_cache"):  # MiniMind: the KV-cached streaming generate
        out = list(model.generate(ids, max_new_tokens=max_new_tokens, temperature=0, stop_tokens=[end]))
    else:  # gpt.GPT: argmax one token at a time over the (cropped) window
        was, out = model.training, []
        model.eval()
        window = model.config.block_size
        device = next(model.parameters()).device
        for _ in range(max_new_tokens):
            logits, _ = model(torch.tensor([(ids + out)[-window:]], device=device))
            out.append(int(logits[0, -1].argmax()))
            if out[-1] == end:
                break
        model.train(was)
    return tok.decode([t for t in out if t != end]).strip()


def exact_match(model, tok, items, max_new_tokens=24):
    """Share of items whose greedy answer equals the expected answer exactly."""
    if not items:
        return float("nan")
    return sum(greedy_reply(model, tok, it["messages"][:-1], max_new_tokens) == it["answer"]
               for it in items) / len(items)


# ---------------------------------------------------------------------------------------------
# The fine-tuning loop (shared with dpo.py): schedule, clipping, logging, checkpoints, resume
# ---------------------------------------------------------------------------------------------
@dataclass
class FineTuneConfig:
    """The flags sft.py and dpo.py share; each script's config adds its own and its defaults."""
    init: str = field(default="out/pretrain", metadata={"help": "run directory to start from (a pre-training run)"})
    data: str = field(default="python-docs", metadata={"help": "python-docs (built in) | a MiniMind SFT .jsonl"})
    seq_len: int = field(default=0, metadata={"help": "longest conversation in tokens (0: the model's context)"})
    batch_size: int = field(default=32, metadata={"help": "conversations per step"})
    max_steps: int = field(default=1200, metadata={"help": "optimizer steps"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (below pre-training's)"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine floor as a fraction of lr"})
    warmup_steps: int = field(default=50, metadata={"help": "linear warmup steps"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decay (matrices only)"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient norm to this (0: off)"})
    eval_exact: int = field(default=200, metadata={"help": "held-out exercises for exact match (0: all)"})
    eval_heldout: int = field(default=0, metadata={
        "help": "held-out conversations (dpo.py: pairs) for held-out loss (preference accuracy) (0: all)"})
    max_new_tokens: int = field(default=24, metadata={"help": "longest generated answer in exact match"})
    out_dir: str = field(default="out/sft", metadata={"help": "run directory to write"})
    save_every: int = field(default=500, metadata={"help": "steps between checkpoints"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --out-dir exactly"})
    overwrite: bool = field(default=False, metadata={"help": "start a new run in an --out-dir that holds one"})
    halt_at: int = field(default=0, metadata={"help": "stop after this step with a checkpoint, as if interrupted"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | mps"})
    dtype: str = field(default="auto", metadata={"help": "auto | fp32 | bf16 | fp16"})
    seed: int = field(default=1337, metadata={"help": "random seed (data order)"})


class RandomBatches:
    """Each step draws batch_size item indices at random (with replacement) from its own
    generator, whose state goes into train_state.pt: a resumed run draws the same batches."""

    def __init__(self, n_items, batch_size, seed):
        self.n_items, self.batch_size = n_items, batch_size
        self.gen = torch.Generator().manual_seed(seed)

    def next(self):
        return torch.randint(self.n_items, (self.batch_size,), generator=self.gen).tolist()


def load_stage(cfg, cls, stage):
    """Shared start of sft.py and dpo.py: on --resume the saved config (only resume, halt_at,
    device, out_dir may change); device, precision, seed; the --init run."""
    if cfg.resume:
        saved = Path(cfg.out_dir) / "config.json"
        if not saved.exists():
            raise UserError(f"{saved}: no such file; nothing to resume")
        keep = {k: getattr(cfg, k) for k in ("resume", "overwrite", "halt_at", "device", "out_dir")}
        cfg = train.read_saved_config(cls, saved, keep)
    train.check_positive(cfg, ("batch_size", "max_steps", "save_every"))
    train.refuse_to_overwrite(cfg)
    if cfg.lr <= 0:
        raise UserError(f"--lr must be positive; got {cfg.lr}")
    device = train.check_device(cfg.device)
    dtype = train.pick_dtype(device, cfg.dtype)
    torch.manual_seed(cfg.seed)
    model, tok, payload = train.load_run(cfg.init, device)
    window = payload["config"].get("max_seq_len", payload["config"].get("block_size"))
    if cfg.seq_len > window or cfg.seq_len < 0:
        raise UserError(f"--seq-len {cfg.seq_len}: the model in {cfg.init} takes at most {window} tokens")
    cfg = dataclasses.replace(cfg, seq_len=cfg.seq_len or window)
    print(f"{stage}: {payload['arch']} from {cfg.init} ({payload.get('stage', 'pretrain')}, step "
          f"{payload.get('step')}), {device} {dtype}")
    return cfg, model.train(), tok, payload, device, dtype


def fine_tune(cfg, stage, model, tok, payload, device, dtype, n_items, step_loss, evaluate, labels):
    """Run cfg.max_steps optimizer steps of step_loss(indices) -> (loss, {name: value to log}),
    with evaluate() -> {metric: value} at the start and the end, printed as a before/after table
    (labels: {metric: row label}). Returns {"step", "before", "after"} ("after" absent on a halt)."""
    out = Path(cfg.out_dir)
    optimizer = train.make_optimizer(model, cfg.lr, cfg.weight_decay, (0.9, 0.95), device)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=dtype == torch.float16)
    batches = RandomBatches(n_items, cfg.batch_size, cfg.seed)
    step, before = 0, None
    if cfg.resume:
        state = train.load_checkpoint(out, model, optimizer, scaler)
        step, before = state["step"], state["before"]
        batches.gen.set_state(state["batches"])
    out.mkdir(parents=True, exist_ok=True)
    train.atomic_write(out / "config.json", lambda f: f.write(json.dumps(dataclasses.asdict(cfg), indent=2).encode()))
    log = train.RunLog(out, step if cfg.resume else None)
    if before is None:
        before = evaluate()
        log.write(step=0, eval="before", **before)

    def checkpoint(at_step):
        train.save_checkpoint(out, model, payload["arch"], payload["config"], tok, optimizer, scaler, at_step,
                              {"batches": batches.gen.get_state(), "before": before}, stage=stage)
        train.write_loss_svg(out / "log.jsonl", out / "loss.svg")

    bar = tqdm(total=cfg.max_steps, initial=step, unit="step", dynamic_ncols=True)
    try:
        while step < cfg.max_steps:
            lr = train.lr_at(step, cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, logs = step_loss(batches.next())
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf")).item()
            if not math.isfinite(loss.item()) or not (math.isfinite(grad_norm) or scaler.is_enabled()):
                raise UserError(f"loss {loss.item()}, gradient norm {grad_norm} at step {step + 1}; stopped. The "
                                f"last good checkpoint in {out} is untouched (try a lower --lr)")
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            log.write(step=step, loss=loss.item(), lr=lr, grad_norm=grad_norm, **logs)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}")
            bar.update()
            if step % cfg.save_every == 0 or step == cfg.halt_at:
                checkpoint(step)
            if step == cfg.halt_at:
                tqdm.write(f"halted at step {step} (--halt-at); continue with --resume --out-dir {out}")
                return {"step": step, "before": before}
    except KeyboardInterrupt:
        checkpoint(step)
        tqdm.write(f"\ninterrupted: saved step {step} to {out}; continue with --resume --out-dir {out}")
        return {"step": step, "before": before}
    finally:
        bar.close()
    checkpoint(step)
    after = evaluate()
    log.write(step=step, eval="after", **after)
    print(f"{'metric':<32}{'before':>10}{'after':>10}")
    for key, label in labels.items():
        print(f"{label:<32}{before[key]:>10.4f}{after[key]:>10.4f}")
    print(f"done: {step} steps. Run directory: {out}")
    return {"step": step, "before": before, "after": after}


# ---------------------------------------------------------------------------------------------
# SFT itself
# ---------------------------------------------------------------------------------------------
@dataclass
class SFTConfig(FineTuneConfig):
    show_example: bool = field(default=False, metadata={"help": "print one rendered conversation as a table and exit"})


def show_example(tok, messages):
    """Print a conversation token by token: the input, the target the model must predict there,
    and whether that target is trained. Lines marked `yes` are the only ones the loss sees."""
    ids, trained = render_chat(tok, messages)
    shown = lambda t: repr(tok.decode_bytes([t]).decode("utf-8", "replace"))
    print(f"{'pos':>4}  {'input token':<20}{'target':<20}trained")
    for t in range(len(ids) - 1):
        print(f"{t:>4}  {shown(ids[t]):<20}{shown(ids[t + 1]):<20}{'yes' if trained[t + 1] else '-'}")
    print(f"{sum(trained[1:])} of {len(ids) - 1} targets trained: the assistant's words and its <|im_end|>")


def sft(cfg):
    if cfg.show_example:
        _, tok, _ = train.load_run(cfg.init)
        items = python_docs_conversations()[0]
        show_example(tok, [{"role": "system", "content": "You are a helpful assistant."},
                           *items[0]["messages"], *items[1]["messages"]])
        return None
    cfg, model, tok, payload, device, dtype = load_stage(cfg, SFTConfig, "sft")
    rows, held, exact = load_sft_data(cfg.data, tok, cfg.seq_len)
    exact = exact[:cfg.eval_exact] if cfg.eval_exact else exact
    held = held[:cfg.eval_heldout] if cfg.eval_heldout else held
    pad = tok.special_tokens["<|endoftext|>"]
    print(f"{len(rows):,} training conversations, {len(held):,} held out, {len(exact)} held-out exercises")

    def step_loss(indices):
        x, y = collate([rows[i] for i in indices], pad)
        return model_loss(model, x, y, device, dtype), {"tokens": int((y != IGNORE).sum())}

    def evaluate():
        return {"val_loss": heldout_loss(model, held, pad, device, dtype),
                "exact_match": exact_match(model, tok, exact, cfg.max_new_tokens)}

    return fine_tune(cfg, "sft", model, tok, payload, device, dtype, len(rows), step_loss, evaluate,
                     {"val_loss": "held-out assistant loss", "exact_match": "held-out exact match"})


def main(argv=None, **overrides):
    """Fine-tune with flags from argv (or sys.argv) and keyword overrides (for notebooks)."""
    return sft(train.parse_config(SFTConfig, argv, None, overrides))


if __name__ == "__main__":
    run_cli(main)
