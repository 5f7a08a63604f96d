"""tasks.py: the multiple-choice tasks eval.py scores (a companion file of chapter 7): readers for
the task files people download (HellaSwag, ARC Easy/Challenge, PIQA, Winogrande, MMLU, OpenBookQA,
BoolQ, as those datasets publish them in JSON lines) and for a generic layout of your own, the
built-in offline task `pydoc`, and the contamination check (13-gram overlap with a training text).

    import tasks
    items = tasks.read_task("arc_easy", "ARC-Easy-Test.jsonl")   # [item, ...]
    items = tasks.pydoc_items()                                  # the built-in task, offline
    tasks.contamination(items, documents)                        # -> indices of dirty items

An item is a dict: "context" (the text before the answer), "choices" (the answer texts),
"label" (the index of the right one), and optionally "delimiter" (what joins context and choice,
" " unless the layout says otherwise, as the harness's target_delimiter), "question" (what the
lettered A/B/C/D format lists the choices under), "contexts" (one context per choice: Winogrande
puts each option into the sentence and scores the same ending after it) and "description" (a line
before the prompt: MMLU's subject). prompts() turns items into the
texts eval.py scores.

Imported by eval.py. Imports data.py (the built-in corpus, which the built-in task is kept out of)
and rundir.py (read_jsonl, UserError).
"""
import contextlib
import functools
import importlib
import inspect
import io
import pkgutil
import random
import re
import sys
import time
import warnings
from pathlib import Path

import data
from rundir import UserError, read_jsonl


# ---------------------------------------------------------------------------------------------
# 1. The published layouts, one reader each: obj (one JSON line) -> an item
# ---------------------------------------------------------------------------------------------
KINDS = {str: "string", list: "list", dict: "object"}


def field(obj, key, kind, where):
    """obj[key], which must be of this kind; otherwise the UserError naming FILE:LINE."""
    if not isinstance(obj, dict) or not isinstance(obj.get(key), kind):
        raise UserError(f'{where}: expected an object with a "{key}" {KINDS[kind]}')
    return obj[key]


def strings(values, key, where, at_least=2):
    if len(values) < at_least or not all(isinstance(v, str) for v in values):
        raise UserError(f'{where}: "{key}" must be a list of at least {at_least} strings')
    return values


def index(value, n, key, where, letters=""):
    """A label as the datasets write it (0, "0", "A", "1" for option1 ...) -> 0 .. n-1."""
    if isinstance(value, str) and value.strip() in letters:
        value = letters.index(value.strip())
    elif isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
        raise UserError(f'{where}: "{key}" must pick one of the {n} choices, not {value!r}')
    return value


