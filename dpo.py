"""dpo.py: Direct Preference Optimization with a hand-written loss and a frozen reference (book
chapter 10).

    python dpo.py --init out/sft                      # built-in preference pairs -> out/dpo
    python dpo.py --init out/sft --data pairs.jsonl   # MiniMind's format:
                                                      # {"chosen": [...], "rejected": [...]}
    python dpo.py --init out/sft --loss ipo --beta 0.5
    python dpo.py --init out/sft --precompute-ref     # reference log-probs once, then free the
                                                      # reference

Reading order: preference pairs (built in, or MiniMind's jsonl) -> sequence log-probabilities on
the response tokens -> the DPO, conservative DPO and IPO losses, with the derivation -> the
reference model (live, or precomputed) -> evaluation -> DPO as a stage of train.py's training
loop -> main. The masks and the start from a run come from sft.py; the run directory it writes
has stage "dpo".

Imports: sft.py (chat rows, masks, the fine-tuning config), train.py (the loop), lora.py (the
reference under LoRA: the adapters off), rundir.py.
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import lora
import safety
import sft
import train
from rundir import UserError, autocast, option, parse_config, pick_dtype, run_cli


# ---------------------------------------------------------------------------------------------
# Preference pairs: the same prompt, a chosen answer and a rejected one
# ---------------------------------------------------------------------------------------------
def parse_pair_line(obj, where):
    """One MiniMind DPO line -> {"chosen": messages, "rejected": messages}, checked."""
    if safety.is_hh(obj):  # HH-RLHF: transcripts as text, parsed into messages
        return safety.hh_pair(obj, where)
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
    plausible wrong one (off by one, another function's summary, a reversal left undone)
    rejected."""
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
    elif data == "safety":
        train_pairs, held_pairs, exact = (builtin_pairs(safety.builtin_conversations()),
                                          builtin_pairs(safety.builtin_conversations("test")), [])
    else:
        pairs = sft.read_jsonl(data, parse_pair_line)
        train_pairs = [p for i, p in enumerate(pairs) if i % heldout_every != heldout_every - 1]
        held_pairs = [p for i, p in enumerate(pairs) if i % heldout_every == heldout_every - 1]
        exact = []

    def to_rows(pairs):
        rows = [(sft.chat_example(tok, p["chosen"], seq_len),
                 sft.chat_example(tok, p["rejected"], seq_len)) for p in pairs]
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
    with autocast(device, dtype):
        logits, _ = model(x.to(device))
    picked, _ = sft.token_logprobs(logits, y.to(device))
    return picked.sum(-1)


