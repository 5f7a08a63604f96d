"""docgen.py: a code documentation generator, the whole pipeline from raw material to a
deployed, measured assistant (book chapter 12, "Production Projects").

    python docgen.py data --run out/pretrain       # stdlib -> data/docgen/{train,test}.jsonl
    python docgen.py sft --init out/pretrain --max-steps 300    # sft.py on them -> out/docgen
    python docgen.py evaluate out/pretrain out/docgen    # ROUGE-L, BLEU, two baselines
    python docgen.py document my_code.py --run out/docgen  # for what has none (--write OUT: a copy)
    python docgen.py document my_code.py --server http://127.0.0.1:8000   # via serve.py
    python docgen.py data --run out/smollm2 --seq-len 256 --out data/docgen-smollm2   # a release
    python docgen.py sft --init out/smollm2 --preset cpu-lora --out-dir out/docgen-smollm2 \\
        --data data/docgen-smollm2/train.jsonl      # (convert.py imports it), with LoRA

Every Python installation ships the standard library's source: about 18,000 functions and
classes, 7,800 with a docstring a person wrote. The task: given a definition's code without
its docstrings, write the docstring's summary line. Each step uses the stage that already does
it: chapter 4's cleaning and duplicate filters (prepare.py), chapter 9's SFT (sft.py), chapter
11's server (serve.py). New here: the data, the split, the measurement and the use.

Reading order: 1. the pairs (a definition's source with every docstring removed -> its summary
line), the split by package, the filters, the files -> 2. training (sft.py's main) -> 3.
evaluation: ROUGE-L and BLEU (text_overlap.py), the baselines a skeptic names first, the report
-> 4. use: docstrings proposed for a user's own file, by a run or through the server -> 5. the
command line. More: docs/docgen.md.

Imports: prepare.py (cleaning, exact and MinHash duplicates), ngrams.py (the stable hash),
datacard.py (the card's tables), sft.py (the chat template, its main), chat.py (a loaded run
that generates), text_overlap.py (ROUGE-L, BLEU), rundir.py (flags, errors, files).
"""
import ast
import json
import re
import sys
import sysconfig
import textwrap
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

import chat
import datacard
import ngrams
import prepare
import sft
import text_overlap
from rundir import (UserError, atomic_write, load_run, option, parse_config, read_jsonl, run_cli,
                    write_json)

DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
PROMPT = "Write the docstring summary line for this Python {kind}:\n\n{source}"


# ---------------------------------------------------------------------------------------------
# 1. The pairs: a definition without its docstrings -> its docstring's summary line
# ---------------------------------------------------------------------------------------------
# What counts as a definition: the functions and classes of a module, and the methods and
# classes inside classes, at any depth. A function inside a function is part of its parent's
# code, not an item of its own. A docstring left inside the input would tell the model the answer
# (a class's methods often restate the class), so every docstring in a definition is removed,
# its own and those of everything inside it: the input then looks like the undocumented code a
# user brings. Where removing one leaves a body empty, `...` stands in for it.
def definitions(tree):
    """Yield (node, qualified name, kind) for the items of a parsed module, in source order."""
    def walk(body, prefix, in_class):
        for node in body:
            if isinstance(node, DEFS):
                kind = ("class" if isinstance(node, ast.ClassDef)
                        else "method" if in_class else "function")
                yield node, prefix + node.name, kind
                if isinstance(node, ast.ClassDef):
                    yield from walk(node.body, f"{prefix}{node.name}.", True)
    yield from walk(tree.body, "", False)


def docstring_expr(node):
    """The statement that is node's docstring, or None."""
    first = node.body[0] if node.body else None
    if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        return first
    return None


def first_line(stmt):
    """The line a statement starts on: a decorated definition starts at its first decorator."""
    return min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])


def code_beside(lines, expr):
    """True when the docstring shares a line with code (`def f(): "doc"`): removing its lines
    would remove that code too. ast counts columns in UTF-8 bytes."""
    before = lines[expr.lineno - 1].encode()[:expr.col_offset].decode(errors="replace")
    after = lines[expr.end_lineno - 1].encode()[expr.end_col_offset:].decode(errors="replace")
    return bool(before.strip()) or bool(after.split("#")[0].strip())


