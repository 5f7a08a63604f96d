"""Tests for the multiple-choice benchmarks: eval.py's scoring (batched rows against a slow
one-request-at-a-time computation, the tokenization boundary, acc/acc_norm/centred on a model
whose answers are known, k-shot and lettered prompts) and tasks.py (every layout read from a small
file, bad files, the built-in task held out of the built-in training data, contamination), the
command's benchmarks.json; and, with lm_eval installed, the same figures as the harness's `hf`
model on an exported run."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import data
import eval as evaluation
from conftest import cli_in_process
import gpt
import rundir
import minimind
import sft
import tasks
from bpe import Tokenizer, UserError

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------
def slow_logprob(model, ctx, cont):
    """The definition, one request at a time: the whole sequence (cut on the left to the model's
    context), full logits, log-softmax, and the continuation's tokens read one by one."""
    seq = (list(ctx) + list(cont))[-(model.context_length + 1):]
    cont = cont[-(len(seq) - 1):]  # what of the continuation the context can still predict
    with torch.no_grad():
        logits = model(torch.tensor(seq[:-1])[None])[0][0].double()
    lp = F.log_softmax(logits, dim=-1)
    n = len(seq) - 1
    return sum(lp[n - len(cont) + j, t].item() for j, t in enumerate(cont))


@pytest.mark.parametrize("arch", ["minimind", "gpt"])
def test_batched_scoring_equals_one_request_at_a_time(arch):
    torch.manual_seed(0)
    if arch == "minimind":
        model = minimind.MiniMind(minimind.MiniMindConfig(dim=32, n_layers=2, n_heads=2,
                                                          n_kv_heads=1, vocab_size=50,
                                                          max_seq_len=24)).eval()
    else:
        model = gpt.GPT(gpt.GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=24,
                                      vocab_size=50)).eval()
    rng = np.random.default_rng(0)
    requests = [(rng.integers(0, 50, rng.integers(1, 20)).tolist(),
                 rng.integers(0, 50, rng.integers(1, 6)).tolist()) for _ in range(30)]
    requests.append((list(range(40)), [1, 2, 3]))  # longer than the context: cut on the left
    requests.append(([5], list(range(30))))  # a continuation longer than the context
    ctx = requests[0][0]
    requests += [(ctx, [7]), (ctx, [9]), (ctx + [7], [8])]  # rows shared between requests
    head = model.lm_head
    fast = evaluation.continuation_logprobs(model, requests, "cpu", batch_size=4)
    assert model.lm_head is head  # the head is given back
    slow = [slow_logprob(model, c, a) for c, a in requests]
    assert fast == pytest.approx(slow, abs=1e-4)


def test_the_tokenization_boundary_is_the_harnesses(corpus):
    tok = Tokenizer.load(corpus / "tok.json")
    enc = lambda t: tok.encode(t, allowed_special="none")
    ctx, cont = evaluation.encode_pair(tok, "The value is ", "returned")
    # the trailing space moves to the continuation: " returned" as the model reads it in text
    assert ctx == enc("The value is")
    assert ctx + cont == enc("The value is returned")
    # a merge across the boundary: the whole text's tokens, cut at the context's own length
    ctx, cont = evaluation.encode_pair(tok, "retur", "ned")
    assert ctx == enc("retur") and ctx + cont == enc("returned")[:len(ctx)] + cont
    assert cont == enc("returned")[len(enc("retur")):]
    eot = tok.special_tokens["<|endoftext|>"]
    assert evaluation.encode_pair(tok, "", "hello") == ([eot], enc("hello"))


