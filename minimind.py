"""minimind.py: the MiniMind decoder, a small modern Llama-style language model
(book chapters 5 and 8).

Chapter 2's GPT learned positions and used LayerNorm and a GELU MLP. MiniMind (and Llama, Qwen,
Mistral) changes five things, each built by hand below, smallest first:

    RMSNorm          normalise by the root mean square only, no mean, no bias
    RoPE             rotate queries and keys by an angle that grows with the position
    GQA              several query heads share one key/value head: a smaller KV cache
    SwiGLU           a gated MLP: down(silu(gate(x)) * up(x))
    MoE (optional)   several SwiGLU "experts", a router picks top_k of them per token

then the block, the model, a KV cache and `generate`, which streams token ids one at a time
(sections 1-7); section 8: what a size costs. decode.py arranges the same arithmetic for fast
decoding (chapter 11), the path chat.py and its server run.

Run `python minimind.py` for the table of named sizes (parameters, memory, FLOPs, KV cache).
Use it from Python:

    from minimind import MiniMind, MiniMindConfig, SIZES
    model = MiniMind(MiniMindConfig(**SIZES["tiny"], vocab_size=6400))
    logits, loss = model(idx, targets)                       # idx, targets: [B, T] token ids
    for token in model.generate([1, 2, 3], max_new_tokens=20, temperature=0.8, top_p=0.9):
        print(token)

Imports torch and the standard library only; nothing from the rest of the project.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint  # gradient checkpointing (model.grad_checkpoint)


# ----------------------------------------------------------------------------------------------
# 1. Configuration and the named sizes


@dataclass
class MiniMindConfig:
    dim: int = 512  # width of the residual stream
    n_layers: int = 8  # number of blocks
    n_heads: int = 8  # query heads
    n_kv_heads: int = 2  # key/value heads; n_heads is a multiple (equal: plain multi-head)
    head_dim: int = 0  # width of one head; 0 = dim // n_heads (Qwen3: 128 at dim 1024, 16 heads)
    vocab_size: int = 6400  # set from the tokenizer by the trainer
    max_seq_len: int = 512  # longest context; the RoPE tables and the KV cache are this long
    rope_theta: float = 1e6  # RoPE base: larger = slower-turning angles = longer usable context
    rope_scaling: dict = None  # long-context RoPE, config.json's dict or None: scale_frequencies
    norm_eps: float = 1e-6  # added under the square root in RMSNorm
    ffn_hidden: int = 0  # hidden width of each SwiGLU; 0 or None = derive it with ffn_rule
    # "8/3": 64*ceil((8*dim/3)/64) (MiniMind2); "pi": 64*ceil(pi*dim/64) (MiniMind-3)
    ffn_rule: str = "8/3"
    qk_norm: bool = False  # RMSNorm on each query and key head before RoPE (MiniMind-3, Qwen3)
    qkv_bias: bool = False  # biases on the query, key and value projections (Qwen2, Qwen2.5)
    dropout: float = 0.0
    tie_embeddings: bool = True  # lm_head shares its weight with embed_tokens
    n_experts: int = 0  # 0 = dense SwiGLU; > 0 = that many routed experts per block
    top_k: int = 1  # experts each token is sent to
    n_shared_experts: int = 0  # experts every token always goes through, besides the routed ones
    aux_loss_coef: float = 0.01  # weight of the MoE load-balancing loss in the total loss

    def __post_init__(self):
        if not self.head_dim:
            assert self.dim % self.n_heads == 0, "dim must be a multiple of n_heads (or head_dim)"
            self.head_dim = self.dim // self.n_heads
        assert self.n_heads % self.n_kv_heads == 0, "n_heads must be a multiple of n_kv_heads"
        assert self.head_dim % 2 == 0, "head_dim must be even for RoPE"
        assert self.ffn_rule in ("8/3", "pi"), f"ffn_rule is '8/3' or 'pi', not {self.ffn_rule!r}"
        assert self.n_experts == 0 or 1 <= self.top_k <= self.n_experts, "top_k: 1 to n_experts"

    @property
    def hidden_dim(self):
        """The SwiGLU hidden width. SwiGLU has three matrices instead of two, so 8/3*dim keeps the
        parameters of a 4*dim GELU MLP; rounding up to a multiple of 64 suits the matmul kernels."""
        if self.ffn_hidden:
            return self.ffn_hidden
        if self.ffn_rule == "pi":
            return 64 * math.ceil(math.pi * self.dim / 64)
        return 64 * ((int(8 * self.dim / 3) + 63) // 64)  # MiniMind's 64*ceil(8d/3/64)


# Named sizes: keyword arguments for MiniMindConfig (the trainer sets vocab_size and max_seq_len).
# The first four are MiniMind's published models; their parameter counts are checked in the tests.
SIZES = {
    "nano": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2),  # 1.6M: tests, CPU preset
    "tiny": dict(dim=256, n_layers=6, n_heads=4, n_kv_heads=2),  # 6.1M: minutes on two CPU cores
    "minimind2-small": dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=2),  # 25.83M
    "minimind2": dict(dim=768, n_layers=16, n_heads=8, n_kv_heads=2),  # 104.03M
    "minimind3": dict(dim=768, n_layers=8, n_heads=8, n_kv_heads=4, qk_norm=True,
                      ffn_rule="pi"),  # 63.91M
    "minimind3-moe": dict(dim=768, n_layers=8, n_heads=8, n_kv_heads=4, qk_norm=True, ffn_rule="pi",
                          n_experts=4, top_k=1),  # 198.42M total, 63.94M active per token
    "minimind-350m": dict(dim=1024, n_layers=32, n_heads=16, n_kv_heads=4),  # 361M: a100-350m
}


# ----------------------------------------------------------------------------------------------
# 2. RMSNorm


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight.

    LayerNorm subtracts the mean, divides by the standard deviation, then scales and shifts.
    RMSNorm keeps only the rescaling: cheaper, and it trains as well. The sum of squares is done in
    fp32 even when x is bf16 (squaring bf16 loses precision, fp16 can overflow), then cast back."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# 3. Rotary position embeddings (RoPE)


def rope_tables(head_dim, max_seq_len, theta=1e6, scaling=None):
    """cos and sin tables, each [max_seq_len, head_dim], in the rotate-half layout.

    Channel pair i (channels i and i + head_dim/2) at position m is rotated by the angle
    m * theta^(-2i/head_dim): pair 0 turns fastest (one radian per token), the last pair slowest.
    Rotate-half pairs channel i with channel i + head_dim/2 (not 2i with 2i+1), as Hugging Face's
    Llama and Qwen do, so the weights export to them without permuting rows. scaling: below."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    inv_freq = scale_frequencies(inv_freq, scaling) if scaling else inv_freq  # [hd/2]
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)  # [L, hd/2]
    angles = torch.cat([angles, angles], dim=-1)  # [L, hd]: both halves of a pair share an angle
    return angles.cos(), angles.sin()


