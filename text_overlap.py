"""text_overlap.py: ROUGE-L and BLEU, the two overlap scores of generated text against a
reference, written by hand (a companion of docgen.py, chapter 12).

    text_overlap.rouge_l("Return the file.", "Read the file.")    # 0.667: LCS "the file"
    text_overlap.corpus_bleu(["Read the file ."], ["Read a file ."])   # 0..100, as sacrebleu

Both follow the packages people report them with, default settings included, so a figure here
means what it means in a paper: ROUGE-L as Google's `rouge-score` computes it (lowercase, tokens
of [a-z0-9]+, no stemming, the F-measure of the longest common subsequence), and corpus BLEU-4
as `sacrebleu` computes it (its 13a tokenizer, case kept, clipped n-gram counts summed over the
corpus, the brevity penalty, the "exp" smoothing of orders with no match). tests/test_docgen.py
checks both against slow references written another way and against the two packages.

Imported by docgen.py. Imports nothing from the project.
"""
import math
import re
from collections import Counter


# ---------------------------------------------------------------------------------------------
# ROUGE-L: the longest common subsequence of the two token lists
# ---------------------------------------------------------------------------------------------
def rouge_tokens(text):
    """rouge-score's default tokenizer: lowercase, every run of other characters splits.
    "Return the N-th item." -> ["return", "the", "n", "th", "item"]."""
    return re.findall(r"[a-z0-9]+", text.lower())


def lcs_length(a, b):
    """Length of the longest common subsequence of two lists, with one row of the dynamic
    programme kept at a time: row[j] is the LCS of a[:i] and b[:j]."""
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0                      # the previous row's value at j - 1
        for j, y in enumerate(b, 1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(above, row[j - 1])
            diagonal = above
    return row[-1]


def rouge_l(reference, prediction):
    """ROUGE-L F-measure in [0, 1]: precision LCS/len(prediction), recall LCS/len(reference),
    their harmonic mean; 0 when either side has no token."""
    ref, pred = rouge_tokens(reference), rouge_tokens(prediction)
    if not ref or not pred:
        return 0.0
    common = lcs_length(ref, pred)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------------------------
# BLEU: clipped n-gram precision over the corpus, times a brevity penalty
# ---------------------------------------------------------------------------------------------
_13A = [(re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),   # punctuation stands alone
        (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),     # a period or comma, unless in a number
        (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
        (re.compile(r"([0-9])(-)"), r"\1 \2 ")]           # a dash after a digit


def bleu_tokens(text):
    """sacrebleu's default "13a" tokenizer (mteval-v13a.pl, as WMT scores): marks split off,
    except . and , inside numbers. "Return x[0], 3.5-fold." ->
    ["Return", "x", "[", "0", "]", ",", "3.5", "-", "fold", "."]."""
    line = text.rstrip().replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for entity, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
        line = line.replace(entity, char)
    line = f" {line} "
    for pattern, replacement in _13A:
        line = pattern.sub(replacement, line)
    return line.split()


def ngram_counts(tokens, n):
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu_statistics(references, predictions, max_order=4):
    """(matches per order, prediction n-grams per order, prediction length, reference length),
    summed over the corpus. A prediction's n-gram matches at most as often as the reference has
    it ("the the the" against "the cat" matches one "the"): the clipping."""
    correct, total, pred_len, ref_len = [0] * max_order, [0] * max_order, 0, 0
    for reference, prediction in zip(references, predictions, strict=True):
        ref, pred = bleu_tokens(reference), bleu_tokens(prediction)
        pred_len, ref_len = pred_len + len(pred), ref_len + len(ref)
        for n in range(1, max_order + 1):
            ours, theirs = ngram_counts(pred, n), ngram_counts(ref, n)
            total[n - 1] += sum(ours.values())
            correct[n - 1] += sum(min(c, theirs[g]) for g, c in ours.items())
    return correct, total, pred_len, ref_len


def corpus_bleu(references, predictions, max_order=4):
    """Corpus BLEU in [0, 100], sacrebleu's default:

        BLEU = BP * exp(mean over n = 1..4 of log p_n),   BP = exp(1 - R/C) if C < R else 1

    with p_n the corpus's clipped n-gram precision, C and R the predictions' and references'
    total lengths. An order with no match at all would make the score 0 however good the
    others; "exp" smoothing gives the k-th such order the precision 1 / (2**k * n-grams)
    instead. No match at any order: 0."""
    correct, total, pred_len, ref_len = bleu_statistics(references, predictions, max_order)
    if not any(correct):
        return 0.0
    brevity = 1.0 if pred_len >= ref_len else math.exp(1 - ref_len / pred_len)
    log_sum, halvings = 0.0, 1
    for c, t in zip(correct, total):
        if t == 0:            # predictions too short for this order: sacrebleu scores 0
            return 0.0
        if c == 0:
            halvings *= 2
            log_sum += math.log(1 / (halvings * t))
        else:
            log_sum += math.log(c / t)
    return 100 * brevity * math.exp(log_sum / max_order)