def undocumented_source(lines, node):
    """The source of a definition (decorators included) with every docstring in it removed,
    dedented; None when a docstring shares a line with code or the result is not clean Python.
        def f(x):              def f(x):
            '''Twice x.'''  ->     return 2 * x
            return 2 * x"""
    keep = {i: lines[i] for i in range(first_line(node) - 1, node.end_lineno)}
    for inner in ast.walk(node):
        expr = docstring_expr(inner) if isinstance(inner, DEFS) else None
        if expr is None:
            continue
        if code_beside(lines, expr):
            return None
        for i in range(expr.lineno - 1, expr.end_lineno):
            keep.pop(i, None)
        if len(inner.body) == 1:   # the docstring was the whole body: keep it a valid body
            keep[expr.lineno - 1] = " " * expr.col_offset + "..."
    source = textwrap.dedent("\n".join(keep[i] for i in sorted(keep)))
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    if any(isinstance(n, DEFS) and docstring_expr(n) for n in ast.walk(tree)):
        return None
    return source


def summary_line(doc, min_words):
    """The answer a small model is taught: the docstring's first sentence (PEP 257's summary
    line: what help() and an editor show), when it is a plain sentence of min_words or more
    (sft.doc_summary's rule: 12-150 characters, no signature like "f(x) -> y")."""
    summary = sft.doc_summary(doc)
    return summary if summary and len(summary.split()) >= min_words else None


def module_name(path, root):
    """stdlib/email/mime/text.py -> "email.mime.text"; a package's __init__.py is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# Not the standard library's own code, or tests that exercise it rather than document it.
SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def source_files(root):
    """The .py files under root, sorted, without the folders of SKIP_DIRS (nor config-*)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder (--stdlib)")
    return [p for p in sorted(root.rglob("*.py"))
            if not any(d in SKIP_DIRS or d.startswith("config-")
                       for d in p.relative_to(root).parts[:-1])]


def pairs_of_file(path, root, card, min_words):
    """The items of one file as dicts: module, name, kind, line, source (no docstrings), summary.
    What is dropped is counted on the card under its reason."""
    try:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        card.problems.append(f"{path}: not readable as Python, skipped")
        return []
    lines, module, items = text.splitlines(), module_name(path, root), []
    for node, name, kind in definitions(tree):
        doc = ast.get_docstring(node)
        card.count("definitions", len(doc or ""))
        summary = doc and summary_line(doc, min_words)
        source = summary and undocumented_source(lines, node)
        if source:
            source, summary = prepare.clean(source), prepare.clean(summary)
        # Code that repeats its own summary (an error message, a comment) would give it away.
        reason = ("no docstring" if not doc else "summary too short or not a sentence"
                  if not summary else "a docstring shares a line with code" if not source
                  else "summary written in the code too"
                  if " ".join(summary.split()) in " ".join(source.split()) else None)
        if reason:
            card.remove("pairs", reason, f"{module}.{name}", doc or name)
            continue
        card.count("pairs", len(source.encode()))
        items.append({"module": module, "name": name, "kind": kind, "line": node.lineno,
                      "source": source, "summary": summary})
    return items


def split_of(module, test_percent):
    """"test" or "train" for a module, by a stable hash of its top-level package: all of
    email.* falls on one side, so no package's code and style is on both sides of the split,
    and the split is the same on every machine and every run."""
    return "test" if ngrams.stable_hash(module.split(".")[0]) % 100 < test_percent else "train"


def prompt_of(item):
    """The question, the same in training, evaluation and use: [one user message]."""
    return [{"role": "user", "content": PROMPT.format(kind=item["kind"], source=item["source"])}]


def messages_of(item):
    return prompt_of(item) + [{"role": "assistant", "content": item["summary"]}]


def drop_duplicates(items, card, threshold):
    """Exact duplicates (prepare.exact_key) and near duplicates (prepare's MinHash and LSH) of
    the source, the earliest kept. Done before the split, so a function copied into two modules
    (_pyio and io, _pydecimal and decimal) cannot land on both sides of it."""
    seen, kept = set(), []
    for item in items:
        key = prepare.exact_key(item["source"])
        if key in seen:
            card.remove("duplicates", "exact duplicate", item["module"], item["source"])
        else:
            seen.add(key)
            kept.append(item)
    if threshold > 1 or not kept:
        return kept
    perms = prepare.permutations(128)
    signatures = np.stack([prepare.minhash(it["source"], perms, 5) for it in kept])
    clusters = prepare.near_duplicate_clusters(signatures, np.ones(len(kept), bool), threshold)
    gone = {i for removed in clusters.values() for i in removed}
    for i in sorted(gone):
        card.remove("duplicates", f"near duplicate (Jaccard >= {threshold})", kept[i]["module"],
                    kept[i]["source"])
    return [it for i, it in enumerate(kept) if i not in gone]