def hellaswag_text(text):
    """The clean-up the harness applies to HellaSwag (WikiHow's "[title]" and other markers)."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def hellaswag(obj, where):
    """Rowan/hellaswag: activity_label, ctx_a, ctx_b, endings, label ("0".."3")."""
    ctx = field(obj, "ctx_a", str, where) + " " + field(obj, "ctx_b", str, where).capitalize()
    endings = strings(field(obj, "endings", list, where), "endings", where)
    return {"context": hellaswag_text(field(obj, "activity_label", str, where) + ": " + ctx),
            "choices": [hellaswag_text(e) for e in endings],
            "label": index(obj.get("label"), len(endings), "label", where)}


def labelled_choices(obj, where):
    """ARC and OpenBookQA: (question, choice texts, label) from either the Hugging Face layout
    (question, choices {text: [...], label: [...]}, answerKey) or the original one
    (question {stem, choices: [{text, label}, ...]}, answerKey)."""
    question, choices = obj.get("question") if isinstance(obj, dict) else None, None
    if isinstance(question, dict):  # the original AI2 release
        choices = field(question, "choices", list, where)
        if not all(isinstance(c, dict) for c in choices):
            raise UserError(f'{where}: "choices" must be objects with "text" and "label"')
        texts, labels = [c.get("text") for c in choices], [c.get("label") for c in choices]
        question = field(question, "stem", str, where)
    else:
        question = obj.get("question_stem", question) if isinstance(obj, dict) else None
        if not isinstance(question, str):
            raise UserError(f'{where}: expected a "question" (or "question_stem") string')
        choices = field(obj, "choices", dict, where)
        texts, labels = choices.get("text"), choices.get("label")
    texts = strings(texts if isinstance(texts, list) else [], "choices.text", where)
    key = field(obj, "answerKey", str, where).strip()
    if not isinstance(labels, list) or key not in labels or len(labels) != len(texts):
        raise UserError(f'{where}: "answerKey" {key!r} is not one of the choice labels')
    return question, texts, labels.index(key)


def arc(obj, where):
    question, texts, label = labelled_choices(obj, where)
    return {"context": f"Question: {question}\nAnswer:", "choices": texts, "label": label,
            "question": f"Question: {question}"}


def openbookqa(obj, where):
    question, texts, label = labelled_choices(obj, where)
    return {"context": question, "choices": texts, "label": label}


def piqa(obj, where):
    """goal, sol1, sol2, label (0 or 1)."""
    goal = field(obj, "goal", str, where)
    sols = [field(obj, "sol1", str, where), field(obj, "sol2", str, where)]
    return {"context": f"Question: {goal}\nAnswer:", "choices": sols,
            "label": index(obj.get("label"), 2, "label", where), "question": f"Question: {goal}"}


def winogrande(obj, where):
    """sentence with one "_", option1, option2, answer ("1" or "2"). As the harness scores it:
    each option is put into the sentence up to the blank (two contexts), and the same rest of the
    sentence is scored after each; the option that makes the ending likelier wins."""
    sentence = field(obj, "sentence", str, where)
    if "_" not in sentence:
        raise UserError(f'{where}: "sentence" has no "_" to fill in')
    cut = sentence.index("_")
    options = [field(obj, "option1", str, where), field(obj, "option2", str, where)]
    if obj.get("answer") not in ("1", "2", 1, 2):
        raise UserError(f'{where}: "answer" must be "1" or "2", not {obj.get("answer")!r}')
    rest = sentence[cut + 1:].strip()
    return {"context": sentence[:cut], "contexts": [sentence[:cut] + o for o in options],
            "choices": [rest, rest], "label": int(obj["answer"]) - 1}


def mmlu(obj, where):
    """cais/mmlu: question, subject, choices (four), answer (0..3, or "A".."D")."""
    question = field(obj, "question", str, where).strip()
    choices = strings(field(obj, "choices", list, where), "choices", where)
    subject = obj.get("subject") if isinstance(obj.get("subject"), str) else ""
    return {"context": f"Question: {question}\nAnswer:", "choices": choices, "question": question,
            "label": index(obj.get("answer"), len(choices), "answer", where, "ABCDEFGHIJ"),
            "description": (f"The following are multiple choice questions (with answers) about "
                            f"{subject.replace('_', ' ')}.\n\n" if subject else "")}


def boolq(obj, where):
    """passage, question, and label (0/1, super_glue) or answer (false/true, google/boolq)."""
    passage, question = field(obj, "passage", str, where), field(obj, "question", str, where)
    value = obj.get("label", obj.get("answer"))
    return {"context": f"{passage}\nQuestion: {question}?\nAnswer:", "choices": ["no", "yes"],
            "label": int(value) if isinstance(value, bool) else index(value, 2, "label", where)}


def generic(obj, where):
    """Your own task: {"context": "...", "choices": ["...", ...], "label": 0}."""
    choices = strings(field(obj, "choices", list, where), "choices", where)
    return {"context": field(obj, "context", str, where), "choices": choices,
            "label": index(obj.get("label"), len(choices), "label", where)}


# layout -> (reader, the format the harness scores it in, the figure it reports first)
LAYOUTS = {"hellaswag": (hellaswag, "cloze", "acc_norm"), "arc_easy": (arc, "cloze", "acc_norm"),
           "arc_challenge": (arc, "cloze", "acc_norm"), "piqa": (piqa, "cloze", "acc_norm"),
           "winogrande": (winogrande, "cloze", "acc"), "mmlu": (mmlu, "letters", "acc"),
           "openbookqa": (openbookqa, "cloze", "acc_norm"), "boolq": (boolq, "cloze", "acc"),
           "generic": (generic, "cloze", "acc_norm")}
BUILTIN = {"pydoc": ("cloze", "acc_norm")}


def read_task(layout, path):
    """The items of one task file in a known layout, or the UserError naming FILE:LINE."""
    return read_jsonl(path, LAYOUTS[layout][0], what="items",
                      hint=f"download the {layout} file first, or use --tasks pydoc")


def parse_tasks(spec):
    """--tasks "pydoc,arc_easy=ARC-Easy.jsonl,generic=mine.jsonl" -> [(name, layout, path)].
    A standard layout keeps its name; a generic file is named after its file."""
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if part == "none":
            continue
        layout, _, path = part.partition("=")
        if layout in BUILTIN and not path:
            out.append((layout, layout, None))
        elif layout in LAYOUTS and path:
            out.append((Path(path).stem if layout == "generic" else layout, layout, path))
        else:
            raise UserError(f"--tasks: {part!r} is not pydoc or LAYOUT=FILE with LAYOUT one of "
                            f"{', '.join(LAYOUTS)}")
    names = [name for name, _, _ in out]
    if len(set(names)) != len(names):
        raise UserError(f"--tasks: a task is named twice ({', '.join(names)})")
    return out


def load_tasks(spec, limit=0, task_format="auto", against="data", data_name="python-docs"):
    """[(name, layout, items, format, headline metric, contaminated item indices)] for --tasks.
    format "auto" is the harness's own for the layout; against: the training text the items are
    checked against ("data": --data's, data_name; a file or folder; "none": no check)."""
    out = []
    for name, layout, path in parse_tasks(spec):
        items = pydoc_items() if path is None else read_task(layout, path)
        style, headline = BUILTIN[layout] if path is None else LAYOUTS[layout][1:]
        out.append([name, layout, items[:limit] if limit else items,
                    style if task_format == "auto" else task_format, headline, None])
    if out and against != "none":
        documents = list(data.resolve_data(data_name if against == "data" else against)[0]())
        for task in out:
            task[5] = sorted(contamination(task[2], documents))
    return out


def results_file(run, figures, batch_size, against, seed):
    """One run's {task: figures} in the layout of lm-evaluation-harness's results file
    ("acc,none", "n-shot", "n-samples" ...), with the chance level, centred figure and
    contamination count beside them."""
    keys = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "centred")
    return {"results": {t: {"alias": t, **{f"{k},none": f[k] for k in keys},
                            "chance": f["chance"], "contaminated": f["contaminated"]}
                        for t, f in figures.items()},
            "n-shot": {t: f["num_fewshot"] for t, f in figures.items()},
            "n-samples": {t: {"original": f["items"], "effective": f["items"]}
                          for t, f in figures.items()},
            "configs": {t: {"layout": f["layout"], "format": f["format"], "metric": f["metric"],
                            "fewshot_seed": seed} for t, f in figures.items()},
            "config": {"model": "slm", "model_args": str(run), "batch_size": batch_size,
                       "contamination": against},
            "date": time.time()}


