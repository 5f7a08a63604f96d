"""chat_templates.py: each family's rendering against strings written from the release templates
(tests/fixtures/chat_templates holds the real ones: Llama 3.2, Llama 3, Llama 2, Mistral v0.2 and
v0.3, Gemma 2, Phi-3 mini, Zephyr, TinyLlama chat, SmolLM2, Qwen2.5, Qwen3), the loss mask (the assistant's words and the
end of its turn, nothing else), recognition from the Jinja text, the run directory's record, and
the one-line error for a template slm does not know. With transformers: apply_chat_template gives
our text and ids for every family. End to end: an imported Llama-3-template model fine-tuned by
sft.py learns to end its turn with <|eot_id|>, and its HF and GGUF exports answer as chat.py does
(transformers' generate, llama.cpp's chat completion with the template the GGUF carries)."""
import copy
import json
import time
from pathlib import Path

import pytest
import torch

import bpe
import chat
import chat_templates as ct
import convert
import rundir
import sft
from conftest import cli_in_process
from test_convert import write_release

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"
RELEASES = {  # fixture -> the family it is
    "Llama-3.2-1B-Instruct": "llama3", "Meta-Llama-3-8B-Instruct": "llama3",
    "Llama-2-7b-chat-hf": "llama2", "Mistral-7B-Instruct-v0.2": "mistral",
    "Mistral-7B-Instruct-v0.3": "mistral", "gemma-2-2b-it": "gemma",
    "Phi-3-mini-4k-instruct": "phi3", "zephyr-7b-beta": "zephyr",
    "TinyLlama-1.1B-Chat-v1.0": "zephyr", "SmolLM2-135M-Instruct": "chatml",
    "Qwen2.5-0.5B-Instruct": "chatml", "Qwen3-8B": "chatml"}
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>", "<|eom_id|>", "<s>", "</s>", "<bos>", "<eos>", "<start_of_turn>",
            "<end_of_turn>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
SYSTEM = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Again?"}]
PLAIN = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
         {"role": "user", "content": "Name a colour."}]
TRAIN = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": " Hello there "}, {"role": "user", "content": "Again?"},
         {"role": "assistant", "content": "Yes."}]


def jinja(name):
    return (FIXTURES / f"{name}.jinja").read_text(encoding="utf-8")


def text(family, source, messages, gen):
    """What a family writes for messages, as one string (source: a fixture's name or Jinja)."""
    template = jinja(source) if source in RELEASES else source
    return "".join(t for t, _, _ in ct.FAMILIES[family].render(messages, gen, template))


@pytest.fixture(scope="module")
def tok(corpus):
    """The corpus BPE with every family's special tokens."""
    t = bpe.Tokenizer.load(corpus / "tok.json")
    t.add_special_tokens(SPECIALS)
    return t


def with_template(tok, family, source=None):
    """A copy of tok with a template attached (the release's text, or the family's own)."""
    t = copy.copy(tok)
    t.chat_template = ct.Template(family, jinja(source) if source else ct.FAMILIES[family].jinja)
    return t


