"""dpo.py: Direct Preference Optimization with a hand-written loss and a frozen reference (book chapter 10).

    python dpo.py --init out/sft                      # built-in preference pairs -> out/dpo
    python dpo.py --init out/sft --data pairs.jsonl   # MiniMind's format: {"chosen": [...], "rejected": [...]}
    python dpo.py --init out/sft --loss ipo --beta 0.5
    python dpo.py --init out/sft --precompute-ref     # reference log-probs once, then free the reference

Reading order: preference pairs (built in, or MiniMind's jsonl) -> sequence log-probabilities on
the response tokens -> the DPO, conservative DPO and IPO losses, with the derivation -> the
reference model (live, or precomputed) -> evaluation -> the run. The training loop, the masks and
the run directory come from sft.py and train.py; the run directory it writes has stage "dpo".
"""
import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import sft
import train
from train import UserError, run_cli


# ---------------------------------------------------------------------------------------------
# Preference pairs: the same prompt, a chosen answer and a rejected one
# ---------------------------------------------------------------------------------------------
def parse_pair_line(obj, where):
    """One MiniMind DPO line -> {"chosen": messages, "rejected": messages}, checked."""
    if not isinstance(obj, dict):
        raise UserError(f'{where}: expected an object with "chosen" and "rejected" message lists')
    for side in ("chosen", "rejected"):
        if side not in obj:
            raise UserError(f'{where}: no "{side}" side in this pair')
        sft.check_messages(obj[side], f"{where}: {side}")
        if obj[side][-1]["role"] != "assistant":
            raise UserError(f"{where}: {side}: the last message must be the assistant's answer")
    return {"chosen": obj["chosen"], "rejected": obj["rejected"]}


def builtin_pairs(items):
    """sft.py's built-in items -> pairs: the same question, its right answer chosen and its
    plausible wrong one (off by one, another function's summary, a reversal left undone) rejected."""
    def reply(it, answer):
        return it["messages"][:-1] + [{"role": "assistant", "content": answer}]
    return [{"chosen": reply(it, it["answer"]), "rejected": reply(it, it["wrong"])} for it in items]


def load_pairs(data, tok, seq_len, heldout_every=20):
    """--data -> (train pairs, held-out pairs, held-out exercises for exact match). A pair is
    (chosen row, rejected row), rows as sft.chat_example makes them; a pair with a side that
    trains no token within seq_len is dropped."""
    if data == "python-docs":
        train_items, heldout = sft.python_docs_conversations()
        train_pairs, held_pairs = builtin_pairs(train_items), builtin_pairs(heldout)
        exact = [it for it in heldout if it["kind"] != "doc"]
    else:
        pairs = sft.read_jsonl(data, parse_pair_line)
        train_pairs = [p for i, p in enumerate(pairs) if i % heldout_every != heldout_every - 1]
        held_pairs = [p for i, p in enumerate(pairs) if i % heldout_every == heldout_every - 1]
        exact = []

    def to_rows(pairs):
        rows = [(sft.chat_example(tok, p["chosen"], seq_len), sft.chat_example(tok, p["rejected"], seq_len))
                for p in pairs]
        return [r for r in rows if r[0] and r[1]]
    rows, held = to_rows(train_pairs), to_rows(held_pairs)
    if not rows:
        raise UserError(f"{data}: no pair has an answer within --seq-len {seq_len}")
    return rows, held, exact


# ---------------------------------------------------------------------------------------------
# Sequence log-probabilities: log pi(answer | prompt), summed over the trained tokens
# ---------------------------------------------------------------------------------------------
def sequence_logprobs(model, rows, pad_id, device, dtype):
    """[len(rows)] summed log-probabilities of each row's trained tokens: the SFT mask, so the
    prompt and headers do not count. In a multi-turn pair the earlier assistant turns are the
    same on both sides, so their terms cancel in h below and only the final answers matter."""
    x, y = sft.collate(rows, pad_id)
    with train.autocast(device, dtype):
        logits, _ = model(x.to(device))
    picked, _ = sft.token_logprobs(logits, y.to(device))
    return picked.sum(-1)


