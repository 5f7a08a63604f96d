"""Benchmark of safetensors_file.py's reader, which convert.py imports with: peak memory (resident
set size) of reading a checkpoint of about 500 MB and turning it into fp32 tensors, against
torch.load of the same weights saved with torch.save, measured in this one run; and of a whole
import.

    python tests/benchmarks/bench_convert.py [--mb 512] [--dir /tmp]
    python tests/benchmarks/bench_convert.py --import-model    # a SmolLM2-135M-shaped release

--import-model writes a release in the hub's layout with SmolLM2-135M's shapes (random bf16
weights, a 49,152-token byte-level BPE tokenizer.json) and times `python convert.py RELEASE OUT`
in a fresh process, with its peak RSS, against a fresh process that torch.loads the same weights
(an fp32 state dict saved with torch.save) into a MiniMind of that shape: the plain way to load.

For each stored dtype (fp32, bf16) it writes the same random weights twice, as model.safetensors
(safetensors_file.write_safetensors) and as model.pt (torch.save), then each way of loading runs in
a fresh Python process that imports torch and safetensors_file, notes its peak RSS so far (the
baseline), loads, converts tensor by tensor to fp32 (dropping each source tensor once converted,
as an importer does), reads every value once (so mapped pages are really in memory), and reports
its peak RSS (VmHWM in /proc/self/status; getrusage's ru_maxrss elsewhere) and how much of what
it holds at the end is private memory (RssAnon) rather than pages of the file mapped in. Figures
are above the baseline, in MB and as ratios to torch.load's.

Private memory is what the system must keep; mapped pages of an unchanged file it can drop and
read again, and they are the very pages of its file cache, where torch.load's read copies them.
Runs by hand: it writes about 1.5 GB of temporary files, deleted at the end.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import resource, sys, torch
sys.path.insert(0, {root!r})
import safetensors_file
def peak_mb():
    # VmHWM: this process's peak RSS. ru_maxrss would do, but on Linux a child started by fork
    # and exec inherits the parent's peak in it, and the parent here held the weights.
    try:
        status = open("/proc/self/status").read()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024  # kB
    except (OSError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux, BSD: kB
def private_mb():
    # RssAnon: resident memory backed by no file. Mapped file pages are not in it: the system
    # can drop them and read them again, and they are the same pages as its file cache.
    try:
        return int(open("/proc/self/status").read().split("RssAnon:")[1].split()[0]) / 1024
    except (OSError, IndexError):
        return float("nan")
method, path = sys.argv[1], sys.argv[2]
base, base_private = peak_mb(), private_mb()
if method == "ours":
    source = safetensors_file.read_safetensors(path)[0]
elif method == "safetensors package":
    import safetensors.torch
    source = safetensors.torch.load_file(path)
else:
    source = torch.load(path, map_location="cpu", weights_only=True,
                        mmap=method == "torch.load mmap=True")
converted = {{}}
for name in list(source):
    converted[name] = source.pop(name).to(torch.float32)
total = sum(float(t.sum()) for t in converted.values())
print(base, peak_mb(), private_mb() - base_private, total)
"""


def measure(method, path):
    """(extra peak RSS, extra private RSS at the end, in MB) of one way of loading, in a fresh
    process."""
    code = CHILD.format(root=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code, method, str(path)], check=True,
                         capture_output=True, text=True).stdout.split()
    base, peak, private, _ = map(float, out)
    return peak - base, private


