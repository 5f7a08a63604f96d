"""Tests for docgen.py and text_overlap.py: the pairs builder (no docstring leaks into the input,
the split by package, duplicates, lengths, the same files every time), ROUGE-L and BLEU against
slow references written another way and against rouge-score and sacrebleu, the two baselines,
the evaluation report, the document command (printing, --write, never overwriting, --in-place)
by a run and through a server on 127.0.0.1, and bad input."""
import ast
import functools
import json
import math
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import pytest
import torch

import chat
import convert
import docgen
import lora
import minimind
import rundir
import serve
import text_overlap
from bpe import Tokenizer
from rundir import UserError, run_cli
from test_chat_templates import jinja
from test_convert import FAMILIES, write_release

ROOT = Path(__file__).resolve().parent.parent

ALPHA = '''"""Module alpha."""
import os


def twice(x):
    """Return twice the number x.

    A longer paragraph that is not the summary."""
    return 2 * x


def outer(path):
    """Walk the folder and count what it holds."""
    def inner(name):
        """Tell whether the named entry is a visible file."""
        return not name.startswith(".")
    return sum(inner(n) for n in os.listdir(path))


class Store:
    """Keep the values given to it in memory."""

    @staticmethod
    def make():
        """Build an empty store with nothing in it."""
        return Store()

    def abstract(self):
        """Subclasses must answer this one question."""

    def noisy(self):
        """Raise an error about the broken store object."""
        raise ValueError("Raise an error about the broken store object.")


def oneliner(): "Return the answer on one single line."; return 42


def bare(x):
    return x
'''

BETA = '''def copied(a, b):
    """Add the two numbers a and b together."""
    total = a + b
    return total


def shout(text):
    """Return the text in capital letters, loudly."""
    return text.upper() + "!"
'''


@pytest.fixture(scope="module")
def wide_run(corpus, tmp_path_factory):
    """An untrained nano MiniMind with a context of 512, labelled a chat model: room for whole
    functions in its prompts (the trained fixture's context is 64). Its greedy answers are
    nonsense, and the same every time, which is what the tests of the plumbing need."""
    tok = Tokenizer.load(corpus / "tok.json")
    torch.manual_seed(0)
    config = minimind.MiniMindConfig(**minimind.SIZES["nano"], vocab_size=tok.vocab_size,
                                     max_seq_len=512)
    out = tmp_path_factory.mktemp("wide") / "sft"
    rundir.save_model(out, minimind.MiniMind(config), tok, {"step": 0, "stage": "sft"})
    return out


def every_docstring(source):
    return [ast.get_docstring(n, clean=False) for n in ast.walk(ast.parse(source))
            if isinstance(n, (ast.Module, *docgen.DEFS)) and ast.get_docstring(n)]


@pytest.fixture
def tiny_stdlib(tmp_path):
    """A folder laid out like a standard library: modules, a package, a copy of a function in
    another module, and folders the builder must skip."""
    root = tmp_path / "lib"
    (root / "pkg").mkdir(parents=True)
    (root / "alpha.py").write_text(ALPHA)
    (root / "beta.py").write_text(BETA)
    (root / "pkg" / "__init__.py").write_text(BETA.replace("shout", "whisper"))
    (root / "pkg" / "mod.py").write_text(BETA.split("\n\n\n")[1])
    for skipped in ("site-packages", "test"):
        (root / skipped).mkdir()
        (root / skipped / "x.py").write_text('def hidden():\n    """Never read by the builder."""'
                                            '\n    return 1\n')
    (root / "broken.py").write_text("def broken(:\n")
    return root


def build(root, out, run, **flags):
    cfg = docgen.DataConfig(stdlib=str(root), out=str(out), run=str(run),
                            **{"seq_len": 4096, "test_percent": 50, **flags})
    return docgen.build_data(cfg)


