"""decode.py: fast decoding for minimind.py's MiniMind: the same arithmetic as its forward(),
arranged for generating one new token at a time, and a batch of sequences decoded together
(book chapter 11).

    python decode.py        # a demo: the fast path against minimind.py's readable KV cache

    import decode
    decode.prepare_decoding(model, torch.float16)  # once: the weights' decoding layout, kept
    for token in decode.generate(model, prompt_ids, max_new_tokens=50, temperature=0.7):
        print(token)                               # the tokens MiniMind.generate picks

minimind.py's generate, with its readable KV cache (its section 4), is what the chapter teaches;
this file is what chat.py runs: its terminal answers (decode.generate) and the HTTP server's
batch (Decoder). rundir.py asks it whether torch has the fp16 kernel (HAS_FBGEMM_FP16) to choose
the default inference precision. int8.py's layers fuse into it through their for_decoding methods,
without importing it.

Reading order: why decoding is slow and what changes -> the fp16 kernel -> FastLinear and fused
matrices -> the weights' decoding layout -> RMSNorm -> Decoder -> generate -> the demo.

Imports: torch and minimind.py only; in a notebook with minimind.py beside it, the file runs
pasted whole into a cell.
"""
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import minimind

# ----------------------------------------------------------------------------------------------
# Why decoding is slow, and what this file changes
#
# Generating runs the model on one new token per step, so every weight matrix does a single
# matrix-vector product: 2 FLOPs per weight read. The CPU's arithmetic then waits on memory, and a
# step costs (bytes of weights) / (memory bandwidth) plus (number of small tensor ops) x (a few
# microseconds each). minimind.py's forward() is written to be read; the decoding path below
# computes the same function with the choices that measured fastest on a CPU
# (tests/benchmarks/bench_decode.py; minimind2-small, one thread: 1.5x forward() with its cache):
#
#   * weights transposed to [in, out]: x @ w_t reads each row of w_t once, in order; with torch's
#     CPU matmul (MKL) that is ~1.15x nn.Linear's x @ w.T for one row of x
#   * fused matrices: q, k and v are one matmul, gate and up another (7 matmuls a block become 4,
#     each reading a longer run of memory)
#   * 16-bit weights where the device has a kernel for them (FastLinear): half the bytes to read
#   * 40% of forward()'s tensor calls (225 a token against 579): no nn.Module calls, one RoPE for
#     q, k and v, one cache write, tables (RoPE, masks, cache slots) made once a step, not a block
#   * a KV cache with one row per sequence and a position per row, so one step can advance
#     several sequences at once: the HTTP server's batch
#
# minimind.py stays the reference: its generate(use_cache=False) runs forward() on the whole
# window, with hand-written attention available; tests/test_decode.py checks that this path
# picks the same tokens as that one and as minimind.py's KV cache.


def fbgemm_fp16_ok():
    """Does this torch have fbgemm's fp16-weight matmul (x86 builds do; ARM ones do not)?"""
    try:
        w = torch.zeros(16, 16)
        torch.ops.quantized.linear_dynamic_fp16(torch.zeros(1, 16),
                                                torch.ops.quantized.linear_prepack_fp16(w, None))
        return True
    except (AttributeError, RuntimeError):
        return False


HAS_FBGEMM_FP16 = fbgemm_fp16_ok()


