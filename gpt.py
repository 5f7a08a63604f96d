"""gpt.py: a GPT written from scratch, in one file (chapter 2 of the book).

Read it top to bottom: a character tokenizer and a batch sampler, self-attention written out by
hand, multi-head attention, the MLP, the transformer block, the GPT model, a small training loop,
and sampling. It imports only torch, tqdm and the standard library, so it can be pasted whole into a
notebook cell.

    python gpt.py                                     # trains a tiny GPT on Python's help topics
    python gpt.py --data input.txt --size shakespeare-char --max-iters 5000
    python gpt.py --help                              # every option with its default

From a notebook: `from gpt import main; out = main(max_iters=500)`; `out["model"]` is the model.
Pasted whole into a notebook cell, the file runs a short demo (150 steps) instead of parsing flags.
The `GPT` class also serves train.py, which trains it on BPE tokens (`--model gpt`), and convert.py,
which loads released GPT-2 weights into it. It answers the questions every script asks of a model
the same way minimind.MiniMind does: `context_length`, `n_layers`, `width`, `num_params()` and a
streaming `generate` that yields token ids one at a time.
"""
import argparse
import contextlib
import dataclasses
import math
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F
from tqdm import tqdm

# ----------------------------------------------------------------------------------------------
# 1. Data: characters in, integers out


def load_text(path=None):
    """The text of `path`, or, when path is None, Python's own help topics (~0.5 MB of English that
    ship with every CPython, so nothing is downloaded). A file that cannot be read is a ValueError,
    which the command line prints as one `error:` line."""
    if path is None:
        from pydoc_data.topics import topics
        return "\n\n".join(topics[name] for name in sorted(topics))
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start})") from None


class CharTokenizer:
    """The simplest tokenizer: every distinct character of the text is one token.
    CharTokenizer("hello").encode("hell") -> [1, 0, 2, 2] (ids follow sorted order: e, h, l, o)."""

    def __init__(self, text):
        self.chars = sorted(set(text))
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    def encode(self, s):
        return [self.stoi[ch] for ch in s]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


def split_data(ids, val_fraction=0.1):
    """First 90% for training, last 10% for validation: contiguous, so no val text leaks in."""
    data = torch.tensor(ids, dtype=torch.long)
    n = int(len(data) * (1 - val_fraction))
    return data[:n], data[n:]


def get_batch(data, block_size, batch_size, device="cpu"):
    """`batch_size` random windows of the text. The target y is x shifted left by one, so position t
    of y is the token that follows x[0..t]: one window gives block_size training examples at
    once."""
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([data[i : i + block_size] for i in ix])  # (B, T)
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix])  # (B, T)
    return x.to(device), y.to(device)


# ----------------------------------------------------------------------------------------------
# 2. Self-attention, by hand


def causal_attention(q, k, v, dropout_p=0.0):
    """Each position takes a weighted average of the values at positions up to itself.
    q, k, v: (B, nh, T, hs), that is batch, heads, time, head size. Returns (B, nh, T, hs).
    This computes what F.scaled_dot_product_attention(q, k, v, is_causal=True) computes."""
    T, hs = q.size(-2), q.size(-1)
    # How much does query t "match" key s? One dot product per pair:
    # (B, nh, T, hs) @ (B, nh, hs, T).
    # Dividing by sqrt(hs) keeps the scores' variance near 1 whatever the head size, so the softmax
    # below starts out soft instead of nearly one-hot (which would give vanishing gradients).
    att = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, nh, T, T)
    # The causal mask: position t may not look at positions after t, since those are exactly the
    # tokens it is trained to predict. -inf becomes a weight of exactly 0 after the softmax.
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(diagonal=1)  # (T, T)
    att = att.masked_fill(future, float("-inf"))
    # Softmax over the keys turns each row of scores into weights that are >= 0 and sum to 1.
    att = F.softmax(att, dim=-1)  # (B, nh, T, T)
    att = F.dropout(att, p=dropout_p) if dropout_p > 0 else att
    return att @ v  # (B, nh, T, T) @ (B, nh, T, hs) -> (B, nh, T, hs)


class CausalSelfAttention(nn.Module):
    """Multi-head attention: n_head small attentions side by side, each on its own slice of the
    channels, so that different heads can attend to different things (the previous letter, the
    start of the word, the matching bracket...)."""

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be a multiple of n_head"
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.fused = config.fused_attention
        # One matrix computes queries, keys and values for all heads at once (faster than three).
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        B, T, C = x.shape  # batch, time, channels (n_embd)
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        # Cut the channels into heads and move the head axis next to batch, so every head is an
        # independent attention computed in one batched matmul.
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        p = self.dropout if self.training else 0.0
        if self.fused:  # the same maths in one fused kernel: faster, and less memory on a GPU
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            y = causal_attention(q, k, v, dropout_p=p)  # (B, nh, T, hs)
        # Put the heads side by side again: (B, nh, T, hs) -> (B, T, nh, hs) -> (B, T, C).
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))  # the projection mixes what the heads found


