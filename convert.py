"""convert.py: released models in, run directories out (book chapters 3 and 11).

    python convert.py hf:HuggingFaceTB/SmolLM2-135M-Instruct out/smollm  # a model on the hub
    python convert.py path/to/transformers-dir out/name                   # a transformers directory
    python convert.py SmolLM2-135M-Instruct.Q4_1.gguf out/smollm2         # a GGUF file, dequantized
    python convert.py out/dpo out/dpo-hf --to hf                          # a run -> transformers
    python convert.py out/dpo out/dpo.gguf --to gguf --type q8_0          # a run -> llama.cpp,
                                                                          # Ollama

Chapter 3 takes a released model and makes it a run directory like any other, so train.py --init,
sft.py, dpo.py, eval.py, quantize.py and chat.py work on it; chapter 11 goes the other way, to the
files other tools read. In order: 1. the architectures (config.json <-> our configs, and one table
of tensor names serving both directions) -> 2. tokenizers and chat templates -> 3. import ->
4. export to transformers -> 5. export to GGUF, with an Ollama Modelfile -> 6. the command line.

Imports: rundir.py (run directories, flags, errors), hf_tokenizer.py and chat_templates.py
(released tokenizers and chat templates, GGUF's tokenizer section), minimind.py (its config's
derived sizes), modelcard.py (the card written with each export), and the file formats, each
written by hand from its specification in a companion file: safetensors_file.py (how the hub
stores weights), download.py (the hub: which files make a model, fetched over plain HTTP),
gguf_file.py (GGUF v3, for llama.cpp and Ollama) and gguf_import.py (a GGUF file read as the
files of a release).
Runtime: numpy, torch, tqdm and the standard library.
"""
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

import chat_templates
import download
import gguf_file
import gguf_import
import hf_tokenizer
import minimind
import modelcard
import rundir
import safetensors_file
from rundir import UserError, option


# ---------------------------------------------------------------------------------------------
# 1. Architectures: config.json <-> our configs, and one table of tensor names for both ways
#
# A transformers directory says what it holds in config.json: "architectures" names the class,
# the other keys its sizes. MiniMind is the Llama design (RMSNorm, rotate-half RoPE, GQA, SwiGLU)
# and its tensor names are Llama's without the "model." prefix; Qwen2 adds biases on q, k, v;
# Qwen3 adds an RMSNorm on every query and key head (our qk_norm) and an explicit head_dim; Qwen3's
# mixture of experts is our MoE with no shared experts. gpt.GPT is GPT-2 with nanoGPT's names.
#
# A config says only what differs from the class's defaults, so reading one needs those defaults
# (transformers' own, as of version 5). Writing one, we always write every field that matters:
# a reader with other defaults then cannot build a different model.
# ---------------------------------------------------------------------------------------------
HF_ARCHS = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
            "Qwen3MoeForCausalLM": "qwen3_moe", "GPT2LMHeadModel": "gpt2",
            "MistralForCausalLM": "mistral"}  # Llama's design, with a sliding window (refused)
HF_DEFAULTS = {  # the transformers defaults that decide the model, per family
    "llama": dict(rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  attention_bias=False, mlp_bias=False, hidden_act="silu",
                  max_position_embeddings=2048),
    "mistral": dict(rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                    attention_bias=False, mlp_bias=False, hidden_act="silu",
                    max_position_embeddings=131072, sliding_window=4096),
    "qwen2": dict(rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  hidden_act="silu", max_position_embeddings=32768),
    "qwen3": dict(rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, head_dim=128,
                  attention_bias=False, hidden_act="silu", max_position_embeddings=32768),
    "qwen3_moe": dict(rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                      head_dim=128, attention_bias=False, hidden_act="silu",
                      max_position_embeddings=32768, norm_topk_prob=False, decoder_sparse_step=1,
                      mlp_only_layers=[], router_aux_loss_coef=0.001),
    "gpt2": dict(n_positions=1024, layer_norm_epsilon=1e-5, activation_function="gelu_new",
                 tie_word_embeddings=True, n_inner=None),
}
ROPE_SCALINGS = {"linear": ["factor"], "llama3": ["factor", "low_freq_factor", "high_freq_factor",
                                                "original_max_position_embeddings"]}
GELUS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}  # GPT-2's -> nn.GELU's