def pair_logprobs(model, pairs, pad_id, device, dtype):
    """(chosen, rejected) summed log-probs of a batch of pairs, in ONE forward pass of 2B rows."""
    both = sequence_logprobs(model, [c for c, _ in pairs] + [r for _, r in pairs], pad_id, device, dtype)
    return both[:len(pairs)], both[len(pairs):]


# ---------------------------------------------------------------------------------------------
# The losses, by hand
# ---------------------------------------------------------------------------------------------
def preference_loss(pi_c, pi_r, ref_c, ref_r, beta=0.1, kind="sigmoid", label_smoothing=0.0):
    """DPO (kind="sigmoid", with label_smoothing: conservative DPO) or IPO, averaged over the batch.

    Where h comes from. RLHF maximises E[r(x, y)] - beta * KL(pi || pi_ref); its optimum is
    pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x), so any reward can be written through its
    optimal policy: r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)) + beta * log Z(x). Put that into the
    Bradley-Terry model p(chosen > rejected) = sigma(r_c - r_r): Z(x) cancels (same prompt), leaving
        p = sigma(beta * h),  h = [log pi(y_c|x) - log pi_ref(y_c|x)] - [log pi(y_r|x) - log pi_ref(y_r|x)]
    and DPO minimises -log sigma(beta * h): a classifier on pairs, no reward model, no sampling.

    What the gradient does: d/dtheta = -beta * sigma(-beta * h) * (grad log pi(y_c) - grad log pi(y_r)).
    It raises the chosen answer and lowers the rejected one, weighted by sigma(-beta * h): by how
    wrong the implicit reward still orders the pair. Pairs already ordered well fade out.

    Conservative DPO (label_smoothing eps): the label is right with probability 1 - eps, so the
    loss is -(1 - eps) log sigma(beta h) - eps log sigma(-beta h), which stops pushing at a finite h.
    IPO: (h - 1 / (2 beta))^2 regresses h to a fixed margin instead of driving it to infinity.

    Returns (loss, chosen rewards, rejected rewards): rewards are beta * log(pi / pi_ref), detached."""
    h = (pi_c - ref_c) - (pi_r - ref_r)
    if kind == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif kind == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise UserError(f"--loss must be sigmoid or ipo; got {kind!r}")
    return losses.mean(), beta * (pi_c - ref_c).detach(), beta * (pi_r - ref_r).detach()


# ---------------------------------------------------------------------------------------------
# The reference model: a frozen copy, or its log-probabilities computed once
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def precompute_reference(ref, rows, pad_id, device, dtype, batch_size=32):
    """[len(rows), 2] reference (chosen, rejected) log-probs for every pair, in order."""
    out = [torch.stack(pair_logprobs(ref, rows[i:i + batch_size], pad_id, device, dtype), 1).cpu()
           for i in range(0, len(rows), batch_size)]
    return torch.cat(out)


def make_reference(policy):
    """A frozen copy of the policy: eval mode (no dropout), no gradients, never updated."""
    ref = copy.deepcopy(policy).eval()
    ref.requires_grad_(False)
    return ref


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def preference_accuracy(model, rows, pad_id, device, dtype, batch_size=32):
    """Share of held-out pairs where the model gives the chosen answer a higher log-probability
    than the rejected one (the model's own preference, no reference needed)."""
    if not rows:
        return float("nan")
    model.eval()
    wins = 0
    for i in range(0, len(rows), batch_size):
        c, r = pair_logprobs(model, rows[i:i + batch_size], pad_id, device, dtype)
        wins += int((c > r).sum())
    model.train()
    return wins / len(rows)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