class MLP(nn.Module):
    """Attention moves information between positions; the MLP then processes it at each position
    on its own: widen 4x, a non-linearity, narrow back."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # GELU: a smooth ReLU. GPT-2 used its tanh approximation, which differs from the exact
        # one by less than 0.001 and is slower on a CPU, so we train with the exact one; released
        # GPT-2 weights were trained with the approximation, so an imported GPT-2 keeps it.
        self.gelu = nn.GELU(approximate=config.gelu_approximate)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        # (B, T, C) -> (B, T, 4C) -> (B, T, C)
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """One transformer block, pre-norm: x + attn(norm(x)), then x + mlp(norm(x)).
    The residual stream x passes through untouched by any norm, so gradients flow straight from the
    loss to the first layer; this is what lets deep stacks train without a careful warm-up."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))  # (B, T, C)
        x = x + self.mlp(self.ln_2(x))  # (B, T, C)
        return x


# ----------------------------------------------------------------------------------------------
# 3. The model


@dataclass
class GPTConfig:
    n_layer: int = 4  # number of blocks
    n_head: int = 4  # attention heads per block
    n_embd: int = 128  # width of the residual stream
    block_size: int = 64  # longest context the model sees (number of learned positions)
    vocab_size: int = 256  # number of distinct tokens; set from the tokenizer
    dropout: float = 0.0  # 0 for small data and short runs, 0.1-0.2 when a model starts to overfit
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2
    fused_attention: bool = True  # F.scaled_dot_product_attention instead of causal_attention
    gelu_approximate: str = "none"  # "none": exact GELU; "tanh": GPT-2's approximation (imports)


# Named sizes: keyword arguments for GPTConfig (the char sizes get vocab_size from the tokenizer).
SIZES = {
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0),
    "shakespeare-char": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, dropout=0.0),
}


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token id -> vector
            wpe=nn.Embedding(config.block_size, config.n_embd),  # position 0..T-1 -> vector
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the output head reuses the token embedding matrix. A token's input vector
        # and the direction that predicts it are then the same; it saves vocab_size * n_embd
        # parameters (38.6M of GPT-2 small's 124M) and trains at least as well.
        self.lm_head.weight = self.transformer.wte.weight
        # GPT-2 initialisation: every weight ~ N(0, 0.02), biases 0 (LayerNorm keeps weight 1).
        self.apply(self._init_weights)
        # Each block adds two outputs (attn and mlp c_proj) to the residual stream; shrinking those
        # by 1/sqrt(2 * n_layer) keeps the stream's variance about the same whatever the depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # The questions every script asks of a model, answered as minimind.MiniMind answers them.
    context_length = property(lambda self: self.config.block_size)  # the longest context
    n_layers = property(lambda self: self.config.n_layer)
    width = property(lambda self: self.config.n_embd)  # of the residual stream

    def num_params(self, active=False):
        """Number of parameters; the tied embedding / head matrix counts once. (`active` is for
        MiniMind's mixture of experts; in a GPT every token uses every parameter.)"""
        return sum(p.numel() for p in self.parameters())  # parameters() yields a shared one once

    def forward(self, idx, targets=None):
        """idx: (B, T) token ids. Returns logits (B, T, vocab_size) and, given targets (B, T), the
        mean cross-entropy over the positions whose target is not -100 (else loss is None)."""
        B, T = idx.shape
        assert T <= self.config.block_size, f"{T} tokens; block_size is {self.config.block_size}"
        pos = torch.arange(T, device=idx.device)  # (T,)
        # Attention by itself does not know the order of the tokens; adding a learned vector per
        # position tells it. (T, C) broadcasts over the batch.
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x)  # (B, T, C)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, vocab_size): a score for every possible next token
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T),
                                   ignore_index=-100)
        return logits, loss

    @torch.no_grad()  # on a generator function torch turns grad off only while it runs
    def generate(self, idx, max_new_tokens=256, temperature=1.0, top_k=None, top_p=None,
                 repetition_penalty=1.0, stop_tokens=(), seed=None, generator=None):
        """Yield new token ids one at a time, each sampled from the model's prediction for the
        next position, so a caller can print as they come.

        idx: the prompt, a list of ids or a (1, T) tensor. temperature < 1 sharpens the
        distribution, 0 is greedy (always the most likely token); top_k and top_p cut its tail
        (see sample_token); repetition_penalty > 1 makes tokens already seen less likely. The stop
        token, when one comes, is yielded and ends the generation. seed (or a torch.Generator on
        the model's device) makes sampling reproducible. There is no KV cache: every step runs
        the last block_size tokens through the model again, the simple way (minimind.py adds a
        cache)."""
        tokens = idx.reshape(-1).tolist() if torch.is_tensor(idx) else [int(t) for t in idx]
        device = self.lm_head.weight.device
        if seed is not None:
            generator = torch.Generator(device=device).manual_seed(seed)
        seen = torch.zeros(self.config.vocab_size, dtype=torch.bool, device=device)
        seen[tokens] = True
        was_training = self.training
        self.eval()  # no dropout while sampling
        try:
            for _ in range(max_new_tokens):
                context = torch.tensor([tokens[-self.config.block_size:]], device=device)  # (1, T)
                logits = self(context)[0][0, -1].float()  # (vocab_size,): the next position
                if repetition_penalty != 1.0:  # CTRL's rule: shrink what was already said
                    penalised = torch.where(logits > 0, logits / repetition_penalty,
                                            logits * repetition_penalty)
                    logits = torch.where(seen, penalised, logits)
                token = sample_token(logits, temperature, top_k, top_p, generator)
                yield token
                if token in stop_tokens:
                    return
                tokens.append(token)
                seen[token] = True
        finally:
            self.train(was_training)


