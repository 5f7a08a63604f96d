"""Benchmark of decoding speed (issue 15), run by hand; every ratio is measured in this one process.

    python tests/benchmarks/bench_decode.py                # decode + server, ~15 minutes on 2 cores
    python tests/benchmarks/bench_decode.py --part decode --threads 1
    python tests/benchmarks/bench_decode.py --part accuracy --run out/pretrain   # a trained run
    python tests/benchmarks/bench_decode.py --part kernels       # the matmul kernels alone
    python tests/benchmarks/bench_decode.py --part server --clients 1,4,8

decode: the same weights (minimind2-small's shape: dim 512, 8 layers, 8/2 heads, vocab 6400; random
  unless --run) through our paths: minimind.generate (forward() with minimind.py's readable KV
  cache), decode.py's path in fp32, fp16 and bf16, INT8 (quantize.py, with and without
  --include-embeddings), and chat.py's default; and, when llama-cpp-python is installed, through
  llama.cpp on GGUF exports of the same run directory (convert.py RUN OUT.gguf --to gguf --type
  f32|f16|q8_0; or --gguf F32,F16,Q8_0 files made elsewhere). Greedy, 256 new tokens after a
  16-token prompt, one thread and all threads, interleaved rounds, medians. Targets: fp32 >= 0.7x
  llama.cpp F32; INT8 >= 0.5x llama.cpp Q8_0; the default chat path >= llama.cpp F32.
accuracy: each fast path's greedy tokens against the fp32 reference path (forward over the whole
  window), and its teacher-forced argmax agreement over held-out text (target >= 99%). Meaningful
  on a trained run (--run); on random weights it only shows that nothing is broken.
kernels: a whole model's worth of matrix-vector products per kernel (the choices quantize.py and
  decode.FastLinear explain): x @ w.T vs x @ w_t, fp16 and bf16, the int8 kernels.
server: serve.py in a subprocess (one thread), 1, 4 and 8 concurrent streaming clients:
  aggregate tokens/s, time to first token, and whether every greedy answer equals the lone one.
  Target: 8 clients >= 3x one client's aggregate tokens/s.

Default one thread (--threads 1,0 adds all threads): on a busy two-core machine PyTorch's worker
threads spend most of their time waiting for each other, which measures the load, not the code.
"""
import argparse
import contextlib
import copy
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import bpe  # noqa: E402
import data  # noqa: E402
import decode  # noqa: E402
import minimind  # noqa: E402
import quantize  # noqa: E402
import rundir  # noqa: E402
import train  # noqa: E402

PROMPT = list(range(100, 116))  # 16 tokens


# ---------------------------------------------------------------------------------------------
# The run directory and the models
# ---------------------------------------------------------------------------------------------
def make_run(out):
    """A minimind2-small run directory with random weights and a 6400-token BPE of the python docs
    (trained here, a few seconds: bpe.py's current split, which the GGUF export can name)."""
    tok = bpe.Tokenizer.train(data.python_docs_documents(), 6400)
    torch.manual_seed(0)
    cfg = minimind.MiniMindConfig(**minimind.SIZES["minimind2-small"], vocab_size=6400,
                                  max_seq_len=512)
    model = minimind.MiniMind(cfg)
    rundir.save_model(out, model, tok, {"step": 0, "stage": "pretrain"})
    return out


def our_paths(run):
    """name -> a model prepared for that path of decode.generate (copies of the same weights)."""
    model, _, _ = rundir.load_run(run)
    paths = {}
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        paths[name] = copy.deepcopy(model)
        decode.prepare_decoding(paths[name], dtype)
    for name, emb in (("int8", False), ("int8 + embeddings", True)):
        paths[name] = copy.deepcopy(model)
        quantize.quantize_model(paths[name], emb)
        decode.prepare_decoding(paths[name], rundir.pick_inference_dtype("cpu"))  # as chat.py does
    paths["int8, fbgemm dynamic kernel"] = with_dynamic_int8(paths["int8"])
    return model, paths


def chat_default():
    """The row that is chat.py's default on this machine (rundir.pick_inference_dtype)."""
    return {torch.float16: "fp16", torch.float32: "fp32"}[rundir.pick_inference_dtype("cpu")]