def scale_frequencies(inv_freq, scaling):
    """RoPE scaling (a config's rope_scaling): run a model past the context it was trained on by
    slowing its frequencies, so that angles at the new positions look like angles it has seen.
    "linear": every frequency / factor, the new context squeezed into the trained one (position m
    turns as m / factor did), at the price of blurring neighbouring positions.
    "llama3" (Llama 3.1, 3.2) slows only the pairs that need it. A pair's turns over the original
    context: orig * f / 2pi. Under low_freq_factor turns it never came round in training, so later
    angles would be new to it: slowed by factor, as linear. Over high_freq_factor turns it has seen
    every angle and carries the local order: kept. Between, a mix linear in the turns."""
    if scaling["rope_type"] == "linear":
        return inv_freq / scaling["factor"]
    assert scaling["rope_type"] == "llama3", f"rope_scaling {scaling} is not linear or llama3"
    turns = scaling["original_max_position_embeddings"] * inv_freq / (2 * math.pi)
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    keep = ((turns - low) / (high - low)).clamp(0, 1)  # 0: slowed by factor ... 1: kept
    return inv_freq * ((1 - keep) / scaling["factor"] + keep)


def rotate_half(x):
    """[x1, x2] -> [-x2, x1], with x1, x2 the two halves of the last axis."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x, cos, sin):
    """Rotate each channel pair (a, b) of x by its angle: (a cos - b sin, b cos + a sin).
    x: [B, H, T, hd]; cos, sin: [T, hd] for the positions of x's T tokens.
    Why this encodes position: a rotation by angle m*f, then a dot product with a vector rotated by
    n*f, depends only on (m - n)*f. So a query at position m and a key at position n score
    q.k by their *relative* position, whatever m and n are (tested in tests/test_minimind.py)."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