@dataclass
class DataConfig:
    stdlib: str = option(sysconfig.get_paths()["stdlib"], "folder of Python source to read "
                                                          "(default: this Python's stdlib)")
    out: str = option("data/docgen", "output folder: train.jsonl, test.jsonl, datacard.md")
    run: str = option("out/pretrain", "run whose tokenizer and context set the length limit")
    seq_len: int = option(0, "longest conversation in tokens (0: the run's context)")
    test_percent: int = option(10, "share of top-level packages held out, in percent")
    min_words: int = option(5, "shortest summary line kept, in words")
    dedup_threshold: float = option(0.8, "Jaccard similarity of near duplicates (above 1: off)")


def build_data(cfg):
    """The pairs of every file under --stdlib, filtered, split and written in sft.py's format:
    one {"conversations": [user prompt, assistant summary], "module", "name", ...} per line."""
    if not 0 <= cfg.test_percent <= 100 or cfg.min_words < 1:
        raise UserError("--test-percent must be in [0, 100], --min-words at least 1")
    model, tok, _ = load_run(cfg.run)       # raises UserError naming the run if it is not one
    seq_len = cfg.seq_len or model.context_length
    root = Path(cfg.stdlib)
    card = datacard.Card(["definitions", "pairs", "duplicates", "length"])
    items = []
    for path in tqdm(source_files(root), desc="read", unit="file", leave=False):
        items += pairs_of_file(path, root, card, cfg.min_words)
    fits = []
    for item in drop_duplicates(items, card, cfg.dedup_threshold):
        card.count("duplicates", len(item["source"].encode()))
        # the whole conversation must fit, or sft.py would cut the answer off
        n = len(sft.render_chat(tok, messages_of(item))[0])
        if n > seq_len + 1:
            card.remove("length", f"longer than {seq_len} tokens", item["module"], item["name"])
        else:
            card.count("length", len(item["source"].encode()))
            fits.append(item)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = {"train": [], "test": []}
    for item in fits:
        splits[split_of(item["module"], cfg.test_percent)].append(item)
    for split, chosen in splits.items():
        lines = "".join(json.dumps({"conversations": messages_of(it), **it}) + "\n"
                        for it in chosen)
        atomic_write(out / f"{split}.jsonl", lambda f, t=lines: f.write(t.encode()))
    atomic_write(out / "datacard.md", lambda f: f.write(data_card(cfg, card, splits).encode()))
    print(f"{len(splits['train']):,} training pairs, {len(splits['test']):,} held out "
          f"({len({it['module'].split('.')[0] for it in splits['test']})} packages) -> {out}")
    return splits


def data_card(cfg, card, splits):
    """What a person reads before training on the pairs: each step and what it removed."""
    steps = [(s, f"{card.docs[s]:,}", ", ".join(f"{r} {n:,}" for r, n in
                                                 sorted(card.removed[s].items())))
             for s in card.steps]
    packages = sorted({it["module"].split(".")[0] for it in splits["test"]})
    return "\n".join([
        f"# Data card: {cfg.out}", "", f"Source: `{cfg.stdlib}`, read by `python docgen.py data "
        f"--run {cfg.run}`. Prompt: `{PROMPT.splitlines()[0]}` and the source.", "",
        datacard.table(("step", "kept", "removed, by reason"), steps), "",
        f"{len(splits['train']):,} training pairs, {len(splits['test']):,} held-out pairs from "
        f"{len(packages)} packages: {', '.join(packages)}.", "",
        f"{len(card.problems)} file(s) skipped: " + "; ".join(card.problems[:20]), ""])


# ---------------------------------------------------------------------------------------------
# 2. Training: sft.py, on the training pairs
# ---------------------------------------------------------------------------------------------
def train_sft(argv):
    """sft.py's main with the pairs as --data and out/docgen as --out-dir: every flag of
    `python sft.py` works here, and a flag given wins (argparse keeps the last one)."""
    return sft.main(["--data", "data/docgen/train.jsonl", "--out-dir", "out/docgen", *argv])


# ---------------------------------------------------------------------------------------------
# 3. Evaluation: ROUGE-L and BLEU on the held-out packages, against two baselines
# ---------------------------------------------------------------------------------------------
def name_words(name):
    """An identifier's words: "read_file" -> ["read", "file"], "HTTPServer" -> ["HTTP",
    "Server"], "getLineNo2" -> ["get", "Line", "No2"]."""
    return re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z0-9]+", name)