class HFConfig:
    """config.json with its family's defaults; `get` names the field of a refusal."""

    def __init__(self, config, family, where):
        self.values, self.where = {**HF_DEFAULTS[family], **config}, where
        rope = self.values.get("rope_parameters") or {}  # transformers 5 writes the RoPE here
        self.values["rope_theta"] = rope.get("rope_theta", self.values.get("rope_theta"))

    def get(self, key):
        if key not in self.values:
            raise UserError(f"{self.where}: no {key!r}")
        return self.values[key]

    def refuse(self, key, value, why):
        raise UserError(f"{self.where}: {key} = {json.dumps(value)} is not supported: {why}")

    def require(self, key, allowed, why):
        """Refuse unless the field's value (absent: its default) is one of `allowed`."""
        value = self.values.get(key)
        if value not in allowed:
            self.refuse(key, value, why)


def llama_family_config(hf, family, max_seq_len):
    """A Llama / Qwen2 / Qwen3 / Qwen3-MoE config.json -> a MiniMindConfig dict, exactly, or a
    UserError naming the field we do not model (never a silently different model)."""
    hf.require("hidden_act", ("silu",), "the MLP here is SwiGLU (silu)")
    hf.require("use_sliding_window", (None, False), "sliding-window attention is not modelled")
    window = hf.values.get("sliding_window") if family == "mistral" else None  # (Qwen2: unused)
    if window is not None and window < hf.get("max_position_embeddings"):
        hf.refuse("sliding_window", window, "sliding-window attention is not modelled")
    if "sliding_attention" in (hf.values.get("layer_types") or []):
        hf.refuse("layer_types", "sliding_attention", "sliding-window attention is not modelled")
    hf.require("mlp_bias", (None, False), "the MLP here has no biases")
    hf.require("pretraining_tp", (None, 1), "split (tensor-parallel) linear layers: not modelled")
    hf.require("partial_rotary_factor", (None, 1, 1.0), "RoPE here turns the whole head")
    if family == "llama":  # Llama's attention_bias puts biases on q, k, v AND o; we have q, k, v
        hf.require("attention_bias", (False,), "biases on the attention output are not modelled")
    elif family != "qwen2":
        hf.require("attention_bias", (False,), "only Qwen2 has attention biases here")
    heads = hf.get("num_attention_heads")
    config = dict(dim=hf.get("hidden_size"), n_layers=hf.get("num_hidden_layers"), n_heads=heads,
                  n_kv_heads=hf.values.get("num_key_value_heads") or heads,
                  head_dim=hf.values.get("head_dim") or hf.get("hidden_size") // heads,
                  vocab_size=hf.get("vocab_size"), rope_theta=float(hf.get("rope_theta")),
                  norm_eps=float(hf.get("rms_norm_eps")), ffn_hidden=hf.get("intermediate_size"),
                  max_seq_len=min(max_seq_len, hf.get("max_position_embeddings")),
                  tie_embeddings=bool(hf.get("tie_word_embeddings")), rope_scaling=rope_scaling(hf),
                  qk_norm=family in ("qwen3", "qwen3_moe"), qkv_bias=family == "qwen2")
    if family == "qwen3_moe":
        config.update(moe_config(hf))
    return config


def rope_scaling(hf):
    """config.json's rope_scaling (transformers 5: rope_parameters) -> ours: None or plain data."""
    scaling = hf.values.get("rope_scaling") or hf.values.get("rope_parameters") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    keys = ROPE_SCALINGS.get(kind, [""]) if kind != "default" else []
    if not set(keys) <= set(scaling):
        hf.refuse("rope_scaling", scaling, f"{kind!r} is not modelled (linear and llama3 are)"
                  if kind not in ROPE_SCALINGS else f"{kind} needs {', '.join(keys)}")
    return {"rope_type": kind, **{k: scaling[k] for k in keys}} if keys else None


def moe_config(hf):
    """Qwen3-MoE's experts -> ours: every layer sparse, no shared experts, and the routing weights
    renormalised exactly when ours are (top_k > 1; with one expert, ours keep the raw weight)."""
    hf.require("decoder_sparse_step", (1,), "every layer here is a mixture of experts")
    hf.require("mlp_only_layers", ([],), "every layer here is a mixture of experts")
    top_k = hf.get("num_experts_per_tok")
    hf.require("norm_topk_prob", (top_k > 1,), f"our router renormalises the top {top_k} weights "
               f"exactly when top_k > 1")
    n_experts = hf.values.get("num_experts") or hf.get("num_local_experts")  # transformers 5's name
    return dict(n_experts=n_experts, top_k=top_k, ffn_hidden=hf.get("moe_intermediate_size"),
                aux_loss_coef=float(hf.get("router_aux_loss_coef")))


