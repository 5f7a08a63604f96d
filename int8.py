"""int8.py: the INT8 layers, which run a model from int8 weights and one float scale per row.

    python int8.py          # a demo: one int8 layer, its fast kernel against its reference path

Chapter 11's quantize.py turns float weights into int8 numbers q and scales s (w ~ q * s, row by
row); this file holds what runs from them: a linear layer with a readable reference path and a
fast CPU kernel, an int8 embedding table that a tied output head shares, the fused form decode.py's
decoding path asks for, and the swap of a model's layers for these, which both quantize.py (when
it writes an INT8 run) and rundir.load_run (when it opens one) perform.

Reading order: dequantize -> the kernel -> int8_linear -> QuantizedLinear (and its decoding form)
-> QuantizedEmbedding and TiedQuantizedHead -> swapping a model's layers -> the demo.

Imports: torch only (a leaf; it runs pasted whole into a notebook cell). Imported by quantize.py,
rundir.py (to open an INT8 run directory), and decode.py's decoding path reaches it through the
layers' for_decoding methods.
"""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

# What model.pt's "quantized" entry names: the only scheme this file runs.
SCHEME = "int8-per-channel-symmetric"


def dequantize(q, scale):
    """int8 [N, K] and scales [N] -> float32 [N, K]: w_hat = q * scale, row by row."""
    return q.float() * scale[:, None]


# ---------------------------------------------------------------------------------------------
# 1. A linear layer that runs from int8 weights
# ---------------------------------------------------------------------------------------------
# The fast CPU path: torch's weight-only int8 matmul, y = x @ q^T * scales, which reads the int8
# weight directly (4x less memory traffic than fp32, and decoding one token at a time is bound by
# memory traffic). It needs in_features to be a multiple of 16 (other sizes crash or give
# garbage), so it is used only there. Why this kernel, of those torch 2.13 offers on a CPU
# (tests/benchmarks/bench_decode.py --part kernels,accuracy: every matrix of minimind2-small, one
# thread, against nn.Linear in fp32; agreement: teacher-forced greedy picks of a trained model):
#
#   _weight_int8pack_mm, bf16 activations   2.3x, 99.9% agree: the fastest that stays accurate
#   _weight_int8pack_mm, fp32 activations   0.3x: no fast kernel for fp32 activations
#   quantized.linear_dynamic (fbgemm, what  3.1x, but it rounds the activations to 7 bits too:
#   quantize_dynamic uses)                  98.7% agree, under the 99% this project asks
#   _int_mm (int8 x int8 -> int32)          quantized activations too, and slow for one row
#
# Activations lose a little precision in bf16 (8 bits of mantissa); the tests bound the difference
# to the reference path.
HAS_INT8_KERNEL = hasattr(torch, "_weight_int8pack_mm")


def kernel_fits(q):
    """Whether the fast kernel can run this int8 matrix: it exists, on a CPU, K a multiple of 16."""
    return HAS_INT8_KERNEL and q.device.type == "cpu" and q.size(1) % 16 == 0


def int8_kernel(x2, q, scale, bias=None):
    """The fast path itself, for a 2-D input: x2 [M, K] -> fp32 [M, N], with q kernel_fits.

    The kernel runs with bf16 activations and unit scales; the float32 scales are applied to its
    output: x @ (q * s)^T = (x @ q^T) * s, since s is one number per output column. Scaling
    afterwards in fp32 keeps the scales exact (a bf16 scale would be off by up to 0.4%, the same
    way for a whole channel). int8_linear and decode.py's decoding path (Int8ForDecoding) both
    call this, so a change of kernel is made in one place."""
    x2 = x2.to(torch.bfloat16).contiguous()                                    # [M, K]
    y = torch._weight_int8pack_mm(x2, q, unit_scales(q.size(0))) * scale        # [M, N], fp32
    return y if bias is None else y + bias.float()


@functools.lru_cache(maxsize=64)
def unit_scales(n):
    """n ones in bf16: the kernel's own scales, made once per size instead of once per call."""
    return torch.ones(n, dtype=torch.bfloat16)


