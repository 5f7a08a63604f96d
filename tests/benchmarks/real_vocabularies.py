"""real_vocabularies.py: sentencepiece_bpe.py on real released vocabularies (docs/results.md,
"Released tokenizers"). Offline there is no hub to fetch Llama 2's or Mistral's tokenizer.json
from, but the package mistral-common ships Mistral's own SentencePiece models (v0.1, 32,000
pieces, the Llama 2 layout; v0.3, 32,768). This script turns each into a tokenizer.json with
transformers' converter (its vocabulary and merges), in the structure the hub's files have
(Prepend + Replace normalizers, no pre-tokenizer, the ByteFallback decoder, BOS added), and
compares our ids and decoding with `tokenizers` on the same file and with `sentencepiece` on
the original model, which is what the release really runs.

    pip install mistral-common sentencepiece protobuf transformers tokenizers
    python tests/benchmarks/real_vocabularies.py      # from the repository root; ~1 minute
"""
import importlib
import json
import os
import random
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
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
    proto = spm_proto.ModelProto()
    with open(model_path, "rb") as f:
        proto.ParseFromString(f.read())
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


if __name__ == "__main__":
    main()
