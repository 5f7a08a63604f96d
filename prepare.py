"""prepare.py: dataset preparation, from a folder of messy files to text worth training on
(book chapter 4, "Dataset Preparation").

    python prepare.py reports/ notes.jsonl --out data/clean      # -> data/clean/clean.jsonl
    python train.py --data data/clean                            # trains on what it kept
    python prepare.py scans/ --preset tabular --workers 4 --eval-files bench.jsonl --out data/geo

Real collections (hazard reports, court documents, archaic texts) come with repeated headers and
footers, copies and near-copies, OCR debris, tables, and people's e-mail addresses. Each step
below removes one kind of problem and counts what it removed, and the data card
(OUT/datacard.md, with OUT/lengths.svg) says so to the person who will train on the result.

Reading order: the flags and presets -> 1. sources -> 2. cleaning -> 3. boilerplate (lines that
repeat across documents, counted in a fixed-size sketch) -> 4. exact duplicates, then near
duplicates with MinHash and LSH written with numpy, and the S-curve that sets the bands -> 5.
quality rules in the style of Gopher and C4, each named, each threshold a flag -> 6. private
data -> 7. decontamination against evaluation files -> 8. the passes that stream it all through
worker processes, and the report.

Imports: sources.py (reading .txt .md .jsonl .csv .html in any encoding), ngrams.py (hashed
n-grams, repetition counts), pii.py (the private-data patterns), spool.py (the order-keeping
worker pool, scratch files, atomic output), datacard.py (the markdown and SVG report),
sentencepiece_bpe.py (any slm tokenizer file, for token counts) and rundir.py (flags and errors).
"""
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

import datacard
import ngrams
import pii
import sentencepiece_bpe
import sources
import spool
from rundir import UserError, option, parse_config, run_cli


@dataclass
class PrepareConfig:
    sources: list = option([], "files or folders to read (.txt .md .jsonl .csv .html)",
                           positional="*")
    out: str = option("data/clean", "output folder: clean.jsonl, datacard.md, lengths.svg")
    preset: str = option("", "rules for a kind of text: prose (the default), code, tabular")
    field: str = option("text", "the field of a .jsonl line to read")
    column: str = option("text", "the column of a .csv file to read")
    workers: int = option(1, "worker processes (the output is the same for any number)")
    boilerplate_docs: int = option(10, "lines in this many documents are boilerplate (0: off)")
    boilerplate_words: int = option(3, "... if they have at least this many words")
    dedup_threshold: float = option(0.8, "Jaccard similarity of near duplicates (above 1: off)")
    num_perm: int = option(128, "MinHash signature length (permutations)")
    shingle_words: int = option(5, "words per MinHash shingle")
    # The quality rules, named as datatrove names them, with Gopher's (Rae et al. 2021, table A1)
    # and C4's (Raffel et al. 2020) thresholds. A negative threshold turns a rule off.
    min_doc_words: int = option(50, "gopher_short_doc: fewer words")
    max_doc_words: int = option(100_000, "gopher_long_doc: more words")
    min_avg_word_length: float = option(3.0, "gopher_below_avg_threshold: mean word length")
    max_avg_word_length: float = option(10.0, "gopher_above_avg_threshold: mean word length")
    max_symbol_word_ratio: float = option(0.1, "gopher_too_many_hashes/_ellipsis: per word")
    max_bullet_lines_ratio: float = option(0.9, "gopher_too_many_bullets: share of lines")
    max_ellipsis_lines_ratio: float = option(0.3, "gopher_too_many_end_ellipsis: share of lines")
    min_alpha_words_ratio: float = option(0.8, "gopher_below_alpha_threshold: words with a letter")
    min_stop_words: int = option(2, "gopher_enough_stop_words: distinct stop words")
    dup_line_frac: float = option(0.3, "dup_line_frac: share of lines repeated")
    dup_para_frac: float = option(0.3, "dup_para_frac: share of paragraphs repeated")
    dup_line_char_frac: float = option(0.2, "dup_line_char_frac: characters in repeated lines")
    dup_para_char_frac: float = option(0.2, "dup_para_char_frac: ... in repeated paragraphs")
    top_n_grams: str = option("2:0.2,3:0.18,4:0.16", "top_N_gram: characters in the top N-gram")
    dup_n_grams: str = option("5:0.15,6:0.14,7:0.13,8:0.12,9:0.11,10:0.1",
                              "duplicated_N_n_grams: characters in repeated N-grams")
    c4_lines: bool = option(True, "C4's line rules (terminal punctuation, javascript, cookies)")
    c4_min_words_per_line: int = option(3, "C4: lines with fewer words are dropped")
    c4_min_sentences: int = option(5, "too_few_sentences: after the line rules")
    c4_lorem_ipsum: bool = option(True, "lorem_ipsum: placeholder text")
    c4_curly_bracket: bool = option(True, "curly_bracket: a '{' (code)")
    private: str = option("email,phone,ip,card,key", "kinds of private data to replace")
    eval_files: str = option("", "evaluation files to decontaminate against, FILE,FILE,...")
    contamination_ngram: int = option(13, "words in an n-gram shared with them")
    tokenizer: str = option("", "a tokenizer.json to count the output's tokens with")
    examples: int = option(3, "examples per rule in the data card")


