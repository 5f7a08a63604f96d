"""prepare.py against reference implementations, each skipped when its package is missing:
datasketch's MinHash (the Jaccard estimate) and datatrove's Gopher and C4 filters (the same rule
names and thresholds). The deliberate differences are listed in docs/prepare.md and below."""
import re

import numpy as np
import pytest

import ngrams
import prepare
from test_prepare import cfg_of, pair_at, prose, tripping_documents


def reference_documents():
    """The built tripping documents, prose, and the help topics every Python ships, without
    their underlines ("*****"). The one deliberate difference in splitting words: a run of
    punctuation is one token here and one token per character in spaCy, so to datatrove a
    reST underline is a long run of repeated n-grams and of words without a letter."""
    from pydoc_data.topics import topics
    docs = list(tripping_documents().values()) + [prose(i) for i in range(20)]
    return docs + [re.sub(r"(?m)^[^\w\s]{4,}$", "", prepare.clean(topics[k]))
                   for k in sorted(topics)]


def test_jaccard_estimate_agrees_with_datasketch_within_its_error():
    datasketch = pytest.importorskip("datasketch")
    perms = prepare.permutations(128)
    for j in (0.2, 0.5, 0.7, 0.9):
        for k in range(3):
            a, b, exact = pair_at(j, f"r{k}", shingles=150)
            ours = np.mean(prepare.minhash(a, perms, 5) == prepare.minhash(b, perms, 5))
            ref = []
            for text in (a, b):
                m = datasketch.MinHash(num_perm=128, seed=k)
                words = prepare.words_of(text)
                m.update_batch([" ".join(words[i:i + 5]).encode() for i in range(len(words) - 4)])
                ref.append(m)
            theirs = ref[0].jaccard(ref[1])
            sigma = np.sqrt(exact * (1 - exact) / 128)
            assert abs(ours - exact) < 4 * sigma and abs(theirs - exact) < 4 * sigma
            assert abs(ours - theirs) < 4 * np.sqrt(2) * sigma, (j, ours, theirs)


def datatrove_filters():
    pytest.importorskip("datatrove")
    pytest.importorskip("spacy")     # datatrove's English word tokenizer
    from datatrove.data import Document
    from datatrove.pipeline.filters import (C4QualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter)

    def verdict(f, text):
        result = f.filter(Document(text=text, id="0"))
        return None if result is True else result[1]
    return Document, verdict, GopherQualityFilter(), GopherRepetitionFilter(), C4QualityFilter()


def test_gopher_quality_decisions_agree_with_datatrove():
    _, verdict, quality, _, _ = datatrove_filters()
    cfg, docs = cfg_of(), reference_documents()
    ours = [prepare.gopher_quality(t, cfg) for t in docs]
    theirs = [verdict(quality, t) for t in docs]
    same = [a == b for a, b in zip(ours, theirs)]
    # every built document decides alike, rule name and all
    n_built = len(tripping_documents()) + 20
    assert all(same[:n_built]), [(a, b) for a, b, s in zip(ours, theirs, same[:n_built]) if not s]
    # on real text the token split differs a little (spaCy splits "it's", and some clusters of
    # marks), so a document near a threshold may fall the other way
    assert np.mean(same) >= 0.97, np.mean(same)


def test_gopher_repetition_decisions_agree_with_datatrove():
    _, verdict, _, repetition, _ = datatrove_filters()
    cfg, docs = cfg_of(), reference_documents()
    ours = [prepare.gopher_repetition(t, cfg) for t in docs]
    theirs = [verdict(repetition, t) for t in docs]
    differ = [(a, b, t[:60]) for a, b, t in zip(ours, theirs, docs) if a != b]
    # The deliberate difference: datatrove's top_N_gram counts an N-gram that occurs once, so a
    # short document with no repetition at all fails (one 2-gram of a 40-character text is
    # over 0.2 of it). Ours counts only N-grams that repeat. Apart from that, the same.
    rest = [d for d in differ if not (d[0] is None and d[1].startswith("top_"))]
    assert len(rest) <= 0.03 * len(docs), rest
    built = tripping_documents()
    assert all(prepare.gopher_repetition(t, cfg) == verdict(repetition, t)
               for name, t in built.items() if name.startswith(("dup", "top")))
    for text in docs:
        words = prepare.tokens(text)
        h = ngrams.word_hashes(words)
        if prepare.gopher_repetition(text, cfg_of(top_n_grams="")) is None and any(
                ngrams.top_ngram_chars(words, h, n) for n in (2, 3, 4)):
            assert verdict(repetition, text) in (None, "top_2_gram", "top_3_gram", "top_4_gram")


def test_c4_decisions_and_kept_lines_agree_with_datatrove():
    Document, verdict, _, _, c4 = datatrove_filters()
    cfg, docs = cfg_of(), reference_documents()
    agree = 0
    for text in docs:
        ours, rule = prepare.c4_rules(text, cfg)
        doc = Document(text=text, id="0")
        result = c4.filter(doc)
        theirs = None if result is True else result[1]
        if rule == theirs and (rule or ours == doc.text):
            agree += 1
    # sentences are counted by a regex here and by spaCy there: documents near 5 sentences may
    # differ; the line rules themselves are the same
    assert agree / len(docs) >= 0.9, agree / len(docs)
    for rule in ("lorem_ipsum", "curly_bracket", "too_few_sentences"):
        assert verdict(c4, tripping_documents()[rule]) == rule