def gpt2_config(hf, max_seq_len):
    """A GPT-2 config.json -> a GPTConfig dict (or a UserError naming the field)."""
    if hf.get("activation_function") not in GELUS:
        hf.refuse("activation_function", hf.get("activation_function"), "GELU (exact or tanh) only")
    hf.require("n_inner", (None, 4 * hf.get("n_embd")), "the MLP here is 4 x n_embd wide")
    hf.require("layer_norm_epsilon", (1e-5,), "nn.LayerNorm's eps here is 1e-5")
    hf.require("tie_word_embeddings", (True,), "gpt.GPT ties its head to the embedding")
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
                "add_cross_attention"):
        hf.require(key, (None, False), "not modelled")
    n_positions = hf.get("n_positions")
    if max_seq_len < n_positions:
        hf.refuse("n_positions", n_positions, f"GPT-2 learns one vector per position; "
                  f"--max-seq-len {max_seq_len} would drop some of them "
                  f"(give --max-seq-len {n_positions})")
    return dict(n_layer=hf.get("n_layer"), n_head=hf.get("n_head"), n_embd=hf.get("n_embd"),
                block_size=n_positions, vocab_size=hf.get("vocab_size"), dropout=0.0, bias=True,
                gelu_approximate=GELUS[hf.get("activation_function")])


def import_config(config, where, max_seq_len):
    """config.json (a dict) -> (family, our architecture name, our config dict)."""
    names = config.get("architectures") or []
    family = next((HF_ARCHS[n] for n in names if n in HF_ARCHS), None)
    if family is None:
        raise UserError(f"{where}: architectures = {json.dumps(names)} is not supported (this "
                        f"project imports {', '.join(HF_ARCHS)})")
    hf = HFConfig(config, family, where)
    if family == "gpt2":
        return family, "gpt", gpt2_config(hf, max_seq_len)
    return family, "minimind", llama_family_config(hf, family, max_seq_len)