def test_pairs_remove_every_docstring_and_drop_what_would_leak(tiny_stdlib, tmp_path,
                                                               pretrained_run):
    splits = build(tiny_stdlib, tmp_path / "d", pretrained_run)
    items = splits["train"] + splits["test"]
    names = {(it["module"], it["name"]) for it in items}
    # nested functions are part of their parent; one-line defs, code that repeats its summary,
    # the skipped folders and the broken file give no pair
    assert ("alpha", "twice") in names and ("alpha", "Store") in names
    assert ("alpha", "Store.make") in names and ("alpha", "Store.abstract") in names
    assert not {n for _, n in names} & {"inner", "outer.inner", "oneliner", "bare", "hidden",
                                        "Store.noisy"}
    # every docstring of the files, but noisy's, which its own code (and so Store's) repeats
    all_docs = [d for f in tiny_stdlib.rglob("*.py") if f.name != "broken.py"
                for d in every_docstring(f.read_text()) if "broken store" not in d]
    for it in items:
        assert not every_docstring(it["source"]), it["name"]
        flat = " ".join(it["source"].split())
        assert not [d for d in all_docs if " ".join(d.split()) in flat], it["name"]
        assert it["summary"] not in it["source"]
        ast.parse(it["source"])
    store = next(it for it in items if it["name"] == "Store")
    assert "@staticmethod" in store["source"] and "    def abstract(self):\n        ..." in \
        store["source"]
    assert next(it for it in items if it["name"] == "twice")["summary"] == \
        "Return twice the number x."
    outer = next(it for it in items if it["name"] == "outer")["source"]
    assert "def inner(name):" in outer and "visible" not in outer
    card = (tmp_path / "d" / "datacard.md").read_text()
    assert "a docstring shares a line with code 1" in card and "broken.py" in card


def test_the_split_is_by_package_disjoint_and_the_same_every_time(tiny_stdlib, tmp_path,
                                                                  pretrained_run):
    build(tiny_stdlib, tmp_path / "a", pretrained_run)
    build(tiny_stdlib, tmp_path / "b", pretrained_run)
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    cards = [(tmp_path / d / "datacard.md").read_text().splitlines()[1:] for d in "ab"]
    assert cards[0] == cards[1]
    sides = {s: [json.loads(line)["module"]
                 for line in (tmp_path / "a" / f"{s}.jsonl").read_text().splitlines()]
             for s in ("train", "test")}
    # at 50 percent alpha and beta are held out and pkg is not (their hashes decide)
    assert set(sides["test"]) == {"alpha", "beta"} and set(sides["train"]) == {"pkg"}
    # pkg and pkg.mod fall on the same side; the rule is a hash of the top-level name
    names = [f"m{i}" for i in range(200)]
    held = [n for n in names if docgen.split_of(n, 10) == "test"]
    assert 5 < len(held) < 40 and all(docgen.split_of(n + ".sub", 10) == "test" for n in held)
    assert {docgen.split_of(n, 0) for n in names} == {"train"}
    assert {docgen.split_of(n, 100) for n in names} == {"test"}


def test_duplicates_and_lengths_are_dropped(tiny_stdlib, tmp_path, pretrained_run):
    items = sum(build(tiny_stdlib, tmp_path / "d", pretrained_run).values(), [])
    # pkg.copied repeats beta.copied, pkg.mod.shout beta.shout: the earlier ones are kept
    assert [it["module"] for it in items if it["name"] in ("copied", "shout")] == ["beta"] * 2
    assert "exact duplicate 2" in (tmp_path / "d" / "datacard.md").read_text()
    body = "\n".join(f"    v{i} = v{i - 1} * {i} + w{i}" for i in range(1, 50))
    long = 'def long_one(v0):\n    """Multiply and add the numbers many times over."""\n'
    (tiny_stdlib / "gamma.py").write_text(long + body + "\n    return v49\n")
    (tiny_stdlib / "delta.py").write_text(long + body.replace("w49", "u49") + "\n    return v49\n")
    items = sum(build(tiny_stdlib, tmp_path / "e", pretrained_run).values(), [])
    assert [it["module"] for it in items if it["name"] == "long_one"] == ["delta"]
    assert "near duplicate (Jaccard >= 0.8) 1" in (tmp_path / "e" / "datacard.md").read_text()
    tok = chat.Engine(pretrained_run).tok
    lengths = sorted(len(docgen.sft.render_chat(tok, docgen.messages_of(it))[0]) for it in items)
    limit = lengths[len(lengths) // 2]
    short = sum(build(tiny_stdlib, tmp_path / "f", pretrained_run, seq_len=limit - 1).values(),
                [])
    assert len(short) == sum(n <= limit for n in lengths) < len(items)
    assert all(len(docgen.sft.render_chat(tok, docgen.messages_of(it))[0]) <= limit
               for it in short)


def test_the_files_are_what_sft_reads(tiny_stdlib, tmp_path, pretrained_run):
    build(tiny_stdlib, tmp_path / "d", pretrained_run, test_percent=0)
    rows = docgen.sft.read_jsonl(tmp_path / "d" / "train.jsonl", docgen.sft.parse_sft_line)
    assert rows and rows[0]["messages"][0]["content"].startswith(
        "Write the docstring summary line for this Python ")
    assert rows[0]["messages"][1]["role"] == "assistant"


def test_a_real_stdlib_package(tmp_path, pretrained_run):
    """json's own source: many pairs, none with a docstring left in its input."""
    root = tmp_path / "lib"
    shutil.copytree(Path(sysconfig.get_paths()["stdlib"]) / "json", root / "json")
    items = sum(build(root, tmp_path / "d", pretrained_run).values(), [])
    assert len(items) >= 10
    for it in items:
        assert not every_docstring(it["source"]) and it["summary"] not in it["source"]


# ---------------------------------------------------------------------------------------------
# ROUGE-L and BLEU: against slow references, and against the packages
# ---------------------------------------------------------------------------------------------
WORDS = ["Return", "the", "value", "of", "x", "a", "file", "Read", "list", "3.5", "N-th", "(",
         ")", ",", ".", "it's", "path", "name", "object", "--", "&amp;", "x[0]", "2-fold", "ÉTÉ"]


def random_texts(n, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 14))) for _ in range(n)]