# The rules for web prose throw away a geologist's tables and a programmer's code; these relax
# what each kind of text legitimately does (braces and '#' in code, numbers and short lines in
# tables) and keep the rules that catch junk in any text (repetition, lorem ipsum, length).
_NOT_WEB = dict(c4_lines=False, c4_min_words_per_line=0, c4_min_sentences=-1,
                c4_curly_bracket=False, min_stop_words=0, dup_line_frac=-1, dup_line_char_frac=-1)
PRESETS = {
    "prose": ("web-like prose: Gopher and C4 as published", {}),
    "code": ("source code, and technical documentation with code in it",
             dict(_NOT_WEB, min_doc_words=10, max_avg_word_length=20.0, max_symbol_word_ratio=-1,
                  min_alpha_words_ratio=0.3)),
    "tabular": ("tables, measurements, forms: numbers and short lines",
                dict(_NOT_WEB, min_doc_words=20, min_avg_word_length=1.0, max_avg_word_length=20.0,
                     max_bullet_lines_ratio=-1, min_alpha_words_ratio=-1, top_n_grams="")),
}


_TOKEN = re.compile(r"\w+(?:['’.]\w+)*|\.\.\.|([^\w\s])\1*")


def tokens(text):
    """Words and marks, the tokens the quality rules count, close to the spaCy tokens datatrove's
    use: `"Don't stop...")` -> ['"', "Don't", "stop", "...", '"', ")"]. A run of one mark
    ("*****", a reST underline) is one token, where spaCy makes one per character."""
    return [m.group(0) for m in _TOKEN.finditer(text)]


def words_of(text):
    """Lower-cased words, punctuation dropped: `"It's 3.5 km!"` -> ["it", "s", "3", "5", "km"].
    Shingles, n-gram hashes and decontamination all see text through this one function."""
    return re.findall(r"\w+", text.lower())


# ---------------------------------------------------------------------------------------------
# 2. Cleaning: one canonical form for the same text
# ---------------------------------------------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b\ufeff]")
_SPACES = re.compile(r"[\u00a0\u2000-\u200a\u202f\u205f\u3000]")
_HYPHEN = re.compile(r"([^\W\d_])-\n[ \t]*([a-zß-ÿ])")