def tensor_names(arch, config):
    """The one table of names, both ways: [(our name, transformers' name, transposed?)] for every
    tensor of the model. GPT-2's checkpoint stores its linear weights as Conv1D [in, out], the
    transpose of nn.Linear's [out, in]; everything else is the same tensor under another name."""
    if arch == "gpt":
        names = [(f"transformer.{n}", f"transformer.{n}", False)
                 for n in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")]
        for i in range(config["n_layer"]):
            h = f"transformer.h.{i}"
            names += [(f"{h}.{m}.{p}", f"{h}.{m}.{p}", False)
                      for m in ("ln_1", "ln_2") for p in ("weight", "bias")]
            for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
                names += [(f"{h}.{m}.weight", f"{h}.{m}.weight", True),
                          (f"{h}.{m}.bias", f"{h}.{m}.bias", False)]
        return names
    names = [("embed_tokens.weight", "model.embed_tokens.weight", False),
             ("norm.weight", "model.norm.weight", False)]
    if not config.get("tie_embeddings", True):
        names.append(("lm_head.weight", "lm_head.weight", False))
    for i in range(config["n_layers"]):
        ours = [f"{i}.input_layernorm.weight", f"{i}.post_attention_layernorm.weight"]
        ours += [f"{i}.self_attn.{p}_proj.weight" for p in "qkvo"]
        ours += [f"{i}.self_attn.{p}_proj.bias" for p in "qkv"] if config.get("qkv_bias") else []
        ours += [f"{i}.self_attn.{p}_norm.weight" for p in "qk"] if config.get("qk_norm") else []
        if config.get("n_experts"):
            ours += [f"{i}.mlp.gate.weight"] + [f"{i}.mlp.experts.{e}.{p}_proj.weight"
                                                 for e in range(config["n_experts"])
                                                 for p in ("gate", "up", "down")]
        else:
            ours += [f"{i}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
        names += [(f"layers.{n}", f"model.layers.{n}", False) for n in ours]
    return names


# ---------------------------------------------------------------------------------------------
# 2. Tokenizers and chat templates
#
# hf_tokenizer.py reads and writes the `tokenizers` library's tokenizer.json (from_hf, to_hf),
# so a released tokenizer gives exactly the ids its model was trained on. Our scripts need three
# special tokens by name: <|endoftext|> ends a document, <|im_start|> and <|im_end|> frame a chat
# turn (ChatML). A release that lacks them (GPT-2 has only <|endoftext|>) gets them as new ids at
# the end, and the model new embedding rows for them: the mean of the others, a neutral start.
#
# A release says how it wants chats written in tokenizer_config.json's "chat_template", a Jinja
# program (hf_tokenizer.chat_template_of finds it). chat_templates.recognise names its family
# (ChatML for SmolLM2 and Qwen, Llama 3, [INST], Gemma, Phi-3, Zephyr), which every script then
# writes (--chat-template chooses one); the model is a chat model (stage "sft"). Without a
# template (GPT-2, base models) it is a "pretrain" run, and fine-tuning it writes ChatML.
# ---------------------------------------------------------------------------------------------
PROJECT_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
def import_tokenizer(tok, where, rows):
    """A release's tokenizer -> (tokenizer, names of the special tokens added). Its ids are
    then as many as the model's embedding rows (`rows`), or more when tokens were added: releases
    often have spare rows (Qwen2.5: 151,936 rows for 151,665 tokens), which stay ids for nothing."""
    added = [name for name in PROJECT_SPECIALS if name not in tok.special_tokens]
    if any(name in tok.added_tokens for name in added):
        raise UserError(f"{where}: {added} are ordinary added tokens here, "
                        f"not special")
    if tok.vocab_size < rows:
        tok.reserve(rows)  # the spare rows: ids that stand for nothing, so the sizes agree
    tok.add_special_tokens(added)
    return tok, added


# ---------------------------------------------------------------------------------------------
# 3. Import: a released model -> a run directory
# ---------------------------------------------------------------------------------------------
# Tensors a checkpoint may hold that are not weights: GPT-2's causal-mask buffers, and the RoPE
# frequencies older Llama checkpoints saved; both are recomputed from the config.
IGNORED = re.compile(r".*(\.attn\.bias|\.attn\.masked_bias|rotary_emb\.inv_freq)$")


def import_weights(weights, arch, config, where):
    """{transformers name: tensor} -> {our name: float32 tensor}, by the one table of names; every
    shape checked against the model the config describes, nothing missing, nothing left over.
    Each source tensor is dropped from `weights` once converted, so a memory-mapped checkpoint
    costs one float32 copy of the model, not two."""
    if arch == "gpt" and "transformer.wte.weight" not in weights:  # the hub's GPT-2 has no prefix
        weights = {k if k.startswith("lm_head") else "transformer." + k: v
                   for k, v in weights.items()}
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in rundir.build_model(arch, config).state_dict().items()}
    state = {}
    for ours, theirs, transposed in tensor_names(arch, config):
        if theirs not in weights:
            raise UserError(f"{where}: the checkpoint has no tensor {theirs!r}")
        t = weights.pop(theirs).to(torch.float32)
        t = t.T.contiguous() if transposed else t
        if t.shape != shapes[ours]:
            raise UserError(f"{where}: {theirs} has shape {list(t.shape)}, the config says "
                            f"{list(shapes[ours])}")
        state[ours] = t
    if arch == "gpt" or config.get("tie_embeddings"):
        weights.pop("lm_head.weight", None)  # a tied head: the embedding, written twice
    extra = [k for k in weights if not IGNORED.fullmatch(k)]
    if extra:
        raise UserError(f"{where}: the checkpoint has tensors this model does not: {extra[:5]}")
    # a tied head is the embedding, under both names
    if arch == "gpt" or config.get("tie_embeddings"):
        state["lm_head.weight"] = state["transformer.wte.weight" if arch == "gpt"
                                        else "embed_tokens.weight"]
    return state


def grow_vocabulary(state, arch, config, rows):
    """Give the embedding (and an untied head) rows up to `rows`, for the special tokens added:
    each new row is the mean of the existing ones, a neutral start that fine-tuning moves."""
    names = ["transformer.wte.weight"] if arch == "gpt" else ["embed_tokens.weight"]
    if not config.get("tie_embeddings", True) and arch != "gpt":
        names.append("lm_head.weight")
    for name in names:
        old = state[name]
        state[name] = torch.cat([old, old.mean(0, keepdim=True).expand(rows - old.size(0), -1)])
    if arch == "gpt" or config.get("tie_embeddings"):
        state["lm_head.weight"] = state[names[0]]
    config["vocab_size"] = rows


def import_model(source, out_dir, max_seq_len=2048, stage="", chat_template=""):
    """A released model (hub id, transformers directory or GGUF file) -> a run directory.
    Returns its payload."""
    if Path(source).suffix == ".gguf":  # llama.cpp's one file, read as a release's files
        config_json, tok, weights, template = gguf_import.read_release(source)
    else:
        folder = download.release_folder(source)
        config_json = safetensors_file.read_json(folder / "config.json", "config.json")
        tok = hf_tokenizer.from_hf(folder / "tokenizer.json")
        weights, template = (safetensors_file.read_weights(folder),
                             hf_tokenizer.chat_template_of(folder))
    family, arch, config = import_config(config_json, f"{source}: config.json", max_seq_len)
    tok, added = import_tokenizer(tok, source, config["vocab_size"])
    state = import_weights(weights, arch, config, source)
    if tok.vocab_size > config["vocab_size"]:
        grow_vocabulary(state, arch, config, tok.vocab_size)
    if arch == "gpt" and not any(state[k].any() for k in state if k.endswith(".bias")):
        config["bias"] = False  # an exported bias-free GPT (all biases exactly 0) comes back as one
        state = {k: v for k, v in state.items() if not k.endswith(".bias")}
    tok.chat_template = (chat_templates.recognise(template or "", tok, source, chat_template)
                         if template or chat_template else None)  # None: ChatML once fine-tuned
    stage = stage or ("sft" if tok.chat_template else "pretrain")
    source_info = {"from": source, "architecture": next(iter(config_json.get("architectures", []))),
                   "family": family, "added_tokens": added, "chat_template":
                   tok.chat_template.family if tok.chat_template else "none"}
    out = Path(out_dir)
    rundir.write_model_file(out, arch, config, state, tok,
                            {"stage": stage, "step": 0, "source": source_info})
    return {"arch": arch, "config": config, "stage": stage, "source": source_info, "added": added,
            "template": template}


# ---------------------------------------------------------------------------------------------
# 4. Export to transformers: config.json, model.safetensors, the tokenizer files, a model card
# ---------------------------------------------------------------------------------------------
def export_family(arch, config):
    """Which transformers class can hold our model exactly; a UserError when none can."""
    if arch == "gpt":
        return "gpt2"
    if config.get("n_experts"):
        if config.get("n_shared_experts") or not config.get("qk_norm") or config.get("qkv_bias"):
            raise UserError("this mixture of experts has shared experts, no QK-norm or q/k/v "
                            "biases: Qwen3MoeForCausalLM, the one MoE class it could go to, has "
                            "none of those")
        return "qwen3_moe"
    if config.get("qkv_bias") and config.get("qk_norm"):
        raise UserError("q/k/v biases AND QK-norm: no transformers class has both (Qwen2 has the "
                        "biases, Qwen3 the norms)")
    if config.get("qkv_bias"):
        if config["head_dim"] != config["dim"] // config["n_heads"]:
            raise UserError("Qwen2ForCausalLM derives head_dim from dim / n_heads; "
                            "this model's differs")
        return "qwen2"
    return "qwen3" if config.get("qk_norm") else "llama"


def export_config(arch, config, tok):
    """Our config -> (transformers class name, config.json dict). Every field whose default could
    build another model is written out (tie_word_embeddings, head_dim, rope_theta, the GELU...)."""
    family = export_family(arch, config)
    name = next(n for n, f in HF_ARCHS.items() if f == family)
    specials = tok.special_tokens
    common = {"architectures": [name], "model_type": family, "vocab_size": config["vocab_size"],
              "bos_token_id": specials["<|endoftext|>"], "eos_token_id": specials["<|endoftext|>"],
              "pad_token_id": specials["<|endoftext|>"], "torch_dtype": "float32"}
    if family == "gpt2":
        return name, {**common, "n_embd": config["n_embd"], "n_layer": config["n_layer"],
                      "n_head": config["n_head"], "n_positions": config["block_size"],
                      "n_inner": None, "n_ctx": config["block_size"], "layer_norm_epsilon": 1e-5,
                      "tie_word_embeddings": True,
                      "activation_function": ("gelu_new" if config.get("gelu_approximate") == "tanh"
                                              else "gelu"),
                      "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    model = minimind.MiniMindConfig(**config)  # fills what the stored config leaves to defaults
    out = {**common, "hidden_size": model.dim, "num_hidden_layers": model.n_layers,
           "num_attention_heads": model.n_heads, "num_key_value_heads": model.n_kv_heads,
           "head_dim": model.head_dim, "intermediate_size": model.hidden_dim, "hidden_act": "silu",
           "max_position_embeddings": model.max_seq_len, "rms_norm_eps": model.norm_eps,
           "rope_theta": model.rope_theta, "rope_scaling": model.rope_scaling,
           "rope_parameters": {"rope_theta": model.rope_theta,
                               **(model.rope_scaling or {"rope_type": "default"})},
           "tie_word_embeddings": model.tie_embeddings, "attention_bias": False,
           "attention_dropout": 0.0}
    if family == "llama":
        out["mlp_bias"] = False
    if family in ("qwen2", "qwen3", "qwen3_moe"):
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=model.n_layers,
                   layer_types=["full_attention"] * model.n_layers)
    if family == "qwen2":
        del out["head_dim"], out["attention_bias"]  # Qwen2 always has q/k/v biases, never head_dim
    if family == "qwen3_moe":
        out.update(num_experts=model.n_experts, num_experts_per_tok=model.top_k,
                   moe_intermediate_size=model.hidden_dim, norm_topk_prob=model.top_k > 1,
                   decoder_sparse_step=1, mlp_only_layers=[],
                   router_aux_loss_coef=model.aux_loss_coef, output_router_logits=False)
    return name, out


def our_tensors(payload):
    """The run's state_dict, a bias-free GPT given zero biases: GPT-2 (in transformers and in
    llama.cpp) always has them, and zeros change nothing."""
    state = dict(payload["model"])
    if payload["arch"] == "gpt":
        for ours, _, _ in tensor_names("gpt", payload["config"]):
            if ours not in state:  # a bias: as wide as its weight has rows
                state[ours] = torch.zeros(state[ours[:-len(".bias")] + ".weight"].shape[0])
    return state


def export_tensors(payload):
    """Our state_dict -> {transformers name: tensor}, by the one table of names."""
    state = our_tensors(payload)
    return {theirs: state[ours].T.contiguous() if transposed else state[ours].contiguous()
            for ours, theirs, transposed in tensor_names(payload["arch"], payload["config"])}


def write_hf(run_dir, out):
    """Export a run directory to the transformers directory `out` (which must not exist)."""
    payload = export_payload(run_dir, "hf")
    tok = rundir.load_tokenizer(run_dir)
    hf_tok = hf_tokenizer.to_hf(tok)
    name, config = export_config(payload["arch"], payload["config"], tok)
    chat = rundir.is_chat(payload)
    ends = chat_templates.export_tokens(tok, chat)  # the run's template and its bos/eos tokens
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast",
                  "chat_template": ends["template"], "bos_token": ends["bos"],
                  "eos_token": ends["eos"], "pad_token": "<|endoftext|>", "unk_token": None,
                  "model_max_length":
                  config.get("max_position_embeddings", config.get("n_positions")),
                  "clean_up_tokenization_spaces": False, "add_bos_token": False,
                  "add_eos_token": False}
    eos = [tok.special_tokens[n] for n in (chat_templates.stop_names(tok) if chat
                                           else ["<|endoftext|>"])]
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": eos,
                  "pad_token_id": config["pad_token_id"], "do_sample": True, "temperature": 0.7,
                  "top_p": 0.9}
    files = {"config.json": config, "generation_config.json": generation, "tokenizer.json": hf_tok,
             "tokenizer_config.json": tok_config}

    def fill(folder):
        tensors = export_tensors(payload)
        rundir.atomic_write(folder / "model.safetensors",
                            lambda f: safetensors_file.write_safetensors(f, tensors))
        for file, value in files.items():
            rundir.write_json(folder / file, value)
        card = modelcard.model_card(run_dir, payload, name, "hf")
        rundir.atomic_write(folder / "README.md", lambda f: f.write(card.encode("utf-8")))
    rundir.write_folder(out, fill)
    return name