def make_checkpoints(folder, mb, dtype):
    """The same random weights as model.safetensors and model.pt: a few 2-D matrices like a
    small model's (an embedding and layers of square and wide matrices)."""
    import torch
    sys.path.insert(0, str(ROOT))
    import rundir
    import safetensors_file
    g = torch.Generator().manual_seed(0)
    n_values = mb * 2**20 // dtype.itemsize
    tensors, i = {}, 0
    while n_values > 0:
        rows = min(2048, max(1, n_values // 2048))
        tensors[f"layer.{i}.weight"] = torch.randn(rows, 2048, generator=g).to(dtype)
        n_values -= rows * 2048
        i += 1
    st, pt = folder / "model.safetensors", folder / "model.pt"
    rundir.atomic_write(st, lambda f: safetensors_file.write_safetensors(f, tensors))
    torch.save(tensors, pt)
    return st, pt


IMPORT_CHILD = r"""
import sys, time, torch
sys.path.insert(0, {root!r})
def peak_mb():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
import convert, minimind, rundir
base, t0 = peak_mb(), time.perf_counter()
method, source, out = sys.argv[1:4]
if method == "convert.py":
    convert.main([source, out])
else:  # the plain way: torch.load a state dict, then load it into the model
    state = torch.load(source, map_location="cpu", weights_only=True)
    with torch.device("meta"):
        model = minimind.MiniMind(minimind.MiniMindConfig(**{config!r}))
    model.load_state_dict(state, assign=True)
print(base, peak_mb(), time.perf_counter() - t0)
"""
SMOLLM2_135M = dict(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64, ffn_hidden=1536,
                    vocab_size=49152, max_seq_len=2048, rope_theta=100000.0, norm_eps=1e-5)


def synthetic_tokenizer(vocab_size):
    """A byte-level BPE of vocab_size ids whose merges join two bytes, each pair once: every
    token is distinct, as in a real vocabulary of that size (trained on nothing)."""
    import bpe
    merges = [(r // 256, r % 256) for r in range(vocab_size - 256 - 3)]
    return bpe.Tokenizer.from_merges(merges, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])


def bench_import(folder):
    """convert.py on a SmolLM2-135M-shaped release against torch.load of the same weights."""
    import torch
    sys.path.insert(0, str(ROOT))
    import convert
    import hf_tokenizer
    import minimind
    import rundir
    import safetensors_file
    release = folder / "release"
    release.mkdir()
    tok = synthetic_tokenizer(SMOLLM2_135M["vocab_size"])
    (release / "tokenizer.json").write_text(json.dumps(hf_tokenizer.to_hf(tok)))
    c = SMOLLM2_135M
    (release / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "hidden_size": c["dim"], "num_hidden_layers": c["n_layers"],
        "num_attention_heads": c["n_heads"], "num_key_value_heads": c["n_kv_heads"],
        "intermediate_size": c["ffn_hidden"], "vocab_size": c["vocab_size"], "rope_theta": c["rope_theta"],
        "rms_norm_eps": c["norm_eps"], "max_position_embeddings": 8192, "tie_word_embeddings": True}))
    torch.manual_seed(0)
    model = minimind.MiniMind(minimind.MiniMindConfig(**c))
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    release_tensors = {"model." + k: v.to(torch.bfloat16) for k, v in state.items()}
    rundir.atomic_write(release / "model.safetensors",
                        lambda f: safetensors_file.write_safetensors(f, release_tensors))
    torch.save(model.state_dict(), folder / "model.pt")
    fp32_mb = sum(v.numel() for v in state.values()) * 4 / 2**20
    del model, state, release_tensors
    print(f"SmolLM2-135M shape: {fp32_mb:.0f} MB of fp32 weights; release {(release / 'model.safetensors').stat().st_size / 2**20:.0f} MB (bf16)")
    code = IMPORT_CHILD.format(root=str(ROOT), config=c)
    for method, source in (("torch.load", folder / "model.pt"), ("convert.py", release)):
        out = subprocess.run([sys.executable, "-c", code, method, str(source), str(folder / "run")],
                             check=True, capture_output=True, text=True).stdout.split()
        base, peak, seconds = map(float, out[-3:])
        print(f"  {method:<12} {seconds:6.1f} s   peak RSS {peak - base:6.0f} MB above the baseline "
              f"({(peak - base) / fp32_mb:.2f}x the fp32 weights)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=512, help="size of the fp32 weights in MB")
    p.add_argument("--dir", default=None, help="folder for the temporary checkpoints")
    p.add_argument("--import-model", action="store_true", help="time a whole import instead")
    args = p.parse_args()
    if args.import_model:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            return bench_import(Path(tmp))
    import torch
    methods = ["torch.load", "torch.load mmap=True", "ours"]
    try:
        import safetensors  # noqa: F401
        methods.append("safetensors package")
    except ImportError:
        pass
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            st, pt = make_checkpoints(Path(tmp), args.mb * dtype.itemsize // 4, dtype)
            size = st.stat().st_size / 2**20
            print(f"\n{str(dtype)[6:]} checkpoint, {size:.0f} MB on disk -> {args.mb} MB of fp32 "
                  f"tensors, above the baseline:\n  {'':<22} {'peak RSS':>17}   "
                  f"{'private memory at the end':>27}")
            figures = {}
            for method in methods:
                path = st if method in ("ours", "safetensors package") else pt
                figures[method] = measure(method, path)
            reference = figures["torch.load"]
            for method, (peak, private) in figures.items():
                print(f"  {method:<22} {peak:8.0f} MB {peak / reference[0]:5.2f}x   "
                      f"{private:8.0f} MB {private / reference[1]:5.2f}x torch.load's")
            results[str(dtype)] = figures
    print("\n" + json.dumps(results))


if __name__ == "__main__":
    main()