def name_sentence(name):
    """The first baseline, the sentence a name already says: "Foo.read_file" -> "Read file."."""
    words = [w if w.isupper() and len(w) > 1 else w.lower()
             for w in name_words(name.split(".")[-1])]
    text = " ".join(words) or name
    return text[0].upper() + text[1:] + "."


def identifier_tokens(source):
    """The set of lower-cased identifier words of some code: what it names and calls."""
    return {w.lower() for ident in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", source)
            for w in name_words(ident)}


class NearestSummary:
    """The second baseline: the summary of the training definition whose identifier words are
    most like the query's (Jaccard |A & B| / |A | B|). An inverted index (word -> the training
    items that have it) with numpy's bincount counts every intersection of one query at once."""

    def __init__(self, train_items):
        self.summaries = [it["summary"] for it in train_items]
        sets = [identifier_tokens(it["source"]) for it in train_items]
        self.sizes = np.array([len(s) for s in sets], np.float64)
        postings = {}
        for i, words in enumerate(sets):
            for w in words:
                postings.setdefault(w, []).append(i)
        self.postings = {w: np.array(ix, np.int64) for w, ix in postings.items()}

    def __call__(self, source):
        words = identifier_tokens(source)
        hits = [self.postings[w] for w in words if w in self.postings]
        if not hits:
            return self.summaries[0]
        inter = np.bincount(np.concatenate(hits), minlength=len(self.sizes))
        jaccard = inter / (len(words) + self.sizes - inter)
        return self.summaries[int(np.argmax(jaccard))]   # ties: the earliest


def first_paragraph(text):
    """What a model's answer is scored as: its first paragraph on one line. A pre-trained model
    does not stop where a summary ends, and a docstring's summary is one paragraph."""
    return " ".join(text.strip().split("\n\n")[0].split())


def overlap_scores(references, predictions):
    """{"rouge_l": mean ROUGE-L F over the items, "bleu": corpus BLEU}, both in 0..100."""
    rouge = sum(map(text_overlap.rouge_l, references, predictions)) / max(len(references), 1)
    return {"rouge_l": 100 * rouge, "bleu": text_overlap.corpus_bleu(references, predictions)}


def read_pairs(path):
    """The items of a train.jsonl or test.jsonl that `docgen.py data` wrote."""
    def parse(obj, where):
        sft.parse_sft_line(obj, where)
        if not all(isinstance(obj.get(k), str) for k in ("source", "summary", "name", "kind")):
            raise UserError(f'{where}: expected "source", "summary", "name" and "kind" strings '
                            f"(a file written by `python docgen.py data`)")
        return obj
    return read_jsonl(path, parse, "pairs", "run `python docgen.py data` first")


def propose(engine, item, max_new_tokens):
    """A run's summary line for an item, greedy: the prompt as a chat model is trained on it
    (a pre-trained model gets the same words as text to continue, chat.Engine's text mode).
    None when the prompt does not fit the model's context, as serve.py refuses it: cutting
    the code's start off would hide the very signature to describe."""
    ids = engine.prompt_ids(prompt_of(item))
    if len(ids) >= engine.context:
        return None
    answer = chat.Answer(engine, ids, max_new_tokens, temperature=0, top_k=0, top_p=1.0,
                         repetition_penalty=1.0)
    return first_paragraph("".join(answer.stream()))


@dataclass
class EvalConfig:
    run_dirs: list = option([], "run directories to evaluate", positional="*")
    data: str = option("data/docgen", "the folder `docgen.py data` wrote")
    limit: int = option(0, "held-out pairs evaluated, at most, every k-th (0: all)")
    max_new_tokens: int = option(48, "longest generated summary, in tokens")
    examples: int = option(6, "generated summaries shown beside the real ones in the report")
    device: str = option("cpu", "cpu | cuda | mps")
    dtype: str = option("auto", "weights' precision while generating (as chat.py's --dtype)")


