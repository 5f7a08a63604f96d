"""RoPE scaling (minimind.scale_frequencies, MiniMindConfig.rope_scaling): the frequencies against
their definition written out pair by pair, config.json and GGUF round trips, the refusals; then,
where installed, a Llama-3.2-shaped transformers model and llama.cpp, past the original context."""
import json
import math

import pytest
import torch

import convert
import gguf_file
import minimind
import rundir
from gguf_reader import read_gguf
from rundir import UserError
from test_convert import FAMILIES, our_run, release_tokenizer, run_cli, tok, write_release  # noqa: F401

LLAMA32 = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 8192}  # Llama 3.2 1B/3B's own config.json
# A tiny Llama 3.2: head_dim 32 and theta 10000 put pairs in all three bands of an original context
# of 32 tokens (wavelength under 8: kept; 8 to 32: between; over 32: slowed), run to 128.
TINY = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32}
SHAPE = dict(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128, rope_theta=10000.0)
LINEAR = {"rope_type": "linear", "factor": 4.0}


def by_definition(inv_freq, s):
    """Llama 3's rule as its authors state it, one frequency at a time, by wavelength."""
    out = []
    for f in inv_freq.tolist():
        wavelen = 2 * math.pi / f
        if s["rope_type"] == "linear":
            out.append(f / s["factor"])
        elif wavelen < s["original_max_position_embeddings"] / s["high_freq_factor"]:
            out.append(f)
        elif wavelen > s["original_max_position_embeddings"] / s["low_freq_factor"]:
            out.append(f / s["factor"])
        else:
            smooth = ((s["original_max_position_embeddings"] / wavelen - s["low_freq_factor"])
                      / (s["high_freq_factor"] - s["low_freq_factor"]))
            out.append((1 - smooth) * f / s["factor"] + smooth * f)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("scaling, head_dim, theta", [(LLAMA32, 64, 500000.0), (LLAMA32, 128, 500000.0),
                                                      (TINY, 32, 10000.0), (LINEAR, 16, 10000.0)])