def export_payload(run_dir, target):
    """The run's model.pt (memory-mapped), refusing what the target cannot hold."""
    payload = rundir.read_model_file(run_dir, mmap=True)
    if payload.get("quantized"):
        raise UserError(f"{run_dir}: an INT8 run directory; export the float run it was made from "
                        f"({payload['quantized'].get('source', 'its source')}) instead "
                        f"(--to {target} writes its own quantized types)")
    return payload


# ---------------------------------------------------------------------------------------------
# 5. Export to GGUF (llama.cpp, Ollama) and an Ollama Modelfile
#
# llama.cpp knows an architecture by name and finds its numbers under "{arch}.key" and its tensors
# under its own names (blk.N.attn_q.weight ..., gguf_file.gguf_name). MiniMind goes out as "llama",
# or "qwen2" (q/k/v biases) or "qwen3" (QK-norm). One difference matters: llama.cpp's "llama"
# rotates ADJACENT channel pairs (0,1), (2,3), ... where we (and Hugging Face) rotate channel i
# with i + head_dim/2, so the rows of q and k are permuted for it, head by head
# (gguf_file.rotary_pairs_adjacent); its qwen2/qwen3 rotate as we do. The tokenizer section, and
# the llama.cpp pre-tokenizer names, are hf_tokenizer.gguf_tokenizer's.
# A linear weight is nn.Linear's [out, in] in both worlds (GPT-2's Conv1D is transposed only in
# transformers' files), and GGUF writes the dims fastest-first, so the tensors go as they are.
# ---------------------------------------------------------------------------------------------
def gguf_arch(arch, config):
    if arch == "gpt":
        return "gpt2"
    if config.get("n_experts"):
        raise UserError("GGUF export of a mixture of experts is not written here; export it with "
                        "--to hf (Qwen3MoeForCausalLM), which llama.cpp's own converter reads")
    family = export_family(arch, config)
    return {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}[family]