# fbgemm's fp16 kernel has two doors in torch. torch.ops.quantized.linear_dynamic_fp16 takes its
# packed weight as a TorchScript object, and handing one over from Python costs ~17 µs a call
# before the kernel starts (measured, torch 2.13: 20 µs for a 16-row matrix against 3 µs). The
# older door, torch.fbgemm_linear_fp16_weight_fp32_activation, takes the same packed matrix held
# in a plain tensor and runs the same kernel (identical outputs, tested) in ~3 µs. At 33 matmuls
# a token that is ~0.55 ms of the ~7 ms a token minimind2-small takes. torch marks the older door
# deprecated (it warns once per process, silenced below); where it is gone, the newer one is used.
def legacy_fp16_door():
    if not HAS_FBGEMM_FP16 or not hasattr(torch, "fbgemm_linear_fp16_weight_fp32_activation"):
        return None
    try:
        with warnings.catch_warnings():  # the once-per-process deprecation warnings, spent here
            warnings.simplefilter("ignore")
            packed = torch.fbgemm_pack_gemm_matrix_fp16(torch.ones(16, 16))
            y = torch.fbgemm_linear_fp16_weight_fp32_activation(torch.ones(1, 16), packed, None)
        return (torch.fbgemm_pack_gemm_matrix_fp16 if torch.equal(y, torch.full((1, 16), 16.0))
                else None)
    except (AttributeError, RuntimeError):
        return None


FBGEMM_FP16_PACK = legacy_fp16_door()


class FastLinear:
    """y = x @ w.T + b for float32 activations x [N, in] -> [N, out], with w kept the way the
    device reads it fastest for a few rows of x at a time:

      float32  w transposed to [in, out], contiguous (see the list above)
      float16  on a CPU, fbgemm's kernel (through its cheaper door, above): fp16 weights,
               converted to fp32 inside the kernel, fp32 activations and sums. Half the bytes of
               fp32 and nothing lost on the activations. Elsewhere: x cast to fp16, torch's matmul.
      bfloat16 x cast to bf16, torch's matmul (fast on GPUs and on CPUs with bf16 instructions;
               on AVX2-only CPUs slower than fp32, which is why it is not the CPU default)"""

    def __init__(self, weight, bias=None, dtype=torch.float32):
        weight = weight.detach()
        self.bias = None if bias is None else bias.detach().float()
        self.packed = self.w_t = self.w = None
        self.legacy = False
        if dtype == torch.float16 and weight.device.type == "cpu" and FBGEMM_FP16_PACK is not None:
            # the fast door (see above). Its packed matrix is a C++ object behind a tensor: a
            # deepcopy of it cannot be used, but a copied model rebuilds its decoding weights
            # anyway (its tensors have new addresses: weights_version)
            self.packed, self.legacy = FBGEMM_FP16_PACK(weight.float()), True
        elif dtype == torch.float16 and weight.device.type == "cpu" and HAS_FBGEMM_FP16:
            self.packed = torch.ops.quantized.linear_prepack_fp16(weight.float(), self.bias)
        elif dtype == torch.float32:
            self.w_t = weight.float().t().contiguous()  # [in, out]
        else:
            self.w = weight.to(dtype).contiguous()  # [out, in]

    def __call__(self, x):
        if self.legacy:
            return torch.fbgemm_linear_fp16_weight_fp32_activation(x, self.packed, self.bias)
        if self.packed is not None:
            return torch.ops.quantized.linear_dynamic_fp16(x, self.packed)
        if self.w_t is not None:
            return x @ self.w_t if self.bias is None else torch.addmm(self.bias, x, self.w_t)
        y = F.linear(x.to(self.w.dtype), self.w).float()
        return y if self.bias is None else y + self.bias


class Concat:
    """Layers of some other kind (a LoRA wrapper, say) that know no fused form: each is called as
    it is, and their outputs are put side by side as a fused matmul's would be."""

    def __init__(self, layers):
        self.layers = layers

    def __call__(self, x):
        return torch.cat([layer(x).float() for layer in self.layers], dim=-1)


def fuse_linears(layers, dtype):
    """One matmul for several layers that read the same input (q, k, v; gate, up), their outputs
    side by side. nn.Linear layers are concatenated here; another layer class can bring its own
    fused form as a `for_decoding(layers, dtype)` method (int8.py's layers do)."""
    if all(type(layer) is nn.Linear for layer in layers):
        bias = [layer.bias for layer in layers]
        bias = None if bias[0] is None else torch.cat(bias)
        return FastLinear(torch.cat([layer.weight for layer in layers]), bias, dtype)
    if hasattr(layers[0], "for_decoding") and all(type(x) is type(layers[0]) for x in layers):
        return layers[0].for_decoding(layers, dtype)
    return Concat(layers)