def slow_lcs(a, b):
    @functools.lru_cache(maxsize=None)
    def go(i, j):
        if i == len(a) or j == len(b):
            return 0
        if a[i] == b[j]:
            return 1 + go(i + 1, j + 1)
        return max(go(i + 1, j), go(i, j + 1))
    return go(0, 0)


def slow_bleu(refs, preds):
    """BLEU from its definition: every window counted by list.count, the product of the four
    precisions to the power 1/4, smoothing as sacrebleu's 'exp'."""
    correct, total, c_len, r_len = [0] * 4, [0] * 4, 0, 0
    for ref, pred in zip(refs, preds):
        r, p = text_overlap.bleu_tokens(ref), text_overlap.bleu_tokens(pred)
        c_len, r_len = c_len + len(p), r_len + len(r)
        for n in range(1, 5):
            windows = [p[i:i + n] for i in range(len(p) - n + 1)]
            ref_windows = [r[i:i + n] for i in range(len(r) - n + 1)]
            total[n - 1] += len(windows)
            for w in [list(x) for x in {tuple(w) for w in windows}]:
                correct[n - 1] += min(windows.count(w), ref_windows.count(w))
    if not any(correct) or 0 in total:
        return 0.0
    product, k = 1.0, 1
    for c, t in zip(correct, total):
        if c == 0:
            k *= 2
        product *= (c / t) if c else 1 / (k * t)
    bp = 1.0 if c_len >= r_len else math.exp(1 - r_len / c_len)
    return 100 * bp * product ** 0.25


def test_rouge_l_against_a_recursive_lcs():
    assert text_overlap.rouge_tokens("Return the N-th item, ÉTÉ!") == ["return", "the", "n",
                                                                       "th", "item", "t"]
    assert text_overlap.rouge_l("Return the file.", "Read the file.") == pytest.approx(2 / 3)
    assert text_overlap.rouge_l("", "x") == 0.0 and text_overlap.rouge_l("a b", "c") == 0.0
    for a, b in zip(random_texts(60, 1), random_texts(60, 2)):
        ta, tb = text_overlap.rouge_tokens(a), text_overlap.rouge_tokens(b)
        common = slow_lcs(tuple(ta), tuple(tb))
        assert text_overlap.lcs_length(ta, tb) == common
        if common:
            p, r = common / len(tb), common / len(ta)
            assert text_overlap.rouge_l(a, b) == pytest.approx(2 * p * r / (p + r))


def test_bleu_against_brute_force_counts():
    assert text_overlap.bleu_tokens("Return x[0], 3.5-fold.") == \
        ["Return", "x", "[", "0", "]", ",", "3.5", "-", "fold", "."]
    same = ["Read the whole file into memory ."]
    assert text_overlap.corpus_bleu(same, same) == pytest.approx(100.0)
    assert text_overlap.corpus_bleu(["a b c d"], ["e f"]) == 0.0
    refs, preds = random_texts(40, 3), random_texts(40, 4)
    for k in (1, 5, 40):
        assert text_overlap.corpus_bleu(refs[:k], preds[:k]) == \
            pytest.approx(slow_bleu(refs[:k], preds[:k]), abs=1e-9)
    near = [r.replace("the", "a", 1) for r in refs]   # many matches, some orders unmatched
    assert text_overlap.corpus_bleu(refs, near) == pytest.approx(slow_bleu(refs, near))


