"""prepare.py's speed (MB/s) and peak memory, against datatrove's pipeline of the same steps on
the same file, measured in the same run.

    python tests/benchmarks/prepare_gain.py --work /tmp/bench --scale 5 --only-corpus  # ~14 MB
    python tests/benchmarks/bench_prepare.py /tmp/bench/noisy.jsonl --workers 2

Ours: `python prepare.py FILE --preset code --workers N` (cleaning, boilerplate, exact and near
duplicates, the Gopher rules of the code preset, private data), in a child process whose peak
resident memory is read from the kernel (ru_maxrss). datatrove (when installed): JsonlReader ->
GopherRepetitionFilter -> GopherQualityFilter with the code preset's thresholds -> MinHash
signatures, buckets, clusters and filter (5-word shingles, 14 buckets of 8, sha1 shingle hashes) ->
JsonlWriter, with LocalPipelineExecutor and N tasks and workers. datatrove does no boilerplate,
exact-hash or private-data step, so ours does more work per byte. The ratio is MB/s ours /
datatrove.
"""
import argparse
import gzip
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def ours(path, out, workers):
    t = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "prepare.py"), str(path), "--out",
                           str(out), "--workers", str(workers), "--preset", "code"],
                          capture_output=True, text=True)
    seconds = time.time() - t
    if proc.returncode:
        sys.exit(proc.stderr)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024   # MB (Linux: KB)
    kept = sum(1 for _ in open(out / "clean.jsonl"))
    return seconds, peak, kept, proc.stdout.strip().splitlines()[-1]


def datatrove_pipeline(path, work, workers):
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster,
                                          MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    # sha1: datatrove 0.10's xxhash path hands str to an xxhash that wants bytes
    config = MinhashConfig(hash_config=HashConfig(hash_fc="sha1"))
    folder, name = str(Path(path).parent), Path(path).name
    t = time.time()
    stages = [
        [JsonlReader(folder, glob_pattern=name),
         GopherRepetitionFilter(dup_line_frac=None, dup_line_char_frac=None),
         GopherQualityFilter(min_doc_words=10, max_avg_word_length=20, max_symbol_word_ratio=None,
                             max_non_alpha_words_ratio=0.3, min_stop_words=None),
         JsonlWriter(f"{work}/filtered")],
        [JsonlReader(f"{work}/filtered"), MinhashDedupSignature(f"{work}/sigs", config=config)],
        [MinhashDedupBuckets(f"{work}/sigs", f"{work}/buckets", config=config)],
        [MinhashDedupCluster(f"{work}/buckets", f"{work}/remove", config=config)],
        [JsonlReader(f"{work}/filtered"), MinhashDedupFilter(f"{work}/remove"),
         JsonlWriter(f"{work}/out")],
    ]
    tasks = [workers, workers, config.num_buckets, 1, workers]
    for pipeline, n in zip(stages, tasks):
        LocalPipelineExecutor(pipeline, tasks=n, workers=min(n, workers),
                              logging_dir=f"{work}/logs/{len(str(n))}{time.time()}").run()
    return time.time() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("path")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    mb = Path(args.path).stat().st_size / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        seconds, peak, kept, summary = ours(args.path, Path(tmp) / "ours", args.workers)
        print(f"ours: {mb:.1f} MB in {seconds:.1f} s = {mb / seconds:.2f} MB/s, peak memory "
              f"{peak:.0f} MB (largest process), {kept} documents kept\n  {summary}")
        try:
            import datatrove  # noqa: F401
            import spacy  # noqa: F401
        except ImportError:
            print("datatrove (with spacy) is not installed: no reference")
            return
        theirs = datatrove_pipeline(args.path, tmp + "/dt", args.workers)
        out = list(Path(tmp, "dt", "out").glob("*"))
        n = sum(1 for f in out for _ in gzip.open(f, "rt"))
        print(f"datatrove: {theirs:.1f} s = {mb / theirs:.2f} MB/s, {n} documents kept")
        print(f"speed ratio ours / datatrove: {theirs / seconds:.2f}")
        shutil.rmtree(tmp + "/dt", ignore_errors=True)


if __name__ == "__main__":
    main()