def weights_version(model):
    """Changes whenever a weight does: every tensor counts its in-place changes (an optimizer step,
    load_state_dict) in ._version, and replacing one (model.to, model.half) moves its data_ptr."""
    tensors = list(model.parameters()) + list(model.buffers())
    return tuple((t.data_ptr(), t._version) for t in tensors)


class DecodeWeights:
    """A MiniMind's weights rearranged for decoding (see the list at the top of this section):
    fused and laid out by fuse_linears in `dtype`; norms, RoPE tables and activations in fp32."""

    def __init__(self, model, dtype=None):
        cfg = model.config
        self.dtype = dtype or model.norm.weight.dtype  # (the embedding may be an int8 table)
        self.version = weights_version(model)
        self.embed, self.norm = model.embed_tokens, model.norm.weight.detach().float()
        self.head = fuse_linears([model.lm_head], self.dtype)
        # minimind's RoPE tables for q, k and v at once, [max_seq_len, H + 2 H_kv, hd]: v's heads
        # get angle 0 (cos 1, sin 0), which leaves them as they are, so one rotation covers the
        # fused qkv output. minimind.apply_rope adds rotate_half(x) * sin, and rotate_half(x) is
        # x.roll(hd/2) (the halves swapped) times the signs rotate_half(1) = [-1.., +1..]: with
        # those signs folded into the sin table, run() rotates with one roll instead of
        # rotate_half's chunk, neg and cat (~10 µs a layer less; the result is the same).
        H, H_kv = cfg.n_heads, cfg.n_kv_heads
        sin = model.rope_sin * minimind.rotate_half(torch.ones_like(model.rope_sin[0]))  # [L, hd]
        rotated = lambda table, rest: torch.cat([table[:, None].expand(-1, H + H_kv, -1),
                                                 rest[:, None].expand(-1, H_kv, -1)], dim=1)
        self.cos = rotated(model.rope_cos, torch.ones_like(sin))
        self.sin = rotated(sin, torch.zeros_like(sin))
        self.layers = [self.block(b, cfg) for b in model.layers]

    def block(self, b, cfg):
        a, qk_norm = b.self_attn, None
        if cfg.qk_norm:  # one [H + H_kv, 1, hd] table: q's heads, then k's, normalised in one go
            qk_norm = torch.cat([
                a.q_norm.weight.detach().float().expand(cfg.n_heads, -1),
                a.k_norm.weight.detach().float().expand(cfg.n_kv_heads, -1)])[:, None]
        dense = isinstance(b.mlp, minimind.FeedForward)
        mlp = b.mlp
        return dict(norm1=b.input_layernorm.weight.detach().float(), qk_norm=qk_norm,
                    qkv=fuse_linears([a.q_proj, a.k_proj, a.v_proj], self.dtype),
                    o=fuse_linears([a.o_proj], self.dtype),
                    norm2=b.post_attention_layernorm.weight.detach().float(),
                    gate_up=(fuse_linears([mlp.gate_proj, mlp.up_proj], self.dtype) if dense
                             else None),
                    down=fuse_linears([mlp.down_proj], self.dtype) if dense else None,
                    moe=None if dense else mlp)  # MoE routing runs as its module does


def prepare_decoding(model, dtype=None):
    """Build the model's decoding layout in `dtype` (default: the weights' own; chat.py passes its
    --dtype) and keep it on the model: generate() then starts without copying weights. It is
    rebuilt when a weight changes in place (an optimizer step, load_state_dict)."""
    model.decode_weights = DecodeWeights(model, dtype)
    return model.decode_weights


