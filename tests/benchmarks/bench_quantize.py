"""Benchmark of quantize.py against its targets, every ratio measured in this one process:

  * model.pt size: <= 0.30x the fp32 file with embeddings quantized, <= 0.55x without
    (minimind2-small, 26M parameters, vocab 6400; random weights: the size does not depend on them);
  * perplexity within 1% of the float model on the validation text (a TRAINED run, --run);
  * greedy decoding tokens/s on CPU >= 1.0x the fp32 model (minimind2-small, KV cache), with
    PyTorch's own dynamic int8 quantization (torch.ao.quantization.quantize_dynamic) as a reference.

    python train.py --max-steps 200 --out-dir /tmp/pretrain     # a briefly trained model, if you have none
    python tests/benchmarks/bench_quantize.py --run /tmp/pretrain [--threads 1] [--tokens 128] [--rounds 3]

The decoding rounds interleave the models (fp32, int8, ..., fp32, int8, ...) and keep each model's
best round, so a noisy shared machine slows them alike. Default one thread: on two shared cores,
two OpenMP threads per process can be many times slower than one.
"""
import argparse
import copy
import io
import sys
import time
import types
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import eval as evaluation  # noqa: E402
import data  # noqa: E402
import int8  # noqa: E402
import minimind  # noqa: E402
import quantize  # noqa: E402
import rundir  # noqa: E402
import train  # noqa: E402


def dynamic_int8(model):
    """PyTorch's built-in dynamic quantization (int8 weights per tensor, activations quantized on
    the fly), or None where this torch no longer has it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    except (AttributeError, RuntimeError, ImportError):
        return None


def saved_size(model, extra=None):
    buf = io.BytesIO()
    torch.save({"format": "slm-run", "model": model.state_dict(), **(extra or {})}, buf)
    return buf.tell()


def variants(model):
    int8, int8_emb = copy.deepcopy(model), copy.deepcopy(model)
    quantize.quantize_model(int8)
    quantize.quantize_model(int8_emb, include_embeddings=True)
    out = {"fp32": model, "int8": int8, "int8+emb": int8_emb}
    dyn = dynamic_int8(model)
    if dyn is not None:
        out["torch dynamic int8"] = dyn
    return out


def bench_size(big):
    fp32 = saved_size(big["fp32"])
    print("\nmodel.pt size, minimind2-small (vocab 6400):")
    for name, limit in (("int8", 0.55), ("int8+emb", 0.30)):
        s = saved_size(big[name], {"quantized": {"scheme": int8.SCHEME}})
        print(f"  {name:<10} {s / 2**20:7.2f} MB / fp32 {fp32 / 2**20:.2f} MB = {s / fp32:.3f}x   "
              f"(target <= {limit}: {'PASS' if s / fp32 <= limit else 'FAIL'})")


def bench_perplexity(run_dir, max_tokens):
    model, tok, payload = rundir.load_run(run_dir)
    cfg = types.SimpleNamespace(data="python-docs", tokenizer=str(Path(run_dir) / "tokenizer.json"),
                                vocab_size=tok.vocab_size, val_fraction=0.05)
    if (Path(run_dir) / "config.json").exists():  # the run's own data and split
        import json
        saved = json.loads((Path(run_dir) / "config.json").read_text())
        cfg.data, cfg.val_fraction = saved.get("data", cfg.data), saved.get("val_fraction", cfg.val_fraction)
    _, _, val = data.prepare_data(cfg)
    windows = evaluation.contiguous_windows(val, model.context_length, 8, max_tokens)
    lengths = evaluation.byte_lengths(tok)
    print(f"\nvalidation perplexity of {run_dir} ({payload['arch']}, step {payload.get('step')}), "
          f"{sum(y.numel() for _, y in windows):,} tokens of {cfg.data}:")
    base = None
    for name, m in variants(model).items():
        r = evaluation.perplexity(m, windows, lengths, "cpu")
        base = base or r["ppl"]
        change = r["ppl"] / base - 1
        verdict = "" if name == "fp32" else f"   (target within 1%: {'PASS' if abs(change) <= 0.01 else 'FAIL'})"
        print(f"  {name:<20} perplexity {r['ppl']:9.3f}  bpb {r['bpb']:.4f}  {100 * change:+.2f}%{verdict}")


def bench_speed(big, n_tokens, rounds):
    prompt = list(range(1, 17))
    best = {name: 0.0 for name in big}
    for _ in range(rounds):
        for name, m in big.items():
            t0 = time.perf_counter()
            n = len(list(m.generate(prompt, max_new_tokens=n_tokens, temperature=0)))
            best[name] = max(best[name], n / (time.perf_counter() - t0))
    print(f"\ngreedy decoding, minimind2-small, KV cache, {n_tokens} tokens after a 16-token prompt, "
          f"{torch.get_num_threads()} thread(s), best of {rounds} interleaved rounds:")
    for name, tps in best.items():
        verdict = "" if name == "fp32" or "torch" in name else \
            f"   (target >= 1.0x: {'PASS' if tps >= best['fp32'] else 'FAIL'})"
        print(f"  {name:<20} {tps:7.1f} tokens/s   {tps / best['fp32']:.2f}x fp32{verdict}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="", help="a trained run directory for the perplexity target")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tokens", type=int, default=128, help="tokens generated per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=32768, help="validation tokens for perplexity")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, int8 kernel {'yes' if int8.HAS_INT8_KERNEL else 'no'}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    torch.manual_seed(0)
    cfg = minimind.MiniMindConfig(**minimind.SIZES["minimind2-small"], vocab_size=6400, max_seq_len=512)
    big = variants(minimind.MiniMind(cfg).eval())
    bench_size(big)
    if args.run:
        bench_perplexity(args.run, args.max_tokens)
    else:
        print("\n(perplexity skipped: give --run DIR, a trained run directory)")
    with torch.no_grad():
        bench_speed(big, args.tokens, args.rounds)


if __name__ == "__main__":
    main()