LETTERS = "ABCDEFGHIJ"


def prompts(items, style, shots=0, seed=1234):
    """Each item as [(context, continuation, text length)] per choice.

    cloze: the choice's own text after the context ("Question: ...\nAnswer:" + " Paris").
    letters: the choices listed under the question as "A. ...", scored as the one-token answers
    " A", " B" ...: what MMLU's harness task does; a model must know the letters' convention, so
    small models sit at chance there long after their cloze figure rises.
    shots: k solved items first (prompt + right answer, blank lines between), drawn with a fixed
    seed from the other items, so every run and every model sees the same prompts."""
    rng, out = random.Random(seed), []

    def render(item):
        n, delim = len(item["choices"]), item.get("delimiter", " ")
        if style == "letters" and "contexts" not in item:
            listed = "".join(f"\n{L}. {c}" for L, c in zip(LETTERS, item["choices"]))
            body = item.get("question", item["context"]) + listed + "\nAnswer:"
            return [(body, " " + L, 1) for L in LETTERS[:n]]
        contexts = item.get("contexts") or [item["context"]] * n
        return [(c, delim + ch, len(ch)) for c, ch in zip(contexts, item["choices"])]

    for i, item in enumerate(items):
        picked = [j for j in rng.sample(range(len(items)), min(shots + 1, len(items))) if j != i]
        solved = [render(items[j])[items[j]["label"]] for j in picked[:shots]]
        prefix = item.get("description", "") + "".join(c + a + "\n\n" for c, a, _ in solved)
        out.append([(prefix + c, a, n) for c, a, n in render(item)])
    return out


# ---------------------------------------------------------------------------------------------
# 2. The built-in task: which of four sentences documents this standard-library name?
# ---------------------------------------------------------------------------------------------
# data.py's corpus reads the top-level modules (json, asyncio, email ...) and only the objects they
# define themselves. What the submodules define (json.decoder.JSONDecoder, asyncio.tasks.sleep,
# email.utils.parseaddr ...) never enters it, nor sft.py's conversations or dpo.py's pairs (built
# from the corpus's entries): a held-out set that every Python ships.
@functools.lru_cache(maxsize=1)
def submodule_entries():
    """[(qualified name, docstring)] of the public classes, functions and methods defined in the
    standard library's submodules, in a fixed (sorted) order."""
    entries = []
    quiet = (contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()))
    with warnings.catch_warnings(), quiet[0], quiet[1]:
        warnings.simplefilter("ignore")  # deprecated modules say so on import
        for top in sorted(n for n in sys.stdlib_module_names
                          if not n.startswith("_") and n not in data._SKIP_MODULES):
            try:
                package = importlib.import_module(top)
                found = list(pkgutil.walk_packages(getattr(package, "__path__", []), top + "."))
            except BaseException:  # absent on this platform, or fails to import: skip it
                continue
            for sub in sorted(info.name for info in found):
                if any(p.startswith("_") or p in ("test", "tests") for p in sub.split(".")):
                    continue
                try:
                    module = importlib.import_module(sub)
                except BaseException:
                    continue
                entries += documented(module, sub)
    return entries