def test_rouge_l_matches_rouge_score():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"])   # the defaults: no stemming
    for a, b in zip(random_texts(80, 5), random_texts(80, 6)):
        assert text_overlap.rouge_l(a, b) == pytest.approx(scorer.score(a, b)["rougeL"].fmeasure)


def test_bleu_matches_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    refs, preds = random_texts(50, 7), random_texts(50, 8)
    near = [r.replace("the", "a", 1) + " ." for r in refs]
    for hyp in (preds, near, refs):
        for k in (1, 3, 50):
            ours = text_overlap.corpus_bleu(refs[:k], hyp[:k])
            assert ours == pytest.approx(sacrebleu.corpus_bleu(hyp[:k], [refs[:k]]).score,
                                         abs=1e-9)
    for text in random_texts(30, 9):
        assert text_overlap.bleu_tokens(text) == \
            sacrebleu.tokenizers.tokenizer_13a.Tokenizer13a()(text.rstrip()).split()


# ---------------------------------------------------------------------------------------------
# The baselines and the evaluation
# ---------------------------------------------------------------------------------------------
def test_name_sentence_baseline():
    assert docgen.name_sentence("read_file") == "Read file."
    assert docgen.name_sentence("Store.HTTPServer") == "HTTP server."
    assert docgen.name_sentence("__init__") == "Init."
    assert docgen.name_sentence("getLineNo2") == "Get line no2."


def test_nearest_summary_is_the_most_jaccard_similar_training_item():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(30)]
    train = [{"source": " ".join(rng.sample(vocab, rng.randint(1, 10))), "summary": f"s{i}"}
             for i in range(80)]
    nearest = docgen.NearestSummary(train)
    for _ in range(40):
        query = " ".join(rng.sample(vocab, rng.randint(1, 10)))
        q = docgen.identifier_tokens(query)
        scores = [len(q & docgen.identifier_tokens(t["source"]))
                  / len(q | docgen.identifier_tokens(t["source"])) for t in train]
        assert nearest(query) == train[scores.index(max(scores))]["summary"]
    assert docgen.identifier_tokens("def read_file(self, fileName): pass") == \
        {"def", "read", "file", "self", "name", "pass"}


def test_evaluate_writes_the_report_with_baselines_and_examples(tiny_stdlib, tmp_path, sft_run,
                                                                wide_run, pretrained_run):
    build(tiny_stdlib, tmp_path / "d", pretrained_run, test_percent=0)
    (tmp_path / "d" / "test.jsonl").write_text((tmp_path / "d" / "train.jsonl").read_text())
    run, short = tmp_path / "run", tmp_path / "short"
    shutil.copytree(wide_run, run)
    shutil.copytree(sft_run, short)
    report = docgen.evaluate(docgen.EvalConfig(run_dirs=[str(run), str(short)],
                                               data=str(tmp_path / "d"), max_new_tokens=4,
                                               examples=2))
    figures = report["figures"]
    assert set(figures) == {"baseline: name as a sentence",
                            "baseline: nearest training summary", str(run), str(short)}
    # prompts longer than a run's context are not cut: they are answered by nothing, scored 0
    engine, items = chat.Engine(short), docgen.read_pairs(tmp_path / "d" / "test.jsonl")
    over = sum(len(engine.prompt_ids(docgen.prompt_of(it))) >= 64 for it in items)
    assert report["too_long_for_the_context"] == {str(run): 0, str(short): over}
    assert over and (over < len(items) or figures[str(short)]["rouge_l"] == 0)
    # tested on its own training items, the nearest neighbour finds each one itself
    assert figures["baseline: nearest training summary"]["rouge_l"] == pytest.approx(100)
    assert json.loads((run / "docgen.json").read_text()) == report
    text = (run / "docgen.md").read_text()
    assert "| baseline: name as a sentence |" in text and "- truth: " in text
    assert len(report["examples"]) == 2