@dataclass
class DPOConfig(sft.FineTuneConfig):
    init: str = field(default="out/sft", metadata={"help": "run directory to start from (an SFT run)"})
    data: str = field(default="python-docs", metadata={"help": "python-docs (built in) | a MiniMind DPO .jsonl"})
    batch_size: int = field(default=16, metadata={"help": "preference pairs per step"})
    max_steps: int = field(default=300, metadata={"help": "optimizer steps"})
    lr: float = field(default=2e-4, metadata={"help": "peak learning rate (below SFT's)"})
    warmup_steps: int = field(default=20, metadata={"help": "linear warmup steps"})
    out_dir: str = field(default="out/dpo", metadata={"help": "run directory to write"})
    loss: str = field(default="sigmoid", metadata={"help": "sigmoid (DPO) | ipo"})
    beta: float = field(default=0.1, metadata={"help": "strength of the pull toward the reference"})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "conservative DPO: the assumed share of pairs whose label is wrong (0 to 0.5)"})
    precompute_ref: bool = field(default=False, metadata={
        "help": "compute the reference log-probs once and free the reference model"})
    sft_weight: float = field(default=1.0, metadata={
        "help": "add this times the SFT loss on the chosen answers (as in RPO): keeps them likely; 0: plain DPO"})


def dpo(cfg):
    cfg, policy, tok, payload, device, dtype = sft.load_stage(cfg, DPOConfig, "dpo")
    if not 0 <= cfg.label_smoothing < 0.5:
        raise UserError(f"--label-smoothing must be in [0, 0.5); got {cfg.label_smoothing}")
    if cfg.beta <= 0:
        raise UserError(f"--beta must be positive; got {cfg.beta}")
    if cfg.loss not in ("sigmoid", "ipo"):
        raise UserError(f"--loss must be sigmoid or ipo; got {cfg.loss!r}")
    if payload.get("stage") != "sft":
        print(f"note: {cfg.init} is a {payload.get('stage', 'pretrain')} run; DPO usually starts from an SFT run")
    rows, held, exact = load_pairs(cfg.data, tok, cfg.seq_len)
    exact = exact[:cfg.eval_exact] if cfg.eval_exact else exact
    held = held[:cfg.eval_heldout] if cfg.eval_heldout else held
    pad = tok.special_tokens["<|endoftext|>"]
    print(f"{len(rows):,} training pairs, {len(held):,} held out, {len(exact)} held-out exercises; "
          f"loss {cfg.loss}, beta {cfg.beta}" + (f", label smoothing {cfg.label_smoothing}" if cfg.label_smoothing else ""))
    # The reference is the --init model, built before a resumed policy loads its later weights.
    ref = make_reference(policy)
    ref_table = None
    if cfg.precompute_ref:
        ref_table = precompute_reference(ref, rows, pad, device, dtype)
        del ref  # its memory is free from here on: only the [pairs, 2] table is kept
        ref = None

    def step_loss(indices):
        batch = [rows[i] for i in indices]
        pi_c, pi_r = pair_logprobs(policy, batch, pad, device, dtype)
        if ref is None:
            ref_c, ref_r = ref_table[indices].to(device).unbind(1)
        else:
            with torch.no_grad():
                ref_c, ref_r = pair_logprobs(ref, batch, pad, device, dtype)
        loss, chosen, rejected = preference_loss(pi_c, pi_r, ref_c, ref_r, cfg.beta, cfg.loss, cfg.label_smoothing)
        if cfg.sft_weight:  # DPO can lower the chosen answers too, as long as the rejected fall faster
            n_tokens = sum(sum(c[1][1:]) for c, _ in batch)
            loss = loss + cfg.sft_weight * -pi_c.sum() / n_tokens  # the SFT loss: sum / count, as in sft.py
        return loss, {"rewards/chosen": chosen.mean().item(), "rewards/rejected": rejected.mean().item(),
                      "rewards/accuracies": (chosen > rejected).float().mean().item(),
                      "rewards/margins": (chosen - rejected).mean().item()}

    def evaluate():
        return {"pref_accuracy": preference_accuracy(policy, held, pad, device, dtype),
                "exact_match": sft.exact_match(policy, tok, exact, cfg.max_new_tokens)}

    return sft.fine_tune(cfg, "dpo", policy, tok, payload, device, dtype, len(rows), step_loss, evaluate,
                         {"pref_accuracy": "held-out preference accuracy", "exact_match": "held-out exact match"})


def main(argv=None, **overrides):
    """Align with flags from argv (or sys.argv) and keyword overrides (for notebooks)."""
    return dpo(train.parse_config(DPOConfig, argv, None, overrides))


if __name__ == "__main__":
    run_cli(main)