# ----------------------------------------------------------------------------------------------
# 4. The KV cache


class KVCache:
    """Keys and values of the tokens seen so far, one pair of tensors per layer, so that generating
    a new token runs the model on that one token instead of on the whole context again.

    k[i], v[i]: [B, n_kv_heads, max_seq_len, head_dim], filled for positions [0, length).
    They are stored *before* grouped-query attention repeats them to n_heads: with 8 query heads
    and 2 KV heads the cache is 4x smaller than with plain multi-head attention."""

    def __init__(self, config, batch_size=1, device="cpu", dtype=torch.float32):
        shape = (batch_size, config.n_kv_heads, config.max_seq_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.length = 0  # positions filled; forward() sets it to start_pos + T


# ----------------------------------------------------------------------------------------------
# 5. Attention: hand-written, grouped-query, with a KV cache


def attention_by_hand(q, k, v, mask=None, dropout_p=0.0):
    """softmax(q k^T / sqrt(hd) + mask) v, what F.scaled_dot_product_attention computes.
    q: [B, H, T, hd], k and v: [B, H, L, hd] (L >= T keys when a cache holds earlier tokens).
    mask: bool [T, L], True where query t may look at key l; None = everything."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # [B, H, T, L]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # -inf -> weight exactly 0
    weights = F.softmax(scores.float(), dim=-1).to(q.dtype)  # [B, H, T, L], rows sum to 1
    if dropout_p > 0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v  # [B, H, T, hd]


def causal_mask(T, L, start_pos, device):
    """bool [T, L]: the query at position start_pos + t may see the keys at 0..start_pos + t."""
    q_pos = start_pos + torch.arange(T, device=device)
    return torch.arange(L, device=device)[None, :] <= q_pos[:, None]


def repeat_kv(x, n_rep):
    """[B, H_kv, L, hd] -> [B, H_kv * n_rep, L, hd]: KV head j serves j*n_rep..(j+1)*n_rep-1."""
    if n_rep == 1:
        return x
    B, H_kv, L, hd = x.shape
    return x[:, :, None].expand(B, H_kv, n_rep, L, hd).reshape(B, H_kv * n_rep, L, hd)


class Attention(nn.Module):
    """Grouped-query attention (GQA) with RoPE.

    n_heads query heads, but only n_kv_heads key/value heads, each shared by n_heads/n_kv_heads
    query heads. Quality stays close to full multi-head attention while the K/V projections and,
    above all, the KV cache shrink by that factor: at inference the cache, not the weights, is what
    fills memory on long contexts."""

    def __init__(self, cfg):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        # QK-norm: normalising each head's q and k bounds the attention logits, a cheap guard
        # against the loss spikes that large logits cause.
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.use_sdpa = True  # False = attention_by_hand (the tests check both agree)

    def forward(self, x, cos, sin, cache=None, start_pos=0):
        """x: [B, T, dim] for positions start_pos .. start_pos+T-1; cos, sin: [T, hd].
        cache: None, or this layer's (k, v) buffers from a KVCache, which receive this call's keys
        and values and supply the earlier ones."""
        B, T, _ = x.shape
        H, H_kv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, hd).transpose(1, 2)  # [B, H, T, hd]
        k = self.k_proj(x).view(B, T, H_kv, hd).transpose(1, 2)  # [B, H_kv, T, hd]
        v = self.v_proj(x).view(B, T, H_kv, hd).transpose(1, 2)  # [B, H_kv, T, hd]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        if cache is not None:  # write this step's keys/values, then read back all of them so far
            k_buf, v_buf = cache  # each [B, H_kv, max_seq_len, hd]
            k_buf[:, :, start_pos:start_pos + T] = k
            v_buf[:, :, start_pos:start_pos + T] = v
            k, v = k_buf[:, :, :start_pos + T], v_buf[:, :, :start_pos + T]  # [B, H_kv, L, hd]
            k, v = k.to(q.dtype), v.to(q.dtype)  # no-op unless the cache dtype differs (autocast)
        L = k.size(2)
        k, v = repeat_kv(k, H // H_kv), repeat_kv(v, H // H_kv)  # [B, H, L, hd]

        p = self.dropout if self.training else 0.0
        # Which keys each query may see: all of them for one new token; a lower-triangular mask
        # for a prompt from position 0; a shifted triangle for a chunk appended to a cache.
        mask = None if T == 1 else causal_mask(T, L, start_pos, x.device)  # [T, L]
        if not self.use_sdpa:
            y = attention_by_hand(q, k, v, mask, p)
        elif mask is not None and start_pos == 0 and L == T:  # the fused causal kernel
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, H * hd)  # [B, T, H*hd]
        return self.resid_dropout(self.o_proj(y))  # [B, T, dim]


# ----------------------------------------------------------------------------------------------
# 6. SwiGLU feed-forward and the mixture of experts


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), silu(a) = a * sigmoid(a).
    The gate branch decides, channel by channel, how much of the up branch passes: a learned,
    input-dependent filter, which trains better than GPT's plain GELU MLP at the same size."""

    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class MoE(nn.Module):
    """Mixture of experts: n_experts SwiGLUs, of which each token uses only top_k.

    The router (`gate`, a Linear dim -> n_experts) gives each token a probability per expert; the
    token goes to its top_k experts and their outputs are summed, weighted by those probabilities
    (renormalised to sum to 1 when top_k > 1; with top_k = 1 the raw probability is kept, as in
    MiniMind, so the language-model loss still trains the router). Shared experts, if any, see
    every token. Parameters grow with n_experts, compute per token only with top_k.

    Load balancing. Left alone, the router sends everything to a few experts and the rest never
    learn. The auxiliary loss (Switch Transformer) is
        aux = n_experts * sum_i f_i * P_i
    f_i: fraction of the (token, slot) assignments that went to expert i; P_i: mean router
    probability of expert i. It is smallest, 1, when both are uniform (1/n_experts each). After a
    forward, self.aux holds it for this layer."""

    def __init__(self, cfg):
        super().__init__()
        self.n_experts, self.top_k = cfg.n_experts, cfg.top_k
        self.gate = nn.Linear(cfg.dim, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(FeedForward(cfg) for _ in range(cfg.n_experts))
        self.shared_experts = nn.ModuleList(FeedForward(cfg) for _ in range(cfg.n_shared_experts))
        self.aux = torch.zeros(())

    def forward(self, x):
        B, T, D = x.shape
        x = x.reshape(B * T, D)  # [N, D]: routing is per token, the batch layout does not matter
        probs = F.softmax(self.gate(x).float(), dim=-1)  # [N, E]
        weight, chosen = probs.topk(self.top_k, dim=-1)  # [N, k] each
        if self.top_k > 1:
            weight = weight / weight.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == e)  # the tokens sent to expert e, which slot
            # an expert with no tokens runs on 0 rows: DDP wants a gradient for every parameter
            y = expert(x[token]) * weight[token, slot, None]  # [n_e, D]
            out.index_add_(0, token, y.to(out.dtype))
        for expert in self.shared_experts:
            out = out + expert(x)
        f = F.one_hot(chosen.reshape(-1), self.n_experts).float().mean(0)  # [E], sums to 1
        P = probs.mean(0)  # [E], sums to 1
        self.aux = self.n_experts * (f * P).sum()
        return out.view(B, T, D)


# ----------------------------------------------------------------------------------------------
# 7. The block and the model


class Block(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)); names follow Hugging Face Llama."""

    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MoE(cfg) if cfg.n_experts else FeedForward(cfg)

    def forward(self, x, cos, sin, cache=None, start_pos=0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, start_pos)  # [B, T, dim]
        return x + self.mlp(self.post_attention_layernorm(x))  # [B, T, dim]


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Pick one token id from logits [V].

    temperature 0: the most likely token (greedy). Otherwise softmax(logits / temperature):
    below 1 sharper, above 1 flatter. top_k keeps only the k most likely tokens; top_p ("nucleus")
    keeps the smallest set of most likely tokens whose probabilities add up to at least top_p.
    Both cut the long tail of unlikely tokens that makes samples derail."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        before = probs.cumsum(-1) - probs  # the mass ranked above each; 0 for the top one
        sorted_logits = sorted_logits.masked_fill(before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(0, order, sorted_logits)
    probs = F.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def penalise_repeats(logits, seen, penalty):
    """CTRL's repetition penalty on logits [V]: where seen [V] is True, a positive logit is divided
    by penalty and a negative one multiplied, so penalty > 1 makes those tokens less likely.
    Also for rows at once (logits, seen [B, V], penalty [B, 1]: chat.py's batch)."""
    if not torch.is_tensor(penalty) and penalty == 1.0:
        return logits
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def crop_start(length, start, window):
    """Where the context starts, given `length` tokens so far of which tokens[start:] were the
    context: the same start while they fit the window; when they overflow it, the most recent
    window // 2 (at least 1). Dropping half at once, not one token a step, means the cache is
    filled again once every window // 2 tokens, not every token.  crop_start(9, 0, 8) == 5."""
    return length - max(1, window // 2) if length - start > window else start


class MiniMind(nn.Module):
    grad_checkpoint = False  # True: keep only each block's input, recompute the block in backward

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:  # the same matrix maps ids to vectors and vectors to logits
            self.lm_head.weight = self.embed_tokens.weight
        # RoPE tables: computed, not learned: out of the state_dict, rebuilt from the config on load
        cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta,
                               config.rope_scaling)
        self.register_buffer("rope_cos", cos, persistent=False)  # [max_seq_len, hd]
        self.register_buffer("rope_sin", sin, persistent=False)
        self.aux_loss = torch.zeros(())  # the MoE term of the last forward's loss (0 when dense)
        # Weights ~ N(0, 0.02), biases (Qwen2's q/k/v) 0; o_proj and down_proj, which write into the
        # residual stream, shrink by 1/sqrt(2 n_layers) so its variance does not grow with depth.
        for name, p in self.named_parameters():
            if p.dim() == 2:
                writes_to_stream = name.endswith(("o_proj.weight", "down_proj.weight"))
                std = 0.02 / math.sqrt(2 * config.n_layers) if writes_to_stream else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)

    # The questions every script asks of a model, answered as gpt.GPT answers them.
    context_length = property(lambda self: self.config.max_seq_len)  # the longest context
    n_layers = property(lambda self: self.config.n_layers)
    width = property(lambda self: self.config.dim)  # of the residual stream

    def num_params(self, active=False):
        """Parameters, the tied embedding/head counted once. active=True: only those one token
        uses, i.e. top_k of the n_experts routed experts in each MoE block."""
        n = sum(p.numel() for p in self.parameters())
        if active and self.config.n_experts:
            per_expert = sum(p.numel() for p in self.layers[0].mlp.experts[0].parameters())
            n -= self.config.n_layers * (self.config.n_experts - self.config.top_k) * per_expert
        return n

    def new_kv_cache(self, batch_size=1, dtype=None):
        """An empty KVCache on the model's device, in the model's dtype unless told otherwise."""
        w = self.embed_tokens.weight
        return KVCache(self.config, batch_size, w.device, dtype or w.dtype)

    def forward(self, idx, targets=None, kv_cache=None, start_pos=0):
        """idx: [B, T] token ids at positions start_pos .. start_pos+T-1.
        targets: [B, T] next-token ids, -100 where no loss is wanted (padding, prompt tokens).
        kv_cache: a KVCache from new_kv_cache(B); this call's keys and values are written into it
        at start_pos, and the queries attend to everything it holds up to start_pos + T.
        Returns logits [B, T, vocab_size] and loss (None without targets): mean cross-entropy +
        self.aux_loss, the MoE term (aux_loss_coef * the sum of the layers' aux; 0 when dense).
        model.grad_checkpoint = True: training keeps only each block's input for the backward pass
        and runs the block again there: activation memory of about one block instead of all of
        them, for about a third more compute. Gradients are the same."""
        B, T = idx.shape
        if start_pos + T > self.config.max_seq_len:
            raise ValueError(f"positions up to {start_pos + T}, "
                             f"but max_seq_len is {self.config.max_seq_len}")
        cos = self.rope_cos[start_pos:start_pos + T]  # [T, hd]
        sin = self.rope_sin[start_pos:start_pos + T]
        x = self.dropout(self.embed_tokens(idx))  # [B, T, dim]; no position vector: RoPE does it
        for i, layer in enumerate(self.layers):
            cache = (kv_cache.k[i], kv_cache.v[i]) if kv_cache is not None else None
            if self.grad_checkpoint and self.training and torch.is_grad_enabled() and cache is None:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin, cache, start_pos)  # [B, T, dim]
        if kv_cache is not None:
            kv_cache.length = start_pos + T
        logits = self.lm_head(self.norm(x))  # [B, T, vocab_size]

        if self.config.n_experts:
            self.aux_loss = self.config.aux_loss_coef * sum(layer.mlp.aux for layer in self.layers)
        else:
            self.aux_loss = torch.zeros((), device=idx.device)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(B * T, -1).float(), targets.reshape(B * T),
                                   ignore_index=-100) + self.aux_loss
        return logits, loss

    # on a generator function torch turns grad off only while it runs, not between yields
    @torch.no_grad()
    def generate(self, idx, max_new_tokens=256, temperature=1.0, top_k=None, top_p=None,
                 repetition_penalty=1.0, stop_tokens=(), seed=None, generator=None, use_cache=True,
                 next_logits=None):
        """Yield new token ids (ints) one by one, for one sequence, so a chat can print as it goes.

        idx: the prompt, a list of ids, a 1-D tensor or a [1, T] tensor.
        temperature, top_k, top_p: see sample_next (temperature 0 = greedy).
        repetition_penalty > 1 makes the tokens seen (prompt, output) less likely: penalise_repeats.
        stop_tokens: ids that end generation; the stop token is yielded, then the generator returns,
        so a caller can tell "stopped" from "ran out of max_new_tokens".
        seed or generator: make sampling reproducible (a seed makes a fresh torch.Generator).

        use_cache=True runs the prompt once (prefill), filling a KVCache (section 4), then only the
        newest token each step; use_cache=False runs the whole window through forward() for every
        token: the slow reference, the benchmark's baseline. When the window is full, crop_start
        drops the oldest tokens and the cache is filled again from the rest (RoPE positions
        change, so old keys cannot be reused); greedy output is the same either way.
        next_logits(context, fresh) -> [V]: forward()'s logits after the window's tokens computed
        another way (decode.py's fast path passes its own); fresh: the prompt, or the window after
        a crop. The model is in eval mode meanwhile."""
        if torch.is_tensor(idx) and idx.dim() == 2 and idx.size(0) != 1:
            raise ValueError("generate takes one sequence: a list, a 1-D tensor or a [1, T] tensor")
        tokens = idx.reshape(-1).tolist() if torch.is_tensor(idx) else [int(t) for t in idx]
        stop_tokens = set(stop_tokens or ())
        if not tokens:
            raise ValueError("generate needs a prompt of at least one token")
        device, window = self.rope_cos.device, self.config.max_seq_len
        if seed is not None:
            generator = torch.Generator(device=device).manual_seed(seed)
        seen = torch.zeros(self.config.vocab_size, dtype=torch.bool, device=device)
        seen[torch.tensor(tokens, device=device)] = True
        cache = self.new_kv_cache() if use_cache and next_logits is None else None

        def forward_logits(context, fresh):  # the cache holds all but the newest unless fresh
            new = context if cache is None or fresh else context[-1:]
            x = torch.tensor([new], device=device)  # [1, len(new)] at their positions in context
            return self(x, kv_cache=cache, start_pos=len(context) - len(new))[0][0, -1]  # [V]

        next_logits = next_logits or forward_logits
        start = max(0, len(tokens) - window)  # index in tokens of the first token in the window
        was_training = self.training
        self.eval()
        try:
            for i in range(max_new_tokens):
                cropped = crop_start(len(tokens), start, window)
                fresh, start = i == 0 or cropped != start, cropped
                logits = next_logits(tokens[start:], fresh)
                logits = penalise_repeats(logits.float(), seen, repetition_penalty)  # [V]
                token = sample_next(logits, temperature, top_k, top_p, generator)
                yield token
                if token in stop_tokens:
                    return
                tokens.append(token)
                seen[token] = True
        finally:
            self.train(was_training)