def clean(text):
    """NFC, line ends, control characters, odd spaces, line-end hyphenation, blank runs.

    NFC first: "é" typed as e + combining accent and as one code point become the same string,
    so hashes and counts agree. Control characters (and soft hyphens, zero-width spaces, stray
    byte-order marks) carry no text. A word broken across a line ("infor-\\nmation", as OCR and
    justified PDFs leave it) is rejoined only when a lower-case letter follows, so "well-\\nKnown"
    and code stay as they are. Indentation is kept: code and aligned tables need it."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _SPACES.sub(" ", _CONTROL.sub("", text))
    text = _HYPHEN.sub(r"\1\2", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# ---------------------------------------------------------------------------------------------
# 3. Boilerplate: lines that repeat across many documents
# ---------------------------------------------------------------------------------------------
# A header, a footer, a page number or a disclaimer is a line that many documents share. Digits
# are folded to 0 so "Page 3 of 10" and "Page 12 of 10" count as one line. Counting every
# distinct line exactly would need memory that grows with the corpus; a count-min sketch uses a
# fixed table instead: each line adds 1 to one cell in each of D rows (a different hash per row),
# and its count is the smallest of its D cells. Collisions only add, so the estimate is never
# below the truth, and with 2**20 cells per row a line is over-counted only if thousands of
# frequent lines fall into all of its cells at once.
SKETCH_ROWS, SKETCH_WIDTH = 4, 1 << 20


def line_key(line):
    return re.sub(r"\s+", " ", re.sub(r"\d+", "0", line.strip().lower()))


def sketch_cells(keys):
    """[D, len(keys)] cell indices of distinct line keys: one 64-bit hash, split into D parts."""
    h = np.array([ngrams.stable_hash(k) for k in keys], np.uint64)
    return np.stack([(h >> np.uint64(16 * d)) % np.uint64(SKETCH_WIDTH) for d in
                     range(SKETCH_ROWS)]).astype(np.int64)


def boilerplate_keys(lines, min_words):
    """[(line number, key)] of the lines that may be boilerplate: those of min_words or more."""
    return [(i, line_key(line)) for i, line in enumerate(lines) if len(line.split()) >= min_words]


def remove_boilerplate(text, sketch, min_docs, min_words):
    """The text without its lines counted in at least min_docs documents; and those lines."""
    lines = text.split("\n")
    keyed = boilerplate_keys(lines, min_words)
    if not keyed or min_docs <= 0:
        return text, []
    counts = sketch[np.arange(SKETCH_ROWS)[:, None], sketch_cells([k for _, k in keyed])].min(0)
    drop = {i for (i, _), c in zip(keyed, counts) if c >= min_docs}
    kept = "\n".join(line for i, line in enumerate(lines) if i not in drop)
    return re.sub(r"\n{3,}", "\n\n", kept).strip(), [lines[i].strip() for i in sorted(drop)]


# ---------------------------------------------------------------------------------------------
# 4. Duplicates: exact by hash, near by MinHash and LSH
# ---------------------------------------------------------------------------------------------
def exact_key(text):
    """Documents equal up to case and spacing hash to the same key."""
    return ngrams.stable_hash(" ".join(text.lower().split()))


def permutations(num_perm, seed=1):
    """One random (a, b) pair of 64-bit numbers per permutation, for the multiply-shift family
    h(x) = ((a x + b) mod 2**64) >> 32 (Dietzfelbinger 1996): 2-universal on 32-bit x, and
    numpy's wrapping uint64 arithmetic does the mod. (The textbook (a x + b) mod p needs a < p
    and so overflows 64 bits; with small a it hardly permutes at all: every h would be smallest
    at nearly the same x, and 128 estimates would move together.)"""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 64, num_perm, dtype=np.uint64) | np.uint64(1)   # odd
    return a, rng.integers(0, 1 << 64, num_perm, dtype=np.uint64)


def minhash(text, perms, shingle_words):
    """The MinHash signature (uint32 [num_perm]) of a text's set of word shingles.

    For a random permutation of all possible shingles, the chance that two sets have the same
    smallest element is exactly |A & B| / |A | B|, their Jaccard similarity J. So the fraction of
    the num_perm positions where two signatures agree estimates J, with standard error
    sqrt(J (1 - J) / num_perm): about 0.044 at J = 0.5 with 128 permutations."""
    a, b = perms
    shingles = np.unique(ngrams.ngram_hashes(ngrams.word_hashes(words_of(text)), shingle_words))
    x = shingles >> np.uint64(32)                   # 32-bit shingle ids
    sig = np.full(len(a), np.iinfo(np.uint64).max, np.uint64)
    for start in range(0, len(x), 2048):   # blocks keep [num_perm, block] small for long texts
        block = x[start:start + 2048]
        sig = np.minimum(sig, (a[:, None] * block[None, :] + b[:, None]).min(1))
    return (sig >> np.uint64(32)).astype(np.uint32)


def candidate_probability(s, bands, rows):
    """The S-curve: the chance that two documents of Jaccard similarity s share a bucket.

    The signature is cut into `bands` bands of `rows` positions; two documents become
    candidates when all rows of at least one band agree. One band agrees with probability s**r,
    so none does with (1 - s**r)**b, and

        P(candidate | s) = 1 - (1 - s**r)**b.

    Plotted against s that is an S: near 0 for dissimilar pairs, near 1 for similar ones, and
    steepest around s* = (1/b)**(1/r). More rows push s* up and sharpen the step; more bands pull
    it down. With b=12, r=10: P(0.6) = 0.07, P(0.7) = 0.29, P(0.8) = 0.74, P(0.9) = 0.99."""
    return 1 - (1 - np.asarray(s, dtype=float) ** rows) ** bands


def choose_bands(threshold, num_perm):
    """(bands, rows) with bands * rows <= num_perm that best puts the S-curve's step at the
    threshold: the least mean false-positive rate (the curve below the threshold) plus mean
    false-negative rate (1 - the curve above it), each side weighed alike however wide.
    0.8 with 128 permutations -> 12 bands of 10 rows."""
    s = np.linspace(0, 1, 1001)
    below = s < threshold
    costs = [(np.mean(p[below]) + np.mean(1 - p[~below]), num_perm // rows, rows)
             for rows in range(1, num_perm + 1)
             for p in [candidate_probability(s, num_perm // rows, rows)]]
    return min(costs)[1:]


def near_duplicate_clusters(signatures, alive, threshold):
    """{kept index: [removed indices]} among the documents with alive[i] True.

    LSH: each band's rows are hashed to one key per document, and documents with equal keys in
    any band are candidates. Sorting the keys puts each bucket's members together, so no dict of
    buckets is held. Each candidate is then checked against its bucket's first (earliest) member
    with the signatures' estimate of J, which removes most of the S-curve's false positives, and
    joined to it in a union-find whose root is always the earliest document: that one is kept."""
    n, num_perm = signatures.shape
    bands, rows = choose_bands(threshold, num_perm)
    parent = np.arange(n)

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    index = np.flatnonzero(alive)
    for band in range(bands):
        cols = signatures[index, band * rows:(band + 1) * rows].astype(np.uint64)
        key = np.zeros(len(index), np.uint64)
        for c in range(rows):
            key = key * np.uint64(0x100000001B3) + cols[:, c]
        order = np.argsort(key, kind="stable")   # stable: a bucket lists its members in order
        key = key[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        for lo, hi in zip(starts, np.r_[starts[1:], len(key)]):
            if hi - lo < 2:
                continue
            first = index[order[lo]]
            for j in index[order[lo + 1:hi]]:
                if np.mean(signatures[first] == signatures[j]) >= threshold:
                    a, b = root(first), root(j)
                    parent[max(a, b)] = min(a, b)
    clusters = {}
    for i in index:
        if root(i) != i:
            clusters.setdefault(int(root(i)), []).append(int(i))
    return clusters


# ---------------------------------------------------------------------------------------------
# 5. Quality rules, in the style of Gopher and C4
# ---------------------------------------------------------------------------------------------
STOP_WORDS = {"the", "be", "to", "of", "and", "that", "have", "with"}
PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~…–—“”‘’«»•·")
_LETTER = re.compile(r"[^\W\d_]")
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
          "use cookies")


def parse_fractions(spec):
    """"2:0.2,3:0.18" -> [(2, 0.2), (3, 0.18)]."""
    try:
        return [(int(n), float(f)) for n, f in (p.split(":") for p in spec.split(",") if p)]
    except ValueError:
        raise UserError(f"{spec!r}: expected N:FRACTION,N:FRACTION,...") from None


def gopher_repetition(text, cfg):
    """The first of Gopher's repetition rules the text breaks, or None. Web junk repeats itself:
    menus, link farms, keyword stuffing, a generated page that loops."""
    paragraphs = re.split(r"\n{2,}", text)
    lines = [line for line in text.split("\n") if line]
    total = max(len(text), 1)
    for name, parts, frac, char_frac in (("para", paragraphs, cfg.dup_para_frac,
                                          cfg.dup_para_char_frac),
                                         ("line", lines, cfg.dup_line_frac,
                                          cfg.dup_line_char_frac)):
        count, chars = ngrams.repeated(parts)
        if frac >= 0 and count / max(len(parts), 1) > frac:
            return f"dup_{name}_frac"
        if char_frac >= 0 and chars / total > char_frac:
            return f"dup_{name}_char_frac"
    words = tokens(text)
    h = ngrams.word_hashes(words)
    for size, frac in parse_fractions(cfg.top_n_grams):
        if ngrams.top_ngram_chars(words, h, size) / total > frac:
            return f"top_{size}_gram"
    for size, frac in parse_fractions(cfg.dup_n_grams):
        if ngrams.repeated_ngram_chars(words, h, size) / total > frac:
            return f"duplicated_{size}_n_grams"
    return None


def gopher_quality(text, cfg):
    """The first of Gopher's quality rules the text breaks, or None. Junk that does not repeat
    itself is too short, made of symbols or numbers, a list of bullets or of truncated teasers
    ("Read more..."), or has none of the little words ("the", "of") that every English sentence
    uses. Punctuation marks are tokens of their own, so they count in the word total."""
    words = tokens(text)
    real = [w for w in words if not PUNCTUATION.issuperset(w)]   # not just symbols
    lines = text.split("\n")
    mean = np.mean([len(w) for w in real]) if real else 0.0
    n = max(len(words), 1)
    bullets = sum(line.lstrip().startswith(("•", "-")) for line in lines)
    ellipsis_lines = sum(line.rstrip().endswith(("...", "…")) for line in lines)
    checks = [
        ("gopher_short_doc", cfg.min_doc_words, len(real) < cfg.min_doc_words),
        ("gopher_long_doc", cfg.max_doc_words, len(real) > cfg.max_doc_words),
        ("gopher_below_avg_threshold", cfg.min_avg_word_length, mean < cfg.min_avg_word_length),
        ("gopher_above_avg_threshold", cfg.max_avg_word_length, mean > cfg.max_avg_word_length),
        ("gopher_too_many_hashes", cfg.max_symbol_word_ratio,
         text.count("#") / n > cfg.max_symbol_word_ratio),
        ("gopher_too_many_ellipsis", cfg.max_symbol_word_ratio,
         (text.count("...") + text.count("…")) / n > cfg.max_symbol_word_ratio),
        ("gopher_too_many_bullets", cfg.max_bullet_lines_ratio,
         bullets / len(lines) > cfg.max_bullet_lines_ratio),
        ("gopher_too_many_end_ellipsis", cfg.max_ellipsis_lines_ratio,
         ellipsis_lines / len(lines) > cfg.max_ellipsis_lines_ratio),
        ("gopher_below_alpha_threshold", cfg.min_alpha_words_ratio,
         sum(bool(_LETTER.search(w)) for w in words) / n < cfg.min_alpha_words_ratio),
        ("gopher_enough_stop_words", cfg.min_stop_words,
         len(STOP_WORDS & {w.lower() for w in words}) < cfg.min_stop_words),
    ]
    return next((name for name, threshold, broken in checks if threshold >= 0 and broken), None)


def c4_rules(text, cfg):
    """(text with C4's line rules applied, the rule that removes the whole document or None).

    C4 keeps only lines that end in terminal punctuation and hold at least 3 words (after
    Wikipedia-style citation marks like [1] are taken out), drops lines naming javascript or
    cookie and terms-of-use notices, and drops the page if a kept line holds "lorem ipsum" or a
    curly bracket, or if fewer than 5 sentences are left. The checks run in the order of C4's
    own code, which decides what a line with two of them becomes."""
    line_rules = cfg.c4_lines or cfg.c4_min_words_per_line > 0
    kept, sentences = [], 0
    for line in text.split("\n"):
        line = line.strip()
        words = line.split()
        if cfg.c4_lines:
            if any(len(w) > 1000 for w in words):
                continue
            line = _CITATION.sub("", line)
            if not line.endswith((".", "?", "!", '"', "'")) or line.endswith("..."):
                continue
        if len(words) < cfg.c4_min_words_per_line:
            continue
        low = line.lower()
        if cfg.c4_lorem_ipsum and "lorem ipsum" in low:
            return text, "lorem_ipsum"
        if cfg.c4_lines and "javascript" in low:
            continue
        if cfg.c4_curly_bracket and "{" in line:
            return text, "curly_bracket"
        if cfg.c4_lines and any(p in low for p in POLICY):
            continue
        # a sentence ends at . ? or ! followed by a space or the line's end
        sentences += max(1, len(re.findall(r"[.?!]+(?:\s|$)", line)))
        kept.append(line)
    if cfg.c4_min_sentences >= 0 and sentences < cfg.c4_min_sentences:
        return text, "too_few_sentences"
    return ("\n".join(kept) if line_rules else text), None


# ---------------------------------------------------------------------------------------------
# 6. Private data: replaced by a placeholder, counted per kind
# ---------------------------------------------------------------------------------------------
# E-mail addresses, phone numbers, IP addresses, card numbers and keys are found by pattern
# (pii.py) and replaced by <EMAIL>, <PHONE>, <IP_ADDRESS>, <CARD>, <KEY>: the model learns that
# an address goes here, never whose. Patterns over-match, so each kind has a check: a card must
# pass the Luhn checksum (a random number passes one time in ten), a phone number has 9 to 15
# digits, loopback addresses are nobody's, and of `password = "..."` only the value goes.


# ---------------------------------------------------------------------------------------------
# 7. Decontamination: nothing the model will be evaluated on may be in its training text
# ---------------------------------------------------------------------------------------------
def contamination_index(files, n, field, column):
    """(sorted n-gram hashes of the evaluation files, the file each came from, short documents
    that had no n-gram to check). 13 words (as GPT-3's paper used) is long enough that sharing
    one by chance is rare, short enough that a copied question is caught."""
    hashes, owner, short = [], [], 0
    for i, path in enumerate(files):
        for doc in sources.read_sources([path], field, column):
            words = words_of(clean(doc.text))
            if len(words) < n:
                short += 1
                continue
            hashes.append(np.unique(ngrams.ngram_hashes(ngrams.word_hashes(words), n)))
            owner.append(np.full(len(hashes[-1]), i))
    if not hashes:
        return np.zeros(0, np.uint64), np.zeros(0, int), short
    h, o = np.concatenate(hashes), np.concatenate(owner)
    order = np.argsort(h, kind="stable")
    return h[order], o[order], short


def contaminated_by(text, index, n):
    """The index of the evaluation file this text shares an n-gram with, or -1."""
    table, owner, _ = index
    words = words_of(text) if len(table) else []
    if len(words) < n:
        return -1
    grams = ngrams.ngram_hashes(ngrams.word_hashes(words), n)
    at = np.clip(np.searchsorted(table, grams), 0, len(table) - 1)
    hit = np.flatnonzero(table[at] == grams)
    return int(owner[at[hit[0]]]) if len(hit) else -1


# ---------------------------------------------------------------------------------------------
# 8. The passes: stream, count, decide, write; and the report
# ---------------------------------------------------------------------------------------------
STEPS = ["read", "cleaning", "boilerplate", "exact duplicates", "near duplicates", "quality",
         "private data", "decontamination"]
_STATE = {}   # what every worker shares: config, sketch, permutations, the evaluation n-grams


def setup_worker(state):   # runs once in each worker process
    _STATE.clear()
    _STATE.update(state)
    if state.get("tokenizer"):
        _STATE["tok"] = sentencepiece_bpe.load_tokenizer(state["tokenizer"])


def size(text):
    return len(text.encode("utf-8"))   # UTF-8 bytes, what the data card counts


def first_pass(chunk):
    """Clean each document and list its distinct line keys' sketch cells (boilerplate counts)."""
    out = []
    for text, source, line in chunk:
        cleaned = clean(text)
        keys = sorted({k for _, k in boilerplate_keys(cleaned.split("\n"),
                                                     _STATE["cfg"].boilerplate_words)})
        out.append((cleaned, source, line, size(text), size(cleaned),
                    sketch_cells(keys) if keys else None))
    return out


def second_pass(chunk):
    """All that looks at one document alone: boilerplate out, the exact key and signature, the
    quality verdict, private data, contamination, tokens; and the text as it will be written."""
    cfg = _STATE["cfg"]
    out = []
    for cleaned, source, line in chunk:
        text, dropped = remove_boilerplate(cleaned, _STATE["sketch"], cfg.boilerplate_docs,
                                            cfg.boilerplate_words)
        rule = gopher_repetition(text, cfg) or gopher_quality(text, cfg)
        c4_text, c4_rule = c4_rules(text, cfg)
        final, private = pii.redact(c4_text, cfg.private.split(","))
        out.append(dict(
            source=source, line=line, dropped=dropped, sizes=(size(text), size(c4_text),
                                                              size(final)),
            exact=exact_key(text), sig=minhash(text, _STATE["perms"], cfg.shingle_words),
            rule=rule or c4_rule, private=private, text=final, snippet=(text or cleaned)[:120],
            contaminated=contaminated_by(final, _STATE["eval"], cfg.contamination_ngram),
            tokens=len(_STATE["tok"].encode(final, allowed_special="none"))
            if "tok" in _STATE else 0))
    return out


def prepare(cfg):
    """Every step over cfg.sources into cfg.out; returns the data card. Pass 1 reads and cleans
    (and counts lines), pass 2 judges each document alone, the duplicates need all documents'
    keys, pass 3 applies the decisions in the chapter's order and writes what is kept. Text
    streams through scratch files (spool.scratch); memory holds a few numbers per document."""
    card, out = datacard.Card(STEPS, cfg.examples), Path(cfg.out)
    evals = [p for p in cfg.eval_files.split(",") if p]
    state = dict(cfg=cfg, perms=permutations(cfg.num_perm), tokenizer=cfg.tokenizer,
                 eval=contamination_index(evals, cfg.contamination_ngram, cfg.field, cfg.column))
    docs = ((d.text, d.source, d.line) for d in sources.read_sources(
        cfg.sources, cfg.field, cfg.column, card.problems, skip=out))
    sketch = np.zeros((SKETCH_ROWS, SKETCH_WIDTH), np.uint32)
    with spool.scratch(out, ["datacard.md", "lengths.svg", "clean.jsonl"]) as work:
        with spool.Spool(work / "cleaned.spool") as s:
            for cleaned, source, line, raw_size, clean_size, cells in spool.stream(
                    first_pass, docs, cfg.workers, setup_worker, state, "1/3 read, clean"):
                card.count("read", raw_size)
                if not cleaned:
                    card.remove("cleaning", "empty after cleaning", f"{source}:{line}", "")
                    continue
                if cells is not None:
                    np.add.at(sketch, (np.arange(SKETCH_ROWS)[:, None], cells), 1)
                card.count("cleaning", clean_size)
                s.write([cleaned, source, line])
        if not card.docs["read"]:
            raise UserError(f"{', '.join(map(str, cfg.sources))}: no document could be read "
                            f"({'; '.join(card.problems[:3])})")
        state["sketch"], records = sketch, []
        with spool.Spool(work / "judged.spool") as s, open(work / "sig.u32", "wb") as sig:
            for r in spool.stream(second_pass, spool.read_spool(work / "cleaned.spool"),
                                  cfg.workers, setup_worker, state, "2/3 rules, signatures",
                                  card.docs["cleaning"]):
                card.boilerplate(r.pop("dropped"))
                sig.write(r.pop("sig").tobytes())
                s.write([r.pop("text"), r.pop("snippet") if r["rule"] else ""])
                records.append(r)
        fate = duplicates(cfg, records, work / "sig.u32", card)
        with spool.Spool(work / "clean.jsonl") as f:
            judged = spool.read_spool(work / "judged.spool")
            for i, (r, (text, snippet)) in enumerate(tqdm(zip(records, judged), "3/3 write",
                                                          len(records), unit="doc")):
                (boiler, quality, private), (gone_at, why) = r["sizes"], fate.get(i, ("", ""))
                for step, after, reason in [(name, boiler, why if gone_at == name else None) for
                                            name in ("boilerplate", "exact duplicates",
                                                     "near duplicates")] + [
                        ("quality", quality, r["rule"]), ("private data", private, None),
                        ("decontamination", private, r["contaminated"] >= 0 and
                         f"a {cfg.contamination_ngram}-gram of {evals[r['contaminated']]}")]:
                    if reason:
                        card.remove(step, reason, f"{r['source']}:{r['line']}", snippet or text)
                        break
                    card.count(step, after)
                    card.private.update(r["private"] if step == "private data" else {})
                else:
                    f.write(dict(text=text, source=r["source"], line=r["line"]))
                    card.kept(size(text), r["tokens"])
        datacard.write(work, card, cfg, choose_bands(cfg.dedup_threshold, cfg.num_perm),
                       state["eval"][2], PRESETS.get(cfg.preset, ("", {}))[1])
    return card


def duplicates(cfg, records, signature_file, card):
    """{document: (step, reason)} for the documents that boilerplate emptied and the duplicates:
    the earliest of each exact group is kept, then the earliest of each near-duplicate cluster."""
    fate = {i: ("boilerplate", "empty without its boilerplate")
            for i, r in enumerate(records) if r["sizes"][0] == 0}
    _, first = np.unique(np.array([r["exact"] for r in records], np.uint64), return_index=True)
    alive = np.isin(np.arange(len(records)), first)
    for i in np.flatnonzero(~alive):
        fate.setdefault(int(i), ("exact duplicates", "an exact copy of an earlier document"))
    alive[list(fate)] = False
    if cfg.dedup_threshold > 1 or not records:
        return fate
    signatures = np.memmap(signature_file, np.uint32, "r").reshape(len(records), cfg.num_perm)
    where = [f"{r['source']}:{r['line']}" for r in records]
    for kept, removed in near_duplicate_clusters(signatures, alive, cfg.dedup_threshold).items():
        fate.update({i: ("near duplicates", f"Jaccard >= {cfg.dedup_threshold} with an earlier "
                                            f"document") for i in removed})
        card.clusters.append([where[kept]] + [where[i] for i in removed])
    card.clusters.sort(key=lambda c: -len(c))
    return fate


def main(argv=None, **overrides):
    """Prepare the sources into --out; returns the data card's figures."""
    cfg = parse_config(PrepareConfig, argv, PRESETS, overrides)
    if not cfg.sources or min(cfg.workers, cfg.num_perm, cfg.shingle_words) < 1:
        raise UserError("--workers, --num-perm and --shingle-words must be at least 1"
                        if cfg.sources else "give a file or folder to read (see --help)")
    if set(filter(None, cfg.private.split(","))) - set(pii.PATTERNS):
        raise UserError(f"--private {cfg.private}: choose from {','.join(pii.PATTERNS)}")
    parse_fractions(cfg.top_n_grams), parse_fractions(cfg.dup_n_grams)   # an error now, not later
    card = prepare(cfg)
    print(card.summary())
    return card


if __name__ == "__main__":
    run_cli(main)
