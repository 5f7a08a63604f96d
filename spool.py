"""spool.py: streaming documents through disk and a pool of worker processes (a companion of
prepare.py, chapter 4).

    for result in spool.ordered_map(work, spool.chunks(docs, 2000), workers=4,
                                    setup=init, setup_args=(state,)):
        ...                                        # results in the order of the chunks
    with spool.Spool(folder / "pass1.jsonl") as s:   # a temporary file of JSON lines
        s.write({"text": ...}); ...
    for record in spool.read_spool(folder / "pass1.jsonl"): ...

Why a pool that keeps order: the output must be identical whatever --workers is, so results
come back in the order their chunks went out, and each chunk is processed by a pure function of
its input and the shared state. Why a bounded window: multiprocessing's Pool.imap reads its input
as fast as it can, so a reader faster than the workers would pile the whole corpus up in memory;
here at most 2 x workers chunks are in flight. Why a spool: a pass that needs all documents seen
before it can decide (boilerplate counts, duplicate clusters) writes them to disk and reads them
back, instead of holding them in memory.

Imported by prepare.py. Imports nothing from the project.
"""
import collections
import json
import multiprocessing
from itertools import islice


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
        self.file = open(path, "w", encoding="utf-8")

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