def with_dynamic_int8(int8_model):
    """A copy of an INT8 model whose decoding runs PyTorch's dynamic-quantization kernel (fbgemm:
    activations rounded to 7 bits on the fly) on the same int8 weights: the kernel quantize.py
    measured and did not choose."""
    model = copy.deepcopy(int8_model)
    weights = decode.prepare_decoding(model, decode.decoding_weights(int8_model).dtype)
    zero = lambda n: torch.zeros(n, dtype=torch.long)
    for layer in weights.layers:
        for key in ("qkv", "o", "gate_up", "down"):
            fused = layer[key]  # an int8.Int8ForDecoding: q, scale, bias
            qw = torch._make_per_channel_quantized_tensor(fused.q, fused.scale.double(),
                                                          zero(fused.q.size(0)), 0)
            packed = torch.ops.quantized.linear_prepack(qw, fused.bias)
            layer[key] = (lambda x, packed=packed:
                          torch.ops.quantized.linear_dynamic(x, packed, True))
    return model


# ---------------------------------------------------------------------------------------------
# llama.cpp on GGUF exports of the same run
# ---------------------------------------------------------------------------------------------
def gguf_files(run, given, folder):
    """{"f32": path, ...}: --gguf's files, or convert.py's exports of the run directory."""
    kinds = ("f32", "f16", "q8_0")
    if given:
        return dict(zip(kinds, given.split(",")))
    files = {}
    for kind in kinds:
        out = Path(folder) / f"model-{kind}.gguf"
        command = [sys.executable, str(ROOT / "convert.py"), str(run), str(out), "--to", "gguf",
                   "--type", kind]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0 or not out.exists():
            reason = (done.stderr.strip().splitlines()
                      or ["it wrote no file: no GGUF export yet?"])[-1]
            print(f"llama.cpp rows skipped: `convert.py RUN OUT.gguf --to gguf --type {kind}` "
                  f"failed ({reason})")
            return {}
        files[kind] = str(out)
    return files


def llama_paths(files, threads):
    """name -> a function decoding n tokens greedily with llama.cpp (none if it is not
    installed)."""
    try:
        import llama_cpp
    except ImportError:
        print("llama.cpp rows skipped: llama-cpp-python is not installed")
        return {}
    paths = {}
    for kind, path in files.items():
        llm = llama_cpp.Llama(path, n_threads=threads, n_threads_batch=threads, n_ctx=512,
                              verbose=False)

        def run(n, llm=llm):
            out = []
            for token in llm.generate(PROMPT, top_k=1, temp=0.0, reset=True):
                out.append(token)
                if len(out) == n:
                    break
            return out
        paths[f"llama.cpp {kind.upper()}"] = run
    return paths


# ---------------------------------------------------------------------------------------------
# 1. decode: tokens/s of every path, interleaved
# ---------------------------------------------------------------------------------------------
def timed_rounds(runs, n, rounds):
    """{name: median tokens/s} over `rounds` rounds, each running every path once in turn."""
    for run in runs.values():
        run(8)  # warm-up: first-call allocations, lazy initialisation
    rates = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            t = time.perf_counter()
            got = len(run(n))
            rates[name].append(got / (time.perf_counter() - t))
    return {name: statistics.median(r) for name, r in rates.items()}


def bench_decode(run, args, files):
    reference, paths = our_paths(run)
    for threads in args.threads:
        torch.set_num_threads(threads or os.cpu_count())
        n_threads = torch.get_num_threads()
        runs = {"minimind.generate (KV cache)":
                lambda n: list(reference.generate(PROMPT, n, temperature=0))}
        for name, model in paths.items():
            runs[name] = lambda n, m=model: list(decode.generate(m, PROMPT, n, temperature=0))
        runs.update(llama_paths(files, n_threads))
        rate = timed_rounds(runs, args.tokens, args.rounds)
        print(f"\ndecode: minimind2-small shape, greedy, {args.tokens} new tokens after "
              f"{len(PROMPT)}, {n_threads} thread(s), median of {args.rounds} interleaved rounds")
        for name, r in rate.items():
            print(f"  {name:<30} {r:8.1f} tokens/s   {r / rate['fp32']:5.2f}x our fp32")
        print_ratios(rate)


def print_ratios(rate):
    default = chat_default()
    rows = [("fp32 / minimind.generate (KV cache)", "fp32", "minimind.generate (KV cache)", None),
            ("fp32 / llama.cpp F32", "fp32", "llama.cpp F32", 0.7),
            ("fp16 / llama.cpp F16", "fp16", "llama.cpp F16", None),
            ("int8 + embeddings / llama.cpp Q8_0", "int8 + embeddings", "llama.cpp Q8_0", 0.5),
            ("int8 / llama.cpp Q8_0", "int8", "llama.cpp Q8_0", None),
            ("int8, fbgemm dynamic (not used) / Q8_0", "int8, fbgemm dynamic kernel",
             "llama.cpp Q8_0", None),
            (f"chat default ({default}) / llama.cpp F32", default, "llama.cpp F32", 1.0)]
    for label, ours, theirs, target in rows:
        if theirs in rate:
            ratio = rate[ours] / rate[theirs]
            met = "met" if target is not None and ratio >= target else "NOT met"
            verdict = "" if target is None else f"   (target >= {target}: {met})"
            print(f"  {label:<42} {ratio:5.2f}{verdict}")


