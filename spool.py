"""spool.py: streaming documents through disk and a pool of worker processes (a companion of
prepare.py, chapter 4).

    with spool.scratch(out, ["report.md", "clean.jsonl"]) as work:   # OUT/.prepare-work
        for result in spool.stream(fn, docs, workers=4, setup=init, state=state, desc="pass 1"):
            ...                      # fn(chunk) -> a list per chunk; results one by one, in order
        with spool.Spool(work / "pass1.spool") as s:     # a scratch file of JSON lines
            s.write([text, source, line]); ...
        for record in spool.read_spool(work / "pass1.spool"): ...
        # the outputs, written into `work`, are moved into OUT when the block ends without error

Why a pool that keeps order: the output must be identical whatever --workers is, so results
come back in the order their chunks went out, and each chunk is processed by a pure function of
its input and the shared state. Why a bounded window: multiprocessing's Pool.imap reads its input
as fast as it can, so a reader faster than the workers would pile the whole corpus up in memory;
here at most 2 x workers chunks are in flight. Why a spool: a pass that needs all documents seen
before it can decide (boilerplate counts, duplicate clusters) writes them to disk and reads them
back, instead of holding them in memory.

Imported by prepare.py. Imports nothing from the project (tqdm for the progress bar).
"""
import collections
import contextlib
import json
import multiprocessing
import os
import shutil
from itertools import islice
from pathlib import Path

from tqdm import tqdm


def chunks(items, size):
    """[1, 2, 3, 4, 5] with size 2 -> [1, 2], [3, 4], [5], lazily."""
    items = iter(items)
    while chunk := list(islice(items, size)):
        yield chunk


def ordered_map(fn, inputs, workers=1, setup=None, setup_args=()):
    """fn(x) for each x of `inputs`, in order, with `workers` processes (1: in this process).
    `setup(*setup_args)` runs once in each worker first (and here when workers is 1): it installs
    the state every call shares, which is sent once per worker instead of once per chunk."""
    if workers <= 1:
        if setup:
            setup(*setup_args)
        yield from map(fn, inputs)
        return
    # fork where the platform has it: workers start at once and inherit the imported modules
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers, setup, setup_args) as pool:
        window = collections.deque()
        for x in inputs:
            window.append(pool.apply_async(fn, (x,)))
            if len(window) >= 2 * workers:
                yield window.popleft().get()
        while window:
            yield window.popleft().get()


class Spool:
    """A file of JSON lines written once and read back once or more; the folder it is in is the
    run's scratch folder, removed at the end."""

    def __init__(self, path):
        self.path = path
        self.file = open(path, "w", encoding="utf-8", newline="\n")

    def write(self, record):
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def read_spool(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def stream(fn, items, workers, setup, state, desc, total=None, chunk=256):
    """fn over `items` in chunks of `chunk`, through ordered_map, with a progress bar; yields
    each chunk's results one at a time, in input order."""
    with tqdm(desc=desc, total=total, unit="doc") as bar:
        for results in ordered_map(fn, chunks(items, chunk), workers, setup, (state,)):
            yield from results
            bar.update(len(results))


@contextlib.contextmanager
def scratch(out, outputs):
    """A scratch folder OUT/.prepare-work, emptied first (what a killed run left there is never
    read again) and removed at the end. When the block ends without an error, each of `outputs`
    it wrote is flushed to disk and renamed into OUT, the last one last: every output is
    complete before any is moved, so an interrupted run leaves the old outputs whole."""
    out = Path(out)
    work = out / ".prepare-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        yield work
        for name in outputs:
            with open(work / name, "rb+") as f:
                os.fsync(f.fileno())
        for name in outputs:
            os.replace(work / name, out / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