def sample_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """One token id from the logits (vocab_size,) of the next position.

    temperature 0 takes the most likely token. Otherwise the probabilities are
    softmax(logits / temperature), then two optional cuts of the unlikely tail, which is where
    samples derail: top_k keeps the k most likely tokens; top_p keeps the most likely tokens
    whose probabilities add up to top_p (the "nucleus"). torch.multinomial renormalises what is
    left, so zeroed tokens simply never come."""
    if temperature == 0:
        return int(logits.argmax())
    probs = F.softmax(logits / temperature, dim=-1)
    if top_k:
        kth = torch.topk(probs, min(top_k, probs.numel())).values[-1]
        probs = torch.where(probs < kth, 0.0, probs)
    if top_p is not None and top_p < 1.0:
        ranked, order = (probs / probs.sum()).sort(descending=True)
        above = ranked.cumsum(0) - ranked  # the mass of the tokens ranked before each one
        probs = probs.scatter(0, order, torch.where(above >= top_p, 0.0, ranked))
    return int(torch.multinomial(probs, 1, generator=generator))


# ----------------------------------------------------------------------------------------------
# 4. Training


def make_optimizer(model, learning_rate, weight_decay, betas, fused=False):
    """AdamW with weight decay on the matrices (embeddings, Linear weights) only: decaying biases
    and LayerNorm gains towards 0 only hurts, they hold no 'memorised' detail worth shrinking.
    Frozen parameters (requires_grad False, as under LoRA) stay out of it: AdamW keeps two numbers
    per parameter it holds. fused=True: one CUDA kernel for the whole update (train.py on a GPU)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    extra = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)


def get_lr(it, learning_rate, min_lr, warmup_iters, max_iters):
    """Linear warm-up (large early steps on random weights are unstable), then a cosine decay to
    min_lr (small late steps settle into a minimum instead of bouncing around it)."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / warmup_iters
    progress = min(1.0, (it - warmup_iters) / max(1, max_iters - warmup_iters))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


@torch.no_grad()
def estimate_loss(model, splits, eval_iters, block_size, batch_size, device):
    """Mean loss over eval_iters random batches of each split: one batch is too noisy to compare."""
    model.eval()
    out = {}
    for name, data in splits.items():
        losses = [model(*get_batch(data, block_size, batch_size, device))[1].item()
                  for _ in range(eval_iters)]
        out[name] = sum(losses) / len(losses)
    model.train()
    return out


