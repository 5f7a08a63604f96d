"""real_vocabularies.py: sentencepiece_bpe.py on real released vocabularies (docs/results.md,
"Released tokenizers"). Offline there is no hub to fetch Llama 2's or Mistral's tokenizer.json
from, but the package mistral-common ships Mistral's own SentencePiece models (v0.1, 32,000
pieces, the Llama 2 layout; v0.3, 32,768). This script turns each into a tokenizer.json with
transformers' converter (its vocabulary and merges), in the structure the hub's files have
(Prepend + Replace normalizers, no pre-tokenizer, the ByteFallback decoder, BOS added), and
compares our ids and decoding with `tokenizers` on the same file and with `sentencepiece` on
the original model, which is what the release really runs. Then the GGUF side: the model's
pieces, SentencePiece scores and piece types written as llama.cpp's "llama" tokenizer (what
llama.cpp's converter writes), read by hf_tokenizer.from_gguf, against llama.cpp's own tokenize
of that file (llama-cpp-python, vocab only; skipped when it is not installed).

    pip install mistral-common sentencepiece protobuf transformers tokenizers [llama-cpp-python]
    python tests/benchmarks/real_vocabularies.py      # from the repository root; ~1 minute
"""
import importlib
import json
import os
import random
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
import gguf_file  # noqa: E402
import hf_tokenizer  # noqa: E402
from test_released_tokenizers import mixed_texts  # noqa: E402

import mistral_common  # noqa: E402
import sentencepiece  # noqa: E402
import tokenizers  # noqa: E402
from transformers.utils import sentencepiece_model_pb2_new as spm_proto  # noqa: E402

convert_slow = importlib.import_module("transformers.convert_slow_tokenizer")
DATA = os.path.join(os.path.dirname(mistral_common.__file__), "data")
MODELS = {"Mistral v0.1 (Llama 2 layout)": "tokenizer.model.v1",
          "Mistral v0.3": "mistral_instruct_tokenizer_240323.model.v3"}
SPECIAL = ["<unk>", "<s>", "</s>"]


def hub_json(model_path):
    """The tokenizer.json a hub repository of this model holds: the converter's vocabulary and
    merges, the normalizers and post-processor of the files made for Llama 2 and Mistral."""
    proto = read_proto(model_path)
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    data = json.loads(convert_slow.SpmConverter.build_tokenizer_from_spm_proto(
        proto, vocab, legacy=True).to_str())
    data["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    data["pre_tokenizer"] = None
    data["added_tokens"] = [{"id": i, "content": c, "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False, "special": True}
                            for i, c in enumerate(SPECIAL)]
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    return data


def read_proto(model_path):
    proto = spm_proto.ModelProto()
    with open(model_path, "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def vocab_gguf(model_path, out):
    """A GGUF file holding only the model's tokenizer as llama.cpp's "llama" model (SentencePiece
    piece types are GGUF's token types: 1 normal, 2 unknown, 3 control, 6 byte) and the few
    llama.* sizes llama.cpp reads before it, for a vocab-only load."""
    pieces = read_proto(model_path).pieces
    w = gguf_file.GGUFWriter()
    w.add("general.architecture", "llama")
    w.add("general.name", os.path.basename(model_path))
    for key, value in {"context_length": 64, "embedding_length": 64, "block_count": 1,
                       "feed_forward_length": 128, "attention.head_count": 4,
                       "attention.head_count_kv": 4, "rope.dimension_count": 16,
                       "vocab_size": len(pieces)}.items():
        w.add(f"llama.{key}", value, "uint32")
    w.add("llama.attention.layer_norm_rms_epsilon", 1e-5, "float32")
    w.add("tokenizer.ggml.model", "llama")
    w.add("tokenizer.ggml.tokens", [p.piece for p in pieces], "string")
    w.add("tokenizer.ggml.scores", [p.score for p in pieces], "float32")
    w.add("tokenizer.ggml.token_type", [p.type for p in pieces], "int32")
    for key, id in [("unknown", 0), ("bos", 1), ("eos", 2)]:
        w.add(f"tokenizer.ggml.{key}_token_id", id, "uint32")
    with open(out, "wb") as f:
        w.write(f, os.path.basename(out))


def check_gguf(label, path, texts):
    try:
        import llama_cpp
    except ImportError:
        print(f"{label} GGUF: skipped (no llama-cpp-python)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "vocab.gguf")
        vocab_gguf(path, out)
        t0 = time.perf_counter()
        tok = hf_tokenizer.from_gguf(gguf_file.GGUFFile(out).metadata, out)
        seconds = time.perf_counter() - t0
        llm = llama_cpp.Llama(model_path=out, vocab_only=True, verbose=False)
        sp = sentencepiece.SentencePieceProcessor(model_file=path)
        texts = [t for t in texts if "\0" not in t]   # llama.cpp's C strings end there
        differ = {"llama.cpp": 0, "sentencepiece": 0}
        for text in texts:
            ours = tok.encode(text, allowed_special="none")
            differ["llama.cpp"] += ours != llm.tokenize(text.encode("utf-8"), add_bos=False,
                                                        special=False)
            differ["sentencepiece"] += ours != sp.encode(text)
        llm.close()
    print(f"{label} GGUF (SentencePiece scores): from_gguf {seconds:.1f} s, {len(texts)} texts; "
          f"ids differing from llama.cpp {differ['llama.cpp']}, from sentencepiece "
          f"{differ['sentencepiece']}; BOS added {tok.bos_added}")


def main():
    texts = [t for t in mixed_texts(500, 7) if "<" not in t]  # sentencepiece has no added tokens
    for label, name in MODELS.items():
        path = os.path.join(DATA, name)
        data = hub_json(path)
        ref = tokenizers.Tokenizer.from_str(json.dumps(data))
        sp = sentencepiece.SentencePieceProcessor(model_file=path)
        tok = hf_tokenizer.from_hf(data)
        differ = {"tokenizers": 0, "sentencepiece": 0, "decode": 0, "random decode": 0}
        for text in texts:
            ids = ref.encode(text, add_special_tokens=False).ids
            ours = tok.encode(text, allowed_special="all")
            differ["tokenizers"] += ours != ids
            differ["sentencepiece"] += ours != sp.encode(text)
            differ["decode"] += tok.decode(ids) != ref.decode(ids, skip_special_tokens=False)
        rng = random.Random(3)
        for _ in range(300):   # any ids: lone <0xNN> bytes, broken UTF-8
            ids = [rng.randrange(3, ref.get_vocab_size()) for _ in range(rng.randint(1, 6))]
            differ["random decode"] += tok.decode(ids) != ref.decode(ids,
                                                                     skip_special_tokens=False)
        print(f"{label}: {ref.get_vocab_size()} ids, {len(texts)} texts; ids differing from "
              f"tokenizers {differ['tokenizers']}, from sentencepiece {differ['sentencepiece']}; "
              f"decode differing {differ['decode']}, on 300 random id lists "
              f"{differ['random decode']}; BOS added {tok.bos_added}")
        check_gguf(label, path, texts)


if __name__ == "__main__":
    main()