# ---------------------------------------------------------------------------------------------
# The document command
# ---------------------------------------------------------------------------------------------
USER_FILE = '''import functools


def documented(x):
    """Already has one."""
    return x


def add_numbers(a, b):
    # the sum
    return a + b


class Basket:
    @functools.lru_cache
    def count_items(self, kind):
        return len(kind)


async def fetch(url): return url


def very_long():
    return ''' + repr(" ".join(f"word{i}" for i in range(300))) + "\n"
SKIPPED = "(skipped: longer than the model's context)"
NOTHING = "(nothing proposed: the model ended its answer at once)"


def test_docstring_lines_quote_and_wrap():
    for summary in ('Say "hi"', 'Back\\slash and """triple"""', "word " * 40):
        lines = docgen.docstring_lines(summary.strip(), "    ")
        tree = ast.parse("def f():\n" + "\n".join(lines) + "\n    pass\n")
        got = " ".join(ast.get_docstring(tree.body[0]).split())
        assert got == " ".join(summary.split()) and all(len(x) <= 99 for x in lines)


def test_insert_docstrings_into_decorated_methods_and_classes():
    tree = ast.parse(USER_FILE)
    wanted = {"add_numbers": "Add them.", "Basket": "A basket.", "count_items": "Count them.",
              "fetch": "Never inserted: written on one line."}
    nodes = [(n, wanted[n.name]) for n in ast.walk(tree)
             if isinstance(n, docgen.DEFS) and n.name in wanted]
    new = ast.parse(docgen.insert_docstrings(USER_FILE, nodes))
    docs = {n.name: ast.get_docstring(n) for n in ast.walk(new) if isinstance(n, docgen.DEFS)}
    assert docs == {"documented": "Already has one.", "add_numbers": "Add them.",
                    "Basket": "A basket.", "count_items": "Count them.", "fetch": None,
                    "very_long": None}


def check_documented_copy(path, out, printed):
    """The copy parses, holds every printed proposal as its definition's docstring, and the
    original file is as it was."""
    assert path.read_text() == USER_FILE
    docs = {n.name: ast.get_docstring(n) for n in ast.walk(ast.parse(out.read_text()))
            if isinstance(n, docgen.DEFS)}
    assert docs["documented"] == "Already has one." and docs["fetch"] is None
    assert printed.pop("very_long") == SKIPPED and docs["very_long"] is None
    for name, summary in printed.items():
        doc = docs[name.split(".")[-1]]
        assert doc is None if summary == NOTHING else " ".join(doc.split()) == summary


def proposals_of(output, path):
    """{name: summary} from the lines `FILE:LINE: kind NAME: summary` the command prints."""
    found = {}
    for line in output.splitlines():
        if line.startswith(f"{path}:"):
            head, _, summary = line.partition(": ")[2].partition(": ")
            found[head.split()[1]] = summary
    return found


def test_document_prints_writes_a_copy_and_never_overwrites(tmp_path, wide_run, capsys):
    path, out = tmp_path / "mine.py", tmp_path / "mine_documented.py"
    path.write_text(USER_FILE)
    docgen.main(["document", str(path), "--run", str(wide_run), "--max-new-tokens", "6"])
    printed = proposals_of(capsys.readouterr().out, path)
    assert set(printed) == {"add_numbers", "Basket", "Basket.count_items", "fetch", "very_long"}
    assert path.read_text() == USER_FILE and not out.exists()
    docgen.main(["document", str(path), "--run", str(wide_run), "--max-new-tokens", "6",
                 "--write", str(out)])
    assert proposals_of(capsys.readouterr().out, path) == printed   # greedy: the same again
    check_documented_copy(path, out, {k: v for k, v in printed.items() if k != "fetch"})
    with pytest.raises(UserError, match="--in-place"):
        docgen.main(["document", str(path), "--run", str(wide_run), "--write", str(path)])
    assert path.read_text() == USER_FILE
    copy = tmp_path / "copy.py"
    copy.write_text(USER_FILE)
    docgen.main(["document", str(copy), "--run", str(wide_run), "--max-new-tokens", "6",
                 "--in-place"])
    capsys.readouterr()
    assert copy.read_text() == out.read_text()