def int8_linear(x, q, scale, bias=None, fast=True):
    """y = x @ (q * scale)^T + bias, for x [..., K], q int8 [N, K], scale [N].

    Reference path: dequantize, then an ordinary float matmul (clear, and works on any device).
    Fast path (CPU): int8_kernel on the input flattened to rows, reshaped back."""
    if fast and x.device.type == "cpu" and kernel_fits(q):
        y = int8_kernel(x.reshape(-1, x.size(-1)), q, scale, bias)               # [M, N], fp32
        return y.reshape(*x.shape[:-1], q.size(0)).to(x.dtype)                  # [..., N]
    return F.linear(x, dequantize(q, scale).to(x.dtype), None if bias is None else bias.to(x.dtype))


class Int8ForDecoding:
    """decode.py's decoding path fuses the layers that read one input (q, k, v; gate, up): their
    int8 rows stacked into one matrix, one kernel call. Its input is always fp32 [N, K], so the
    fast path is int8_kernel without int8_linear's reshapes and checks, which matters at 33
    matmuls a token. The float `dtype` decode.py asks for does not apply: these weights stay
    int8."""

    def __init__(self, layers, q, scale, bias):
        self.q, self.scale, self.bias = q, scale, bias
        # set_fast after the fusing has no effect: the layers' choice is read once, here
        self.fast = kernel_fits(q) and all(layer.fast for layer in layers)

    def __call__(self, x):
        if not self.fast:
            return int8_linear(x, self.q, self.scale, self.bias, fast=False)
        return int8_kernel(x, self.q, self.scale, self.bias)                    # fp32