def gguf_metadata(w, arch, config, name):
    """The numbers llama.cpp builds the model from, each in the type it insists on."""
    a = gguf_arch(arch, config)
    w.add("general.architecture", a)
    w.add("general.name", name)
    if a == "gpt2":
        sizes = {"context_length": config["block_size"], "embedding_length": config["n_embd"],
                 "block_count": config["n_layer"], "feed_forward_length": 4 * config["n_embd"],
                 "attention.head_count": config["n_head"]}
        for key, value in sizes.items():
            w.add(f"gpt2.{key}", value, "uint32")
        w.add("gpt2.attention.layer_norm_epsilon", 1e-5, "float32")
        return a
    m = minimind.MiniMindConfig(**config)
    sizes = {"context_length": m.max_seq_len, "embedding_length": m.dim, "block_count": m.n_layers,
             "feed_forward_length": m.hidden_dim, "attention.head_count": m.n_heads,
             "attention.head_count_kv": m.n_kv_heads, "attention.key_length": m.head_dim,
             "attention.value_length": m.head_dim, "rope.dimension_count": m.head_dim,
             "vocab_size": m.vocab_size}
    for key, value in sizes.items():
        w.add(f"{a}.{key}", value, "uint32")
    gguf_file.add_rope(w, a, m.rope_theta, m.head_dim, m.rope_scaling)
    w.add(f"{a}.attention.layer_norm_rms_epsilon", m.norm_eps, "float32")
    return a