# ----------------------------------------------------------------------------------------------
# 8. Costs: FLOPs per token and the size table


def flops_per_token(config, seq_len=None):
    """Training FLOPs per token (forward + backward), the estimate of Kaplan et al. / PaLM:

        6 * N  +  12 * n_layers * dim * seq_len
    N: parameters in matmuls one token goes through (active ones for MoE; the embedding lookup
    is not a matmul, but with tied embeddings the same matrix is the lm_head, which is). Each
    multiply-add is 2 FLOPs in the forward pass and 4 in the backward, hence 6N. The second term
    is attention itself, q.k and weights.v over seq_len keys (the causal mask saves half of it
    in principle; the estimate ignores that, as nanoGPT's does). seq_len defaults to max_seq_len.
    Multiply by tokens to get a run's compute; divide by 3 for inference FLOPs."""
    seq_len = seq_len or config.max_seq_len
    with torch.device("meta"):  # builds the model without allocating its weights
        n = MiniMind(config).num_params(active=True)
    if not config.tie_embeddings:
        n -= config.vocab_size * config.dim  # the separate input embedding does no matmul
    return 6 * n + 12 * config.n_layers * config.dim * seq_len


def kv_bytes_per_token(config, bytes_per_value=2):
    """KV-cache bytes per token of context: keys and values, all layers and KV heads (bf16: 2)."""
    return 2 * config.n_layers * config.n_kv_heads * config.head_dim * bytes_per_value