def test_an_empty_proposal_is_said_and_not_inserted(tmp_path, wide_run, capsys, monkeypatch):
    """A model that ends its answer at once (an undertrained one does) proposes nothing: the
    line says so, and the copy gets no empty docstring."""
    path, out = tmp_path / "mine.py", tmp_path / "mine_documented.py"
    path.write_text(USER_FILE)
    monkeypatch.setattr(docgen, "propose", lambda engine, item, n: "")
    docgen.main(["document", str(path), "--run", str(wide_run), "--write", str(out)])
    printed = proposals_of(capsys.readouterr().out, path)
    assert printed and all(v == NOTHING for v in printed.values())
    docs = {n.name: ast.get_docstring(n) for n in ast.walk(ast.parse(out.read_text()))
            if isinstance(n, docgen.DEFS)}
    assert docs == {"documented": "Already has one.", **{n.split(".")[-1]: None for n in printed}}


def test_document_through_a_server_gives_what_the_run_gives(tmp_path, wide_run, capsys):
    path, out = tmp_path / "mine.py", tmp_path / "via_server.py"
    path.write_text(USER_FILE)
    engine = chat.Engine(wide_run)
    srv = serve.make_server(engine, serve.ServeConfig(run_dir=str(wide_run), port=0), quiet=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_port}"
        docgen.main(["document", str(path), "--server", url, "--max-new-tokens", "6",
                     "--write", str(out)])
        by_server = proposals_of(capsys.readouterr().out, path)
    finally:
        srv.shutdown()
        srv.server_close()
    docgen.main(["document", str(path), "--run", str(wide_run), "--max-new-tokens", "6"])
    assert by_server == proposals_of(capsys.readouterr().out, path)
    check_documented_copy(path, out, {k: v for k, v in by_server.items() if k != "fetch"})
    with pytest.raises(UserError, match="no server answers there"):
        docgen.main(["document", str(path), "--server", url])


# ---------------------------------------------------------------------------------------------
# The command line and bad input
# ---------------------------------------------------------------------------------------------
def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "docgen.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_help_lists_the_commands(capsys):
    result = cli("--help")
    assert result.returncode == 0
    assert all(c in result.stdout for c in docgen.COMMANDS)
    assert "python docgen.py data" in result.stdout
    with pytest.raises(SystemExit) as stop:
        docgen.main(["data", "--help"])
    assert stop.value.code == 0 and "--test-percent" in capsys.readouterr().out


def test_bad_python_is_one_error_line_and_exit_2(tmp_path, sft_run):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(:\n    pass\n")
    result = cli("document", bad, "--run", sft_run, "--write", tmp_path / "out.py")
    assert result.returncode == 2 and result.stderr == f"error: {bad}:1: not valid Python " \
        "(invalid syntax)\n"
    assert not (tmp_path / "out.py").exists()


def error_of(capsys, *args):
    """What `python docgen.py ARGS` prints on stderr, run in this process; its status is 2."""
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: docgen.main([str(a) for a in args]))
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_each_mistake_is_named_on_one_line(tmp_path, capsys, sft_run):
    (tmp_path / "mine.py").write_text(USER_FILE)
    bad_pairs = tmp_path / "pairs"
    bad_pairs.mkdir()
    (bad_pairs / "train.jsonl").write_text('{"conversations": [{"role": "assistant", '
                                           '"content": "x"}]}\n')
    (tmp_path / "latin1.py").write_bytes(b"x = '\xe9'\n")
    for args, text in ((("document", tmp_path / "missing.py"), "missing.py: no such file"),
                       (("document", tmp_path / "latin1.py"), "latin1.py: not UTF-8 text"),
                       (("document",), "name the Python file"),
                       (("document", tmp_path / "mine.py", "--write", "x.py", "--in-place"),
                        "not both"),
                       (("evaluate", "--data", tmp_path), "train.jsonl: no such file"),
                       (("evaluate", "--data", bad_pairs), "train.jsonl:1: expected"),
                       (("data", "--run", tmp_path / "nothing"), "nothing: no such run"),
                       (("data", "--test-percent", "120"), "--test-percent"),
                       (("data", "--no-such-flag"), "unknown argument"),
                       (("nonsense",), "unknown command")):
        err = error_of(capsys, *args)
        assert err.startswith("error: ") and err.count("\n") == 1 and text in err, err
    assert (tmp_path / "mine.py").read_text() == USER_FILE


