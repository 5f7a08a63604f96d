"""Project-wide rules: runtime imports stay within numpy, torch, tqdm and the standard library,
the standalone files import nothing from the project, and requirements.txt lists nothing else."""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {"numpy", "torch", "tqdm"}
STANDALONE = {"gpt", "bpe", "minimind"}


def top_level_imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def test_runtime_imports_are_allowed():
    own = {p.stem for p in ROOT.glob("*.py")}
    std = set(sys.stdlib_module_names)
    bad = []
    for f in sorted(ROOT.glob("*.py")):
        for lineno, name in top_level_imports(f):
            if name not in ALLOWED | own | std:
                bad.append(f"{f.name}:{lineno}: {name}")
            if f.stem in STANDALONE and name in own:
                bad.append(f"{f.name}:{lineno}: standalone file imports project file {name}")
    assert not bad, bad


def test_requirements_list_only_the_runtime_and_pytest():
    names = set()
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(line.split(">")[0].split("=")[0].split("<")[0].strip())
    assert names == {"numpy", "torch", "tqdm", "pytest"}


def test_readme_quick_start_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "pip install -r requirements.txt && python train.py" in text
    assert "pip install -r requirements.txt && python -m pytest" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -r requirements.txt && python -m pytest" in ci


def test_the_files_a_reader_reads_keep_lines_within_100_characters():
    long = [f"{f.name}:{n}" for f in sorted(ROOT.glob("*.py"))
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
            if len(line) > 100]
    assert not long, long