def write_gguf(run_dir, out, kind="f16"):
    """Export a run directory to one GGUF file (f32, f16 or q8_0 matrices; norms stay f32)."""
    if kind not in gguf_file.GGUF_FILE_TYPES:
        raise UserError(f"--type must be f32, f16 or q8_0; got {kind!r}")
    payload = export_payload(run_dir, "gguf")
    arch, config, state = payload["arch"], payload["config"], payload["model"]
    tok = rundir.load_tokenizer(run_dir)
    w = gguf_file.GGUFWriter()
    a = gguf_metadata(w, arch, config, Path(run_dir).resolve().name)
    w.add("general.file_type", gguf_file.GGUF_FILE_TYPES[kind], "uint32")
    w.add("general.quantization_version", 2, "uint32")
    ends = chat_templates.export_tokens(tok, rundir.is_chat(payload))
    for key, value, value_type in hf_tokenizer.gguf_tokenizer(tok, **ends):
        w.add(key, value, value_type)
    tied = arch == "gpt" or config.get("tie_embeddings", True)
    for ours, tensor in our_tensors(payload).items():
        if ours == "lm_head.weight" and tied:
            continue  # llama.cpp reuses token_embd when there is no output.weight
        if a == "llama" and re.search(r"self_attn\.[qk]_proj\.", ours):
            heads = config["n_heads"] if ".q_proj." in ours else config["n_kv_heads"]
            tensor = gguf_file.rotary_pairs_adjacent(tensor, heads)
        w.add_tensor(gguf_file.gguf_name(ours), tensor, "f32" if "wpe" in ours else kind)
    rundir.atomic_write(out, lambda f: w.write(f, Path(out).name))
    return a


