"""datacard.py: the report of a data preparation run, a markdown data card and an SVG picture
(a companion of prepare.py, chapter 4).

    card = datacard.Card(["read", "cleaning", ...], examples=3)
    card.count("read", nbytes)                 # a document survived this step, with its size
    card.remove("quality", "gopher_short_doc", "notes.jsonl:12", text)   # ... or was removed
    card.kept(nbytes, tokens)                  # a document written to the output
    datacard.write(folder, card, cfg, bands_rows=(12, 10), eval_short=0, preset={})
    # -> folder/datacard.md (what a person reads) and folder/lengths.svg (the length histogram)

The card holds counts, a few short examples per reason and a histogram, never the corpus, so it
stays small however large the run. Everything in it is in input order, so the same input and
flags give the same card.

Imported by prepare.py. Imports nothing from the project.
"""
import dataclasses
import math
from collections import Counter

BINS = 24   # document sizes in powers of two: 1 byte ... 8 MB and more
MAX_LINES = 10_000   # distinct boilerplate lines remembered for the card


def short(text, n=100):
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 3] + "..."


class Card:
    def __init__(self, steps, examples=3):
        self.steps, self.max_examples = steps, examples
        self.docs, self.bytes = dict.fromkeys(steps, 0), dict.fromkeys(steps, 0)
        self.removed = {s: Counter() for s in steps}          # step -> reason -> documents
        self.removed_bytes = {s: 0 for s in steps}
        self.examples = {}                                     # (step, reason) -> [(where, text)]
        self.lines, self.clusters, self.private, self.problems = Counter(), [], Counter(), []
        self.out_docs = self.out_bytes = self.tokens = 0
        self.hist_in, self.hist_out = [0] * BINS, [0] * BINS

    def count(self, step, nbytes):
        self.docs[step] += 1
        self.bytes[step] += nbytes
        if step == self.steps[0]:
            self.hist_in[bin_of(nbytes)] += 1

    def remove(self, step, reason, where, text):
        self.removed[step][reason] += 1
        self.removed_bytes[step] += len(text.encode("utf-8"))
        shown = self.examples.setdefault((step, reason), [])
        if len(shown) < self.max_examples:
            shown.append((where, short(text)))

    def boilerplate(self, lines):
        for line in lines:
            if line in self.lines or len(self.lines) < MAX_LINES:
                self.lines[line] += 1

    def kept(self, nbytes, tokens):
        self.out_docs += 1
        self.out_bytes += nbytes
        self.tokens += tokens
        self.hist_out[bin_of(nbytes)] += 1

    def summary(self):
        first = self.steps[0]
        removed = ", ".join(f"{step} {sum(self.removed[step].values())}"
                            for step in self.steps[1:] if self.removed[step])
        return (f"{self.docs[first]:,} documents ({self.bytes[first] / 1e6:.2f} MB) read, "
                f"{self.out_docs:,} kept ({self.out_bytes / 1e6:.2f} MB); removed: "
                f"{removed or 'nothing'}; {len(self.problems)} file(s) with a note or skipped")


def bin_of(nbytes):
    return min(BINS - 1, int(math.log2(nbytes + 1)))


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def command(cfg, preset):
    """The command line that reproduces the run: the sources and every flag that differs from
    its default or the preset's value (--workers left out: it changes nothing in the output)."""
    words = ["python prepare.py", *map(str, cfg.sources)]
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in ("sources", "workers") or value == preset.get(f.name, f.default):
            continue
        flag = "--" + f.name.replace("_", "-")
        words.append((flag if value else "--no-" + flag[2:]) if isinstance(value, bool)
                     else f"{flag} {value}")
    return " ".join(words)