def test_scaled_frequencies_follow_the_definition_pair_by_pair(scaling, head_dim, theta):
    plain = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    scaled = minimind.scale_frequencies(plain, scaling)
    torch.testing.assert_close(scaled, by_definition(plain, scaling), rtol=1e-12, atol=0)
    ratio = plain / scaled
    if scaling["rope_type"] == "llama3":  # all three bands are there: kept, between, slowed
        assert (ratio == 1).any() and (ratio == scaling["factor"]).any()
        assert ((ratio > 1) & (ratio < scaling["factor"])).sum() >= 2
    cos, sin = minimind.rope_tables(head_dim, 100, theta, scaling)  # angle m * f at position m
    m = 77
    angles = m * by_definition(plain.float().double(), scaling)
    torch.testing.assert_close(cos[m, :head_dim // 2].double(), angles.cos(), atol=1e-5, rtol=0)
    torch.testing.assert_close(sin[m, head_dim // 2:].double(), angles.sin(), atol=1e-5, rtol=0)


def test_an_unknown_type_in_a_hand_made_config_is_not_taken_for_llama3():
    with pytest.raises(AssertionError, match="yarn"):
        minimind.MiniMind(minimind.MiniMindConfig(**SHAPE, vocab_size=16,
                                                  rope_scaling={"rope_type": "yarn", "factor": 4.0}))


@pytest.mark.parametrize("key, scaling", [("rope_scaling", TINY), ("rope_scaling", LINEAR),
                                          ("rope_scaling", {**{k: v for k, v in TINY.items() if k != "rope_type"},
                                                            "type": "llama3"}),  # the older spelling
                                          ("rope_parameters", {**TINY, "rope_theta": 10000.0})])
def test_config_json_round_trip_keeps_the_scaling(tmp_path, tok, key, scaling):
    config = {**FAMILIES["llama"], "num_attention_heads": 1, "num_key_value_heads": 1,
              "max_position_embeddings": 128, key: scaling}  # head_dim 32
    scaling = {k: v for k, v in scaling.items() if k not in ("rope_theta", "type")}
    scaling = {"rope_type": "llama3", **scaling}  # what we keep: rope_type first, then the numbers
    write_release(tmp_path / "rel", "llama", tok, config=config)
    convert.import_model(str(tmp_path / "rel"), tmp_path / "run")
    payload = rundir.read_model_file(tmp_path / "run")
    assert payload["config"]["rope_scaling"] == scaling
    model, _, _ = rundir.load_run(tmp_path / "run")
    assert model.config.rope_scaling == scaling
    convert.main([str(tmp_path / "run"), str(tmp_path / "hf"), "--to", "hf"])
    exported = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert exported["rope_scaling"] == scaling
    theta = config[key].get("rope_theta", config["rope_theta"])  # transformers 5 reads rope_parameters'
    assert exported["rope_theta"] == theta and exported["rope_parameters"] == {"rope_theta": theta, **scaling}
    convert.import_model(str(tmp_path / "hf"), tmp_path / "again")
    assert rundir.read_model_file(tmp_path / "again")["config"]["rope_scaling"] == scaling


@pytest.mark.parametrize("scaling", [{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
                                     {"type": "dynamic", "factor": 2.0}, {"rope_type": "longrope"},
                                     {"type": "su"}, {"rope_type": "something-new", "factor": 2.0}])
def test_other_scalings_are_refused_by_name(tmp_path, tok, scaling):
    write_release(tmp_path / "rel", "llama", tok, config={**FAMILIES["llama"], "rope_scaling": scaling})
    kind = scaling.get("rope_type", scaling.get("type"))
    with pytest.raises(UserError, match=f"rel: config.json: rope_scaling = .*'{kind}' is not modelled"):
        convert.import_model(str(tmp_path / "rel"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_refusals_are_one_error_line_also_for_a_llama3_without_its_numbers(tmp_path, tok):
    broken = {"rope_type": "llama3", "factor": 8.0}
    write_release(tmp_path / "rel", "llama", tok, config={**FAMILIES["llama"], "rope_scaling": broken})
    r = run_cli(tmp_path / "rel", tmp_path / "run")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert "config.json: rope_scaling" in r.stderr and "llama3 needs factor, low_freq_factor" in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("scaling", [TINY, LINEAR, LLAMA32])
def test_gguf_holds_the_scaling_as_llama_cpp_does_and_reads_it_back(tmp_path, tok, scaling):
    ours = our_run(tmp_path / "run", tok, rope_scaling=scaling, **SHAPE).eval()
    convert.main([str(tmp_path / "run"), str(tmp_path / "m.gguf"), "--to", "gguf", "--type", "f32"])
    g = read_gguf(tmp_path / "m.gguf")
    keys = {k: v[1] for k, v in g["metadata"].items() if k.startswith("llama.rope.scaling.")}
    if scaling["rope_type"] == "linear":
        assert keys == {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}
        assert "rope_freqs.weight" not in g["tensors"]
    else:  # no key at all: a factor key would be read by llama.cpp as linear scaling on top
        assert keys == {}
        t = g["tensors"]["rope_freqs.weight"]
        divisors = torch.frombuffer(bytearray(t["data"]), dtype=torch.float32)
        plain = 1.0 / 10000.0 ** (torch.arange(0, 32, 2, dtype=torch.float64) / 32)
        torch.testing.assert_close(divisors.double(), plain / by_definition(plain, scaling), rtol=1e-6, atol=0)
    convert.import_model(str(tmp_path / "m.gguf"), tmp_path / "back")
    back, _, _ = rundir.load_run(tmp_path / "back")
    assert back.config.rope_scaling == scaling  # Llama 3's own numbers found again from the tensor
    ids = torch.randint(0, tok.vocab_size, (1, 100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(back(ids)[0], ours(ids)[0], atol=1e-5, rtol=0)


def test_a_gguf_rope_freqs_tensor_that_is_not_llama3_is_refused(tmp_path, tok, monkeypatch):
    our_run(tmp_path / "run", tok, rope_scaling=TINY, **SHAPE)
    monkeypatch.setattr(gguf_file, "add_rope", lambda w, arch, theta, head_dim, scaling: w.add_tensor(
        "rope_freqs.weight", torch.linspace(3, 1, head_dim // 2), "f32"))  # no bands: a straight ramp
    convert.main([str(tmp_path / "run"), str(tmp_path / "m.gguf"), "--to", "gguf", "--type", "f32"])
    with pytest.raises(UserError, match="m.gguf: rope_freqs.weight is not Llama 3's RoPE scaling"):
        convert.import_model(str(tmp_path / "m.gguf"), tmp_path / "back")
    assert not (tmp_path / "back").exists()


def test_llama3_scaling_goes_to_gguf_only_as_llama_and_writes_nothing_else(tmp_path, tok):
    our_run(tmp_path / "run", tok, rope_scaling=TINY, qkv_bias=True, **SHAPE)
    with pytest.raises(UserError, match="RoPE scaling for its llama architecture only.*qwen2"):
        convert.main([str(tmp_path / "run"), str(tmp_path / "m.gguf"), "--to", "gguf"])
    assert not (tmp_path / "m.gguf").exists()


# ---- against transformers and llama.cpp, where installed ------------------------------------------
def beyond(ours, theirs, start):
    """max |logit difference| at the positions from `start` on."""
    return (ours[0, start:] - theirs[0, start:]).abs().max().item()


@pytest.mark.parametrize("scaling", [TINY, LINEAR])
def test_a_llama32_shaped_release_gives_transformers_logits_past_the_original_context(tmp_path, tok, scaling):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=128, intermediate_size=256,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                      rope_parameters={"rope_theta": 10000.0, **scaling})
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.1 if p.dim() == 1 else 0.02))
    model.save_pretrained(tmp_path / "rel")
    (tmp_path / "rel" / "tokenizer.json").write_text(json.dumps(release_tokenizer(tok, "llama", convert.PROJECT_SPECIALS)))
    convert.main([str(tmp_path / "rel"), str(tmp_path / "run"), "--max-seq-len", "128"])
    ours, _, _ = rundir.load_run(tmp_path / "run")
    assert ours.config.rope_scaling == scaling
    ids = torch.randint(0, tok.vocab_size, (1, 100), generator=torch.Generator().manual_seed(1))
    orig = 32
    with torch.no_grad():
        reference = model(ids).logits
        logits = ours(ids)[0]
        unscaled = minimind.MiniMind(minimind.MiniMindConfig(**{**vars(ours.config), "rope_scaling": None}))
        unscaled.load_state_dict(ours.state_dict())
        plain = unscaled(ids)[0]
    diff = beyond(logits, reference, orig)
    print(f"transformers, {scaling['rope_type']}: max |logit diff| {diff:.2e} at positions {orig}-99")
    assert diff <= 1e-4
    assert beyond(plain, reference, orig) > 1e-2  # the scaling is what makes them agree
    convert.main([str(tmp_path / "run"), str(tmp_path / "hf"), "--to", "hf"])  # and our export, back
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert beyond(exported(ids).logits[..., :logits.size(-1)], logits, orig) <= 1e-4


@pytest.mark.parametrize("scaling, kw", [(TINY, {}), (LINEAR, {}), (LINEAR, {"qkv_bias": True}),
                                        (LINEAR, {"qk_norm": True})])
def test_llama_cpp_computes_our_logits_past_the_original_context(tmp_path, tok, scaling, kw):
    llama_cpp = pytest.importorskip("llama_cpp")
    ours = our_run(tmp_path / "run", tok, rope_scaling=scaling, **SHAPE, **kw).eval()
    convert.main([str(tmp_path / "run"), str(tmp_path / "m.gguf"), "--to", "gguf", "--type", "f32"])
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=128, n_threads=1, verbose=False,
                          logits_all=True)
    ids = torch.randint(0, tok.vocab_size, (100,), generator=torch.Generator().manual_seed(2)).tolist()
    llm.eval(ids)
    theirs = torch.tensor(llm.scores[:len(ids)])[None]
    with torch.no_grad():
        expected = ours(torch.tensor([ids]))[0]
    diff = beyond(theirs, expected, 32)
    print(f"llama.cpp, {scaling['rope_type']} {kw}: max |logit diff| {diff:.2e} at positions 32-99")
    assert diff <= 1e-3