# ---- each family's text, from the release templates ----------------------------------------------
TODAY = time.strftime("%d %b %Y")
EXPECTED = [  # (family, the template's source, messages, generation prompt, the text)
    ("chatml", ct.CHATML_TEMPLATE, PLAIN, True,
     "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
     "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"),
    ("chatml", "SmolLM2-135M-Instruct", PLAIN[:1], True,  # its default system message
     "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
     "<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"),
    ("chatml", "Qwen2.5-0.5B-Instruct", SYSTEM[:2], False,  # ... only without one of its own
     "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"),
    ("chatml", "Qwen3-8B", TRAIN[1:] + [{"role": "user", "content": "Why?"},
                                        {"role": "assistant", "content": "<think>\nhm\n</think>Because."}], False,
     "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n Hello there <|im_end|>\n"
     "<|im_start|>user\nAgain?<|im_end|>\n<|im_start|>assistant\nYes.<|im_end|>\n<|im_start|>user\nWhy?"
     "<|im_end|>\n<|im_start|>assistant\n<think>\nhm\n</think>\n\nBecause.<|im_end|>\n"),
    ("chatml", "Qwen3-8B", SYSTEM[1:3], False,  # the last answer: an empty reasoning block
     "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello<|im_end|>\n"),
    ("llama3", "Meta-Llama-3-8B-Instruct", SYSTEM, True,
     "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
     "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant"
     "<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAgain?"
     "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
    ("llama3", "Llama-3.2-1B-Instruct", PLAIN, False,
     "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
     f"December 2023\nToday Date: {TODAY}\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>"
     "\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
     "<|start_header_id|>user<|end_header_id|>\n\nName a colour.<|eot_id|>"),
    ("llama3", "Llama-3.2-1B-Instruct", SYSTEM[:2], True,
     "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
     f"December 2023\nToday Date: {TODAY}\n\nBe brief.<|eot_id|><|start_header_id|>user"
     "<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
    ("llama2", "Llama-2-7b-chat-hf", SYSTEM, True,
     "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] Again? [/INST]"),
    ("llama2", "Llama-2-7b-chat-hf", PLAIN, False,
     "<s>[INST] Hi there [/INST] Hello! </s><s>[INST] Name a colour. [/INST]"),
    ("mistral", "Mistral-7B-Instruct-v0.2", SYSTEM, True,
     "<s> [INST] Be brief.\n\nHi [/INST] Hello</s> [INST] Again? [/INST]"),
    ("mistral", "Mistral-7B-Instruct-v0.3", SYSTEM, True,  # the system message: last user turn
     "<s>[INST] Hi[/INST] Hello</s>[INST] Be brief.\n\nAgain?[/INST]"),
    ("mistral", "Mistral-7B-Instruct-v0.3", SYSTEM[:3], False,  # ... and only there
     "<s>[INST] Hi[/INST] Hello</s>"),
    ("gemma", "gemma-2-2b-it", PLAIN, True,
     "<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
     "<start_of_turn>user\nName a colour.<end_of_turn>\n<start_of_turn>model\n"),
    ("gemma", "gemma-2-2b-it", SYSTEM, False,  # no system role: it opens the first user turn
     "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello"
     "<end_of_turn>\n<start_of_turn>user\nAgain?<end_of_turn>\n"),
    ("phi3", "Phi-3-mini-4k-instruct", SYSTEM, False,
     "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n<|user|>\n"
     "Again?<|end|>\n<|endoftext|>"),
    ("phi3", "Phi-3-mini-4k-instruct", PLAIN, True,
     "<|user|>\nHi there<|end|>\n<|assistant|>\nHello!<|end|>\n<|user|>\nName a colour.<|end|>\n"
     "<|assistant|>\n"),
    ("zephyr", "zephyr-7b-beta", SYSTEM, True,
     "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello</s>\n<|user|>\nAgain?</s>\n"
     "<|assistant|>\n"),
    ("zephyr", "TinyLlama-1.1B-Chat-v1.0", PLAIN, False,
     "<|user|>\nHi there</s>\n<|assistant|>\nHello!</s>\n<|user|>\nName a colour.</s>\n"),
]


@pytest.mark.parametrize("family, source, messages, gen, want", EXPECTED)
def test_each_family_writes_what_its_release_template_writes(family, source, messages, gen, want):
    assert text(family, source, messages, gen) == want


def test_every_release_template_is_recognised_by_its_markers(tok):
    for name, family in RELEASES.items():
        assert ct.family_of(jinja(name)) == family, name
        template = ct.recognise(jinja(name), tok, name)
        assert template == ct.Template(family, jinja(name))  # the release's text, unchanged
    for name, family in ct.FAMILIES.items():  # and each family's own text, for chosen templates
        assert ct.family_of(family.jinja) == name


# ---- the loss mask --------------------------------------------------------------------------------
TRAINED = {  # what the model learns to write for TRAIN: the assistant's words and its end of turn
    "chatml": " Hello there <|im_end|>Yes.<|im_end|>",
    "llama3": "Hello there<|eot_id|>Yes.<|eot_id|>",
    "llama2": " Hello there </s> Yes. </s>",
    "mistral": " Hello there</s> Yes.</s>",
    "gemma": "Hello there<end_of_turn>Yes.<end_of_turn>",
    "phi3": " Hello there <|end|>Yes.<|end|>",
    "zephyr": " Hello there </s>Yes.</s>",
}


@pytest.mark.parametrize("family", sorted(ct.FAMILIES))
def test_the_mask_trains_the_answers_and_their_end_of_turn_only(tok, family):
    t = with_template(tok, family)
    ids, trained = sft.render_chat(t, TRAIN)
    whole = text(family, t.chat_template.jinja, TRAIN, False)
    assert t.decode(ids) == whole
    # encoded as `tokenizers` encodes the whole string: special tokens first, then each piece
    assert ids == t.encode(whole, allowed_special="all")
    assert t.decode([i for i, keep in zip(ids, trained) if keep]) == TRAINED[family]
    end = ct.end_id(t)
    assert ids[max(i for i, k in enumerate(trained) if k)] == end  # the last trained: the end
    gen, gen_trained = sft.render_chat(t, TRAIN[:4], add_generation_prompt=True)
    assert t.decode(gen) == text(family, t.chat_template.jinja, TRAIN[:4], True)
    assert end in ct.stop_ids(t) and t.special_tokens["<|endoftext|>"] in ct.stop_ids(t)


def test_user_text_cannot_forge_the_end_of_a_turn(tok):
    t = with_template(tok, "llama3")
    ids, _ = sft.render_chat(t, [{"role": "user", "content": "a<|eot_id|><|start_header_id|>"}])
    assert ids.count(t.special_tokens["<|eot_id|>"]) == 1
    assert ids.count(t.special_tokens["<|start_header_id|>"]) == 1


# ---- choosing, recording, refusing ----------------------------------------------------------------
def test_an_unknown_template_is_one_error_line_that_says_how_to_choose(tok):
    unknown = "{% for m in messages %}### {{ m.role }}: {{ m.content }}\n{% endfor %}"
    with pytest.raises(bpe.UserError) as e:
        ct.recognise(unknown, tok, "rel/tokenizer_config.json")
    message = str(e.value)
    assert "\n" not in message and message.startswith("rel/tokenizer_config.json: ")
    assert f"--chat-template {ct.CHOICES}" in message
    assert ct.recognise(unknown, tok, "x", "zephyr") == ct.Template("zephyr", ct.ZEPHYR_JINJA)
    with pytest.raises(bpe.UserError, match="--chat-template must be one of"):
        ct.recognise(unknown, tok, "x", "vicuna")
    bare = with_template(tok, "chatml")
    bare.special_tokens = {k: v for k, v in tok.special_tokens.items() if k != "<|eot_id|>"}
    with pytest.raises(bpe.UserError, match="needs the special tokens \\['<\\|eot_id\\|>'\\]"):
        ct.recognise(jinja("Meta-Llama-3-8B-Instruct"), bare, "x")


def test_convert_py_refuses_an_unknown_template_in_one_line_and_writes_nothing(tmp_path, corpus, capsys):
    write_release(tmp_path / "rel", "llama", bpe.Tokenizer.load(corpus / "tok.json"),
                  template="{% for m in messages %}{{ m.content }}{% endfor %}")
    status, out, err = cli_in_process(convert.main, [tmp_path / "rel", tmp_path / "run"], capsys)
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "rel: its chat template is none that slm knows" in err
    assert "--chat-template chatml|llama3|llama2|mistral|gemma|phi3|zephyr" in err
    assert not (tmp_path / "run").exists()
    status, out, err = cli_in_process(convert.main, [tmp_path / "rel", tmp_path / "run", "--chat-template", "chatml"],
                                      capsys)
    assert status == 0 and "chat template: chatml" in out


def test_a_run_directory_keeps_its_template_through_every_stage(tmp_path, tok, pretrained_run):
    model, _, payload = rundir.load_run(pretrained_run)
    t = with_template(tok, "llama3", "Llama-3.2-1B-Instruct")
    rundir.write_model_file(tmp_path / "run", payload["arch"], payload["config"],
                            model.state_dict(), t, {"stage": "sft"})
    saved = json.loads((tmp_path / "run" / ct.FILE).read_text())
    assert saved == {"family": "llama3", "template": jinja("Llama-3.2-1B-Instruct")}
    assert rundir.load_tokenizer(tmp_path / "run").chat_template == t.chat_template
    rundir.write_model_file(tmp_path / "run", payload["arch"], payload["config"],
                            model.state_dict(), tok, {"stage": "sft"})
    assert not (tmp_path / "run" / ct.FILE).exists()  # ChatML, ours: no file
    assert rundir.load_tokenizer(tmp_path / "run").chat_template == ct.CHATML
    (tmp_path / "run" / ct.FILE).write_text("{")
    with pytest.raises(bpe.UserError, match="chat_template.json: not a chat template file"):
        rundir.load_tokenizer(tmp_path / "run")


# ---- transformers' apply_chat_template -------------------------------------------------------------
BOS_EOS = {"chatml": (None, "<|im_end|>"), "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
           "llama2": ("<s>", "</s>"), "mistral": ("<s>", "</s>"), "gemma": ("<bos>", "<eos>"),
           "phi3": ("<s>", "<|endoftext|>"), "zephyr": ("<s>", "</s>")}
CONVERSATIONS = [PLAIN, SYSTEM, SYSTEM[:2], SYSTEM[1:], TRAIN, TRAIN[1:]]


def hf_tokenizer_of(transformers, tok, family, template):
    """Our tokenizer as transformers' PreTrainedTokenizerFast, with the family's special tokens
    and the template under test."""
    import hf_tokenizer
    tokenizers = pytest.importorskip("tokenizers")
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer.from_str(json.dumps(hf_tokenizer.to_hf(tok))))
    fast.bos_token, fast.eos_token = BOS_EOS[family]
    fast.chat_template = template
    return fast


@pytest.mark.parametrize("source", sorted(RELEASES) + sorted(ct.FAMILIES))
def test_apply_chat_template_gives_our_text_and_ids(tok, source):
    transformers = pytest.importorskip("transformers")
    family = RELEASES.get(source, source)
    template = jinja(source) if source in RELEASES else ct.FAMILIES[family].jinja
    fast = hf_tokenizer_of(transformers, tok, family, template)
    t = with_template(tok, family)
    t.chat_template = ct.Template(family, template)
    checked = 0
    for messages in CONVERSATIONS:
        if source == "gemma-2-2b-it" and messages[0]["role"] == "system":
            with pytest.raises(Exception, match="System role not supported"):  # Gemma 2 refuses
                fast.apply_chat_template(messages, tokenize=False)
            continue
        for gen in (False, True):
            theirs = fast.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert text(family, template, messages, gen) == theirs, (messages, gen)
            ids = fast.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids  # transformers 5: a dict
            assert list(ids) == sft.render_chat(t, messages, gen)[0]
            checked += 1
    assert checked >= 6


# ---- end to end: an imported Llama 3 model, fine-tuned, exported -----------------------------------
LLAMA3 = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
          "<|eot_id|>"]
