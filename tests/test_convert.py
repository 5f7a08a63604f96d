"""Tests for convert.py's import (released models -> run directories) and export (run directories ->
transformers and GGUF). Tiny models in the hub's layout are written here by hand, in each family
and each tokenizer style, so no network and no extra package is needed; reference tests against
transformers, tokenizers, gguf and llama.cpp run only where those are installed."""
import json
import math
from dataclasses import replace
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import cli_in_process
import bpe
import chat
import chat_templates
import convert
import dpo
import eval as evaluation
import gguf_quants
import gpt
import hf_tokenizer
import minimind
import quantize
import rundir
import safetensors_file
import sft
import tokenizer_v1
import train
from gguf_reader import read_gguf
from rundir import UserError

ROOT = Path(__file__).resolve().parent.parent
TEXT = ("Hello, world! It's 2024: 12345 + 678 = 13023.\n\tdef f(x):  return x ** 2  # café, naïve\r\n"
        "  日本語のテキスト 🙂🚀 Ελληνικά ½ x²\n\n\n   end")

FAMILIES = {  # tiny config.json files, one per family the importer reads
    "llama": {"architectures": ["LlamaForCausalLM"], "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64,
              "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 128,
              "tie_word_embeddings": True},
    "qwen2": {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 48,
              "rope_theta": 1000000.0, "max_position_embeddings": 4096, "tie_word_embeddings": True,
              "use_sliding_window": False, "sliding_window": 4096},
    "qwen3": {"architectures": ["Qwen3ForCausalLM"], "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 48,
              "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
              "max_position_embeddings": 40960, "tie_word_embeddings": False},
    "gpt2": {"architectures": ["GPT2LMHeadModel"], "n_embd": 32, "n_layer": 2, "n_head": 4,
             "n_positions": 64, "activation_function": "gelu_new"},
}


def release_tensors(family, config, vocab, seed=0):
    """Random weights under transformers' names (the hub's GPT-2 has no "transformer." prefix and
    stores Conv1D weights [in, out]), written out here by hand, not by convert's table."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: (torch.randn(*shape, generator=g) * 0.2).to(torch.bfloat16)
    if family == "gpt2":
        d, P = config["n_embd"], config["n_positions"]
        t = {"wte.weight": r(vocab, d), "wpe.weight": r(P, d), "ln_f.weight": 1 + r(d), "ln_f.bias": r(d)}
        for i in range(config["n_layer"]):
            h = f"h.{i}."
            t.update({h + "ln_1.weight": 1 + r(d), h + "ln_1.bias": r(d), h + "ln_2.weight": 1 + r(d),
                      h + "ln_2.bias": r(d), h + "attn.c_attn.weight": r(d, 3 * d), h + "attn.c_attn.bias": r(3 * d),
                      h + "attn.c_proj.weight": r(d, d), h + "attn.c_proj.bias": r(d),
                      h + "mlp.c_fc.weight": r(d, 4 * d), h + "mlp.c_fc.bias": r(4 * d),
                      h + "mlp.c_proj.weight": r(4 * d, d), h + "mlp.c_proj.bias": r(d),
                      h + "attn.bias": torch.tril(torch.ones(1, 1, P, P))})  # GPT-2's mask buffer
        return t
    d, H, KV = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
    hd, ff = config.get("head_dim", d // H), config["intermediate_size"]
    t = {"model.embed_tokens.weight": r(vocab, d), "model.norm.weight": 1 + r(d)}
    if not config["tie_word_embeddings"]:
        t["lm_head.weight"] = r(vocab, d)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": 1 + r(d), p + "post_attention_layernorm.weight": 1 + r(d),
                  p + "self_attn.q_proj.weight": r(H * hd, d), p + "self_attn.k_proj.weight": r(KV * hd, d),
                  p + "self_attn.v_proj.weight": r(KV * hd, d), p + "self_attn.o_proj.weight": r(d, H * hd),
                  p + "mlp.gate_proj.weight": r(ff, d), p + "mlp.up_proj.weight": r(ff, d),
                  p + "mlp.down_proj.weight": r(d, ff)})
        if family == "qwen2":
            t.update({p + f"self_attn.{x}_proj.bias": r(n * hd) for x, n in (("q", H), ("k", KV), ("v", KV))})
        if family == "qwen3":
            t.update({p + "self_attn.q_norm.weight": 1 + r(hd), p + "self_attn.k_norm.weight": 1 + r(hd)})
    return t


STYLES = {  # the pre-tokenizer (and normalizer) each family's releases use
    "llama": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": hf_tokenizer.LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
    "qwen2": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": hf_tokenizer.QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
    "smollm": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
    "gpt2": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
}


def release_tokenizer(tok, style, specials):
    """tokenizer.json of a release: our corpus BPE's vocabulary and merges in the `tokenizers`
    schema, with a family's pre-tokenizer and only the given special tokens."""
    d = hf_tokenizer.to_hf(tok)
    d["pre_tokenizer"] = STYLES[style]
    d["normalizer"] = {"type": "NFC"} if style == "qwen2" else None
    d["added_tokens"] = [a for a in d["added_tokens"] if a["content"] in specials]
    return d