def size_table(vocab_size=6400, seq_len=512):
    """The named sizes as lines of text (what `python minimind.py` prints)."""
    head = (f"{'size':<16}{'dim':>5}{'layers':>7}{'heads':>7}{'ffn':>6}{'params':>10}{'active':>10}"
            f"{'fp32 MB':>9}{'bf16 MB':>9}{'int8 MB':>9}{'GFLOP/tok':>10}{'KV B/tok':>10}")
    lines = [head, "-" * len(head)]
    for name, kw in SIZES.items():
        cfg = MiniMindConfig(**kw, vocab_size=vocab_size, max_seq_len=seq_len)
        with torch.device("meta"):
            model = MiniMind(cfg)
        total, active = model.num_params(), model.num_params(active=True)
        lines.append(
            f"{name:<16}{cfg.dim:>5}{cfg.n_layers:>7}{f'{cfg.n_heads}/{cfg.n_kv_heads}':>7}"
            f"{cfg.hidden_dim:>6}{total / 1e6:>9.2f}M{active / 1e6:>9.2f}M"
            f"{total * 4 / 2**20:>9.1f}{total * 2 / 2**20:>9.1f}{total / 2**20:>9.1f}"
            f"{flops_per_token(cfg, seq_len) / 1e9:>10.3f}{kv_bytes_per_token(cfg):>10,}")
    lines.append(f"vocab {vocab_size}, seq_len {seq_len}. heads: query/KV. int8: weights only "
                 "(scales not counted). GFLOP/tok: training (6N + attention). "
                 "KV B/tok: bf16 cache per token of context.")
    return lines


if __name__ == "__main__":
    print("\n".join(size_table()))