QA = [("What is the capital of France?", "Paris."), ("Name a primary colour.", "Red."),
      ("What is two plus two?", "Four."), ("Say hello.", "Hello!")]


@pytest.fixture(scope="module")
def llama3_sft(corpus, tmp_path_factory):
    """A tiny Llama with Llama 3.2's template and special tokens, imported by convert.py, then
    fine-tuned by sft.py on four questions repeated until it answers them."""
    d = tmp_path_factory.mktemp("llama3")
    ours = bpe.Tokenizer.load(corpus / "tok.json")  # its BPE, with Llama 3's tokens only
    first = max(ours.vocab) + 1
    base = bpe.Tokenizer(ours.vocab, [(a, b, m) for (a, b), m in zip(ours.merges, ours.merged)],
                         [(first + i, name, True, False) for i, name in enumerate(LLAMA3)])
    write_release(d / "release", "llama", base, template=jinja("Llama-3.2-1B-Instruct"),
                  specials=LLAMA3)
    convert.main([str(d / "release"), str(d / "imported")])
    lines = [{"conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
             for q, a in QA] * 10
    (d / "chats.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    sft.main(["--init", str(d / "imported"), "--data", str(d / "chats.jsonl"), "--out-dir",
              str(d / "sft"), "--max-steps", "60", "--batch-size", "8", "--lr", "1e-2",
              "--warmup-steps", "5", "--eval-exact", "0", "--eval-heldout", "2", "--dtype", "fp32"])
    return d


