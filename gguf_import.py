"""gguf_import.py: a GGUF file read as a released model: the config.json, tokenizer, tensors under
transformers' names and chat template that the model's hub release would give (a companion of
convert.py).

    config, tok, weights, template = gguf_import.read_release("SmolLM2-135M-Instruct.Q4_1.gguf")

convert.py's import then takes them exactly as it takes a transformers directory's files, so
`python convert.py FILE.gguf out/NAME` makes the same run directory (and refuses the same
things) as an import from the hub. What is particular to GGUF is here: the architecture's
numbers under "{arch}.key" in the metadata, llama.cpp's tensor names, the rows of q and k that
llama.cpp's "llama" RoPE wants in another order (put back), the experts of a mixture stored as
one 3-D tensor per layer, and the tensors themselves in block formats, decoded to float32 one
at a time (gguf_quants.py) while convert.py builds the model.

Imported by convert.py. Imports gguf_file.py (the reader, llama.cpp's names), gguf_quants.py
(decoding one expert's slice), hf_tokenizer.py (GGUF's tokenizer section: "gpt2", byte-level,
or "llama", SentencePiece-style as Llama 2, TinyLlama and Mistral), minimind.py (RoPE
scaling's frequencies) and bpe.py (UserError); numpy, torch and the standard library.
"""
import functools
import re

import numpy as np
import torch

import gguf_file
import gguf_quants
import hf_tokenizer
import minimind
from bpe import UserError

# llama.cpp's architecture name -> (the transformers class, its model_type): the families
# convert.py imports from the hub.
ARCHS = {"llama": ("LlamaForCausalLM", "llama"), "qwen2": ("Qwen2ForCausalLM", "qwen2"),
         "qwen3": ("Qwen3ForCausalLM", "qwen3"),
         "qwen3moe": ("Qwen3MoeForCausalLM", "qwen3_moe"), "gpt2": ("GPT2LMHeadModel", "gpt2")}
REQUIRED = object()


def read_release(path):
    """A GGUF file -> (config.json as a dict, bpe.Tokenizer (a SentencePieceTokenizer for a
    "llama" tokenizer), {transformers name: tensor, read when popped}, chat template or None).
    A UserError names what cannot be imported."""
    g = gguf_file.GGUFFile(path)
    arch = g.metadata.get("general.architecture")
    if arch not in ARCHS:
        raise UserError(f"{path}: general.architecture {arch!r} is not supported (this project "
                        f"imports {', '.join(ARCHS)})")
    tok = hf_tokenizer.from_gguf(g.metadata, path)
    config = hf_config(g, arch)
    return config, tok, LazyTensors(hf_tensors(g, arch, config)), \
        g.metadata.get("tokenizer.chat_template")