class QuantizedLinear(nn.Module):
    """nn.Linear with an int8 weight and a float32 scale per output channel, stored as buffers
    (they are not trained, and buffers are what state_dict saves besides parameters)."""

    def __init__(self, in_features, out_features, bias=False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8",
                             torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self.fast = True  # False: always the reference path (the tests compare the two)

    @classmethod
    def from_float(cls, linear, quantize=None):
        """A QuantizedLinear in the place of nn.Linear `linear`: its weight turned into int8 rows
        and scales by quantize(w) -> (q, scale) (quantize.quantize_per_channel), its bias copied.
        quantize None: the same shapes left empty, for load_state_dict to fill (a saved run)."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        if quantize is not None:
            layer.weight_int8, layer.scale = quantize(linear.weight)
            if linear.bias is not None:
                layer.bias.data.copy_(linear.bias.detach().float())
        return layer

    def forward(self, x):
        return int8_linear(x, self.weight_int8, self.scale, self.bias, self.fast)

    @staticmethod
    def for_decoding(layers, dtype):
        """The fused form decode.fuse_linears asks for (see Int8ForDecoding)."""
        bias = [layer.bias for layer in layers]
        bias = None if bias[0] is None else torch.cat(bias).detach()
        return Int8ForDecoding(layers, torch.cat([layer.weight_int8 for layer in layers]),
                               torch.cat([layer.scale for layer in layers]), bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


# ---------------------------------------------------------------------------------------------
# 2. An int8 embedding table, and the output head tied to it
# ---------------------------------------------------------------------------------------------
class QuantizedEmbedding(nn.Module):
    """An int8 embedding table with one scale per row (per token): a lookup gathers the rows and
    dequantizes only those, q[idx] * scale[idx]. The rows of the table are exactly the output
    channels of a tied lm_head, so the same int8 numbers and scales serve both
    (TiedQuantizedHead)."""

    def __init__(self, num_embeddings, embedding_dim):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("weight_int8",
                             torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings))

    @classmethod
    def from_float(cls, embedding, quantize=None):
        """As QuantizedLinear.from_float, for an nn.Embedding: one scale per token's row."""
        layer = cls(embedding.num_embeddings, embedding.embedding_dim)
        if quantize is not None:
            layer.weight_int8, layer.scale = quantize(embedding.weight)
        return layer

    @property
    def weight(self):
        """The dequantized float table. minimind.new_kv_cache reads embed_tokens.weight
        (for its device and dtype, once per call), so the quantized table answers with its float
        view."""
        return dequantize(self.weight_int8, self.scale)

    def forward(self, idx):
        return self.weight_int8[idx].float() * self.scale[idx].unsqueeze(-1)  # [..., dim]


class TiedQuantizedHead(nn.Module):
    """The output head tied to a QuantizedEmbedding: logits = x @ (q * scale)^T with the
    embedding's own int8 table, so the matrix is quantized once and stored once."""

    def __init__(self, embedding):
        super().__init__()
        self.embedding = embedding  # the same module object: its buffers are shared, not copied
        self.fast = True

    def forward(self, x):
        return int8_linear(x, self.embedding.weight_int8, self.embedding.scale, None, self.fast)

    def for_decoding(self, layers, dtype):
        return Int8ForDecoding(layers, self.embedding.weight_int8, self.embedding.scale, None)


# ---------------------------------------------------------------------------------------------
# 3. Swapping the layers of a model, and opening an INT8 run
# ---------------------------------------------------------------------------------------------
# class name -> module path (by name, so this file needs neither gpt.py nor minimind.py)
TOKEN_EMBEDDING = {"MiniMind": "embed_tokens", "GPT": "transformer.wte"}


def replace_module(model, name, new):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def swap_layers(model, include_embeddings=False, quantize=None):
    """Replace, in place, every nn.Linear of the model except the output head by a QuantizedLinear;
    with include_embeddings, the token embedding and the head too (one int8 table if they are
    tied). Norms, position embeddings and biases stay float. quantize(w) -> (q, scale) fills the new
    layers from the float weights (quantize.quantize_model); without it they are left empty, for a
    saved INT8 run's tensors (prepare_int8_skeleton). Returns (name, float weight, int8 layer) for
    each int8 table made, in model order: what quantize.py's error table reports on."""
    swapped = []
    linears = [(n, m) for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and n != "lm_head"]
    for name, linear in linears:
        layer = QuantizedLinear.from_float(linear, quantize)
        swapped.append((name, linear.weight, layer))
        replace_module(model, name, layer)
    if include_embeddings:
        emb_name = TOKEN_EMBEDDING[type(model).__name__]
        emb, head = model.get_submodule(emb_name), model.lm_head
        tied = head.weight is emb.weight
        q_emb = QuantizedEmbedding.from_float(emb, quantize)
        swapped.append((emb_name + (" (+ tied lm_head)" if tied else ""), emb.weight, q_emb))
        if tied:
            q_head = TiedQuantizedHead(q_emb)
        else:
            q_head = QuantizedLinear.from_float(head, quantize)
            swapped.append(("lm_head", head.weight, q_head))
        replace_module(model, emb_name, q_emb)
        replace_module(model, "lm_head", q_head)
    return swapped


def prepare_int8_skeleton(model, quantized):
    """Make a float model (just built: right shapes, random weights) ready to receive an INT8 run's
    saved tensors: its layers swapped exactly as quantize.py swapped them when the run was written.
    rundir.load_run calls this for a model.pt with a "quantized" entry of scheme SCHEME."""
    swap_layers(model, quantized["include_embeddings"])


def set_fast(model, fast):
    """Switch every int8 layer of the model between the fast kernel and the reference path."""
    for m in model.modules():
        if hasattr(m, "fast"):
            m.fast = fast
    return model


# ---------------------------------------------------------------------------------------------
# 4. The demo: random int8 weights, run both ways
# ---------------------------------------------------------------------------------------------
def demo():
    """One layer built straight from random int8 rows and scales (quantize.py makes real ones from
    float weights): the fast kernel against the reference path, and the bytes each weight takes."""
    torch.manual_seed(0)
    layer = QuantizedLinear(256, 128)
    layer.weight_int8 = torch.randint(-127, 128, (128, 256), dtype=torch.int8)
    layer.scale = torch.rand(128) / 127
    x = torch.randn(4, 256)
    fast = layer(x)
    ref = set_fast(layer, False)(x)
    print(f"int8 kernel available here: {kernel_fits(layer.weight_int8)}")
    print(f"fast vs reference path: max |difference| {(fast - ref).abs().max():.2e} "
          f"(outputs up to {ref.abs().max():.2e}; bf16 activations)")
    size = layer.weight_int8.numel() + 4 * layer.scale.numel()
    print(f"weight: {size} bytes in int8 + scales, {4 * layer.weight_int8.numel()} in fp32")


if __name__ == "__main__":
    demo()