# ---------------------------------------------------------------------------------------------
# 2. accuracy: greedy tokens and teacher-forced agreement against the fp32 reference path
# ---------------------------------------------------------------------------------------------
def agreement(reference, fast, ids, window):
    """Share of positions where the decoding path (fed the true tokens one at a time) and the
    reference forward() over the same window pick the same next token."""
    same = total = 0
    for s in range(0, len(ids) - window + 1, window):
        chunk = ids[s:s + window]
        with torch.no_grad():
            expected = reference(torch.tensor([chunk]))[0][0].argmax(-1)
        decoder = decode.Decoder(fast)
        picks = ([decoder.add(chunk[:1]).argmax()]
                 + [decoder.step([t])[0].argmax() for t in chunk[1:]])
        same += (torch.stack(picks) == expected).sum().item()
        total += len(chunk)
    return same / total


def bench_accuracy(run, args):
    reference, paths = our_paths(run)
    tok = rundir.load_tokenizer(run)
    cfg = types.SimpleNamespace(data="python-docs", tokenizer=str(Path(run) / "tokenizer.json"),
                                vocab_size=tok.vocab_size, val_fraction=0.05)
    _, _, val = data.prepare_data(cfg)
    window = min(reference.context_length, 256)
    ids = [int(t) for t in val[:args.accuracy_tokens]]
    greedy = list(reference.generate(ids[:16], 64, temperature=0, use_cache=False))
    print(f"\naccuracy against the fp32 reference path (forward over the window), {run}: "
          f"{len(ids) // window * window} held-out positions, 64 greedy tokens")
    for name, model in paths.items():
        same = list(decode.generate(model, ids[:16], 64, temperature=0)) == greedy
        share = agreement(reference, model, ids, window)
        print(f"  {name:<24} greedy tokens equal: {str(same):<5}  teacher-forced agreement "
              f"{100 * share:6.2f}% (target >= 99%: {'met' if share >= 0.99 else 'NOT met'})")


# ---------------------------------------------------------------------------------------------
# 3. kernels: one model's worth of matrix-vector products per kernel
# ---------------------------------------------------------------------------------------------
def kernel_variants(weights):
    """name -> a function running x through every matrix once, as one decoding step does."""
    def per_matrix(prepare, call, dtype=torch.float32):
        packed = [(prepare(w), torch.randn(1, w.size(1)).to(dtype)) for w in weights]
        return lambda: [call(x, p) for p, x in packed]

    def int8(w):
        q, scale = quantize.quantize_per_channel(w)
        return q, scale, torch.ones(w.size(0), dtype=torch.bfloat16)

    def fbgemm_int8(w):
        q, scale = quantize.quantize_per_channel(w)
        zero = torch.zeros(w.size(0), dtype=torch.long)
        qw = torch._make_per_channel_quantized_tensor(q, scale.double(), zero, 0)
        return torch.ops.quantized.linear_prepack(qw, None)

    bf16, fp16, linear, ops = torch.bfloat16, torch.float16, torch.nn.functional.linear, torch.ops
    int8mm = torch._weight_int8pack_mm
    return {
        "fp32 x @ w.T (nn.Linear)": per_matrix(lambda w: w, linear),
        "fp32 x @ w_t [in, out]": per_matrix(lambda w: w.t().contiguous(), lambda x, w: x @ w),
        "fp16 torch matmul": per_matrix(lambda w: w.half(), linear, fp16),
        "fp16 fbgemm, fp32 activations": per_matrix(
            lambda w: ops.quantized.linear_prepack_fp16(w, None),
            ops.quantized.linear_dynamic_fp16),
        "bf16 torch matmul": per_matrix(lambda w: w.to(bf16), linear, bf16),
        "int8pack, bf16 activations": per_matrix(int8, lambda x, p: int8mm(x, p[0], p[2]), bf16),
        "int8pack, fp32 activations": per_matrix(int8, lambda x, p: int8mm(x, p[0], p[2].float())),
        "int8 fbgemm dynamic (7-bit act.)": per_matrix(
            fbgemm_int8, lambda x, p: ops.quantized.linear_dynamic(x, p, True)),
    }