# ---------------------------------------------------------------------------------------------
# The config: llama.cpp's keys -> config.json's
#
# Floats are stored as float32: 1e-5 comes back as 9.99999974738e-06, so each is read as the
# shortest decimal that is the same float32 (1e-05), as it was in the release's config.json.
# What llama.cpp's file has and our models do not (RoPE scaling other than linear and Llama 3's,
# a partial rotary dimension, attention biases in Llama) is passed on to convert.py's config
# reader, which refuses it by name.
# ---------------------------------------------------------------------------------------------
def hf_config(g, arch):
    def get(key, default=REQUIRED):
        value = g.metadata.get(f"{arch}.{key}", default)
        if value is REQUIRED:
            raise UserError(f"{g.path}: no {arch}.{key}")
        if isinstance(value, list):
            raise UserError(f"{g.path}: {arch}.{key} differs from layer to layer "
                            f"({value[:4]} ...): not modelled")
        return float(str(np.float32(value))) if isinstance(value, float) else value
    if "token_embd.weight" not in g.tensors:
        raise UserError(f"{g.path}: no tensor token_embd.weight")
    name, family = ARCHS[arch]
    common = {"architectures": [name], "model_type": family,
              "vocab_size": g.tensors["token_embd.weight"].shape[0],
              "tie_word_embeddings": "output.weight" not in g.tensors}
    if arch == "gpt2":  # ggml's GELU is the tanh approximation, GPT-2's "gelu_new"
        return {**common, "n_embd": get("embedding_length"), "n_layer": get("block_count"),
                "n_head": get("attention.head_count"), "n_positions": get("context_length"),
                "n_inner": get("feed_forward_length", None), "activation_function": "gelu_new",
                "layer_norm_epsilon": get("attention.layer_norm_epsilon", 1e-5)}
    heads = get("attention.head_count")
    head_dim = get("attention.key_length", get("embedding_length") // heads)
    if get("attention.value_length", head_dim) != head_dim:
        raise UserError(f"{g.path}: {arch}.attention.value_length differs from key_length: "
                        f"not modelled")
    scaling = get("rope.scaling.type", "none")
    if scaling == "linear":
        scaling = {"rope_type": "linear", "factor": get("rope.scaling.factor")}
    elif scaling == "none" and "rope_freqs.weight" in g.tensors:  # Llama 3.1, 3.2
        scaling = llama3_scaling(g, get("rope.freq_base", 10000.0), head_dim)
    config = {**common, "hidden_size": get("embedding_length"), "hidden_act": "silu",
              "num_hidden_layers": get("block_count"), "num_attention_heads": heads,
              "num_key_value_heads": get("attention.head_count_kv", heads), "head_dim": head_dim,
              "intermediate_size": get("feed_forward_length", 0),
              "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
              "rope_theta": get("rope.freq_base", 10000.0),
              "max_position_embeddings": get("context_length"),
              "partial_rotary_factor": get("rope.dimension_count", head_dim) / head_dim,
              "rope_scaling": scaling if isinstance(scaling, dict) else
              None if scaling == "none" else {"rope_type": scaling},
              "attention_bias": "blk.0.attn_q.bias" in g.tensors and arch != "qwen2"}
    if arch == "qwen3moe":
        if get("expert_shared_count", 0):
            raise UserError(f"{g.path}: {arch}.expert_shared_count: shared experts are not "
                            f"modelled in Qwen3-MoE")
        # llama.cpp's qwen3moe always renormalises the chosen experts' weights
        config.update(num_experts=get("expert_count"), num_experts_per_tok=get(
            "expert_used_count"), moe_intermediate_size=get("expert_feed_forward_length"),
            norm_topk_prob=True)
    return config


def llama3_scaling(g, theta, head_dim):
    """rope_freqs.weight -> config.json's llama3 rope_scaling. The tensor holds what divides each
    pair's frequency f: factor for the slowest pairs, 1 for the fastest, 1 / ((1 - s) / factor + s)
    between them, where s = (orig * f / 2pi - low) / (high - low) is a straight line in f. The
    pairs between give that line, its slope orig / (high - low) and its intercept -low / (high -
    low). Only those two ratios decide the model, so low_freq_factor is taken as 1 (Llama 3's);
    the numbers found are checked by computing the tensor again from them."""
    divisors = g.tensor("rope_freqs.weight").double().numpy()
    f = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    factor = float(divisors.max())
    s = (factor / divisors - 1) / max(factor - 1, 1e-9)
    between = (s > 1e-4) & (s < 1 - 1e-4)
    if len(divisors) == len(f) and between.sum() >= 2:
        slope, intercept = np.polyfit(f[between] / (2 * np.pi), s[between], 1)
        width = float(-1 / intercept) if intercept < 0 else 0.0  # high - low; plain floats, as
        scaling = {"rope_type": "llama3", "factor": round(factor, 4), "low_freq_factor": 1.0,
                   "high_freq_factor": round(1 + width, 4),  # a checkpoint's config must be
                   "original_max_position_embeddings": int(round(slope * width))}
        plain = torch.tensor(f, dtype=torch.float32)
        again = (plain / minimind.scale_frequencies(plain, scaling)).double().numpy()
        if width > 0 and np.allclose(again, divisors, rtol=1e-3):
            return scaling
    raise UserError(f"{g.path}: rope_freqs.weight is not Llama 3's RoPE scaling with two or more "
                    f"pairs between its slowed and its kept ones: not modelled")


# ---------------------------------------------------------------------------------------------
# The tensors: llama.cpp's names -> transformers', read lazily
#
# Every tensor goes under the name the release's safetensors would give it; one that slm's
# models do not have keeps its GGUF name, and convert.py's import refuses it by that name.
# A linear weight is [out, in] in GGUF as in nn.Linear; GPT-2's transformers checkpoint stores
# the transpose (Conv1D), which convert.py's table of names undoes, so it gets the transpose.
# ---------------------------------------------------------------------------------------------
EXPERTS = re.compile(r"blk\.(\d+)\.ffn_(gate|up|down)_exps\.weight")


class LazyTensors(dict):
    """{name: function reading the tensor}, called when the name is popped (or looked up):
    convert.import_weights pops each tensor as it converts it, so the file is decoded one tensor
    at a time and the float model is the only full copy in memory."""

    def pop(self, key, *default):
        return dict.pop(self, key)() if key in self else dict.pop(self, key, *default)

    def __getitem__(self, key):
        return dict.__getitem__(self, key)()


def read_tensor(g, name, heads=0, transpose=False):
    t = g.tensor(name)
    if heads:  # llama.cpp's "llama" RoPE pairs adjacent rows; ours pairs i with i + d/2
        t = gguf_file.rotary_pairs_halved(t, heads)
    return t.T.contiguous() if transpose else t


def read_expert(g, name, e):
    """Expert e of a [n_experts, out, in] tensor: its own contiguous run of blocks."""
    info = g.tensors[name]
    size = info.nbytes // info.shape[0]
    return gguf_quants.dequantize(g.raw(name)[e * size:(e + 1) * size], info.kind, info.shape[1:])


def hf_tensors(g, arch, config):
    gpt2, out = arch == "gpt2", {}
    for name, info in g.tensors.items():
        experts = EXPERTS.fullmatch(name)
        if experts:
            for e in range(info.shape[0]):
                out[f"model.layers.{experts[1]}.mlp.experts.{e}.{experts[2]}_proj.weight"] = \
                    functools.partial(read_expert, g, name, e)
            continue
        if name == "rope_freqs.weight":
            continue  # read into the config's rope_scaling (llama3_scaling)
        ours = gguf_file.our_name(name, gpt2)
        if ours is None:  # refused by name
            out[name] = functools.partial(g.tensor, name)
            continue
        heads = 0
        if arch == "llama" and re.search(r"\.attn_[qk]\.", name):
            heads = config["num_attention_heads" if ".attn_q." in name else "num_key_value_heads"]
        transpose = gpt2 and re.search(r"\.(attn_qkv|attn_output|ffn_up|ffn_down)\.weight$",
                                       name) is not None
        theirs = ours if gpt2 or ours.startswith("lm_head") else "model." + ours
        out[theirs] = functools.partial(read_tensor, g, name, heads, transpose)
    return out