def option(default, help):
    """A TrainConfig field with its --help text attached."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    data: str = option(None, "a UTF-8 text file; None: Python's help topics (pydoc_data.topics)")
    size: str = option("cpu", "a name in SIZES")
    max_iters: int = option(2000, "optimizer steps")
    batch_size: int = option(12, "windows per step")
    learning_rate: float = option(1e-3, "peak learning rate, after warm-up")
    min_lr: float = option(1e-4, "learning rate at the end of the cosine decay")
    warmup_iters: int = option(100, "steps of linear warm-up")
    weight_decay: float = option(0.1, "AdamW weight decay, matrices only")
    beta2: float = option(0.99, "AdamW beta2 (0.99, not 0.999: few tokens a step, noisy gradients)")
    grad_clip: float = option(1.0, "clip the gradient norm to this (0: no clipping)")
    eval_interval: int = option(250, "estimate train/val loss every this many steps")
    eval_iters: int = option(20, "batches per loss estimate")
    sample_tokens: int = option(500, "characters to sample at the end")
    temperature: float = option(0.8, "sampling temperature (0: greedy)")
    top_k: int = option(0, "sample only from the k most likely characters (0: all)")
    fused_attention: bool = option(True, "F.scaled_dot_product_attention (fast), else by hand")
    device: str = option("auto", "cuda, mps or cpu; auto picks the first available")
    seed: int = option(1337, "seeds weights, batches and the sample")


def pick_device(name="auto"):
    """cuda, then Apple's mps, then cpu, unless `name` says which."""
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def train(model, train_data, val_data, cfg, device):
    """The training loop: every eval_interval steps (and at the end) estimate the train and val
    losses; every step: set the learning rate, take a batch, forward, backward, clip, update.
    Returns the last loss estimates."""
    optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay, (0.9, cfg.beta2))
    # bf16 autocast where the GPU has it; plain fp32 elsewhere (and always on CPU).
    use_bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    autocast = torch.autocast("cuda", torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    splits, block_size = {"train": train_data, "val": val_data}, model.config.block_size
    bar = tqdm(range(cfg.max_iters + 1), desc="training", unit="step", file=sys.stderr)
    for it in bar:
        if it % cfg.eval_interval == 0 or it == cfg.max_iters:
            with autocast:
                losses = estimate_loss(model, splits, cfg.eval_iters, block_size, cfg.batch_size,
                                       device)
            bar.write(f"step {it:5d}: train loss {losses['train']:.4f}, "
                      f"val loss {losses['val']:.4f}")
        if it == cfg.max_iters:
            break
        lr = get_lr(it, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.max_iters)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(train_data, block_size, cfg.batch_size, device)
        with autocast:
            _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if it % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}")
    bar.close()
    return losses


def main(**overrides):
    """Train a character-level GPT and print a sample. Keyword arguments are TrainConfig fields.
    Returns a dict: model, tokenizer, config, train_loss, val_loss, sample, seconds."""
    cfg = TrainConfig(**overrides)
    if cfg.size not in SIZES:
        raise ValueError(f"unknown size {cfg.size!r}; choose one of {', '.join(SIZES)}")
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)

    text = load_text(cfg.data)
    tok = CharTokenizer(text)
    train_data, val_data = split_data(tok.encode(text))
    mconf = GPTConfig(**{**SIZES[cfg.size], "vocab_size": tok.vocab_size,
                         "fused_attention": cfg.fused_attention})
    if len(val_data) <= mconf.block_size:
        raise ValueError(f"{cfg.data} is too short: its last 10% must be longer than "
                         f"block_size={mconf.block_size}")
    print(f"data: {len(text):,} characters, vocab {tok.vocab_size}, "
          f"train {len(train_data):,} / val {len(val_data):,}")
    model = GPT(mconf).to(device)
    print(f"model: {cfg.size}, {model.num_params() / 1e6:.2f}M parameters, device {device}")

    t0 = time.time()
    losses = train(model, train_data, val_data, cfg, device)
    seconds = time.time() - t0
    print(f"trained {cfg.max_iters} steps in {seconds:.1f}s")

    # Sample: start from a newline and let the model write.
    start = tok.encode("\n") if "\n" in tok.stoi else [0]
    new = model.generate(start, cfg.sample_tokens, temperature=cfg.temperature,
                         top_k=cfg.top_k or None, seed=cfg.seed)
    sample = tok.decode(start + list(new))
    print("-" * 40 + " sample " + "-" * 40 + sample + "\n" + "-" * 88)
    return dict(model=model, tokenizer=tok, config=cfg, train_loss=losses["train"],
                val_loss=losses["val"], sample=sample, seconds=seconds)


def in_notebook():
    """True inside a Jupyter kernel, whose own command line (-f kernel.json) is not for us."""
    return "ipykernel" in sys.modules


def parse_args(argv=None):
    """One --flag per TrainConfig field; an unknown flag is an error (a typo must not be
    silently ignored). In a notebook the kernel's own arguments are not read at all."""
    if argv is None and in_notebook():
        argv = []
    parser = argparse.ArgumentParser(
        description="Train a character-level GPT (chapter 2) and sample from it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"]
        if f.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=help_text)
        elif f.name == "size":
            parser.add_argument(flag, choices=list(SIZES), default=f.default, help=help_text)
        else:
            parser.add_argument(flag, type=f.type, default=f.default, help=help_text)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ValueError(f"unknown argument(s): {' '.join(unknown)} (see --help)")
    return vars(args)


if __name__ == "__main__":
    try:
        if in_notebook():  # pasted into a notebook cell: a short demo; main(...) for the full run
            print("notebook: a short demo (150 steps); main(max_iters=2000) is the full run")
            main(max_iters=150, eval_interval=50, sample_tokens=200)
        else:
            main(**parse_args())
    except (ValueError, OSError) as e:  # a bad file or value: one line, not a traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