def bench_kernels(run, args):
    model, _, _ = rundir.load_run(run)
    attn = [b.self_attn for b in model.layers]
    weights = [torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]) for a in attn]
    weights += [a.o_proj.weight for a in attn]
    weights += [torch.cat([b.mlp.gate_proj.weight, b.mlp.up_proj.weight]) for b in model.layers]
    weights += [b.mlp.down_proj.weight for b in model.layers] + [model.lm_head.weight]
    weights = [w.detach() for w in weights]
    mb = sum(w.numel() for w in weights) * 4 / 1e6
    torch.set_num_threads(args.threads[0] or os.cpu_count())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        variants = kernel_variants(weights)
    runs = {name: (lambda n, f=f: [f() for _ in range(n)]) for name, f in variants.items()}
    rate = timed_rounds(runs, 16, args.rounds)
    print(f"\nkernels: every matrix of one decoding step ({mb:.0f} MB in fp32), "
          f"{torch.get_num_threads()} thread(s), median of {args.rounds} rounds")
    base = rate["fp32 x @ w.T (nn.Linear)"]
    for name, r in rate.items():
        print(f"  {name:<34} {1000 / r:7.2f} ms a step  {r / base:5.2f}x nn.Linear fp32  "
              f"({mb / 1000 * r:5.1f} GB/s of fp32-equivalent weights)")


# ---------------------------------------------------------------------------------------------
# 4. server: concurrent streaming clients against serve.py
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def server(run, threads, max_batch):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads or os.cpu_count()))
    command = [sys.executable, str(ROOT / "serve.py"), str(run), "--port", "0",
               "--max-batch", str(max_batch), "--request-log", ""]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env, cwd=ROOT)
    try:
        for line in proc.stdout:
            if line.startswith("serving on "):
                yield int(line.split()[2].rsplit(":", 1)[1].split("/")[0])
                break
        else:
            raise RuntimeError("serve.py did not start")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def stream_once(port, prompt, max_tokens):
    """One streaming greedy request -> (text, completion tokens, seconds to first token,
    seconds)."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    reply, text, first, tokens = conn.getresponse(), [], None, 0
    for line in reply:
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            first = first or time.perf_counter() - t0
            text.append(chunk["choices"][0]["delta"]["content"])
    conn.close()
    return "".join(text), tokens, first, time.perf_counter() - t0


def bench_server(run, args):
    prompts = [f"Question {i}: what does function number {i} return?"
               for i in range(max(args.clients))]
    print(f"\nserver: serve.py, {args.threads[0] or os.cpu_count()} thread(s), --max-batch "
          f"{max(args.clients)}, streaming greedy requests of {args.server_tokens} tokens")
    with server(run, args.threads[0], max(args.clients)) as port:
        stream_once(port, "warm up", 8)
        alone = [stream_once(port, p, args.server_tokens)[0] for p in prompts]
        base = None
        for n in args.clients:
            results, t0 = [None] * n, time.perf_counter()
            threads = [threading.Thread(target=lambda i=i: results.__setitem__(
                i, stream_once(port, prompts[i], args.server_tokens))) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            rate = sum(r[1] for r in results) / wall
            base = base or rate
            same = all(r[0] == alone[i] for i, r in enumerate(results))
            ttft = statistics.mean(r[2] for r in results)
            print(f"  {n} client(s): {rate:7.1f} tokens/s in all ({rate / base:4.2f}x one client), "
                  f"mean time to first token {1000 * ttft:6.0f} ms, greedy answers equal to lone "
                  f"ones: {same}")
    if len(args.clients) > 1:
        verdict = "met" if rate >= 3 * base else "NOT met"
        print(f"  target: {max(args.clients)} clients >= 3x one client: {verdict}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", default="decode,server",
                   help="decode, accuracy, kernels, server (comma-separated)")
    p.add_argument("--run", default="", help="a run directory (default: random minimind2-small)")
    p.add_argument("--gguf", default="", help="F32,F16,Q8_0 GGUF files instead of convert.py's")
    p.add_argument("--threads", default="1,0", help="torch threads, 0 = all (comma-separated)")
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--accuracy-tokens", type=int, default=4096)
    p.add_argument("--clients", default="1,4,8")
    p.add_argument("--server-tokens", type=int, default=128)
    args = p.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",")]
    args.clients = [int(c) for c in args.clients.split(",")]
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{os.cpu_count()} cores, fbgemm fp16 kernel: {decode.HAS_FBGEMM_FP16}")
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or make_run(Path(tmp) / "minimind2-small")
        parts = args.part.split(",")
        if "decode" in parts:
            bench_decode(run, args, gguf_files(run, args.gguf, tmp))
        if "accuracy" in parts:
            bench_accuracy(run, args)
        if "kernels" in parts:
            bench_kernels(run, args)
        if "server" in parts:
            bench_server(run, args)


if __name__ == "__main__":
    main()