def chat_answer(run, question):
    """chat.py's engine, greedy: the new token ids, the stop token included when it stopped."""
    engine = chat.Engine(run, dtype="fp32")
    ids = engine.prompt_ids([{"role": "user", "content": question}])
    return list(engine.tokens(ids, 24, None, 0.0, 0, 1.0, 1.0)), engine


def test_sft_from_a_llama3_import_learns_to_end_its_turn_with_eot(llama3_sft):
    imported = rundir.load_tokenizer(llama3_sft / "imported")
    assert imported.chat_template.family == "llama3"
    assert rundir.read_model_file(llama3_sft / "imported")["stage"] == "sft"
    tok = rundir.load_tokenizer(llama3_sft / "sft")
    assert tok.chat_template == ct.Template("llama3", jinja("Llama-3.2-1B-Instruct"))
    eot = tok.special_tokens["<|eot_id|>"]
    for question, answer in QA:
        out, engine = chat_answer(llama3_sft / "sft", question)
        assert eot in engine.stop_ids and tok.special_tokens["<|im_end|>"] not in engine.stop_ids
        assert out[-1] == eot, tok.decode(out)
        assert tok.decode(out[:-1]) == answer
    convert.main([str(llama3_sft / "sft"), str(llama3_sft / "hf"), "--to", "hf"])
    config = json.loads((llama3_sft / "hf" / "tokenizer_config.json").read_text())
    assert config["chat_template"] == jinja("Llama-3.2-1B-Instruct")
    assert (config["bos_token"], config["eos_token"]) == ("<|begin_of_text|>", "<|eot_id|>")
    generation = json.loads((llama3_sft / "hf" / "generation_config.json").read_text())
    assert generation["eos_token_id"][0] == eot
    convert.main([str(llama3_sft / "sft"), str(llama3_sft / "m.gguf"), "--to", "gguf",
                  "--type", "f32"])
    modelfile = (llama3_sft / "Modelfile").read_text()
    assert "<|start_header_id|>{{ .Role }}<|end_header_id|>" in modelfile
    assert 'PARAMETER stop "<|eot_id|>"' in modelfile and "<|im_end|>" not in modelfile