def modelfile(gguf_path, chat, tok):
    """An Ollama Modelfile beside the GGUF: the file, the run's chat template in Ollama's Go
    syntax and its stop tokens, the sampling settings chat.py uses."""
    lines = [f"FROM ./{Path(gguf_path).name}", ""]
    if chat:
        stops = [n for n in chat_templates.stop_names(tok) if n != "<|endoftext|>"]  # see below
        lines += [f'TEMPLATE """{chat_templates.OLLAMA[chat_templates.of(tok).family]}"""']
        lines += [f'PARAMETER stop "{n}"' for n in stops]
    else:
        lines += ['TEMPLATE """{{ .Prompt }}"""']
    lines += ['PARAMETER stop "<|endoftext|>"', "PARAMETER temperature 0.7", "PARAMETER top_k 50",
              "PARAMETER top_p 0.9", "PARAMETER repeat_penalty 1.1", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 6. The command line
# ---------------------------------------------------------------------------------------------
@dataclass
class ConvertConfig:
    source: str = option("", "hf:OWNER/NAME[@REVISION], a transformers directory or a .gguf file "
                             "(import), or a run directory (with --to)", positional="?")
    dest: str = option("", "the run directory an import writes, or the export's path",
                       positional="?")
    to: str = option("", "export the run directory SOURCE: hf | gguf (empty: import a released "
                         "model)")
    type: str = option("f16", "GGUF tensor type of the matrices: f32 | f16 | q8_0 (norms stay f32)")
    max_seq_len: int = option(2048, "longest context of an imported model (its RoPE tables and KV "
                                    "cache are this long; the release's own limit if smaller)")
    stage: str = option("", "pretrain | sft: what the import is (default: sft when it has a chat "
                            "template, else pretrain)")
    chat_template: str = option("", f"{chat_templates.CHOICES}: how chats are written (default: "
                                    f"the release's template, recognised; none: ChatML)")
    overwrite: bool = option(False, "replace what is at DEST")


def check_dest(cfg):
    dest = Path(cfg.dest)
    taken = (dest / "model.pt").exists() if not cfg.to else dest.exists()
    if taken and not cfg.overwrite:
        raise UserError(f"{dest} already exists: --overwrite replaces it, or choose another "
                        f"destination")
    if cfg.to and Path(cfg.source).resolve() == dest.resolve():
        raise UserError(f"{dest} is the source run directory; choose another destination")


def main(argv=None, **overrides):
    """Import (SOURCE a released model, DEST a run directory) or export (--to hf|gguf); returns
    what was written."""
    cfg = rundir.parse_config(ConvertConfig, argv, None, overrides)
    if not cfg.source or not cfg.dest:
        raise UserError("give SOURCE and DEST: python convert.py hf:OWNER/NAME out/name, or "
                        "python convert.py RUN_DIR OUT --to hf|gguf")
    if (cfg.to not in ("", "hf", "gguf") or cfg.stage not in ("", "pretrain", "sft")
            or cfg.max_seq_len < 1):
        raise UserError("--to must be hf or gguf, --stage pretrain or sft, "
                        "--max-seq-len at least 1")
    check_dest(cfg)
    if not cfg.to:
        out = import_model(cfg.source, cfg.dest, cfg.max_seq_len, cfg.stage, cfg.chat_template)
        print(f"imported {cfg.source} ({out['source']['architecture']}) -> {cfg.dest}: "
              f"{out['arch']}, vocab {out['config']['vocab_size']}, stage {out['stage']}"
              + (f"; added special tokens {out['added']}" if out["added"] else "")
              + f"; chat template: {out['source']['chat_template']}")
        return out
    if not Path(cfg.source).is_dir():
        raise UserError(f"{cfg.source}: no such run directory")
    if cfg.to == "hf":
        name = write_hf(cfg.source, cfg.dest)
        print(f"wrote {cfg.dest}: {name}, loads with transformers' AutoModelForCausalLM")
        return {"dest": cfg.dest}
    arch = write_gguf(cfg.source, cfg.dest, cfg.type)
    chat = rundir.is_chat(rundir.read_model_file(cfg.source, mmap=True))
    modelfile_path = Path(cfg.dest).with_name("Modelfile")
    text = modelfile(cfg.dest, chat, rundir.load_tokenizer(cfg.source))
    rundir.atomic_write(modelfile_path, lambda f: f.write(text.encode("utf-8")))
    card = modelcard.write_beside(cfg.source, cfg.dest, arch)  # the model card, NAME.md
    print(f"wrote {cfg.dest} (GGUF, arch {arch}, {cfg.type}), {card} and {modelfile_path}: "
          f"ollama create NAME -f {modelfile_path}")
    return {"dest": cfg.dest, "arch": arch, "modelfile": str(modelfile_path), "card": str(card)}


if __name__ == "__main__":
    rundir.run_cli(main)