# ---------------------------------------------------------------------------------------------
# From an imported release, with LoRA (docgen.md: "From a released model with LoRA")
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def imported_smollm(corpus, tmp_path_factory):
    """A tiny Llama-family release with SmolLM2's pre-tokenizer and its real chat template
    (a default system message), imported by convert.py as a user imports one."""
    d = tmp_path_factory.mktemp("release")
    write_release(d / "rel", "llama", Tokenizer.load(corpus / "tok.json"), style="smollm",
                  template=jinja("SmolLM2-135M-Instruct"),
                  config=dict(FAMILIES["llama"], max_position_embeddings=1024))
    convert.main([str(d / "rel"), str(d / "imp")])
    return d / "imp"


def conversation_lengths(run, items):
    tok = rundir.load_run(run)[1]
    return [len(docgen.sft.render_chat(tok, docgen.messages_of(it))[0]) for it in items]


def test_data_from_an_imported_release_counts_its_tokens_and_template(tiny_stdlib, tmp_path,
                                                                      imported_smollm,
                                                                      pretrained_run):
    every = sum(build(tiny_stdlib, tmp_path / "all", imported_smollm).values(), [])
    ids = docgen.sft.render_chat(rundir.load_run(imported_smollm)[1],
                                 docgen.messages_of(every[0]))[0]
    text = rundir.load_run(imported_smollm)[1].decode(ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    ours, theirs = (conversation_lengths(r, every) for r in (imported_smollm, pretrained_run))
    limit = sorted(ours)[len(ours) // 2]
    docgen.main(map(str, ["data", "--run", imported_smollm, "--stdlib", tiny_stdlib, "--out",
                          tmp_path / "d", "--seq-len", limit - 1, "--test-percent", 50]))
    kept = [json.loads(line)["name"] for split in ("train", "test")
            for line in (tmp_path / "d" / f"{split}.jsonl").read_text().splitlines()]
    # kept: what fits in the release's tokens, its system message included; not in ours
    assert sorted(kept) == sorted(it["name"] for it, n in zip(every, ours) if n <= limit)
    assert sorted(kept) != sorted(it["name"] for it, n in zip(every, theirs) if n <= limit)
    assert f"--run {imported_smollm}" in (tmp_path / "d" / "datacard.md").read_text()


def test_lora_sft_from_an_imported_release_trains_only_adapters(tiny_stdlib, tmp_path,
                                                                imported_smollm, capsys):
    build(tiny_stdlib, tmp_path / "d", imported_smollm, test_percent=0)
    (tmp_path / "d" / "test.jsonl").write_text((tmp_path / "d" / "train.jsonl").read_text())
    out = tmp_path / "lora"
    docgen.main(map(str, ["sft", "--init", imported_smollm, "--preset", "cpu-lora", "--data",
                          tmp_path / "d" / "train.jsonl", "--out-dir", out, "--max-steps", 3,
                          "--batch-size", 2, "--eval-heldout", 2, "--save-adapter"]))
    assert "parameters train" in capsys.readouterr().out
    payload, base = rundir.read_model_file(out), rundir.read_model_file(imported_smollm)
    assert payload["lora"]["rank"] == 16 and payload["base"]["run"] == str(imported_smollm)
    # the adapter file holds A and B of each adapted layer, nothing of the base
    adapter = torch.load(out / "adapter.pt", weights_only=True)["weights"]
    assert adapter and all(k.endswith((".lora_A", ".lora_B")) for k in adapter)
    # norms and embeddings are the release's to the bit; each adapted weight moved by B A alone
    merged = lora.apply_adapter(rundir.load_run(imported_smollm)[0], out / "adapter.pt")
    changed = []
    for name, w in payload["model"].items():
        if f"{name.removesuffix('.weight')}.lora_A" not in adapter:
            assert torch.equal(w, base["model"][name]), name
        else:
            changed.append(not torch.equal(w, base["model"][name]))
        assert torch.allclose(w, merged.state_dict()[name], atol=1e-6), name
    assert changed and all(changed)
    report = docgen.evaluate(docgen.EvalConfig(run_dirs=[str(imported_smollm), str(out)],
                                               data=str(tmp_path / "d"), max_new_tokens=3,
                                               limit=3, examples=1))
    assert report["pairs"] == 3 and report["too_long_for_the_context"] == {
        str(imported_smollm): 0, str(out): 0}
    assert json.loads((out / "docgen.json").read_text())["figures"][str(out)] == \
        report["figures"][str(out)]