def decoding_weights(model):
    """What a Decoder decodes with: the prepared weights while they are current; otherwise a fresh
    copy, kept only when the caller had asked for one with prepare_decoding (so a training run
    that samples now and then holds no second copy of its weights)."""
    kept = model.__dict__.get("decode_weights")
    if kept is not None and kept.version == weights_version(model):
        return kept
    fresh = DecodeWeights(model, kept.dtype if kept is not None else None)
    if kept is not None:
        model.decode_weights = fresh
    return fresh


def rms_norm(x, weight, eps):
    """RMSNorm's formula (section 2) on fp32 activations x [N, dim] (weight [dim]), or on qk-norm's
    heads (weight a [heads, 1, hd] table).

    For the rows of x, the mean of squares is each row's dot product with itself: one batched
    matmul, [N, 1, dim] @ [N, dim, 1], whose add-on term carries eps (baddbmm: eps + x.x / dim).
    Then rsqrt and two multiplications: four tensor operations, where torch's F.rms_norm runs
    about eight on a CPU (pow, sum, div, add, rsqrt, two muls, a copy); 17 norms a token.
    Measured ~0.1 ms a token of ~5 (minimind2-small, fp16). The numbers equal the formula's to
    fp32 rounding."""
    if weight.dim() == 1:
        eps_t = EPS_TENSORS.get((eps, x.device))
        if eps_t is None:  # the add-on term of baddbmm must be a tensor: made once per eps
            eps_t = EPS_TENSORS[eps, x.device] = torch.full((1, 1, 1), eps, device=x.device)
        mean_sq = torch.baddbmm(eps_t, x.unsqueeze(-2), x.unsqueeze(-1), alpha=1.0 / x.size(-1))
        return torch.mul(x, weight).mul_(mean_sq.view(-1, 1).rsqrt_())
    return F.rms_norm(x, weight.shape[-1:], None, eps) * weight


EPS_TENSORS = {}  # (eps, device) -> eps as a [1, 1, 1] tensor


