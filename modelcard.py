"""modelcard.py: the model card written with every export (a companion of convert.py, chapters 11
and 12): what the model is, its intended use, its training data, its evaluation results, its
safety figures and its limitations, in markdown.

    card = modelcard.model_card("out/dpo", payload, "Qwen3ForCausalLM", "hf")   # -> README.md
    modelcard.write_beside("out/dpo", "out/dpo.gguf", "llama")                  # -> out/dpo.md

What it reads from the run directory: model.pt's stage, step and source; config.json (the data
and the run it started from); log.jsonl (the held-out figures at the end of training); and
readiness.md, if eval.py has been run on it (its checks, its figures, and the safety rows that
`eval.py RUN --safety builtin` adds). A figure that was never measured is said to be missing,
not left out. It shares nothing with datacard.py, prepare.py's card about a corpus: that one
counts documents, this one reads a run directory.

Imported by convert.py. Imports rundir.py (the log, the model file, atomic writes).
"""
import json
from pathlib import Path

import rundir

USES = {
    "pretrain": "a base model: it continues text. Not a chat assistant, not instruction-tuned; a "
                "starting point for fine-tuning (sft.py) and for study.",
    "sft": "a small chat model fine-tuned on conversations, for study, teaching and experiments: "
           "answering short questions in the style of its training data.",
    "dpo": "a small chat model fine-tuned on conversations and aligned on preference pairs, for "
           "study, teaching and experiments.",
}
LIMITATIONS = [
    "It is small: it makes things up, states them confidently and repeats itself. Check anything "
    "it says before relying on it.",
    "It knows little beyond its training data (see above) and mostly English.",
    "Its safety figures, where present, come from a short list of prompts and a phrase-matching "
    "rule (slm's safety.py): a low harmful-compliance rate there does not make it safe to deploy "
    "without a guard (serve.py --guard) and human review.",
    "Not for medical, legal, financial or other decisions about people.",
]
LOAD = {
    "hf": ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
           "tok = AutoTokenizer.from_pretrained(PATH)",
           "model = AutoModelForCausalLM.from_pretrained(PATH)", "```"],
    "gguf": ["```", "llama-cli -m NAME.gguf -cnv          # llama.cpp",
             "ollama create NAME -f Modelfile && ollama run NAME", "```"],
}


def readiness_rows(run_dir):
    """(verdict line, check rows, figure rows, safety rows) from eval.py's readiness.md, or
    None where eval.py has not been run on this directory."""
    path = Path(run_dir) / "readiness.md"
    if not path.exists():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    verdict = next((s.strip("*") for s in lines if s.startswith("**")), "")
    rows = [s for s in lines if s.startswith("| ") and not s.startswith(("| check", "| figure"))]
    checks = [s for s in rows if "| PASS |" in s or "| FAIL |" in s]
    safety = [s for s in rows if "(safety," in s]
    figures = [s for s in rows if s not in checks and s not in safety]
    return verdict, checks, figures, safety


def model_card(run_dir, payload, name, target="hf"):
    """The card as markdown: name is the exported architecture, target "hf" or "gguf" (how to load
    it)."""
    run = Path(run_dir)
    log = rundir.read_log(run / "log.jsonl") if (run / "log.jsonl").exists() else []
    final = next((r for r in reversed(log) if r.get("eval") == "after"), {})
    figures = ", ".join(f"{k} {v:.4f}" for k, v in final.items() if isinstance(v, float))
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    source = payload.get("source", {}).get("from")
    stage = payload.get("stage", "pretrain")
    params = sum(t.numel() for k, t in payload["model"].items() if k != "lm_head.weight"
                 or not payload["config"].get("tie_embeddings", True))
    data, init = config.get("data"), config.get("init")
    lines = [
        f"# {run.resolve().name}", "",
        f"A {params / 1e6:.1f}M-parameter {name} exported by slm's convert.py from the run "
        f"directory `{run_dir}` (stage {stage}, step {payload.get('step')}"
        + (f", started from {source}" if source else "") + ").", "",
        "## Intended use", "", "This is " + USES.get(stage, USES["sft"]), "",
        "## Training data", "",
        (f"This stage trained on `{data}`" if data else "The training data is not recorded")
        + (f", starting from the run `{init}`" if init else "")
        + (" (slm's built-in data: Python's own documentation and generated exercises)"
           if data == "python-docs" else "")
        + (" (slm's built-in refusal set: unsafe requests with refusals, safe look-alikes "
           "with answers)" if data == "safety" else "") + ".",
        f"The source release's own card describes what it was trained on: {source}." if source
        else "", "",
        "## Evaluation results", "",
        f"Held-out figures at the end of training: {figures}." if figures else
        "No held-out figures in log.jsonl.", ""]
    found = readiness_rows(run)
    if found:
        verdict, checks, rows, safety = found
        lines += [f"eval.py's readiness report: **{verdict}**.", "", "| figure | value |",
                  "|---|---|", *rows, "", "| check | result | reason |", "|---|---|---|",
                  *checks, ""]
    else:
        lines += [f"Not measured by eval.py yet: `python eval.py {run_dir}`.", ""]
    lines += ["## Safety", ""]
    if found and found[3]:
        lines += ["Harmful compliance is the share of unsafe prompts the model did not refuse; "
                  "over-refusal the share of safe prompts it refused (eval.py --safety, "
                  "judged by safety.py's rule).", "", "| figure | value |", "|---|---|",
                  *found[3], ""]
    else:
        lines += ["Not measured: `python eval.py RUN --safety builtin` measures harmful "
                  "compliance and over-refusal; export again afterwards.", ""]
    lines += ["## Limitations", ""] + [f"- {s}" for s in LIMITATIONS] + [""]
    lines += ["## How to load it", ""] + LOAD[target] + [""]
    return "\n".join(lines)


def write_beside(run_dir, gguf_path, name):
    """NAME.md next to NAME.gguf: the same card, with llama.cpp's and Ollama's commands."""
    payload = rundir.read_model_file(run_dir, mmap=True)
    card = model_card(run_dir, payload, name, "gguf").replace("NAME", Path(gguf_path).stem)
    path = Path(gguf_path).with_suffix(".md")
    rundir.atomic_write(path, lambda f: f.write(card.encode("utf-8")))
    return path