def markdown(card, cfg, bands_rows, eval_short, preset):
    """The data card's text: sources, each step, what each rule removed, duplicates, private
    data, decontamination, lengths, and the settings that reproduce it."""
    out = [f"# Data card: {cfg.out}", "", f"Made by `{command(cfg, preset)}`.", "",
           f"**{card.out_docs:,} documents, {card.out_bytes:,} bytes kept** "
           f"of {card.docs[card.steps[0]]:,} documents, {card.bytes[card.steps[0]]:,} bytes read"
           + (f"; {card.tokens:,} tokens with {cfg.tokenizer}" if cfg.tokenizer else "") + ".",
           "", "## Steps", "",
           "Documents and UTF-8 bytes left after each step, and what the step removed.", ""]
    rows, before = [], None
    for step in card.steps:
        gone = sum(card.removed[step].values())
        change = "" if before is None else f"{card.bytes[step] - before:+,}"
        rows.append((step, f"{card.docs[step]:,}", f"{card.bytes[step]:,}", change,
                     f"{gone:,}" if gone else ""))
        before = card.bytes[step]
    out += [table(("step", "documents", "bytes", "bytes change", "documents removed"), rows), ""]
    out += ["## Sources", "", f"{len(card.problems)} file(s) with a note or skipped.", ""]
    out += [f"- {p}" for p in card.problems[:50]]
    out += ["", "## What each rule removed", ""]
    rows = [(step, reason, n, "<br>".join(f"`{w}`: {t}" for w, t in card.examples[step, reason]))
            for step in card.steps for reason, n in sorted(card.removed[step].items())]
    out += [table(("step", "rule or reason", "documents", "examples"), rows) if rows
            else "Nothing was removed.", ""]
    out += ["## Boilerplate", "", f"Lines found in {cfg.boilerplate_docs} documents or more "
            f"(digits counted as one) were removed; the most frequent:", ""]
    out += [table(("line", "documents it was removed from"),
                  [(f"`{short(line, 80)}`", n) for line, n in card.lines.most_common(10)])
            if card.lines else "None.", ""]
    bands, rows_ = bands_rows
    out += ["## Duplicate clusters", "",
            f"Near duplicates: MinHash with {cfg.num_perm} permutations over "
            f"{cfg.shingle_words}-word shingles, LSH with {bands} bands of {rows_} rows, "
            f"threshold Jaccard {cfg.dedup_threshold}. {len(card.clusters)} cluster(s); the "
            f"first document of each is kept.", ""]
    out += [f"- kept `{c[0]}`, removed " + ", ".join(f"`{w}`" for w in c[1:6])
            + (f" and {len(c) - 6} more" if len(c) > 6 else "") for c in card.clusters[:10]]
    out += ["", "## Private data", "", "Replaced by placeholders (kinds: "
            f"{cfg.private or 'none'}):", ""]
    out += [table(("kind", "replaced"), sorted(card.private.items())) if card.private
            else "None found.", ""]
    out += ["## Decontamination", ""]
    if cfg.eval_files:
        n = sum(card.removed["decontamination"].values())
        out += [f"Against {cfg.eval_files.replace(',', ', ')}: {n} document(s) sharing a "
                f"{cfg.contamination_ngram}-word sequence with them removed"
                + (f"; {eval_short} evaluation document(s) were shorter than that and could "
                   f"not be checked" if eval_short else "") + "."]
    else:
        out += ["No evaluation files given (--eval-files)."]
    out += ["", "## Lengths", "", "![document lengths](lengths.svg)", ""]
    return "\n".join(out)


def svg(card):
    """Two histograms of document sizes (powers of two), read and kept, as a small SVG."""
    W, H, left, bottom = 720, 300, 50, 40
    top = max(max(card.hist_in), max(card.hist_out), 1)
    used = [i for i in range(BINS) if card.hist_in[i] or card.hist_out[i]] or [0]
    lo, hi = used[0], used[-1] + 1
    step = (W - left - 20) / (hi - lo)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect width="{W}" height="{H}" fill="white"/>',
             f'<text x="{left}" y="16" font-size="13">documents by size: read (grey), '
             f'kept (blue)</text>']
    for i in range(lo, hi):
        x = left + (i - lo) * step
        for j, (hist, colour) in enumerate(((card.hist_in, "#bbb"), (card.hist_out, "#36c"))):
            h = (H - bottom - 30) * hist[i] / top
            parts.append(f'<rect x="{x + 2 + j * step / 2.2:.1f}" y="{H - bottom - h:.1f}" '
                         f'width="{step / 2.4:.1f}" height="{h:.1f}" fill="{colour}"/>')
        label = f"{2 ** i:,}" if i < 10 else f"{2 ** (i - 10):,}K" if i < 20 else \
            f"{2 ** (i - 20):,}M"
        parts.append(f'<text x="{x + step / 2:.1f}" y="{H - bottom + 14}" '
                     f'text-anchor="middle">{label}</text>')
    parts.append(f'<text x="{W / 2}" y="{H - 8}" text-anchor="middle">bytes (at least)</text>')
    parts.append(f'<text x="10" y="{H - bottom}">0</text><text x="10" y="40">{top:,}</text>')
    return "\n".join(parts + ["</svg>"]) + "\n"


def write(folder, card, cfg, bands_rows, eval_short=0, preset=None):
    """folder/datacard.md and folder/lengths.svg; `preset` holds the values the run's preset
    gave, so the command in the card lists only the flags given on top of it."""
    (folder / "datacard.md").write_text(markdown(card, cfg, bands_rows, eval_short, preset or {}),
                                        encoding="utf-8")
    (folder / "lengths.svg").write_text(svg(card), encoding="utf-8")