class Decoder:
    """Runs a MiniMind on up to max_batch sequences, each in its own row of one fp32 KV cache.

        dec = Decoder(model, max_batch=4)
        logits = dec.add(prompt_ids)          # a new row: the prompt run at positions 0..T-1 -> [V]
        logits = dec.step([t0, t1, ...])      # one new token for every row, each at its own
                                              # next position -> [rows, V]
        dec.remove(2)                         # row 2 leaves; the last row moves into its place

    generate() below uses one row; serve.py's server keeps a batch of rows. Rows are always
    0..rows-1, so a step works on a prefix of the cache (views, no copies)."""

    def __init__(self, model, max_batch=1):
        cfg = self.cfg = model.config
        self.w, self.device = decoding_weights(model), model.rope_cos.device
        # The cache, one tensor a layer: [max_batch, 2 H_kv, max_seq_len, hd], keys in heads
        # 0..H_kv-1 and values after them, as the fused qkv output has them: one write a step.
        self.kv = [torch.zeros(max_batch, 2 * cfg.n_kv_heads, cfg.max_seq_len, cfg.head_dim,
                               device=self.device) for _ in range(cfg.n_layers)]
        self.kv_rows = [kv.view(-1, cfg.head_dim) for kv in self.kv]  # the same, [entries, hd]
        self.max_batch, self.lengths = max_batch, []  # tokens in the cache, per row
        n = max(cfg.max_seq_len, 2 * cfg.n_kv_heads * max_batch)
        self.arange = torch.arange(n, device=self.device)  # positions, rows: sliced, never rebuilt

    @property
    def rows(self):
        return len(self.lengths)

    def add(self, ids):
        if self.rows == self.max_batch:
            raise ValueError(f"all {self.max_batch} rows are in use")
        self.lengths.append(0)
        return self.refill(self.rows - 1, ids)

    # refill and step run in inference mode rather than no_grad: besides skipping gradients, torch
    # then skips the bookkeeping (version counters, view tracking) on every tensor it makes, which
    # is ~10% of a small operation's cost; measured ~0.3 ms a token of ~5 (minimind2-small, fp16).
    # The logits they return are inference tensors: fine to read, sample from and compute with
    # anywhere, but not to change in place outside inference mode (nothing here does).
    @torch.inference_mode()
    def refill(self, row, ids):
        """Start `row` again with ids at positions 0..T-1 (a new prompt, or the window after a
        crop); returns the logits for the token that follows them, [V] (None for no ids)."""
        T = len(ids)
        if T > self.cfg.max_seq_len:
            raise ValueError(f"{T} tokens; a row holds at most {self.cfg.max_seq_len}")
        self.lengths[row] = 0
        if T == 0:
            return None
        idx = torch.tensor(ids, device=self.device)  # [T]
        cos, sin = self.w.cos[:T].transpose(0, 1), self.w.sin[:T].transpose(0, 1)  # [heads, T, hd]
        logits = self.run(idx, cos, sin, row=row)
        self.lengths[row] = T
        return logits[0]

    @torch.inference_mode()
    def step(self, tokens):
        """One token for each row (row i's goes at position lengths[i]) -> logits [rows, V]."""
        B, cfg = self.rows, self.cfg
        if len(tokens) != B:
            raise ValueError(f"{len(tokens)} tokens for {B} rows")
        if max(self.lengths) >= cfg.max_seq_len:
            raise ValueError("a row is full; refill it with a shorter window first")
        pos = torch.tensor(self.lengths, device=self.device)  # [B]
        # Where each row's new keys and values go in a layer's cache seen as [rows*2H_kv*L, hd]:
        # row b, head j, position p is entry (b * 2H_kv + j) * L + p. Worked out once a step.
        slots = (self.arange[:B * 2 * cfg.n_kv_heads] * cfg.max_seq_len).view(B, -1) + pos[:, None]
        cos, sin = self.w.cos[pos, :, None], self.w.sin[pos, :, None]  # [B, heads, 1, hd]
        idx = torch.tensor(tokens, device=self.device)  # [B]
        logits = self.run(idx, cos, sin, pos=pos, slots=slots.view(-1))
        self.lengths = [n + 1 for n in self.lengths]
        return logits

    def remove(self, row):
        """Drop `row`: the last row's cache moves into its place (one copy), so the rows in use
        stay 0..rows-1."""
        last = self.rows - 1
        if row != last:
            n = self.lengths[last]
            for buf in self.kv:
                buf[row, :, :n] = buf[last, :, :n]
            self.lengths[row] = n
        self.lengths.pop()

    def run(self, idx, cos, sin, row=None, pos=None, slots=None):
        """The model on new tokens: a prompt of T tokens for one row (row=, at positions 0..T-1),
        or one token for each of B rows (pos=, their positions; slots=, where their keys go).
        Returns the logits after the last token of each row, [1 or B, V]."""
        cfg, w = self.cfg, self.w
        H, H_kv, hd, eps = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.norm_eps
        B, T = (1, idx.numel()) if row is not None else (idx.numel(), 1)
        if row is None:  # row b sees its own keys, positions 0..pos[b]; one row sees them all
            n_keys = max(self.lengths) + 1
            mask = (self.arange[:n_keys] <= pos[:, None])[:, None, None, :] if B > 1 else None
        x = w.embed(idx).float().view(B * T, cfg.dim)  # [N, dim], N = B*T
        for layer, kv_buf, kv_rows in zip(w.layers, self.kv, self.kv_rows):
            qkv = layer["qkv"](rms_norm(x, layer["norm1"], eps))  # [N, (H + 2 H_kv) hd]
            if T == 1:  # one token a row: [B, heads, 1, hd] is the memory of [B, 1, heads, hd]
                qkv = qkv.view(B, H + 2 * H_kv, 1, hd)
            else:
                qkv = qkv.view(B, T, H + 2 * H_kv, hd).transpose(1, 2)  # [B, heads, T, hd]
            if layer["qk_norm"] is not None:
                qkv[:, :H + H_kv] = rms_norm(qkv[:, :H + H_kv], layer["qk_norm"], eps)
            qkv = torch.addcmul(qkv * cos, qkv.roll(hd // 2, -1), sin)  # RoPE on q and k; v as is
            q, kv = qkv[:, :H], qkv[:, H:]  # [B, H, T, hd], [B, 2 H_kv, T, hd]: keys, then values
            if row is not None:  # a prompt: store its keys and values, attend causally among them
                kv_buf[row, :, :T] = kv[0]
                y = F.scaled_dot_product_attention(q, kv[:, :H_kv], kv[:, H_kv:], is_causal=T > 1,
                                                   enable_gqa=H != H_kv)
            else:  # one token per row: store it at the row's position, attend to the row's cache
                kv_rows.index_copy_(0, slots, kv.reshape(-1, hd))
                # [B,H_kv,L,hd]
                keys, values = kv_buf[:B, :H_kv, :n_keys], kv_buf[:B, H_kv:, :n_keys]
                y = F.scaled_dot_product_attention(q, keys, values, mask, enable_gqa=H != H_kv)
            # [N, H*hd]
            y = y.view(B, H * hd) if T == 1 else y.transpose(1, 2).reshape(B * T, H * hd)
            x = x + layer["o"](y)  # [N, dim]
            h = rms_norm(x, layer["norm2"], eps)
            if layer["moe"] is not None:  # the model's own experts, in the model's dtype
                moe = layer["moe"]
                h = h.view(B, T, cfg.dim).to(next(moe.parameters()).dtype)
                x = x + moe(h).view(B * T, cfg.dim).float()
            else:
                gate, up = layer["gate_up"](h).chunk(2, dim=-1)  # [N, hidden] each
                x = x + layer["down"](F.silu(gate) * up)
        last = x.view(B, T, cfg.dim)[:, -1]  # only the last position's logits are needed
        return w.head(rms_norm(last, w.norm, eps))  # [B, V]


# ----------------------------------------------------------------------------------------------
# generate: MiniMind.generate's loop, with the Decoder computing the logits


def generate(model, idx, max_new_tokens=256, **sampling):
    """Yield new token ids one at a time, as model.generate(idx, max_new_tokens, **sampling) does
    (the same arguments: temperature, top_k, top_p, repetition_penalty, stop_tokens, seed,
    generator), with this file's Decoder computing the logits. The loop stays minimind.py's: the
    context window's crop, the repetition penalty, sampling, stopping. So for the same seed the
    tokens are the same, up to the rounding of the decoding layout's dtype."""
    decoder = Decoder(model)

    def next_logits(context, fresh):
        if not decoder.rows:  # the prompt, in one pass (prefill)
            return decoder.add(context)
        if fresh:  # the window was cropped: refill all but the newest, which the step adds
            decoder.refill(0, context[:-1])
        return decoder.step(context[-1:])[0]

    yield from model.generate(idx, max_new_tokens, next_logits=next_logits, **sampling)


if __name__ == "__main__":  # the fast path against minimind.py's readable KV cache
    import time
    torch.manual_seed(0)
    cfg = minimind.MiniMindConfig(**minimind.SIZES["tiny"], vocab_size=6400, max_seq_len=256)
    model, prompt, outputs = minimind.MiniMind(cfg).eval(), list(range(100, 116)), []
    prepare_decoding(model)
    for name, run in (("minimind.generate (readable KV cache)", model.generate),
                      ("decode.generate (this file)", lambda *a, **k: generate(model, *a, **k))):
        t = time.perf_counter()
        outputs.append(list(run(prompt, 128, temperature=0.8, top_k=50, seed=0)))
        print(f"{name:<40} {128 / (time.perf_counter() - t):7.1f} tokens/s")
    print(f"the same 128 sampled tokens (random weights, seed 0): {outputs[0] == outputs[1]}")