def write_release(folder, family, tok, style=None, template=chat_templates.CHATML_TEMPLATE, specials=None,
                  config=None, shards=1, seed=0):
    """A transformers directory of a tiny model: config.json, tokenizer files, safetensors."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(config or FAMILIES[family])
    specials = specials if specials is not None else convert.PROJECT_SPECIALS
    hf_tok = release_tokenizer(tok, style or ("gpt2" if family == "gpt2" else "llama"), specials)
    vocab = config.setdefault("vocab_size", tok.vocab_size + (7 if family == "qwen2" else 0))  # spare rows
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").write_text(json.dumps(hf_tok))
    if template is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    tensors = release_tensors(family, config, vocab, seed)
    if shards == 1:
        rundir.atomic_write(folder / "model.safetensors",
                            lambda f: safetensors_file.write_safetensors(f, tensors))
    else:
        names, weight_map = sorted(tensors), {}
        for s in range(shards):
            shard = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: tensors[n] for n in names[s::shards]}
            rundir.atomic_write(folder / shard,
                                lambda f: safetensors_file.write_safetensors(f, part))
            weight_map.update({n: shard for n in part})
        (folder / safetensors_file.SAFETENSORS_INDEX).write_text(json.dumps({"weight_map": weight_map}))
    return tensors


@pytest.fixture(scope="module")
def tok(corpus):
    return bpe.Tokenizer.load(corpus / "tok.json")


# ---- import -----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_llama_family_imports_every_tensor_where_it_belongs(tmp_path, tok, family):
    release = write_release(tmp_path / "rel", family, tok, style="qwen2" if family == "qwen2" else "llama")
    out = convert.import_model(str(tmp_path / "rel"), tmp_path / "run")
    model, tok2, payload = rundir.load_run(tmp_path / "run")
    cfg = model.config
    assert (cfg.qkv_bias, cfg.qk_norm) == (family == "qwen2", family == "qwen3")
    assert cfg.head_dim == (16 if family == "qwen3" else 8) and cfg.tie_embeddings == (family != "qwen3")
    assert cfg.rope_theta == (1e5 if family == "llama" else 1e6) and cfg.norm_eps == (1e-5 if family == "llama" else 1e-6)
    assert cfg.max_seq_len == min(2048, FAMILIES[family]["max_position_embeddings"])
    state = model.state_dict()
    for name, t in release.items():
        ours = name.removeprefix("model.")
        assert torch.equal(state[ours], t.float()), name
    assert payload["stage"] == "sft" and payload["source"]["family"] == family and out["added"] == []
    rows = FAMILIES[family].get("vocab_size", tok.vocab_size + (7 if family == "qwen2" else 0))
    assert tok2.vocab_size == model.config.vocab_size == rows  # Qwen's spare rows are ids for nothing
    assert tok2.encode(TEXT, allowed_special="all") == hf_tokenizer.from_hf(tmp_path / "rel" / "tokenizer.json").encode(TEXT, allowed_special="all")
    with torch.no_grad():  # the model runs and its cache agrees with the full forward
        ids = torch.tensor([tok2.encode("def f(x): return x")])
        full = model(ids)[0]
        cache = model.new_kv_cache(1)
        step = torch.cat([model(ids[:, :4], kv_cache=cache)[0]] +
                         [model(ids[:, t:t + 1], kv_cache=cache, start_pos=t)[0] for t in range(4, ids.size(1))], 1)
    torch.testing.assert_close(step, full, atol=1e-4, rtol=1e-4)


MISTRAL = {**FAMILIES["llama"], "architectures": ["MistralForCausalLM"], "sliding_window": None}


@pytest.mark.parametrize("window", [None, 128, 4096])
def test_mistral_without_a_sliding_window_is_llama(tmp_path, tok, window):
    """Mistral is Llama's design plus a sliding window: with none (null, or at least
    max_position_embeddings, 128 here) it imports as the same model as the Llama release."""
    release = write_release(tmp_path / "rel", "llama", tok, config={**MISTRAL, "sliding_window": window})
    write_release(tmp_path / "llama", "llama", tok)
    out = convert.import_model(str(tmp_path / "rel"), tmp_path / "run")
    assert convert.import_model(str(tmp_path / "llama"), tmp_path / "run2")["config"] == out["config"]
    state = rundir.read_model_file(tmp_path / "run")["model"]
    assert all(torch.equal(state[name.removeprefix("model.")], t.float()) for name, t in release.items())
    assert out["source"]["family"] == "mistral" and out["source"]["architecture"] == "MistralForCausalLM"


@pytest.mark.parametrize("change", [{"sliding_window": 64}, {"sliding_window": 4096, "max_position_embeddings": 32768},
                                    {"sliding_window": "absent"}])
def test_mistral_with_a_sliding_window_is_refused_by_name(tmp_path, tok, change):
    config = {**MISTRAL, **change}
    if config["sliding_window"] == "absent":  # transformers' default: 4096 of 131072 positions
        del config["sliding_window"], config["max_position_embeddings"]
    write_release(tmp_path / "rel", "llama", tok, config=config)
    with pytest.raises(UserError, match="config.json: sliding_window = [0-9]+ is not supported"):
        convert.import_model(str(tmp_path / "rel"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_mistral_gives_transformers_logits(tmp_path, tok):
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "MistralForCausalLM"):
        pytest.skip("this transformers has no MistralForCausalLM")
    config = transformers.MistralConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=96,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=256, sliding_window=None, rope_theta=50000.0)
    torch.manual_seed(0)
    model = transformers.MistralForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "release")
    (tmp_path / "release" / "tokenizer.json").write_text(json.dumps(hf_tokenizer.to_hf(tok)))
    convert.main([str(tmp_path / "release"), str(tmp_path / "run"), "--max-seq-len", "256"])
    ours = rundir.load_run(tmp_path / "run")[0]
    ids = torch.tensor([tok.encode(TEXT)[:100]])
    with torch.no_grad():
        diff = (ours(ids)[0][..., :tok.vocab_size] - model(ids).logits).abs().max().item()
    assert diff <= 1e-4


def test_gpt2_conv1d_weights_are_transposed_and_chat_tokens_added(tmp_path, tok):
    config = {**FAMILIES["gpt2"], "vocab_size": tok.vocab_size - 2}  # GPT-2: rows = its tokens
    release = write_release(tmp_path / "rel", "gpt2", tok, template=None, specials=["<|endoftext|>"],
                            config=config)
    out = convert.import_model(str(tmp_path / "rel"), tmp_path / "run", max_seq_len=64)
    model, tok2, payload = rundir.load_run(tmp_path / "run")
    assert payload["stage"] == "pretrain" and out["added"] == ["<|im_start|>", "<|im_end|>"]
    assert model.config.gelu_approximate == "tanh" and model.config.bias
    # the first block's MLP, computed by hand with Conv1D's convention y = x @ W + b
    block = model.transformer.h[0]
    x = torch.randn(3, 32)
    w_fc, b_fc = release["h.0.mlp.c_fc.weight"].float(), release["h.0.mlp.c_fc.bias"].float()
    w_pr, b_pr = release["h.0.mlp.c_proj.weight"].float(), release["h.0.mlp.c_proj.bias"].float()
    by_hand = F.gelu(x @ w_fc + b_fc, approximate="tanh") @ w_pr + b_pr
    torch.testing.assert_close(block.mlp(x), by_hand, atol=1e-5, rtol=1e-5)
    # two new rows, each the mean of the released embedding, and the head still tied to it
    wte = model.transformer.wte.weight
    assert wte.shape[0] == tok2.vocab_size == tok.vocab_size - 2 + 2
    old = release["wte.weight"].float()
    assert torch.allclose(wte[-1], old.mean(0)) and torch.equal(wte[:old.shape[0]], old)
    assert model.lm_head.weight is wte
    assert tok2.special_tokens["<|im_end|>"] == tok2.vocab_size - 1


def test_unknown_template_is_refused_until_chosen_and_stage_can_be_forced(tmp_path, tok):
    unknown = "{% for m in messages %}### {{ m.role }}: {{ m.content }}\n{% endfor %}"
    write_release(tmp_path / "rel", "llama", tok, template=unknown)
    with pytest.raises(bpe.UserError, match="rel: its chat template.*none that slm knows.*"
                                            "--chat-template chatml\\|llama3"):
        convert.import_model(str(tmp_path / "rel"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    out = convert.import_model(str(tmp_path / "rel"), tmp_path / "run", chat_template="chatml")
    assert out["stage"] == "sft" and out["source"]["chat_template"] == "chatml"
    assert not (tmp_path / "run" / "chat_template.json").exists()  # ChatML: ours, no file
    out = convert.import_model(str(tmp_path / "rel"), tmp_path / "run2", stage="pretrain",
                               chat_template="chatml")
    assert rundir.read_model_file(tmp_path / "run2")["stage"] == "pretrain"


def test_import_through_the_hub_with_shards_and_an_untied_head(tmp_path, tok, hub):
    local = tmp_path / "rel"
    config = {**FAMILIES["llama"], "tie_word_embeddings": False}
    release = write_release(local, "llama", tok, config=config, shards=3)
    hub.publish("acme/tiny-chat", {p.name: p.read_bytes() for p in local.iterdir()})
    convert.main(["hf:acme/tiny-chat", str(tmp_path / "run")])
    model, _, payload = rundir.load_run(tmp_path / "run")
    assert not model.config.tie_embeddings and torch.equal(model.lm_head.weight, release["lm_head.weight"].float())
    assert payload["source"]["from"] == "hf:acme/tiny-chat"
    n = len(hub.requests)
    convert.main(["hf:acme/tiny-chat", str(tmp_path / "run2")])
    assert len(hub.requests) == n  # the second import downloads nothing


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "convert.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("change, field", [
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"attention_bias": True}, "attention_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"architectures": ["MixtralForCausalLM"]}, "architectures"),
])
def test_what_we_do_not_model_is_refused_naming_the_field(tmp_path, tok, change, field):
    write_release(tmp_path / "rel", "llama", tok, config={**FAMILIES["llama"], **change})
    with pytest.raises(UserError, match=f"config.json: {field} = "):
        convert.import_model(str(tmp_path / "rel"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_command_line_errors_are_one_line_and_damage_nothing(tmp_path, tok, hub, capsys):
    write_release(tmp_path / "rel", "llama", tok)
    assert cli_in_process(convert.main, [tmp_path / "rel", tmp_path / "run"], capsys)[0] == 0
    before = (tmp_path / "run" / "model.pt").read_bytes()
    env_run = run_cli(tmp_path / "rel", tmp_path / "run")  # the real command line, once
    lines = env_run.stderr.strip().splitlines()
    assert env_run.returncode == 2 and len(lines) == 1 and "already exists" in lines[0], env_run.stderr
    for args, message in [(("hf:nobody/nothing", tmp_path / "x"), "hf:nobody/nothing@main: config.json"),
                          ((tmp_path / "nowhere", tmp_path / "x"), "not a transformers directory"),
                          ((tmp_path / "run", tmp_path / "x", "--to", "onnx"), "--to must be")]:
        status, out, err = cli_in_process(convert.main, args, capsys)  # the same path, no torch import
        lines = err.strip().splitlines()
        assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
        assert message in lines[0]
    assert (tmp_path / "run" / "model.pt").read_bytes() == before
    metaspace = json.loads((tmp_path / "rel" / "tokenizer.json").read_text())
    metaspace["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁"}
    (tmp_path / "rel" / "tokenizer.json").write_text(json.dumps(metaspace))
    with pytest.raises(UserError, match="Metaspace"):
        convert.import_model(str(tmp_path / "rel"), tmp_path / "run3")


def test_an_imported_chat_model_goes_through_every_script(tmp_path, tok, corpus):
    """sft.py, dpo.py, train.py --init, quantize.py, eval.py and chat.py take the import as it is."""
    write_release(tmp_path / "rel", "qwen2", tok, style="qwen2")
    convert.main([str(tmp_path / "rel"), str(tmp_path / "imp"), "--max-seq-len", "128"])
    small = ["--max-steps", "2", "--batch-size", "2", "--eval-exact", "2", "--max-new-tokens", "2",
             "--eval-heldout", "4", "--warmup-steps", "1"]
    sft.main(["--init", str(tmp_path / "imp"), *small, "--out-dir", str(tmp_path / "sft")])
    dpo.main(["--init", str(tmp_path / "sft"), *small, "--out-dir", str(tmp_path / "dpo")])
    train.main(["--init", str(tmp_path / "imp"), "--data", str(corpus / "text.txt"), "--max-steps", "2",
                "--batch-size", "2", "--seq-len", "32", "--eval-batches", "1", "--sample-tokens", "2",
                "--out-dir", str(tmp_path / "more")])
    quantize.main([str(tmp_path / "dpo"), "--out", str(tmp_path / "dpo-int8"), "--eval-batches", "0"])
    results = evaluation.main([str(tmp_path / "imp"), str(tmp_path / "dpo-int8"), "--data", str(corpus / "text.txt"),
                               "--max-tokens", "64", "--max-new-tokens", "4"])
    assert [r["stage"] for r in results] == ["sft", "dpo"] and all(math.isfinite(r["loss"]) for r in results)
    answer = chat.main([str(tmp_path / "dpo-int8"), "-p", "What is 2 + 3?", "--max-new-tokens", "4",
                        "--temperature", "0"])
    assert isinstance(answer, str)
    assert rundir.read_model_file(tmp_path / "sft")["source"]["from"] == str(tmp_path / "rel")


# ---- export and round trips ---------------------------------------------------------------------
def our_run(folder, tok, arch="minimind", **kw):
    """A run directory of a small random model with the corpus tokenizer (not trained: random
    weights are the harder test of a round trip)."""
    torch.manual_seed(0)
    if arch == "gpt":
        model = gpt.GPT(gpt.GPTConfig(**{**dict(n_layer=2, n_head=2, n_embd=32, block_size=32,
                                                vocab_size=tok.vocab_size), **kw}))
    else:
        model = minimind.MiniMind(minimind.MiniMindConfig(**{**dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                                                    vocab_size=tok.vocab_size, max_seq_len=64), **kw}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)  # norms and biases away from 1 and 0
    rundir.save_model(folder, model, tok, {"stage": "sft", "step": 7})
    return model


VARIANTS = {
    "llama": ("minimind", {}, "LlamaForCausalLM"),
    "untied": ("minimind", {"tie_embeddings": False}, "LlamaForCausalLM"),
    "qwen3": ("minimind", {"qk_norm": True, "head_dim": 16}, "Qwen3ForCausalLM"),
    "qwen2": ("minimind", {"qkv_bias": True}, "Qwen2ForCausalLM"),
    "moe": ("minimind", {"qk_norm": True, "n_experts": 4, "top_k": 2}, "Qwen3MoeForCausalLM"),
    "moe-top1": ("minimind", {"qk_norm": True, "n_experts": 3, "top_k": 1}, "Qwen3MoeForCausalLM"),
    "gpt": ("gpt", {}, "GPT2LMHeadModel"),
    "gpt-nobias": ("gpt", {"bias": False}, "GPT2LMHeadModel"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hf_export_then_import_gives_back_the_same_run(tmp_path, tok, variant):
    arch, kw, name = VARIANTS[variant]
    our_run(tmp_path / "run", tok, arch, **kw)
    convert.main([str(tmp_path / "run"), str(tmp_path / "hf"), "--to", "hf"])
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == [name]
    for key in ("tie_word_embeddings",) + (("head_dim", "rope_theta") if name in ("LlamaForCausalLM", "Qwen3ForCausalLM") else ()):
        assert key in config  # written out, never left to a default
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == sorted(
        ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json", "README.md"])
    convert.main([str(tmp_path / "hf"), str(tmp_path / "back"), "--max-seq-len", "64"])
    a, b = rundir.read_model_file(tmp_path / "run"), rundir.read_model_file(tmp_path / "back")
    assert a["arch"] == b["arch"] and b["stage"] == "sft"
    config_class = rundir.ARCHS[a["arch"]][1]
    same = lambda c: replace(c, ffn_hidden=c.hidden_dim) if hasattr(c, "hidden_dim") else c  # 0: derived
    assert same(config_class(**a["config"])) == same(config_class(**b["config"]))
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    t1, t2 = rundir.load_tokenizer(tmp_path / "run"), rundir.load_tokenizer(tmp_path / "back")
    assert hf_tokenizer.token_strings(t1) == hf_tokenizer.token_strings(t2) and t1.special_tokens == t2.special_tokens
    assert t1.encode(TEXT, allowed_special="all") == t2.encode(TEXT, allowed_special="all")


def test_export_refusals_are_clear_and_write_nothing(tmp_path, tok):
    our_run(tmp_path / "run", tok)
    quantize.main([str(tmp_path / "run"), "--out", str(tmp_path / "int8"), "--eval-batches", "0"])
    with pytest.raises(UserError, match="INT8 run directory; export the float run"):
        convert.main([str(tmp_path / "int8"), str(tmp_path / "hf"), "--to", "hf"])
    our_run(tmp_path / "shared", tok, n_experts=2, top_k=1, n_shared_experts=1, qk_norm=True)
    with pytest.raises(UserError, match="shared experts"):
        convert.main([str(tmp_path / "shared"), str(tmp_path / "hf"), "--to", "hf"])
    with pytest.raises(UserError, match="mixture of experts"):
        convert.main([str(tmp_path / "shared"), str(tmp_path / "m.gguf"), "--to", "gguf"])
    (tmp_path / "hf").mkdir()
    with pytest.raises(UserError, match="already exists"):
        convert.main([str(tmp_path / "run"), str(tmp_path / "hf"), "--to", "hf"])
    assert not any((tmp_path / "hf").iterdir()) and not (tmp_path / "m.gguf").exists()
    assert not (tmp_path / "hf.partial").exists()
    # a vocabulary where two ids stand for the same bytes cannot be told apart by any reader
    vocab = {i: bytes([i]) for i in range(256)}
    vocab[256] = b"ab"
    vocab[257] = b"ab"
    twice = bpe.Tokenizer(vocab, [(97, 98, 256)], [(258, "<|endoftext|>", True, False),
                                                   (259, "<|im_start|>", True, False), (260, "<|im_end|>", True, False)])
    model = minimind.MiniMind(minimind.MiniMindConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=261))
    rundir.save_model(tmp_path / "dup", model, twice, {"stage": "pretrain", "step": 0})
    with pytest.raises(UserError, match="more than one id"):
        convert.main([str(tmp_path / "dup"), str(tmp_path / "dup-hf"), "--to", "hf"])
    assert not (tmp_path / "dup-hf").exists()


def test_hf_export_files_say_what_transformers_needs(tmp_path, tok):
    our_run(tmp_path / "run", tok, qk_norm=True)
    convert.main([str(tmp_path / "run"), str(tmp_path / "hf"), "--to", "hf"])
    tensors, metadata = safetensors_file.read_safetensors(tmp_path / "hf" / "model.safetensors")
    assert metadata == {"format": "pt"} and "lm_head.weight" not in tensors  # tied: left out
    tok_config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert tok_config["chat_template"] == chat_templates.CHATML_TEMPLATE and tok_config["eos_token"] == "<|im_end|>"
    assert tok_config["model_max_length"] == 64
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [tok.special_tokens[n] for n in ("<|im_end|>", "<|im_start|>", "<|endoftext|>")]
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "Qwen3ForCausalLM" in card and "step 7" in card


# ---- GGUF ---------------------------------------------------------------------------------------
def gguf_of(tmp_path, tok, kind="f32", arch="minimind", **kw):
    """(model, GGUF read back): metadata {key: value}, types {key: type name}, tensors {name:
    {"type": ..., "data": the values as a float32 tensor of the torch shape}}."""
    model = our_run(tmp_path / "run", tok, arch, **kw)
    convert.main([str(tmp_path / "run"), str(tmp_path / "m.gguf"), "--to", "gguf", "--type", kind])
    g = read_gguf(tmp_path / "m.gguf")
    for t in g["tensors"].values():
        raw = bytearray(t["data"])
        t["data"] = (gguf_quants.dequantize(raw, "q8_0", t["shape"]) if t["type"] == "q8_0" else
                     torch.frombuffer(raw, dtype=torch.float16 if t["type"] == "f16" else torch.float32)
                     .float().reshape(t["shape"]))
    g["types"] = {k: v[0] for k, v in g["metadata"].items()}
    g["metadata"] = {k: v[1] for k, v in g["metadata"].items()}
    return model, g


def test_gguf_llama_metadata_tokenizer_and_rotary_permutation(tmp_path, tok):
    model, g = gguf_of(tmp_path, tok, rope_theta=5e5)
    md, tensors = g["metadata"], g["tensors"]
    assert md["general.architecture"] == "llama" and md["llama.block_count"] == 2
    assert g["types"]["llama.block_count"] == "uint32" and g["types"]["llama.rope.freq_base"] == "float32"
    assert g["types"]["tokenizer.ggml.token_type"] == "array[int32]"
    assert md["llama.rope.freq_base"] == pytest.approx(5e5) and md["llama.attention.head_count_kv"] == 2
    assert md["llama.context_length"] == 64 and md["llama.rope.dimension_count"] == 8
    assert md["tokenizer.ggml.model"] == "gpt2" and md["tokenizer.ggml.pre"] == "dbrx"
    assert md["tokenizer.ggml.tokens"] == hf_tokenizer.token_strings(tok) and md["tokenizer.ggml.merges"] == hf_tokenizer.hf_merges(tok)
    assert md["tokenizer.ggml.eos_token_id"] == tok.special_tokens["<|im_end|>"]  # a chat run
    assert md["tokenizer.ggml.add_bos_token"] is False and "<|im_start|>" in md["tokenizer.chat_template"]
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    state = model.state_dict()
    for i in range(2):
        for x, heads in (("q", 4), ("k", 2)):
            w = tensors[f"blk.{i}.attn_{x}.weight"]["data"]
            hd = 8
            back = w.reshape(heads, hd // 2, 2, 32).transpose(1, 2).reshape(heads * hd, 32)  # undo the pairing
            assert torch.equal(back, state[f"layers.{i}.self_attn.{x}_proj.weight"])
        assert torch.equal(tensors[f"blk.{i}.attn_v.weight"]["data"], state[f"layers.{i}.self_attn.v_proj.weight"])
    assert torch.equal(tensors["output_norm.weight"]["data"], state["norm.weight"])
    modelfile = (tmp_path / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./m.gguf") and 'PARAMETER stop "<|im_end|>"' in modelfile


@pytest.mark.parametrize("kw, arch", [({"qk_norm": True, "head_dim": 16}, "qwen3"), ({"qkv_bias": True}, "qwen2")])
def test_gguf_qwen_archs_keep_the_rotate_half_layout(tmp_path, tok, kw, arch):
    model, g = gguf_of(tmp_path, tok, **kw)
    assert g["metadata"]["general.architecture"] == arch
    state, tensors = model.state_dict(), g["tensors"]
    assert torch.equal(tensors["blk.0.attn_q.weight"]["data"], state["layers.0.self_attn.q_proj.weight"])
    if arch == "qwen3":
        assert torch.equal(tensors["blk.1.attn_k_norm.weight"]["data"], state["layers.1.self_attn.k_norm.weight"])
        assert g["metadata"]["qwen3.attention.key_length"] == 16
    else:
        assert torch.equal(tensors["blk.0.attn_v.bias"]["data"], state["layers.0.self_attn.v_proj.bias"])


def test_gguf_refuses_a_split_llama_cpp_does_not_know_and_says_why(tmp_path):
    (tmp_path / "v1.json").write_text(json.dumps({
        "format": "slm-bpe", "version": 1, "pattern": tokenizer_v1.V1_SPLIT_PATTERN,
        "special_tokens": {"<|endoftext|>": 258}, "merges": [[194, 178], [120, 256]]}))
    v1 = bpe.Tokenizer.load(tmp_path / "v1.json")
    with pytest.raises(bpe.UserError, match="none that llama.cpp knows by name.*version-1"):
        hf_tokenizer.gguf_tokenizer(v1, **chat_templates.export_tokens(v1, False))


def test_gguf_q8_0_and_gpt2(tmp_path, tok):
    model, g = gguf_of(tmp_path, tok, "q8_0", arch="gpt", gelu_approximate="tanh")
    md, tensors = g["metadata"], g["tensors"]
    assert md["general.architecture"] == "gpt2" and md["general.file_type"] == 7
    assert md["gpt2.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    state = model.state_dict()
    qkv = tensors["blk.0.attn_qkv.weight"]
    assert qkv["type"] == "q8_0"  # rows of 32 values
    w = state["transformer.h.0.attn.c_attn.weight"]
    step = w.reshape(-1, 32).abs().amax(1, keepdim=True) / 127
    # rounding to int8 moves a value by at most step / 2; storing the step in fp16, by 127 * step * 2^-11
    assert ((qkv["data"] - w).reshape(-1, 32).abs() <= step / 2 + 127 * step * 2 ** -11).all()
    assert tensors["position_embd.weight"]["type"] == "f32" and tensors["blk.1.attn_norm.bias"]["type"] == "f32"
    assert (tmp_path / "Modelfile").read_text().count("PARAMETER stop") == 3