def documented(module, name):
    out = []
    for attr in sorted(vars(module)):
        obj = vars(module)[attr]
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        members = [(f"{name}.{attr}", obj)] + ([(f"{name}.{attr}.{m}", v) for m, v in
                                                sorted(vars(obj).items())
                                                if not m.startswith("_") and callable(v)]
                                               if inspect.isclass(obj) else [])
        out += [(n, inspect.cleandoc(o.__doc__)) for n, o in members
                if isinstance(getattr(o, "__doc__", None), str) and o.__doc__.strip()]
    return out


def first_sentence(doc):
    """The docstring's first sentence, when it is a plain line of 12 to 200 characters."""
    sentence = re.split(r"(?<=[.!?])\s", " ".join(doc.split("\n\n")[0].split()))[0]
    return sentence if 12 <= len(sentence) <= 200 and sentence[0].isalpha() else None


@functools.lru_cache(maxsize=4)
def pydoc_items(n_choices=4, seed=0):
    """The built-in task: context = a submodule's qualified name, choices = the first sentences of
    n_choices docstrings (the right one and others from the same pool, shuffled with a fixed seed),
    joined by a blank line as the corpus writes "name\\n\\ndocstring". A sentence that occurs
    twice, occurs in the built-in corpus, or shares a 13-gram with it, is dropped first."""
    pool, seen = [], set()
    for name, doc in submodule_entries():
        sentence = first_sentence(doc)
        if sentence and sentence not in seen:
            seen.add(sentence)
            pool.append((name, sentence))
    corpus = data.python_docs_documents()
    dirty = contamination([{"context": "", "choices": [s], "label": 0} for _, s in pool], corpus)
    text = "\n\n".join(corpus)
    pool = [(n, s) for i, (n, s) in enumerate(pool) if i not in dirty and s not in text]
    rng, items = random.Random(seed), []
    for i, (name, sentence) in enumerate(pool):
        others = rng.sample([s for j, (_, s) in enumerate(pool) if j != i], n_choices - 1)
        label = rng.randrange(n_choices)
        items.append({"context": name, "choices": others[:label] + [sentence] + others[label:],
                      "label": label, "delimiter": "\n\n"})
    return items


# ---------------------------------------------------------------------------------------------
# 3. Contamination: does a benchmark item occur in the training text?
# ---------------------------------------------------------------------------------------------
def words(text):
    """Lower-cased runs of letters and digits: the text as the overlap check compares it, so that
    punctuation and spacing do not hide a copy."""
    return re.findall(r"\w+", text.lower())


def item_text(item):
    """What would be memorised: the context (the right choice's own, for Winogrande) and the
    right choice."""
    contexts = item.get("contexts") or [item["context"]] * len(item["choices"])
    return contexts[item["label"]] + " " + item["choices"][item["label"]]


def contamination(items, documents, n=13):
    """Indices of the items that share an n-gram of words with any document, as GPT-3's paper
    checked its benchmarks (n = 13): a run of 13 words in a row is very unlikely to occur in two
    texts by chance, so a shared one means the item (or its source) was in the training text.
    An item shorter than n words counts when all of it occurs. The items' n-grams are collected
    first (small), then the documents stream past once, so a corpus of any size fits."""
    wanted = {}
    for i, item in enumerate(items):
        w = words(item_text(item))
        for gram in ({tuple(w[j:j + n]) for j in range(len(w) - n + 1)} if len(w) >= n
                     else {tuple(w)} if w else set()):
            wanted.setdefault(gram, set()).add(i)
    sizes, dirty = sorted({len(g) for g in wanted}), set()
    for doc in documents:
        w = words(doc)
        for size in sizes:
            for j in range(len(w) - size + 1):
                hit = wanted.get(tuple(w[j:j + size]))
                if hit:
                    dirty |= hit
    return dirty