def pair_logprobs(model, pairs, pad_id, device, dtype):
    """(chosen, rejected) summed log-probs of a batch of pairs, in ONE forward pass of 2B rows."""
    both = sequence_logprobs(model, [c for c, _ in pairs] + [r for _, r in pairs], pad_id, device,
                             dtype)
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
        p = sigma(beta * h),
        h = [log pi(y_c|x) - log pi_ref(y_c|x)] - [log pi(y_r|x) - log pi_ref(y_r|x)]
    and DPO minimises -log sigma(beta * h): a classifier on pairs, no reward model, no sampling.

    What the gradient does:
        d/dtheta = -beta * sigma(-beta * h) * (grad log pi(y_c) - grad log pi(y_r)).
    It raises the chosen answer and lowers the rejected one, weighted by sigma(-beta * h): by how
    wrong the implicit reward still orders the pair. Pairs already ordered well fade out.

    Conservative DPO (label_smoothing eps): the label is right with probability 1 - eps, so the
    loss is -(1 - eps) log sigma(beta h) - eps log sigma(-beta h), which stops pushing at a
    finite h.
    IPO: (h - 1 / (2 beta))^2 regresses h to a fixed margin instead of driving it to infinity.

    Returns (loss, chosen rewards, rejected rewards): rewards are beta * log(pi / pi_ref),
    detached."""
    h = (pi_c - ref_c) - (pi_r - ref_r)
    if kind == "sigmoid":
        losses = (-(1 - label_smoothing) * F.logsigmoid(beta * h)
                  - label_smoothing * F.logsigmoid(-beta * h))
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
    if not rows:
        return torch.zeros(0, 2)
    out = [torch.stack(pair_logprobs(ref, rows[i:i + batch_size], pad_id, device, dtype), 1).cpu()
           for i in range(0, len(rows), batch_size)]
    return torch.cat(out)


def make_reference(policy):
    """The reference model: what the policy is before DPO changes it, in eval mode (no dropout),
    never updated. Full fine-tuning: a frozen copy of the policy, a second copy of the weights.
    LoRA: the policy itself with its adapters off (lora.adapters_off), since the adapters are
    all that DPO changes: one copy of the weights serves both (a function of the input ids)."""
    if not any(isinstance(m, lora.LoRALinear) for m in policy.modules()):
        ref = copy.deepcopy(policy).eval()
        ref.requires_grad_(False)
        return ref

    def policy_with_adapters_off(x):
        was_training = policy.training
        policy.eval()
        try:
            with torch.no_grad(), lora.adapters_off(policy):
                return policy(x)
        finally:
            policy.train(was_training)
    return policy_with_adapters_off


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def preference_figures(model, rows, ref_table, cfg, pad_id, device, dtype, batch_size=32):
    """On held-out pairs: the loss DPO trains (cfg's preference loss against the reference's
    log-probs in ref_table [pairs, 2], plus --sft-weight times the SFT loss on the chosen answers),
    its preference part alone, and the preference accuracy: the share of pairs where the model gives
    the chosen answer a higher log-probability than the rejected one (its own preference)."""
    if not rows:
        return {"val_loss": float("nan"), "val_dpo_loss": float("nan"),
                "pref_accuracy": float("nan")}
    was_training = model.training
    model.eval()
    wins, pref, nll, tokens = 0, 0.0, 0.0, 0
    for i in range(0, len(rows), batch_size):
        c, r = pair_logprobs(model, rows[i:i + batch_size], pad_id, device, dtype)
        ref_c, ref_r = ref_table[i:i + batch_size].to(device).unbind(1)
        pref += preference_loss(c, r, ref_c, ref_r, cfg.beta, cfg.loss,
                                cfg.label_smoothing)[0].item() * len(c)
        nll, tokens = nll - c.sum().item(), tokens + sum(sum(ch[1][1:])
                                                         for ch, _ in rows[i:i + batch_size])
        wins += int((c > r).sum())
    model.train(was_training)
    pref /= len(rows)
    return {"val_loss": pref + cfg.sft_weight * nll / max(tokens, 1), "val_dpo_loss": pref,
            "pref_accuracy": wins / len(rows)}


# ---------------------------------------------------------------------------------------------
# DPO as a stage of the training loop (train.train_loop does the rest)
# ---------------------------------------------------------------------------------------------
def dpo_stage(cfg, policy, ref, ref_table, held_ref, tok, rows, held, exact, dtype):
    """DPO as a train.Stage. A micro-batch is the chosen and the rejected rows of its pairs, in one
    forward pass of 2B rows, and (with --precompute-ref) the reference's log-probs of those pairs,
    from ref_table; otherwise the live reference model `ref` computes them. held_ref: the
    reference's log-probs of the held-out pairs. The loss: the preference loss averaged over the
    step's pairs, plus --sft-weight times the SFT loss on the chosen answers, averaged over their
    tokens."""
    device, pad = str(next(policy.parameters()).device), tok.special_tokens["<|endoftext|>"]

    def batch(indices):
        pairs = [rows[i] for i in indices]
        x, y = sft.collate([c for c, _ in pairs] + [r for _, r in pairs], pad)
        return x.to(device), y.to(device), (None if ref_table is None
                                            else ref_table[indices].to(device))

    def counts(b):
        n = b[0].size(0) // 2
        return {"pairs": n, "tokens": int((b[1][:n] != sft.IGNORE).sum())}

    def loss(net, b, totals):
        x, y, ref_lp = b
        n = x.size(0) // 2
        if ref_lp is None:  # the reference runs first: the policy's forward must be the last one,
            with torch.no_grad():  # whose MoE balancing term the loop adds
                ref_lp = sft.token_logprobs(ref(x)[0], y)[0].sum(-1).view(2, n).T
        picked, _ = sft.token_logprobs(net(x)[0], y)
        pi_c, pi_r = picked.sum(-1).split(n)
        pref, chosen, rejected = preference_loss(pi_c, pi_r, ref_lp[:, 0], ref_lp[:, 1], cfg.beta,
                                                 cfg.loss, cfg.label_smoothing)
        share = pref * n / totals["pairs"]
        # DPO can lower the chosen answers too, as long as the rejected fall faster
        if cfg.sft_weight:
            # SFT's loss: sum / count
            share = share + cfg.sft_weight * -pi_c.sum() / totals["tokens"]
        return share, {"rewards/chosen": chosen.mean().item(),
                       "rewards/rejected": rejected.mean().item(),
                       "rewards/accuracies": (chosen > rejected).float().mean().item(),
                       "rewards/margins": (chosen - rejected).mean().item()}

    def evaluate(model, full):
        metrics = preference_figures(model, held, held_ref, cfg, pad, device, dtype)
        if full:
            metrics["exact_match"] = sft.exact_match(model, tok, exact, cfg.max_new_tokens)
        return metrics

    labels = {"val_loss": "held-out loss (as trained)", "val_dpo_loss": "held-out DPO loss",
              "pref_accuracy": "held-out preference accuracy",
              "exact_match": "held-out exact match"}
    return train.Stage("dpo", len(rows), batch, counts, loss, evaluate, labels, cfg.seq_len)


@dataclass
class DPOConfig(sft.FineTuneConfig):
    init: str = option("out/sft", "run directory to start from (an SFT run)")
    data: str = option("python-docs", "python-docs | safety (built in) | a .jsonl: "
                       "MiniMind DPO or HH-RLHF")
    batch_size: int = option(16, "preference pairs per micro-batch (per process)")
    max_steps: int = option(300, "optimizer steps (0: only evaluate and write the start model)")
    lr: float = option(2e-4, "peak learning rate (below SFT's)")
    warmup_steps: int = option(20, "linear warmup steps")
    eval_every: int = option(100, "steps between evaluations on held-out pairs")
    out_dir: str = option("out/dpo", "run directory to write")
    loss: str = option("sigmoid", "sigmoid (DPO) | ipo")
    beta: float = option(0.1, "strength of the pull toward the reference")
    label_smoothing: float = option(0.0, "conservative DPO: the assumed share of pairs whose "
                                         "label is wrong (0 to 0.5)")
    precompute_ref: bool = option(False, "compute the reference log-probs once and free the "
                                         "reference model")
    sft_weight: float = option(1.0, "add this times the SFT loss on the chosen answers (as in "
                                    "RPO): keeps them likely; 0: plain DPO")


# Each preset: the hardware and model sizes it is for, then its defaults. A pair is two rows, so a
# micro-batch of 8 pairs is 16 sequences; the frozen reference costs one more copy of the weights.
PRESETS = {
    "cpu": ("2 CPU cores, about a minute: the CPU SFT run (nano) on the built-in pairs",
            dict(batch_size=16, max_steps=300, dtype="fp32")),
    "t4": ("free Colab T4 (16 GB, fp16 + scaler): models up to ~100M, full fine-tuning, "
           "frozen reference",
           dict(batch_size=8, grad_accum=4, seq_len=512, max_steps=500, lr=1e-4, dtype="fp16",
                eval_every=100, save_every=250)),
    "a100": ("one A100 (bf16): models up to ~400M, full fine-tuning, frozen reference",
             dict(batch_size=32, seq_len=1024, max_steps=500, lr=1e-4, dtype="bf16", compile=True,
                  eval_every=100, save_every=250)),
    "t4-lora": ("free Colab T4 (16 GB, fp16 + scaler): SFT runs of 135M-600M imported models, LoRA "
                "rank 16, checkpointing; the reference is the policy with its adapters off",
                dict(lora_rank=16, lora_alpha=32.0, batch_size=4, grad_accum=8, seq_len=512,
                     max_steps=500, lr=5e-5, warmup_steps=20, dtype="fp16", grad_checkpoint=True,
                     eval_every=100, save_every=250, eval_exact=100, eval_heldout=256)),
    "cpu-lora": ("2 CPU cores, minutes: a 135M SFT run (SmolLM2-135M), LoRA rank 16, 20 steps",
                 dict(lora_rank=16, lora_alpha=32.0, batch_size=4, seq_len=256, max_steps=20,
                      lr=2e-4, warmup_steps=2, dtype="fp32", eval_every=1000, save_every=20,
                      eval_exact=20, eval_heldout=32, max_new_tokens=16)),
}


def check_dpo(cfg):
    if not 0 <= cfg.label_smoothing < 0.5:
        raise UserError(f"--label-smoothing must be in [0, 0.5); got {cfg.label_smoothing}")
    if cfg.beta <= 0:
        raise UserError(f"--beta must be positive; got {cfg.beta}")
    if cfg.loss not in ("sigmoid", "ipo"):
        raise UserError(f"--loss must be sigmoid or ipo; got {cfg.loss!r}")


def dpo(cfg):
    check_dpo(cfg)
    if cfg.dry_run:  # the reference: none with --precompute-ref, the same weights under LoRA
        reference = None if cfg.precompute_ref else "live" if cfg.lora_rank else "copy"
        pair_rows = lambda tok, seq_len: [row for pair in load_pairs(cfg.data, tok, seq_len)[0]
                                          for row in pair]
        print(sft.dry_run(cfg, "dpo", 2, reference, pair_rows)[0])
        return None
    cfg = sft.settle(cfg, DPOConfig)
    with train.processes(cfg.device) as (rank, world, device):
        torch.manual_seed(cfg.seed)
        cfg, policy, tok, payload, extra = sft.start(cfg, device)
        dtype = pick_dtype(device, cfg.dtype)
        if payload.get("stage") != "sft" and train.is_master():
            print(f"note: {cfg.init} is a {payload.get('stage', 'pretrain')} run; "
                  f"DPO usually starts from an SFT run")
        rows, held, exact = load_pairs(cfg.data, tok, cfg.seq_len)
        exact = exact[:cfg.eval_exact] if cfg.eval_exact else exact
        held = held[:cfg.eval_heldout] if cfg.eval_heldout else held
        sft.announce("dpo", cfg, policy, payload, device, dtype,
                     f"{len(rows):,} training pairs, {len(held):,} held out, {len(exact)} "
                     f"held-out exercises; loss {cfg.loss}, beta {cfg.beta}"
                     + (f", label smoothing {cfg.label_smoothing}" if cfg.label_smoothing else ""))
        # The reference is the --init model: copied before a resumed policy loads its later weights,
        # or, under LoRA, the policy with its adapters off.
        ref, pad = make_reference(policy), tok.special_tokens["<|endoftext|>"]
        held_ref = precompute_reference(ref, held, pad, device, dtype)  # for the held-out DPO loss
        ref_table = (precompute_reference(ref, rows, pad, device, dtype) if cfg.precompute_ref
                     else None)
        if cfg.precompute_ref:
            ref = None  # its memory is free from here on: only the [pairs, 2] tables are kept
        stage = dpo_stage(cfg, policy, ref, ref_table, held_ref, tok, rows, held, exact, dtype)
        return train.train_loop(cfg, policy, tok, stage, extra)


def main(argv=None, **overrides):
    """Align with flags from argv (or sys.argv) and keyword overrides (for notebooks)."""
    return dpo(parse_config(DPOConfig, argv, PRESETS, overrides))


if __name__ == "__main__":
    run_cli(main)
