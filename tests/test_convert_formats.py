"""The file formats convert.py stands on: safetensors_file.py (read, write, every validation
error), download.py's hub fetcher against a fake hub on 127.0.0.1, and gguf_file.py's writer with
its Q8_0 quantizer. Reference packages
(safetensors, gguf) are used only where present, to compare against."""
import io
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import download
import gguf_file
import gguf_quants
import rundir
import safetensors_file
from fakehub import FakeHub
from gguf_reader import read_gguf
from rundir import UserError


def random_tensor(dtype, shape, seed=0):
    """Random values of any dtype, made from random bytes for the exotic ones."""
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point and dtype.itemsize >= 2:
        return torch.randn(shape, generator=g).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    raw = torch.randint(0, 256, (*shape, dtype.itemsize), generator=g, dtype=torch.uint8)
    return raw.view(dtype).reshape(shape)


def save(path, tensors, metadata=None):
    """Write a safetensors file as convert.py does: through rundir.atomic_write."""
    rundir.atomic_write(path, lambda f: safetensors_file.write_safetensors(f, tensors, metadata))


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and bytes(
        safetensors_file.tensor_bytes(a)) == bytes(safetensors_file.tensor_bytes(b))


# ---- safetensors: round trip, a hand-built file, layout -------------------------------------
def test_safetensors_round_trip_of_every_dtype_is_bit_exact(tmp_path):
    tensors = {f"t.{name}": random_tensor(dtype, (3, 5), i)
               for i, (name, dtype) in enumerate(safetensors_file.SAFETENSORS_DTYPES.items())}
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 4, dtype=torch.bfloat16)
    tensors["nan"] = torch.tensor([float("nan"), float("inf"), -0.0])
    save(tmp_path / "a.safetensors", tensors)
    back, metadata = safetensors_file.read_safetensors(tmp_path / "a.safetensors")
    assert metadata == {"format": "pt"}
    assert back.keys() == tensors.keys()
    for name in tensors:
        assert same_bits(back[name], tensors[name]), name