def evaluate(cfg):
    """Both baselines, then each run, on the held-out pairs: a table printed, and in each run
    directory docgen.md and docgen.json with the figures and a few answers beside the truth."""
    if cfg.limit < 0 or cfg.max_new_tokens < 1:
        raise UserError("--limit must not be negative, --max-new-tokens at least 1")
    train_items = read_pairs(Path(cfg.data) / "train.jsonl")
    test = read_pairs(Path(cfg.data) / "test.jsonl")
    test = test[::max(1, -(-len(test) // cfg.limit))] if cfg.limit else test   # spread out
    truth = [it["summary"] for it in test]
    nearest = NearestSummary(train_items)
    answers = {"baseline: name as a sentence": [name_sentence(it["name"]) for it in test],
               "baseline: nearest training summary": [nearest(it["source"]) for it in test]}
    too_long = {}
    for run_dir in cfg.run_dirs:
        engine = chat.Engine(run_dir, cfg.device, cfg.dtype)
        got = [propose(engine, it, cfg.max_new_tokens)
               for it in tqdm(test, desc=engine.name, leave=False)]
        answers[run_dir] = [g or "" for g in got]      # a prompt too long scores 0
        too_long[run_dir] = got.count(None)
    figures = {name: overlap_scores(truth, got) for name, got in answers.items()}
    every = max(1, len(test) // max(cfg.examples, 1))     # examples spread over the packages
    shown = list(enumerate(test))[::every][:cfg.examples]
    report = {"data": str(cfg.data), "pairs": len(test), "train_pairs": len(train_items),
              "figures": figures, "too_long_for_the_context": too_long,
              "examples": [{"name": f"{it['module']}.{it['name']}", "truth": it["summary"],
                            **{k: v[i] for k, v in answers.items()}}
                           for i, it in shown]}
    text = report_markdown(report)
    print(text)
    for run_dir in cfg.run_dirs:
        write_json(Path(run_dir) / "docgen.json", report)
        atomic_write(Path(run_dir) / "docgen.md", lambda f: f.write(text.encode()))
    return report


def report_markdown(report):
    rows = [(name, f"{f['rouge_l']:.1f}", f"{f['bleu']:.2f}")
            for name, f in report["figures"].items()]
    out = ["# Docstring summaries on held-out packages", "",
           f"{report['pairs']:,} held-out pairs from `{report['data']}/test.jsonl` "
           f"({report['train_pairs']:,} training pairs). ROUGE-L: mean F-measure (rouge-score's "
           "defaults); BLEU: corpus BLEU-4 (sacrebleu's defaults); both 0-100.", "",
           datacard.table(("answers from", "ROUGE-L", "BLEU"), rows), ""]
    out += [f"{run}: {n} prompt(s) longer than its context, answered by nothing (scored 0)."
            for run, n in report["too_long_for_the_context"].items() if n]
    out += ["", "## Examples", ""]
    for ex in report["examples"]:
        out += [f"**`{ex['name']}`**", "", f"- truth: {ex['truth']}"]
        out += [f"- {k}: {v}" for k, v in ex.items() if k not in ("name", "truth")] + [""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# 4. Use: docstrings proposed for a user's own file
# ---------------------------------------------------------------------------------------------
def undocumented(path):
    """(text, [(node, name, kind, prompt item)]) for the definitions of a Python file that have
    no docstring; a file that is not Python is an error naming its line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(path))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason})") from None
    except SyntaxError as e:
        raise UserError(f"{path}:{e.lineno}: not valid Python ({e.msg})") from None
    lines, found = text.splitlines(), []
    for node, name, kind in definitions(tree):
        if docstring_expr(node) is None:
            source = undocumented_source(lines, node)
            if source is not None:
                found.append((node, name, kind, {"kind": kind, "source": source}))
    return text, found


def ask_server(url, item, max_new_tokens):
    """The same prompt through a running `python serve.py` (POST /v1/chat/completions)."""
    url = url.rstrip("/")
    url = url if url.endswith("/v1/chat/completions") else url + "/v1/chat/completions"
    body = {"messages": prompt_of(item), "max_tokens": max_new_tokens, "temperature": 0,
            "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0}   # greedy, as propose() is
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            reply = json.loads(response.read())
        return first_paragraph(reply["choices"][0]["message"]["content"])
    except urllib.error.HTTPError as e:
        answer = e.read()
        if b"context_length_exceeded" in answer:
            return None
        raise UserError(f"{url}: the server answered {e.code} {answer[:200]!r}") from None
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"{url}: no server answers there ({e})") from None
    except (ValueError, KeyError, IndexError, TypeError):
        raise UserError(f"{url}: not an OpenAI-style chat completion") from None


def docstring_lines(text, indent, width=99):
    """A summary as docstring lines at this indent: one line when it fits, else wrapped."""
    text = text.replace("\\", "\\\\")
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    if '""' in text or text.endswith('"'):   # quotes that could close the docstring early
        text = text.replace('"', '\\"')
    if len(indent) + len(text) + 6 <= width:
        return [f'{indent}"""{text}"""']
    wrapped = textwrap.wrap(text, width - len(indent) - 3)
    return [f'{indent}"""{wrapped[0]}', *(indent + w for w in wrapped[1:]), f'{indent}"""']


def insert_docstrings(text, proposals):
    """The file's text with each proposal inserted as its definition's first statement.
    proposals: [(node, summary)]. A definition written on one line (`def f(): return 1`) has no
    line to put a docstring on and is left as it is. Inserted from the bottom up, so the line
    numbers of what is still to insert do not move."""
    lines = text.splitlines()
    for node, summary in sorted(proposals, key=lambda p: -first_line(p[0].body[0])):
        if node.body[0].lineno == node.lineno or not summary:
            continue
        at = first_line(node.body[0]) - 1   # above a decorated method's decorators
        indent = lines[at][:len(lines[at]) - len(lines[at].lstrip())]
        lines[at:at] = docstring_lines(summary, indent)
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


@dataclass
class DocumentConfig:
    file: str = option("", "the Python file to document", positional="?")
    run: str = option("out/docgen", "run directory that writes the docstrings")
    server: str = option("", "URL of a running `python serve.py` to ask instead of --run")
    write: str = option("", "write a copy of the file with the docstrings inserted here")
    in_place: bool = option(False, "insert the docstrings into the file itself")
    max_new_tokens: int = option(48, "longest docstring, in tokens")
    device: str = option("cpu", "cpu | cuda | mps")


def document(cfg):
    """Print a docstring for each definition of --file that has none; with --write OUT (or
    --in-place) also write the file with them inserted. The file is only ever changed with
    --in-place, and then only when the result still parses."""
    if not cfg.file:
        raise UserError("name the Python file to document: python docgen.py document FILE.py")
    if cfg.in_place and cfg.write:
        raise UserError("give --write OUT or --in-place, not both")
    if cfg.write and Path(cfg.write).resolve() == Path(cfg.file).resolve():
        raise UserError(f"--write {cfg.write}: that is the file itself; use --in-place to "
                        f"change it")
    text, found = undocumented(cfg.file)
    if cfg.server:
        ask = lambda item: ask_server(cfg.server, item, cfg.max_new_tokens)
    elif found:
        engine = chat.Engine(cfg.run, cfg.device)
        ask = lambda item: propose(engine, item, cfg.max_new_tokens)
    proposals = []
    for node, name, kind, item in found:
        summary = ask(item)
        said = (summary or "(nothing proposed: the model ended its answer at once)"
                if summary is not None else "(skipped: longer than the model's context)")
        print(f"{cfg.file}:{node.lineno}: {kind} {name}: {said}")
        proposals.append((node, summary))
    if not found:
        print(f"{cfg.file}: every function and class has a docstring")
    target = cfg.file if cfg.in_place else cfg.write
    if target:
        new = insert_docstrings(text, proposals)
        try:
            ast.parse(new)
        except SyntaxError as e:  # a bug here, never the user's: leave every file as it was
            raise UserError(f"{cfg.file}: the documented copy would not parse ({e}); "
                            f"nothing written") from None
        atomic_write(target, lambda f: f.write(new.encode("utf-8")))
        print(f"wrote {target}")
    return proposals


# ---------------------------------------------------------------------------------------------
# 5. The command line: one subcommand per stage
# ---------------------------------------------------------------------------------------------
COMMANDS = {"data": "build the pairs from the standard library (docgen.py data --help)",
            "sft": "fine-tune on them: every flag of sft.py (docgen.py sft --help)",
            "evaluate": "ROUGE-L and BLEU of runs and baselines (docgen.py evaluate --help)",
            "document": "docstrings for a file's definitions (docgen.py document --help)"}


def main(argv=None):
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__[:__doc__.index("\n\nEvery")] + "\n\ncommands:")
        print("\n".join(f"  {k:<9} {v}" for k, v in COMMANDS.items()))
        return None
    command, rest = args[0], args[1:]
    if command == "sft":
        return train_sft(rest)
    configs = {"data": (DataConfig, build_data), "evaluate": (EvalConfig, evaluate),
               "document": (DocumentConfig, document)}
    if command not in configs:
        raise UserError(f"unknown command {command!r}; choose one of: {', '.join(COMMANDS)}")
    cls, fn = configs[command]
    return fn(parse_config(cls, rest))


if __name__ == "__main__":
    run_cli(main)