def test_an_int8_run_keeps_the_template_and_answers_the_same(llama3_sft, tmp_path):
    import quantize
    quantize.main([str(llama3_sft / "sft"), "--out", str(tmp_path / "int8"), "--eval-batches", "0"])
    tok = rundir.load_tokenizer(tmp_path / "int8")
    assert tok.chat_template == rundir.load_tokenizer(llama3_sft / "sft").chat_template
    out, _ = chat_answer(tmp_path / "int8", QA[0][0])
    assert out[-1] == tok.special_tokens["<|eot_id|>"]


def test_eval_prompt_suite_stops_at_the_templates_end_of_turn(llama3_sft, monkeypatch):
    import types
    import eval as evaluation
    monkeypatch.setattr(evaluation, "CHAT_PROMPTS", [q for q, _ in QA])
    model, tok, payload = rundir.load_run(llama3_sft / "sft")
    cfg = types.SimpleNamespace(max_new_tokens=24, temperature=0.0, top_k=0, seed=0)
    figures, samples = evaluation.prompt_suite(model, tok, payload, cfg, "cpu")
    assert figures["stopped"] == 1.0 and figures["format"] == 1.0
    assert [s["output"] for s in samples] == [a + "<|eot_id|>" for _, a in QA]


def test_transformers_and_llama_cpp_answer_as_chat_py(llama3_sft):
    transformers = pytest.importorskip("transformers")
    llama_cpp = pytest.importorskip("llama_cpp")
    if not (llama3_sft / "hf").exists():
        pytest.skip("the export test did not run")
    model = transformers.AutoModelForCausalLM.from_pretrained(llama3_sft / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(llama3_sft / "hf")
    llm = llama_cpp.Llama(model_path=str(llama3_sft / "m.gguf"), n_ctx=128, n_threads=1,
                          verbose=False)
    tok = rundir.load_tokenizer(llama3_sft / "sft")
    for question, _ in QA:
        ours, engine = chat_answer(llama3_sft / "sft", question)
        messages = [{"role": "user", "content": question}]
        prompt = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
        assert list(prompt) == engine.prompt_ids(messages)
        with torch.no_grad():
            out = model.generate(torch.tensor([list(prompt)]), max_new_tokens=24, do_sample=False)
        assert out[0, len(prompt):].tolist() == ours
        reply = llm.create_chat_completion(messages, temperature=0.0, top_k=1, top_p=1.0,
                                           repeat_penalty=1.0, max_tokens=24)
        choice = reply["choices"][0]
        assert choice["finish_reason"] == "stop"
        assert choice["message"]["content"] == tok.decode(ours[:-1])
        assert reply["usage"]["completion_tokens"] in (len(ours) - 1, len(ours))


def test_sft_chat_template_flag_chooses_the_family_or_says_what_is_missing(llama3_sft, pretrained_run,
                                                                           capsys):
    sft.main(["--init", str(llama3_sft / "imported"), "--show-example"])
    assert "targets trained: the assistant's words and its <|eot_id|>" in capsys.readouterr().out
    sft.main(["--init", str(llama3_sft / "imported"), "--show-example", "--chat-template", "chatml"])
    assert "its <|im_end|>" in capsys.readouterr().out  # the import has ChatML's tokens too
    with pytest.raises(bpe.UserError, match=f"--init {pretrained_run}: the llama3 chat template "
                                            "needs the special tokens"):
        sft.main(["--init", str(pretrained_run), "--show-example", "--chat-template", "llama3"])
    with pytest.raises(bpe.UserError, match="--chat-template must be one of chatml\\|llama3"):
        sft.main(["--init", str(pretrained_run), "--show-example", "--chat-template", "alpaca"])