class BigramModel(torch.nn.Module):
    """A 'model' whose next-token distribution depends only on the current token, given by a
    table: log p(b | a) = table[a, b]. lm_head is the identity, so eval.py's head-swap applies."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.context_length = 64
        self.lm_head = torch.nn.Identity()

    def forward(self, idx):
        return self.lm_head(self.table[idx]), None


class CharTokenizer:
    special_tokens = {"<|endoftext|>": 0}

    def encode(self, text, allowed_special="none"):
        return [ord(c) - 96 for c in text]  # a=1 .. z=26; the space would be -64: not used


def test_acc_acc_norm_and_centred_on_a_model_whose_answers_are_known():
    """After 'q': 'b' has probability .3, 'c' .5; after 'b', 'b' again .6. 'bbbbbb' has log p =
    ln .3 + 5 ln .6 = -3.76 against 'c's ln .5 = -0.69: the raw sum prefers the short 'c', but per
    character 'bbbbbb' wins (-0.63 against -0.69)."""
    p = torch.full((27, 27), 1 / 27)
    p[17] = 0.2 / 25
    p[17, 2], p[17, 3] = 0.3, 0.5  # q=17, b=2, c=3
    p[2] = 0.4 / 26
    p[2, 2] = 0.6
    model = BigramModel(torch.log(p))
    items = [{"context": "q", "choices": ["bbbbbb", "c"], "label": 0, "delimiter": ""},
             {"context": "q", "choices": ["c", "bbbbbb"], "label": 0, "delimiter": ""},
             {"context": "q", "choices": ["b", "c", "z"], "label": 1, "delimiter": ""}]
    per_item = tasks.prompts(items, "cloze")
    requests = [evaluation.encode_pair(CharTokenizer(), c, a) for ch in per_item for c, a, _ in ch]
    flat = evaluation.continuation_logprobs(model, requests, "cpu")
    assert flat[0] == pytest.approx(math.log(0.3) + 5 * math.log(0.6), abs=1e-5)
    assert flat[1] == pytest.approx(math.log(0.5), abs=1e-5)
    lls = [flat[0:2], flat[2:4], flat[4:7]]
    f = evaluation.choice_figures(items, lls, [[len(c) for c in it["choices"]] for it in items],
                                  "acc_norm")
    # acc: wrong, right, right; acc_norm: right, wrong, right ('c' beats 'b' and 'z' either way)
    assert f["acc"] == pytest.approx(2 / 3) and f["acc_norm"] == pytest.approx(2 / 3)
    chance = (1 / 2 + 1 / 2 + 1 / 3) / 3
    assert f["chance"] == pytest.approx(chance)
    assert f["centred"] == pytest.approx((2 / 3 - chance) / (1 - chance))
    assert f["acc_stderr"] == pytest.approx(np.std([0, 1, 1], ddof=1) / math.sqrt(3))
    swapped = evaluation.choice_figures(items[:1], lls[:1], [[6, 1]], "acc")
    assert (swapped["acc"], swapped["acc_norm"], swapped["centred"]) == (0, 1, -1)


def test_k_shot_prompts_are_fixed_by_the_seed_and_never_show_the_item_itself():
    items = [{"context": f"Q{i}:", "choices": [f"a{i}", f"b{i}"], "label": i % 2}
             for i in range(6)]
    one = tasks.prompts(items, "cloze", shots=2, seed=7)
    assert one == tasks.prompts(items, "cloze", shots=2, seed=7)
    assert one != tasks.prompts(items, "cloze", shots=2, seed=8)
    for i, choices in enumerate(one):
        context, continuation, length = choices[1]
        assert continuation == f" b{i}" and length == len(f"b{i}")
        shots = context.split("\n\n")
        assert len(shots) == 3 and shots[-1] == f"Q{i}:" and f"Q{i}:" not in shots[:-1]
        for shot in shots[:-1]:  # each solved item is its prompt and its right answer
            j = int(shot[1])
            assert shot == f"Q{j}: " + items[j]["choices"][items[j]["label"]]


def test_the_lettered_format_is_mmlus():
    item = tasks.mmlu({"question": " What is 2+2? ", "subject": "elementary_mathematics",
                       "choices": ["3", "4", "5", "6"], "answer": 1}, "f:1")
    choices = tasks.prompts([item], "letters")[0]
    assert choices[1] == ("The following are multiple choice questions (with answers) about "
                          "elementary mathematics.\n\nWhat is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\n"
                          "Answer:", " B", 1)


# ---------------------------------------------------------------------------------------------
# The task files
# ---------------------------------------------------------------------------------------------
LAYOUT_LINES = {
    "hellaswag": ({"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man "
                   "writes over the snow.", "ctx_b": "then", "endings": ["Scrape [title] he stops.",
                                                                    "b", "c", "d"], "label": "3"},
                  "Removing ice from car: Then, the man writes over the snow. Then",
                  ["Scrape. he stops.", "b", "c", "d"], 3),
    "arc_easy": ({"id": "x", "question": "Which is a gas?", "choices": {
        "text": ["ice", "steam"], "label": ["A", "B"]}, "answerKey": "B"},
        "Question: Which is a gas?\nAnswer:", ["ice", "steam"], 1),
    "arc_challenge": ({"id": "y", "question": {"stem": "Pick one.", "choices": [
        {"text": "x", "label": "1"}, {"text": "y", "label": "2"}, {"text": "z", "label": "3"}]},
        "answerKey": "3"}, "Question: Pick one.\nAnswer:", ["x", "y", "z"], 2),
    "piqa": ({"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0},
             "Question: Open a jar\nAnswer:", ["twist the lid", "eat the lid"], 0),
    "winogrande": ({"sentence": "The cup fell off the table because _ was round.",
                    "option1": "the cup", "option2": "the table", "answer": "1"},
                   "The cup fell off the table because ", ["was round.", "was round."], 0),
    "mmlu": ({"question": "2+2?", "subject": "math", "choices": ["1", "4", "5", "6"],
              "answer": "B"}, "Question: 2+2?\nAnswer:", ["1", "4", "5", "6"], 1),
    "openbookqa": ({"id": "7", "question_stem": "The sun is", "choices": {
        "text": ["a star", "a planet"], "label": ["A", "B"]}, "answerKey": "A"},
        "The sun is", ["a star", "a planet"], 0),
    "boolq": ({"question": "is water wet", "passage": "Water is a liquid.", "answer": True},
              "Water is a liquid.\nQuestion: is water wet?\nAnswer:", ["no", "yes"], 1),
    "generic": ({"context": "Capital of France:", "choices": ["Paris", "Rome"], "label": 0},
                "Capital of France:", ["Paris", "Rome"], 0),
}


@pytest.mark.parametrize("layout", LAYOUT_LINES)
def test_every_layout_is_read_as_its_dataset_publishes_it(tmp_path, layout):
    obj, context, choices, label = LAYOUT_LINES[layout]
    path = tmp_path / f"{layout}.jsonl"
    path.write_text(json.dumps(obj) + "\n\n" + json.dumps(obj) + "\n")
    items = tasks.read_task(layout, path)
    assert len(items) == 2
    assert (items[0]["context"], items[0]["choices"], items[0]["label"]) == (context, choices,
                                                                             label)
    if layout == "winogrande":  # each option completes the sentence up to the blank
        assert items[0]["contexts"] == ["The cup fell off the table because the cup",
                                        "The cup fell off the table because the table"]


BAD_LINES = {
    "hellaswag": {"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "endings": ["x", "y"],
                  "label": "5"},
    "arc_easy": {"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]},
                 "answerKey": "E"},
    "piqa": {"goal": "g", "sol1": "a", "label": 0},
    "winogrande": {"sentence": "no blank here", "option1": "a", "option2": "b", "answer": "1"},
    "mmlu": {"question": "q", "choices": ["a", 3], "answer": 0},
    "boolq": {"question": "q", "passage": "p", "label": 2},
    "generic": {"context": "c", "choices": ["only one"], "label": 0},
}


@pytest.mark.parametrize("layout", BAD_LINES)
def test_a_bad_line_names_the_file_and_line(tmp_path, layout):
    good = LAYOUT_LINES[layout][0]
    path = tmp_path / "task.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(BAD_LINES[layout]) + "\n")
    with pytest.raises(UserError, match=rf"^{path}:2: "):
        tasks.read_task(layout, path)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(UserError, match=rf"^{path}:2: not valid JSON"):
        tasks.read_task(layout, path)


def test_the_tasks_flag(tmp_path):
    assert tasks.parse_tasks("pydoc, arc_easy=a/ARC.jsonl,generic=b/mine.jsonl") == [
        ("pydoc", "pydoc", None), ("arc_easy", "arc_easy", "a/ARC.jsonl"),
        ("mine", "generic", "b/mine.jsonl")]
    assert tasks.parse_tasks("none") == []
    for bad in ("hellaswag", "squad=x.jsonl", "arc_easy=a.jsonl,arc_easy=b.jsonl"):
        with pytest.raises(UserError, match="^--tasks"):
            tasks.parse_tasks(bad)


# ---------------------------------------------------------------------------------------------
# The built-in task and contamination
# ---------------------------------------------------------------------------------------------
def test_the_built_in_task_is_held_out_of_every_built_in_training_set():
    items = tasks.pydoc_items()
    assert len(items) > 500 and all(len(it["choices"]) == 4 for it in items)
    assert {it["label"] for it in items} == {0, 1, 2, 3}
    corpus = "\n\n".join(data.python_docs_documents())
    trained = {m["content"] for it in sft.python_docs_conversations()[0] for m in it["messages"]}
    for it in items:
        right = it["choices"][it["label"]]
        assert right not in corpus and right not in trained
        assert it["context"].count(".") >= 2  # a submodule's name: pkg.sub.name
        assert len(set(it["choices"])) == 4


def test_contamination_finds_13_grams_and_short_items_whole():
    doc = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    items = [{"context": "One, two; three four five six", "choices": [
                 "seven eight nine ten eleven twelve thirteen"], "label": 0},     # 13 in a row
             {"context": "two three four five six seven eight nine ten eleven", "choices": [
                 "twelve", "fourteen thirteen"], "label": 1},  # 12 in a row, then out of order
             {"context": "five six", "choices": ["x", "seven"], "label": 1},      # short, whole
             {"context": "five", "choices": ["seven"], "label": 0}]               # short, not
    assert tasks.contamination(items, [doc]) == {0, 2}
    # the check run on the corpus's own entries finds them all
    entries = data.python_docs_entries()[:40]
    copies = [{"context": n, "choices": [d], "label": 0} for n, d in entries]
    assert tasks.contamination(copies, data.python_docs_documents()) == set(range(40))


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
def test_eval_writes_benchmarks_json_and_table_rows(pretrained_run, corpus, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(pretrained_run, run)
    mine = tmp_path / "mine.jsonl"
    mine.write_text("\n".join(json.dumps({"context": f"Number {i}:", "choices": ["yes", "no"],
                                          "label": i % 2}) for i in range(10)) + "\n")
    r = evaluation.main([str(run), "--data", str(corpus / "text.txt"), "--max-tokens", "256",
                         "--max-new-tokens", "4", "--tasks", f"pydoc,generic={mine}",
                         "--limit", "40", "--num-fewshot", "1"])[0]
    assert set(r["benchmarks"]) == {"pydoc", "mine"}
    assert r["benchmarks"]["pydoc"]["items"] == 40 and r["benchmarks"]["mine"]["items"] == 10
    assert r["benchmarks"]["mine"]["contaminated"] == 0
    out = json.loads((run / "benchmarks.json").read_text())
    assert out["n-shot"] == {"pydoc": 1, "mine": 1}
    assert out["n-samples"]["pydoc"] == {"original": 40, "effective": 40}
    res = out["results"]["pydoc"]
    assert res["acc,none"] == r["benchmarks"]["pydoc"]["acc"] and res["chance"] == 0.25
    assert 0 <= res["acc_norm,none"] <= 1 and "acc_norm_stderr,none" in res


def test_cli_bad_task_file_is_one_error_line(tmp_path, pretrained_run, corpus, capsys):
    bad = tmp_path / "arc.jsonl"
    bad.write_text(json.dumps(LAYOUT_LINES["arc_easy"][0]) + "\n" + '{"question": 3}\n')
    for spec, message in ((f"arc_easy={bad}", f"error: {bad}:2: "),
                          ("squad=x.jsonl", "error: --tasks")):
        status, _, err = cli_in_process(evaluation.main, [pretrained_run, "--data", corpus / "text.txt", "--no-report",
                                                          "--tasks", spec, "--max-new-tokens", "2",
                                                          "--max-tokens", "128"], capsys)
        assert status == 2 and err.startswith(message) and err.count("\n") == 1, err


# ---------------------------------------------------------------------------------------------
# The reference: lm-evaluation-harness's `hf` model on the same local file
# ---------------------------------------------------------------------------------------------
def test_acc_and_acc_norm_equal_the_harnesses_hf_model(pretrained_run, corpus, tmp_path):
    """A generic file (a task config of our own) and an ARC file (the harness's own arc_easy
    config, pointed at the local file), both scored by the harness's `hf` model on our run
    exported to transformers and by eval.py: the same log-likelihood for every choice, the same
    acc and acc_norm."""
    lm_eval = pytest.importorskip("lm_eval")
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # what the harness's hf model imports
    import convert
    from lm_eval.tasks import TaskManager
    convert.main([str(pretrained_run), str(tmp_path / "hf"), "--to", "hf"])
    text = (corpus / "text.txt").read_text()
    rng = np.random.default_rng(0)
    cloze, arc = [], []
    for i in range(24):  # items cut from the corpus: a context and four endings
        starts = rng.integers(0, len(text) - 200, 5)
        endings = [text[s:s + rng.integers(5, 40)] for s in starts[1:]]
        cloze.append({"context": text[starts[0]:starts[0] + 60], "choices": endings,
                      "label": int(rng.integers(0, 4))})
        arc.append({"id": str(i), "question": text[starts[0]:starts[0] + 50].strip(),
                    "choices": {"text": endings, "label": list("ABCD")},
                    "answerKey": "ABCD"[i % 4]})
    folder = tmp_path / "tasks"
    folder.mkdir()
    data_files = {}
    for name, lines in (("cloze", cloze), ("arc_easy", arc)):
        data_files[name] = tmp_path / f"{name}.jsonl"
        data_files[name].write_text("\n".join(map(json.dumps, lines)) + "\n")
    local = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}\ntest_split: test\n"
    (folder / "cloze.yaml").write_text(
        "task: slm_cloze\n" + local.format(data_files["cloze"]) + "output_type: multiple_choice\n"
        "doc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    arc_yaml = Path(lm_eval.__file__).parent / "tasks" / "arc" / "arc_easy.yaml"
    (folder / "arc.yaml").write_text(
        f"include: {arc_yaml}\ntask: slm_arc\ntag: []\ndataset_name: null\n"
        "training_split: null\nvalidation_split: null\n" + local.format(data_files["arc_easy"]))
    theirs = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tmp_path / 'hf'},dtype=float32",
        tasks=["slm_cloze", "slm_arc"], task_manager=TaskManager(include_path=str(folder)),
        batch_size=4, device="cpu", log_samples=True)
    model, tok, _ = rundir.load_run(pretrained_run)
    for ours_name, layout, name in (("cloze", "generic", "slm_cloze"),
                                    ("arc_easy", "arc_easy", "slm_arc")):
        items = tasks.read_task(layout, data_files[ours_name])
        per_item = tasks.prompts(items, "cloze")
        requests = [evaluation.encode_pair(tok, c, a) for ch in per_item for c, a, _ in ch]
        lls = evaluation.continuation_logprobs(model, requests, "cpu").reshape(len(items), 4)
        samples = sorted(theirs["samples"][name], key=lambda x: x["doc_id"])
        their_lls = np.array([[r[0] for r in s["filtered_resps"]] for s in samples], dtype=float)
        assert lls == pytest.approx(their_lls, abs=2e-3)
        mine = evaluation.choice_figures(items, list(lls), [[len(c) for c in it["choices"]]
                                                            for it in items], "acc_norm")
        res = theirs["results"][name]
        assert mine["acc"] == pytest.approx(res["acc,none"])
        assert mine["acc_norm"] == pytest.approx(res["acc_norm,none"])
    ours = evaluation.main([str(pretrained_run), "--data", str(corpus / "text.txt"),
                            "--max-tokens", "128", "--max-new-tokens", "2", "--no-report",
                            "--tasks", f"generic={data_files['cloze']}",
                            "--contamination", "none"])[0]["benchmarks"]["cloze"]
    assert ours["acc_norm"] == pytest.approx(theirs["results"]["slm_cloze"]["acc_norm,none"])