def test_reader_on_a_hand_built_file_with_a_misaligned_tensor(tmp_path):
    # The bytes are laid out here by hand, so this does not only show that the writer and the
    # reader agree with each other. "c" starts at an odd offset, which other writers may produce.
    data = struct.pack("<2f", 1.5, -2.0) + b"\x80\x3f" + b"\x01\x02\x03" + struct.pack("<h", -7)
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "BF16", "shape": [1, 1], "data_offsets": [8, 10]},
              "i": {"dtype": "I8", "shape": [3], "data_offsets": [10, 13]},
              "c": {"dtype": "I16", "shape": [], "data_offsets": [13, 15]},
              "__metadata__": {"source": "by hand"}}
    raw = json.dumps(header).encode()
    (tmp_path / "h.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    t, metadata = safetensors_file.read_safetensors(tmp_path / "h.safetensors")
    assert metadata == {"source": "by hand"}
    assert t["a"].tolist() == [1.5, -2.0]
    assert t["b"].dtype == torch.bfloat16 and t["b"].tolist() == [[1.0]]  # 0x3f80 is 1.0
    assert t["i"].tolist() == [1, 2, 3]
    assert t["c"].shape == () and t["c"].item() == -7


def test_writer_layout_padded_header_and_aligned_contiguous_data(tmp_path):
    tensors = {"z.byte": torch.ones(3, dtype=torch.uint8), "a.half": torch.ones(5).half(),
               "m.float": torch.ones(2, 3)}
    path = tmp_path / "w.safetensors"
    save(path, tensors, {"note": "x"})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and raw[8 + n - 1:8 + n] in (b"}", b" ")
    header = json.loads(raw[8:8 + n])
    assert header.pop("__metadata__") == {"format": "pt", "note": "x"}
    spans = sorted(tuple(e["data_offsets"]) for e in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(raw) - 8 - n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no holes
    sizes = {"F32": 4, "F16": 2, "U8": 1}
    assert all(e["data_offsets"][0] % sizes[e["dtype"]] == 0 for e in header.values())
    assert not list(tmp_path.glob("*.tmp"))


def test_tied_weights_are_written_once_per_name(tmp_path):
    emb = torch.randn(4, 8)
    save(tmp_path / "t.safetensors", {"embed": emb, "lm_head": emb})
    entries, _, _ = safetensors_file.read_safetensors_header(tmp_path / "t.safetensors")
    assert entries["embed"].begin != entries["lm_head"].begin
    back, _ = safetensors_file.read_safetensors(tmp_path / "t.safetensors")
    assert torch.equal(back["embed"], emb) and torch.equal(back["lm_head"], emb)


def test_read_tensors_are_copy_on_write_views_that_outlive_the_file_name(tmp_path):
    path = tmp_path / "v.safetensors"
    save(path, {"w": torch.arange(6.0)})
    before = path.read_bytes()
    w = safetensors_file.read_safetensors(path)[0]["w"]
    w[0] = 100.0  # changes this tensor only
    assert path.read_bytes() == before
    save(path, {"w": torch.zeros(6)})  # an atomic rename over it
    assert w.tolist() == [100.0, 1.0, 2.0, 3.0, 4.0, 5.0]


# ---- safetensors: every validation error ------------------------------------------------------
def safetensors_bytes(header, data=b"", length=None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


GOOD = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
BAD_FILES = {
    "too short": (b"\x01\x00", "only 2 bytes"),
    "length past the end": (safetensors_bytes(GOOD, bytes(8), length=10**6), "header length"),
    "absurd length": (safetensors_bytes(GOOD, bytes(8), length=2**63), "header length"),
    "not json": (safetensors_bytes(b"{not json}", bytes(8)), "not valid JSON"),
    "html page": (safetensors_bytes(b"<html></html>"), "not valid JSON"),
    "json list": (safetensors_bytes([1, 2]), "not a JSON object"),
    "metadata list": (safetensors_bytes({"__metadata__": [1]}), "__metadata__"),
    "metadata number": (safetensors_bytes({"__metadata__": {"n": 1}}), "__metadata__"),
    "dtype list": (safetensors_bytes({"w": {**GOOD["w"], "dtype": ["F32"]}}, bytes(8)),
                   "'w': unknown dtype"),
    "entry not object": (safetensors_bytes({"w": [1]}), "'w': needs dtype"),
    "missing offsets": (safetensors_bytes({"w": {"dtype": "F32", "shape": [2]}}), "'w': needs"),
    "unknown dtype": (safetensors_bytes({"w": {**GOOD["w"], "dtype": "F12"}}, bytes(8)),
                      "'w': unknown dtype 'F12'"),
    "negative dim": (safetensors_bytes({"w": {**GOOD["w"], "shape": [-2]}}, bytes(8)),
                     "'w': shape"),
    "float dim": (safetensors_bytes({"w": {**GOOD["w"], "shape": [2.0]}}, bytes(8)), "'w': shape"),
    "bool dim": (safetensors_bytes({"w": {**GOOD["w"], "shape": [True]}}, bytes(8)), "'w': shape"),
    "one offset": (safetensors_bytes({"w": {**GOOD["w"], "data_offsets": [0]}}, bytes(8)),
                   "'w': data_offsets"),
    "reversed offsets": (safetensors_bytes({"w": {**GOOD["w"], "data_offsets": [8, 0]}},
                                           bytes(8)), "outside"),
    "wrong size": (safetensors_bytes({"w": {**GOOD["w"], "shape": [3]}}, bytes(8)),
                   "'w': 8 bytes for shape [3] of F32, which needs 12"),
    "truncated data": (safetensors_bytes(GOOD, bytes(5)), "'w': data_offsets [0, 8] lie outside"),
    "overlap": (safetensors_bytes({"a": GOOD["w"], "b": {**GOOD["w"], "data_offsets": [4, 12]}},
                                  bytes(12)), "'a' and 'b' overlap"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_each_safetensors_validation_error_names_the_file(tmp_path, case):
    raw, message = BAD_FILES[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(raw)
    with pytest.raises(UserError, match="bad.safetensors") as e:
        safetensors_file.read_safetensors(path)
    assert message in str(e.value)


# ---- sharded checkpoints and weight folders ---------------------------------------------------
def write_shards(folder, weight_map=None):
    a, b = {"x.a": torch.randn(3, 2)}, {"x.b": torch.randn(4).half(), "x.c": torch.ones(1)}
    save(folder / "s-1.safetensors", a)
    save(folder / "s-2.safetensors", b)
    weight_map = weight_map or {"x.a": "s-1.safetensors", "x.b": "s-2.safetensors",
                                "x.c": "s-2.safetensors"}
    index = {"metadata": {"total_size": 34}, "weight_map": weight_map}
    (folder / safetensors_file.SAFETENSORS_INDEX).write_text(json.dumps(index))
    return {**a, **b}


def test_sharded_index_reads_every_tensor_from_its_shard(tmp_path):
    expected = write_shards(tmp_path)
    back = safetensors_file.read_weights(tmp_path)
    assert back.keys() == expected.keys()
    assert all(same_bits(back[k], expected[k]) for k in expected)


@pytest.mark.parametrize("weight_map, message", [
    ({"x.a": "s-2.safetensors"}, "'x.a' is not in s-2.safetensors"),
    ({"x.a": "s-9.safetensors"}, "names shard s-9.safetensors, which is missing"),
    ({"x.a": "../s-1.safetensors"}, "not a plain file name"),
])
def test_sharded_index_errors(tmp_path, weight_map, message):
    write_shards(tmp_path, weight_map)
    with pytest.raises(UserError, match="model.safetensors.index.json") as e:
        safetensors_file.read_weights(tmp_path)
    assert message in str(e.value)


def test_read_weights_falls_back_to_a_pytorch_bin_loaded_weights_only(tmp_path):
    state = {"w": torch.randn(2, 3), "b": torch.randn(3).to(torch.bfloat16)}
    torch.save(state, tmp_path / "pytorch_model.bin")
    back = safetensors_file.read_weights(tmp_path)
    assert all(same_bits(back[k], state[k]) for k in state)
    torch.save({"w": object()}, tmp_path / "pytorch_model.bin")  # a pickle of arbitrary objects
    with pytest.raises(UserError, match="pytorch_model.bin: cannot be loaded"):
        safetensors_file.read_weights(tmp_path)
    with pytest.raises(UserError, match="no weights"):
        safetensors_file.read_weights(tmp_path / "nothing")


# ---- safetensors against the reference library -------------------------------------------------
def test_reference_library_files_read_bit_exact(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    tensors = {f"t.{dtype}": random_tensor(dtype, (4, 3), i) for i, dtype in enumerate(
        [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int8, torch.bool,
         torch.uint8, torch.float64, torch.int32])}
    st.save_file(tensors, str(tmp_path / "ref.safetensors"), metadata={"k": "v"})
    back, metadata = safetensors_file.read_safetensors(tmp_path / "ref.safetensors")
    assert metadata == {"k": "v"}
    assert back.keys() == tensors.keys() and all(same_bits(back[k], tensors[k]) for k in tensors)


def test_our_files_read_bit_exact_by_the_reference_library(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    tensors = {"emb": torch.randn(7, 5).bfloat16(), "w": torch.randn(5, 3),
               "h": torch.randn(3).half(), "i": torch.arange(5),
               "m": torch.tensor([True, False, True]), "s": torch.tensor(1.0)}
    save(tmp_path / "ours.safetensors", tensors)
    back = st.load_file(str(tmp_path / "ours.safetensors"))
    assert back.keys() == tensors.keys() and all(same_bits(back[k], tensors[k]) for k in tensors)


# ---- the hub: a fake one on 127.0.0.1 -----------------------------------------------------------
def written_safetensors(tmp_path, tensors):
    save(tmp_path / "tmp.safetensors", tensors)
    return (tmp_path / "tmp.safetensors").read_bytes()


def model_files(tmp_path, weights="single", config=None):
    """The files of a small model on the hub, with its weights stored one of three ways."""
    tensors = {"model.embed_tokens.weight": torch.randn(10, 4).bfloat16(),
               "model.norm.weight": torch.ones(4)}
    files = {"config.json": json.dumps(config or {"model_type": "llama"}).encode(),
             "tokenizer.json": b'{"model": {"type": "BPE"}}'}
    if weights == "single":
        files["model.safetensors"] = written_safetensors(tmp_path, tensors)
    elif weights == "sharded":
        files["model-00001-of-00002.safetensors"] = written_safetensors(
            tmp_path, {"model.embed_tokens.weight": tensors["model.embed_tokens.weight"]})
        files["model-00002-of-00002.safetensors"] = written_safetensors(
            tmp_path, {"model.norm.weight": tensors["model.norm.weight"]})
        files[safetensors_file.SAFETENSORS_INDEX] = json.dumps({"weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "model.norm.weight": "model-00002-of-00002.safetensors"}}).encode()
    else:
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        files["pytorch_model.bin"] = buffer.getvalue()
    return files, tensors


@pytest.mark.parametrize("weights", ["single", "sharded", "bin"])
def test_fetch_a_model_then_again_without_a_single_request(tmp_path, hub, weights):
    files, tensors = model_files(tmp_path, weights)
    files["generation_config.json"] = b'{"do_sample": true}'
    hub.publish("acme/tiny", files)
    folder = download.fetch_hub_model("hf:acme/tiny")
    assert folder == Path(os.environ["SLM_CACHE"]) / "hub" / "acme--tiny" / "main"
    for name, data in files.items():
        assert (folder / name).read_bytes() == data
    back = safetensors_file.read_weights(folder)
    assert all(same_bits(back[k], tensors[k]) for k in tensors)
    if weights != "bin":  # safetensors exist: the pickle is never asked for
        assert not any(p.endswith(".bin") for p, _ in hub.requests)
    n = len(hub.requests)
    assert download.fetch_hub_model("hf:acme/tiny") == folder
    assert len(hub.requests) == n  # everything cached: no request at all


def test_optional_files_may_be_absent_and_a_revision_is_its_own_folder(tmp_path, hub):
    hub.publish("acme/tiny", model_files(tmp_path, config={"v": "main"})[0])
    hub.publish("acme/tiny", model_files(tmp_path, config={"v": "one"})[0], revision="v1")
    folder = download.fetch_hub_model("hf:acme/tiny@v1")
    assert folder.name == "v1" and json.loads((folder / "config.json").read_text()) == {"v": "one"}
    assert not (folder / "generation_config.json").exists()
    assert {p for p, _ in hub.requests} >= {"/acme/tiny/resolve/v1/generation_config.json"}
    main = download.fetch_hub_model("hf:acme/tiny")
    assert json.loads((main / "config.json").read_text()) == {"v": "main"}


def test_a_missing_model_is_one_error_naming_model_and_file(hub):
    with pytest.raises(UserError) as e:
        download.fetch_hub_model("hf:nobody/nothing")
    message = str(e.value)
    assert "hf:nobody/nothing@main" in message and "config.json" in message and "404" in message
    assert len(hub.requests) == 1


def test_a_gated_model_needs_hf_token_which_never_reaches_the_cdn(tmp_path, hub, monkeypatch):
    files, tensors = model_files(tmp_path)
    hub.publish("acme/gated", files)
    hub.gated.add("acme/gated")
    with pytest.raises(UserError) as e:
        download.fetch_hub_model("hf:acme/gated")
    assert "hf:acme/gated@main: config.json" in str(e.value) and "HTTP 401" in str(e.value)
    assert "HF_TOKEN" in str(e.value) and "Access to model is restricted." in str(e.value)
    monkeypatch.setenv("HF_TOKEN", FakeHub.TOKEN)
    folder = download.fetch_hub_model("hf:acme/gated")
    assert (folder / "model.safetensors").read_bytes() == files["model.safetensors"]
    cdn = [headers for path, headers in hub.requests if path.startswith("/cdn/")]
    assert len(cdn) == 1 and "Authorization" not in cdn[0]


def test_a_partial_download_is_resumed_with_a_range_request(tmp_path, hub):
    files, _ = model_files(tmp_path)
    hub.publish("acme/tiny", files)
    cache = Path(os.environ["SLM_CACHE"]) / "hub" / "acme--tiny" / "main"
    cache.mkdir(parents=True)
    (cache / "model.safetensors.part").write_bytes(files["model.safetensors"][:100])
    folder = download.fetch_hub_model("hf:acme/tiny")
    assert (folder / "model.safetensors").read_bytes() == files["model.safetensors"]
    ranges = [h.get("Range") for p, h in hub.requests if p.endswith("/model.safetensors")]
    assert ranges == ["bytes=100-"]


@pytest.mark.parametrize("damage, file, message", [
    ("truncated", "model.safetensors", "lie outside"),
    ("html", "config.json", "is not JSON"),
    ("missing shard", "model-00002-of-00002.safetensors", "HTTP 404"),
    ("bad index", safetensors_file.SAFETENSORS_INDEX, "weight_map"),
])
def test_a_damaged_file_is_one_error_and_leaves_nothing_cached(tmp_path, hub, damage, file,
                                                               message):
    sharded = damage in ("missing shard", "bad index")
    files, _ = model_files(tmp_path, "sharded" if sharded else "single")
    if damage == "truncated":
        files[file] = files[file][:-10]
    elif damage == "html":
        files[file] = b"<!DOCTYPE html><html><body>Service unavailable</body></html>"
    elif damage == "missing shard":
        del files[file]
    else:
        files[file] = b'{"weight_map": ["not", "a", "map"]}'
    hub.publish("acme/broken", files)
    with pytest.raises(UserError) as e:
        download.fetch_hub_model("hf:acme/broken")
    assert "hf:acme/broken@main" in str(e.value) and file in str(e.value)
    assert message in str(e.value)
    cache = Path(os.environ["SLM_CACHE"]) / "hub" / "acme--broken" / "main"
    assert not (cache / file).exists() and not (cache / "fetched.json").exists()


def test_model_without_weights_and_bad_ids(tmp_path, hub):
    hub.publish("acme/empty", {"config.json": b"{}", "tokenizer.json": b"{}"})
    with pytest.raises(UserError, match="hf:acme/empty@main: no weights"):
        download.fetch_hub_model("hf:acme/empty")
    for spec in ["acme/tiny", "hf:acme", "hf:a/b/c", "hf:a--b/c", "hf:a/..", "hf:a/b@"]:
        with pytest.raises(UserError, match="not a hub model"):
            download.parse_hub_id(spec)
    model = download.parse_hub_id("hf:acme/tiny@refs/pr/1")
    assert model.url("config.json").endswith("/acme/tiny/resolve/refs%2Fpr%2F1/config.json")
    assert model.cache_folder().name == "refs%2Fpr%2F1"


# ---- GGUF: metadata, tensor infos, alignment --------------------------------------------------
EVERY_VALUE = [("uint8", 255), ("int8", -128), ("uint16", 65535), ("int16", -32768),
               ("uint32", 2**32 - 1), ("int32", -2**31), ("uint64", 2**64 - 1), ("int64", -2**63),
               ("float32", 0.5), ("float64", 1e-300), ("bool", True), ("string", "héllo ✓")]


def test_gguf_metadata_of_every_type_round_trips(tmp_path):
    w = gguf_file.GGUFWriter()
    for kind, value in EVERY_VALUE:
        w.add(f"test.{kind}", value, kind)
        w.add(f"test.array.{kind}", [value, value], kind)
    w.add("test.default.str", "llama")
    w.add("test.default.int", 7)
    w.add("test.default.float", 1e-6)
    w.add("test.default.bool", False)
    w.add("test.default.list", ["a", "bc"])
    rundir.atomic_write(tmp_path / "m.gguf", w.write)
    g = read_gguf(tmp_path / "m.gguf")
    assert g["version"] == 3 and g["tensors"] == {}
    for kind, value in EVERY_VALUE:
        assert g["metadata"][f"test.{kind}"] == (kind, value)
        assert g["metadata"][f"test.array.{kind}"] == (f"array[{kind}]", [value, value])
    assert g["metadata"]["test.default.str"] == ("string", "llama")
    assert g["metadata"]["test.default.int"] == ("uint32", 7)
    assert g["metadata"]["test.default.float"][0] == "float32"
    assert g["metadata"]["test.default.float"][1] == pytest.approx(1e-6)
    assert g["metadata"]["test.default.bool"] == ("bool", False)
    assert g["metadata"]["test.default.list"] == ("array[string]", ["a", "bc"])


def test_gguf_value_bytes_by_hand():
    assert gguf_file.gguf_value(8, "uint32") == bytes([4, 0, 0, 0, 8, 0, 0, 0])
    assert gguf_file.gguf_value("ab") == struct.pack("<IQ", 8, 2) + b"ab"
    assert gguf_file.gguf_value([True], "bool") == struct.pack("<IIQ", 9, 7, 1) + b"\x01"
    for bad in [(-1, "uint32"), (256, "uint8"), ([], None), (1, "complex"), ("x", "int32")]:
        with pytest.raises(ValueError):
            gguf_file.gguf_value(*bad)


@pytest.mark.parametrize("alignment", [32, 64])
def test_gguf_tensors_dims_order_types_and_alignment(tmp_path, alignment):
    w = gguf_file.GGUFWriter(alignment)
    tensors = {"a.weight": torch.randn(3, 64), "norm.weight": torch.randn(5),
               "odd.weight": torch.randn(2, 40), "b.weight": torch.randn(2, 3, 32).bfloat16()}
    kinds = {name: w.add_tensor(name, t, "q8_0") for name, t in tensors.items()}
    assert kinds == {"a.weight": "q8_0", "norm.weight": "f32", "odd.weight": "f16",
                     "b.weight": "q8_0"}
    w.add_tensor("f32.weight", tensors["a.weight"], "f32")
    rundir.atomic_write(tmp_path / "t.gguf", w.write)
    g = read_gguf(tmp_path / "t.gguf")
    assert g["alignment"] == alignment and g["data_start"] % alignment == 0
    assert ("general.alignment" in g["metadata"]) == (alignment != 32)
    assert list(g["tensors"]) == [*tensors, "f32.weight"]  # the order they were added
    assert g["tensors"]["a.weight"]["dims"] == [64, 3]
    assert g["tensors"]["b.weight"]["dims"] == [32, 3, 2]
    for name, info in g["tensors"].items():
        assert info["offset"] % alignment == 0
        assert info["type"] == (kinds.get(name) or "f32")
    assert g["size"] % alignment == 0
    t = g["tensors"]
    assert np.array_equal(np.frombuffer(t["norm.weight"]["data"], "<f4"), tensors["norm.weight"])
    assert np.array_equal(np.frombuffer(t["f32.weight"]["data"], "<f4").reshape(3, 64),
                          tensors["a.weight"].numpy())
    assert np.array_equal(np.frombuffer(t["odd.weight"]["data"], "<f2").reshape(2, 40),
                          tensors["odd.weight"].half().numpy())
    assert torch.equal(gguf_quants.dequantize(t["a.weight"]["data"], "q8_0", (3, 64)),
                       gguf_quants.dequantize(gguf_quants.quantize_q8_0(tensors["a.weight"]),
                                              "q8_0", (3, 64)))


def test_gguf_writer_refuses_what_llama_cpp_cannot_load():
    w = gguf_file.GGUFWriter()
    w.add_tensor("x", torch.zeros(32, 32))
    for name, tensor in [("x", torch.zeros(2)), ("n" * 64, torch.zeros(2)),
                         ("five", torch.zeros(1, 1, 1, 1, 1)),
                         ("int", torch.zeros(2, dtype=torch.int64)),
                         ("scalar", torch.tensor(1.0))]:
        with pytest.raises(ValueError):
            w.add_tensor(name, tensor)
    with pytest.raises(ValueError):
        w.add_tensor("y", torch.zeros(2, 32), "q4_0")
    with pytest.raises(ValueError):
        gguf_file.GGUFWriter(alignment=48)
    with pytest.raises(ValueError, match="GGUF key k"):
        w.add("k", -1, "uint32")


# ---- Q8_0 ---------------------------------------------------------------------------------------
def test_round_half_away_from_zero_like_c_roundf():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, -0.49999997, 126.5, 3.2, -3.7, 0.0])
    assert gguf_quants.round_half_away(x).tolist() == [1, 2, 3, -1, -3, 0, 0, 127, 3, -4, 0]


def q8_0_cases():
    g = torch.Generator().manual_seed(0)
    ties = torch.arange(-16, 16).float() + 0.5  # max |x| = 15.5
    ties[0] = 127.0                              # d = 1, so every x / d is exactly k + 0.5
    return {
        "random": torch.randn(8, 64, generator=g),
        "ties": torch.stack([ties, -ties, ties * 2]),  # * 2: d = 2, x / d = k + 0.5 again
        "zeros": torch.cat([torch.zeros(1, 32), torch.randn(1, 32, generator=g)]),
        "huge": torch.randn(2, 32, generator=g) * 1e30,       # d overflows fp16 to inf
        "large": torch.randn(2, 32, generator=g) * 6e6,      # d near fp16's largest value
        "small": torch.randn(2, 32, generator=g) * 1e-6,     # d is an fp16 subnormal
        "tiny": torch.randn(2, 32, generator=g) * 1e-30,     # d rounds to fp16 zero
        "one big value": torch.cat([torch.full((1, 1), 1e4), torch.randn(1, 31, generator=g)], 1),
        "many scales": torch.randn(16, 128, generator=g) * torch.logspace(-4, 4, 16)[:, None],
    }


def test_q8_0_dequantizes_within_half_a_step():
    for name, x in q8_0_cases().items():
        if name in ("huge", "large", "small", "tiny"):
            continue  # fp16 cannot hold d there: see the reference test below for the bytes
        blob = gguf_quants.quantize_q8_0(x)
        assert blob.shape == (x.numel() // 32, 34)
        d = x.reshape(-1, 32).abs().amax(1, keepdim=True) / 127  # fp32, as the quantizer
        d16 = d.half().float()
        q = blob[:, 2:].contiguous().view(torch.int8).float()
        bound = d / 2 + q.abs() * (d - d16).abs() + 1e-6 * d
        back = gguf_quants.dequantize(blob, "q8_0", x.shape)
        error = (x.reshape(-1, 32) - back.reshape(-1, 32)).abs()
        assert (error <= bound).all(), name
    assert gguf_quants.quantize_q8_0(torch.zeros(1, 32)).abs().sum() == 0


def test_q8_0_is_bit_exact_with_the_gguf_package():
    gguf = pytest.importorskip("gguf")
    for name, x in q8_0_cases().items():
        ours = gguf_quants.quantize_q8_0(x).numpy()
        with np.errstate(over="ignore"):  # "huge": d is inf in fp16, in both
            reference = gguf.quants.quantize(x.numpy(), gguf.GGMLQuantizationType.Q8_0)
        assert ours.tobytes() == reference.tobytes(), name
    with pytest.raises(ValueError):
        gguf_quants.quantize_q8_0(torch.zeros(2, 40))


def test_q8_0_in_chunks_is_the_same_as_in_one_piece():
    x = torch.randn(3, 96)
    chunked = b"".join(c.tobytes() for c in gguf_file.ggml_chunks(x, "q8_0", chunk=64))
    assert chunked == gguf_quants.quantize_q8_0(x).numpy().tobytes()


# ---- GGUF against the reference reader ----------------------------------------------------------
def test_gguf_package_reads_our_file(tmp_path):
    gguf = pytest.importorskip("gguf")
    w = gguf_file.GGUFWriter()
    w.add("general.architecture", "llama")
    w.add("llama.block_count", 2, "uint32")
    w.add("llama.rope.freq_base", 10000.0)
    w.add("tokenizer.ggml.tokens", ["<s>", "a", "é"])
    w.add("tokenizer.ggml.token_type", [3, 1, 1], "int32")
    tensors = {"token_embd.weight": torch.randn(6, 64), "output_norm.weight": torch.randn(64),
               "blk.0.attn_q.weight": torch.randn(64, 64), "odd.weight": torch.randn(4, 20)}
    for name, t in tensors.items():
        w.add_tensor(name, t, "q8_0" if name != "blk.0.attn_q.weight" else "f16")
    rundir.atomic_write(tmp_path / "r.gguf", w.write)
    reader = gguf.GGUFReader(tmp_path / "r.gguf")
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["llama.block_count"].contents() == 2
    assert fields["llama.block_count"].types == [gguf.GGUFValueType.UINT32]
    assert fields["llama.rope.freq_base"].contents() == 10000.0
    assert fields["tokenizer.ggml.tokens"].contents() == ["<s>", "a", "é"]
    assert fields["tokenizer.ggml.token_type"].contents() == [3, 1, 1]
    ours = read_gguf(tmp_path / "r.gguf")["tensors"]
    types = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0}
    assert [t.name for t in reader.tensors] == list(tensors)
    for t in reader.tensors:
        assert list(t.shape) == ours[t.name]["dims"] == list(reversed(tensors[t.name].shape))
        assert t.tensor_type == types[ours[t.name]["type"]]
        assert t.data.tobytes() == ours[t.name]["data"]
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    ours_dequantized = gguf_quants.dequantize(ours["token_embd.weight"]["data"], "q8_0",
                                              (6, 64))
    assert np.array_equal(gguf.quants.dequantize(embd.data, embd.tensor_type),
                          ours_dequantized.numpy())
