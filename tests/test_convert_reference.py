"""convert.py against the libraries people deploy with, where they are installed (CI has none of
them: every test here is skipped there). transformers: an imported model's logits equal the
original's; our export loads in transformers with the same logits, token ids and chat rendering.
gguf: the package reads our GGUF. llama.cpp (llama-cpp-python): it tokenizes our text to our ids
and an f32 export decodes the same greedy tokens as chat.py --temperature 0."""
import json

import pytest
import torch

import bpe
import chat_templates
import convert
import rundir
import sft
import test_bpe_released as released
from test_convert import TEXT, VARIANTS, our_run

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"},
            {"role": "assistant", "content": "5"}, {"role": "user", "content": "And 4 + 4?"}]


def tiny_hf_model(transformers, family, vocab):
    """A random transformers model of each family, small, with norms and biases moved off 1 and 0."""
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if family == "llama":
        config = transformers.LlamaConfig(**common, rope_theta=50000.0, rms_norm_eps=1e-5,
                                          tie_word_embeddings=False)
    elif family == "qwen2":
        config = transformers.Qwen2Config(**common, rope_theta=1e6, tie_word_embeddings=True)
    elif family == "qwen3":
        config = transformers.Qwen3Config(**common, head_dim=32, rope_theta=1e6, tie_word_embeddings=True)
    elif family == "qwen3_moe":
        config = transformers.Qwen3MoeConfig(**{**common, "intermediate_size": 64}, head_dim=16, num_experts=4,
                                             num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
                                             tie_word_embeddings=False)
    else:
        config = transformers.GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=128)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("family, style", [("llama", "llama3"), ("qwen2", "qwen2"), ("qwen3", "qwen2"),
                                           ("qwen3_moe", "qwen2"), ("gpt2", "gpt2"), ("llama", "smollm2")])
def test_imported_model_gives_transformers_logits_and_tokenizers_ids(tmp_path, family, style):
    transformers = pytest.importorskip("transformers")
    hf_tok = released.hf_styles()[style]()
    model = tiny_hf_model(transformers, family, hf_tok.get_vocab_size())
    model.save_pretrained(tmp_path / "release")
    hf_tok.save(str(tmp_path / "release" / "tokenizer.json"))
    (tmp_path / "release" / "tokenizer_config.json").write_text(json.dumps({"chat_template": chat_templates.CHATML_TEMPLATE}))
    convert.main([str(tmp_path / "release"), str(tmp_path / "run"), "--max-seq-len", "256"])
    ours, tok, _ = rundir.load_run(tmp_path / "run")
    texts = released.MIXED[:-1] + [TEXT]
    for text in texts:  # exactly the ids the tokenizers library gives
        assert tok.encode(text, allowed_special="all") == hf_tok.encode(text, add_special_tokens=False).ids, text
    ids = torch.tensor([tok.encode(" ".join(texts), allowed_special="all")[:120]])
    with torch.no_grad():
        reference = model(ids).logits
        logits = ours(ids)[0][..., :reference.size(-1)]
    diff = (logits - reference).abs().max().item()
    print(f"{family}/{style}: {len(texts)} texts, ids equal; max |logit diff| {diff:.2e}")
    assert diff <= 1e-4


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_transformers_loads_our_export_with_the_same_logits_ids_and_chat(tmp_path, corpus, variant):
    transformers = pytest.importorskip("transformers")
    arch, kw, name = VARIANTS[variant]
    tok = bpe.Tokenizer.load(corpus / "tok.json")
    ours = our_run(tmp_path / "run", tok, arch, **kw).eval()
    convert.main([str(tmp_path / "run"), str(tmp_path / "hf"), "--to", "hf"])
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(model).__name__ == name
    ids = torch.tensor([tok.encode(TEXT)[:30]])
    with torch.no_grad():
        diff = (model(ids).logits - ours(ids)[0]).abs().max().item()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok(TEXT, add_special_tokens=False)["input_ids"] == tok.encode(TEXT)
    rendered = hf_tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    rendered = rendered["input_ids"] if hasattr(rendered, "keys") else rendered  # transformers 5: a dict
    assert list(rendered) == sft.render_chat(tok, MESSAGES, add_generation_prompt=True)[0]
    print(f"{variant}: {name}, max |logit diff| {diff:.2e}")
    assert diff <= 1e-4


def test_the_gguf_package_reads_our_file(tmp_path, corpus):
    gguf = pytest.importorskip("gguf")
    tok = bpe.Tokenizer.load(corpus / "tok.json")
    model = our_run(tmp_path / "run", tok, tie_embeddings=False)
    convert.main([str(tmp_path / "run"), str(tmp_path / "m.gguf"), "--to", "gguf", "--type", "q8_0"])
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    names = {t.name: t for t in reader.tensors}
    assert "output.weight" in names and len(names) == len(model.state_dict())
    assert names["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert names["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    field = reader.fields["general.architecture"]
    assert bytes(field.parts[field.data[0]]).decode() == "llama"


def llama_cpp_model(path, n_ctx):
    llama_cpp = pytest.importorskip("llama_cpp")
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=1, verbose=False, logits_all=False)


def test_llama_cpp_tokenizes_like_us_and_decodes_the_same_greedy_tokens(tmp_path, pretrained_run):
    """The trained nano run (arch llama, q/k rows permuted for its rotary layout) as an f32 GGUF."""
    pytest.importorskip("llama_cpp")
    convert.main([str(pretrained_run), str(tmp_path / "m.gguf"), "--to", "gguf", "--type", "f32"])
    model, tok, _ = rundir.load_run(pretrained_run)
    llm = llama_cpp_model(tmp_path / "m.gguf", model.context_length)
    texts = released.MIXED[:-2] + [TEXT, "The object is returned."]
    agree = sum(llm.tokenize(t.encode(), add_bos=False, special=False) == tok.encode(t, allowed_special="none")
                for t in texts)
    eot = tok.special_tokens["<|endoftext|>"]
    prompt = [eot] + tok.encode("Return a new list")
    ours = [t for t in model.generate(prompt, 40, temperature=0)][:40]
    theirs = []
    for t in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
        theirs.append(t)
        if len(theirs) == len(ours):
            break
    print(f"llama.cpp: {agree}/{len(texts)} texts tokenized alike; greedy {sum(a == b for a, b in zip(ours, theirs))}"
          f"/{len(ours)} tokens alike")
    assert agree == len(texts)
    assert theirs == ours


@pytest.mark.parametrize("variant", ["llama", "untied", "qwen2", "qwen3", "gpt", "gpt-nobias"])
def test_llama_cpp_computes_our_logits_from_an_f32_export(tmp_path, corpus, variant):
    pytest.importorskip("llama_cpp")
    arch, kw, _ = VARIANTS[variant]
    tok = bpe.Tokenizer.load(corpus / "tok.json")
    ours = our_run(tmp_path / "run", tok, arch, **kw).eval()
    convert.main([str(tmp_path / "run"), str(tmp_path / "m.gguf"), "--to", "gguf", "--type", "f32"])
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=ours.context_length, n_threads=1,
                          verbose=False, logits_all=True)
    ids = tok.encode(TEXT)[:20]
    llm.eval(ids)
    theirs = torch.tensor(llm.scores[:len(ids)])
    with torch.no_grad():
        expected = ours(torch.tensor([ids]))[0][0]
    diff = (theirs - expected).abs().max().item()
    print(f"llama.cpp {variant}: max |logit diff| {diff:.2e} over {len(ids)} positions")
    assert diff <= 1e-3
