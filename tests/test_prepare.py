"""prepare.py (chapter 4): each rule on documents built to trip it and built to pass it,
boilerplate, duplicates and the S-curve, encodings, private data, decontamination, determinism
with workers, atomic output and bad input. Fixtures are generated here; nothing is downloaded."""
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import data
import ngrams
import pii
import prepare
import sources
from rundir import UserError, parse_config

ROOT = Path(__file__).resolve().parent.parent
VOCAB = ("river valley stone layer sample survey report north basin rock water surface field "
         "measure record winter summer village market court judge witness letter archive "
         "history county mountain forest soil clay sand granite fault slope storm flood coast "
         "harbour bridge road station engine signal method result value figure table chapter "
         "section between under across during before after often rarely later early small large "
         "ancient modern careful strong quiet bright heavy light narrow broad deep shallow").split()
STOP = ["the", "of", "and", "to", "with", "that"]


def sentence(rng, n=10, vocab=VOCAB, stop=STOP):
    words = [rng.choice(stop) if i % 3 == 1 and stop else rng.choice(vocab) for i in range(n)]
    return " ".join(words).capitalize() + "."


def prose(seed=0, lines=12, per_line=10, **kw):
    """English-like lines that pass every prose rule: one sentence a line, stop words, no
    repeats."""
    rng = random.Random(seed)
    return "\n".join(sentence(rng, per_line, **kw) for _ in range(lines))


def cfg_of(*argv, **overrides):
    return parse_config(prepare.PrepareConfig, ["x", *argv], prepare.PRESETS, overrides)


def verdict(text, cfg):
    return (prepare.gopher_repetition(text, cfg) or prepare.gopher_quality(text, cfg)
            or prepare.c4_rules(text, cfg)[1])


def tripping_documents():
    rng = random.Random(1)
    base = prose(1)
    lines = base.split("\n")
    span = " ".join(rng.choice(VOCAB) for _ in range(30))
    return {
        "gopher_short_doc": "The survey of the river valley and the stone layer was done.",
        "gopher_below_avg_threshold": prose(2, vocab="a an it is at by we up so no go us".split(),
                                            stop=["to", "of", "be"]),
        "gopher_above_avg_threshold": prose(3, vocab="internationalization electroencephalography "
                                            "characteristically interdisciplinary "
                                            "counterrevolutionary".split()),
        "gopher_too_many_hashes": "\n".join(f"#{w} #{w}s " + line for w, line in zip(VOCAB, lines)),
        "gopher_too_many_ellipsis": "\n".join(line.replace(" ", " ... ", 2) for line in lines),
        "gopher_too_many_bullets": "\n".join("- " + line for line in lines),
        "gopher_too_many_end_ellipsis": "\n".join(line[:-1] + "..." if i % 2 else line
                                                  for i, line in enumerate(lines)),
        "gopher_below_alpha_threshold": "\n".join(
            line[:-1] + " " + " ".join(str(rng.randint(10, 99)) for _ in range(4)) + "."
            for line in lines),
        "gopher_enough_stop_words": prose(4, stop=[]),
        "dup_para_frac": "\n\n".join([lines[0], lines[1], lines[0], lines[1], lines[2]]),
        "dup_para_char_frac": "\n\n".join(["\n".join(lines[:5])] + lines[5:] +
                                          ["\n".join(lines[:5])]),
        "dup_line_frac": "\n".join(lines + lines[:6]),
        "dup_line_char_frac": "\n".join(lines + [" ".join(lines[:6])] * 2),
        "top_2_gram": "\n".join("Click here " + line for line in prose(1, per_line=5).split("\n")),
        "duplicated_5_n_grams": "\n".join(lines[:3] + [lines[3][:-1] + " " + span + "."]
                                          + lines[4:8] + [span + " " + lines[8]] + lines[9:]),
        "lorem_ipsum": base + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.",
        "curly_bracket": base + "\nThe value {x} goes into the template of the report.",
        "too_few_sentences": prose(5, lines=3, per_line=25),
    }


@pytest.mark.parametrize("rule", sorted(tripping_documents()))
def test_each_rule_trips_on_a_document_built_for_it_and_passes_prose(rule):
    assert verdict(tripping_documents()[rule], cfg_of()) == rule
    assert verdict(prose(1), cfg_of()) is None
    # the rule's own flag turns it off (a negative threshold, or --no-c4-...)
    off = OFF.get(rule, {})
    assert verdict(tripping_documents()[rule], cfg_of(**off)) != rule


OFF = {"gopher_short_doc": dict(min_doc_words=-1), "gopher_below_avg_threshold":
       dict(min_avg_word_length=-1), "gopher_above_avg_threshold": dict(max_avg_word_length=-1),
       "gopher_too_many_hashes": dict(max_symbol_word_ratio=-1),
       "gopher_too_many_ellipsis": dict(max_symbol_word_ratio=-1),
       "gopher_too_many_bullets": dict(max_bullet_lines_ratio=-1),
       "gopher_too_many_end_ellipsis": dict(max_ellipsis_lines_ratio=-1),
       "gopher_below_alpha_threshold": dict(min_alpha_words_ratio=-1),
       "gopher_enough_stop_words": dict(min_stop_words=-1), "dup_para_frac": dict(dup_para_frac=-1),
       "dup_para_char_frac": dict(dup_para_char_frac=-1), "dup_line_frac": dict(dup_line_frac=-1),
       "dup_line_char_frac": dict(dup_line_char_frac=-1), "top_2_gram": dict(top_n_grams=""),
       "duplicated_5_n_grams": dict(dup_n_grams="6:0.14"), "lorem_ipsum": dict(c4_lorem_ipsum=False),
       "curly_bracket": dict(c4_curly_bracket=False), "too_few_sentences": dict(c4_min_sentences=-1)}


def test_long_documents_and_the_flag_that_sets_the_limit():
    assert verdict(prose(6, lines=20), cfg_of("--max-doc-words", "100")) == "gopher_long_doc"
    assert verdict(prose(6, lines=20), cfg_of()) is None


def test_c4_line_rules_drop_lines_and_the_code_preset_keeps_code():
    text = prose(7) + "\nPlease enable JavaScript to view this page.\nMenu Home About\n" \
        "We use cookies, see our privacy policy for more.\nA cited claim of the survey.[12]"
    kept, rule = prepare.c4_rules(text, cfg_of())
    assert rule is None and "JavaScript" not in kept and "Menu" not in kept
    assert "cookies" not in kept and "A cited claim of the survey." in kept
    code = ("import math\n\n\ndef area(radius):\n    # the area of a circle\n"
            "    return {'value': math.pi * radius ** 2, 'unit': 'm2'}\n\n\n"
            "def mean(values):\n    total = sum(values)\n    if not values:\n"
            "        raise ValueError('mean of nothing')\n    return total / len(values)\n\n\n"
            "class Survey:\n    def __init__(self, name, samples):\n"
            "        self.name, self.samples = name, list(samples)\n\n"
            "    def summary(self):\n        return f'{self.name}: {mean(self.samples):.2f}'\n")
    assert verdict(code, cfg_of()) is not None
    assert verdict(code, cfg_of("--preset", "code")) is None
    table = "\n".join(f"{i} | {i * 1.5:.1f} | {i * i} | sample {i}" for i in range(40))
    assert verdict(table, cfg_of()) is not None and verdict(table, cfg_of(preset="tabular")) is None


def test_cleaning():
    raw = "Cafe\u0301 \ufeffinfor-\n mation\x07 well-\nKnown\u00a0x   \r\n\r\n\r\n\r\nend  "
    assert prepare.clean(raw) == "Café information well-\nKnown x\n\nend"


# ---------------------------------------------------------------------------------------------
# Whole runs on small folders
# ---------------------------------------------------------------------------------------------
def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def run(src, out, *argv, **overrides):
    card = prepare.main([str(src), "--out", str(out), *argv], **overrides)
    rows = [json.loads(line) for line in (out / "clean.jsonl").read_text().splitlines()]
    return card, rows


def test_boilerplate_found_and_removed(tmp_path):
    docs = [f"ACME Geological Survey, confidential report\n{prose(i)}\nPage {i} of 12"
            for i in range(12)]
    no_c4 = dict(c4_lines=False, c4_min_words_per_line=0)  # C4 would drop these lines too
    card, rows = run(write_jsonl(tmp_path / "a.jsonl", docs), tmp_path / "out", **no_c4)
    assert len(rows) == 12
    assert all("ACME" not in r["text"] and "Page" not in r["text"] for r in rows)
    assert [r["text"] for r in rows] == [prose(i) for i in range(12)]
    assert card.lines["ACME Geological Survey, confidential report"] == 12
    # in fewer documents than --boilerplate-docs the line stays
    _, rows = run(tmp_path / "a.jsonl", tmp_path / "out", "--boilerplate-docs", "13", **no_c4)
    assert all(r["text"].startswith("ACME") for r in rows)


def unique_words(prefix, n):
    return [f"{prefix}{i}" for i in range(n)]


def pair_at(j, tag, shingles=200):
    """Two documents whose 5-word shingle sets have Jaccard similarity close to j: the first
    `m` words shared, the rest different; returns (a, b, exact Jaccard)."""
    n = shingles + 4
    shared = round(2 * shingles * j / (1 + j))
    a = unique_words(f"a{tag}x", n)
    b = a[:shared + 4] + unique_words(f"b{tag}x", n - shared - 4)
    sa, sb = ({tuple(w[i:i + 5]) for i in range(len(w) - 4)} for w in (a, b))
    return " ".join(a), " ".join(b), len(sa & sb) / len(sa | sb)


def test_near_duplicates_caught_or_kept_as_the_s_curve_predicts(tmp_path):
    texts, expect = [], {}
    for j in (0.3, 0.5, 0.6, 0.9, 0.95):
        a, b, exact = pair_at(j, str(j))
        texts += [a, b]
        expect[len(texts)] = (j, exact)      # the line of b in the file
    cfg = dict(min_doc_words=-1, max_avg_word_length=-1, min_stop_words=-1, c4_lines=False,
               c4_min_words_per_line=0, c4_min_sentences=-1, boilerplate_docs=0)
    card, rows = run(write_jsonl(tmp_path / "p.jsonl", texts), tmp_path / "out", **cfg)
    kept = {r["line"] for r in rows}
    bands, r = prepare.choose_bands(0.8, 128)
    for line, (j, exact) in expect.items():
        p = prepare.candidate_probability(exact, bands, r)
        if j >= 0.9:    # almost surely candidates, and estimated above 0.8
            assert p > 0.99 and line not in kept, (exact, p)
        else:           # rarely candidates, and never estimated near 0.8
            assert p < 0.1 and line in kept, (exact, p)
    assert len(card.clusters) == 2 and card.removed["near duplicates"]


def test_the_candidate_rate_follows_the_s_curve():
    perms = prepare.permutations(128)
    bands, rows = prepare.choose_bands(0.8, 128)
    hits, exact_js = 0, []
    for k in range(150):
        a, b, exact = pair_at(0.72, f"s{k}", shingles=60)
        sa, sb = (prepare.minhash(t, perms, 5) for t in (a, b))
        hits += any((sa[i * rows:(i + 1) * rows] == sb[i * rows:(i + 1) * rows]).all()
                    for i in range(bands))
        exact_js.append(exact)
    p = prepare.candidate_probability(np.mean(exact_js), bands, rows)
    assert 0.1 < p < 0.9     # the steep part of the curve, where counting says something
    assert abs(hits / 150 - p) < 4 * np.sqrt(p * (1 - p) / 150)


def test_exact_duplicates_up_to_case_and_spacing(tmp_path):
    docs = [prose(1), prose(2), prose(1).upper().replace(" ", "  "), prose(3)]
    card, rows = run(write_jsonl(tmp_path / "d.jsonl", docs), tmp_path / "out")
    assert [r["line"] for r in rows] == [1, 2, 4]
    assert card.removed["exact duplicates"] == {"an exact copy of an earlier document": 1}


def test_encodings_and_an_unreadable_file(tmp_path):
    text = "Café au lait, naïve façade."
    (tmp_path / "utf8.txt").write_bytes(text.encode())
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "utf16.txt").write_bytes(text.encode("utf-16"))     # with its BOM
    (tmp_path / "latin1.txt").write_bytes(text.encode("latin-1"))
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 4)
    problems = []
    docs = list(sources.read_sources([tmp_path], problems=problems))
    assert [d.text for d in docs] == [text] * 4
    assert [Path(d.source).name for d in docs] == ["bom.txt", "latin1.txt", "utf16.txt",
                                                    "utf8.txt"]
    assert any("latin1.txt: note" in p and "Latin-1" in p for p in problems)
    assert any("binary.txt: skipped" in p for p in problems)
    assert not any("utf8.txt" in p or "bom.txt" in p for p in problems)


def test_html_csv_and_jsonl_fields(tmp_path):
    (tmp_path / "p.html").write_text("<html><head><style>p {x}</style><script>var a = 1;"
                                     "</script></head><body><p>One &amp; two.</p><p>Three"
                                     "</p></body></html>")
    (tmp_path / "t.csv").write_text("id,body\n1,First row\n2,\"Second, quoted\"\n")
    (tmp_path / "d.jsonl").write_text('{"content": "A"}\n\n{"content": "B"}\n')
    docs = list(sources.read_sources([tmp_path], field="content", column="body"))
    assert [(Path(d.source).name, d.line, d.text.strip()) for d in docs] == [
        ("d.jsonl", 1, "A"), ("d.jsonl", 3, "B"), ("p.html", 1, "One & two.\n\nThree"),
        ("t.csv", 2, "First row"), ("t.csv", 3, "Second, quoted")]


def test_private_data_replaced_and_counted():
    text = ("Write to jane.doe@example.org or +1 (415) 555-0134. Card 4111 1111 1111 1111, "
            "not 4111 1111 1111 1112. Server 192.168.10.20, fe80:0:0:0:202:b3ff:fe1e:8329, "
            "but 127.0.0.1 stays. api_key = 'abcd1234efgh5678ijkl' and AKIAIOSFODNN7EXAMPLE. "
            "Order 20231012 of 2023-10-12.")
    out, counts = pii.redact(text, list(pii.PATTERNS))
    assert counts == {"email": 1, "phone": 1, "card": 1, "ip": 2, "key": 2}
    for secret in ("jane.doe", "555-0134", "4111 1111 1111 1111,", "192.168", "fe80", "abcd1234",
                   "AKIA"):
        assert secret not in out
    for kept in ("4111 1111 1111 1112", "127.0.0.1", "20231012", "2023-10-12"):
        assert kept in out
    assert pii.luhn_ok("79927398713") and not pii.luhn_ok("79927398710")
    assert pii.redact(text, ["email"])[1] == {"email": 1}


def test_decontamination_removes_documents_sharing_a_long_ngram(tmp_path):
    question = ("Which layer of the basin holds the oldest granite sample recorded by the "
                "county survey during the winter of the flood")
    (tmp_path / "bench.jsonl").write_text(json.dumps({"text": question}) + "\n"
                                          + json.dumps({"text": "Too short to check."}) + "\n")
    docs = [prose(1), prose(2) + "\n" + question.upper() + "?", prose(3)]
    card, rows = run(write_jsonl(tmp_path / "c.jsonl", docs), tmp_path / "out",
                     "--eval-files", str(tmp_path / "bench.jsonl"))
    assert [r["line"] for r in rows] == [1, 3]
    assert sum(card.removed["decontamination"].values()) == 1
    report = (tmp_path / "out" / "datacard.md").read_text()
    assert "bench.jsonl" in report and "1 evaluation document(s) were shorter" in report


def mixed_corpus(folder):
    folder.mkdir()
    docs = [prose(i) for i in range(30)] + [prose(3), prose(4) + " Extra."]
    docs += ["buy cheap watches " * 40, "Contact bob@example.com for the survey of the basin. "
             + prose(40)]
    write_jsonl(folder / "a.jsonl", docs)
    (folder / "b.txt").write_text(prose(50) + "\n\nPage 1 of 2")
    return folder


def test_deterministic_and_the_same_with_two_workers(tmp_path):
    src, out = mixed_corpus(tmp_path / "src"), tmp_path / "out"
    outputs = []
    for workers in (1, 1, 2):
        run(src, out, "--workers", str(workers))
        outputs.append([(out / n).read_bytes() for n in ("clean.jsonl", "datacard.md",
                                                          "lengths.svg")])
    assert outputs[0] == outputs[1] == outputs[2]
    text = outputs[0][0].decode()
    assert "bob@example.com" not in text and "<EMAIL>" in text and "watches" not in text
    assert sorted(p.name for p in out.iterdir()) == ["clean.jsonl", "datacard.md", "lengths.svg"]
    # train.py --data takes the folder as it is
    assert len(list(data.read_documents(out))) == len(text.splitlines())


def test_a_second_run_reuses_nothing_and_a_failed_run_damages_nothing(tmp_path, monkeypatch):
    src, out = mixed_corpus(tmp_path / "src"), tmp_path / "out"
    run(src, out)
    before = (out / "clean.jsonl").read_bytes()
    (out / ".prepare-work").mkdir()                 # what a killed run leaves behind
    (out / ".prepare-work" / "cleaned.spool").write_text("stale\n")
    write_jsonl(src / "a.jsonl", [prose(i) for i in range(5)])
    _, rows = run(src, out)
    assert len(rows) == 6 and not (out / ".prepare-work").exists()
    after = (out / "clean.jsonl").read_bytes()

    def broken(*args, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(prepare.datacard, "write", broken)
    with pytest.raises(KeyboardInterrupt):
        prepare.main([str(src), "--out", str(out)])
    assert (out / "clean.jsonl").read_bytes() == after != before
    assert sorted(p.name for p in out.iterdir()) == ["clean.jsonl", "datacard.md", "lengths.svg"]


def test_bad_input_is_one_error_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: no .txt"):
        prepare.main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(UserError, match=r'bad.jsonl:2: no "text" string'):
        prepare.main([str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o")])
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match=r't.csv:1: no column "text"'):
        prepare.main([str(tmp_path / "t.csv"), "--out", str(tmp_path / "o")])
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "x.txt").write_bytes(b"\x00\x01\x02" * 10)
    with pytest.raises(UserError, match="no document could be read.*skipped, binary"):
        prepare.main([str(tmp_path / "only"), "--out", str(tmp_path / "o")])
    with pytest.raises(UserError, match="--private"):
        prepare.main([str(tmp_path / "only"), "--private", "email,dna"])
    result = subprocess.run([sys.executable, str(ROOT / "prepare.py"), str(tmp_path / "empty"),
                             "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in result.stderr


def test_ngram_helpers_on_a_small_example():
    words = "a rose is a rose is a rose".split()
    h = ngrams.word_hashes(words)
    assert ngrams.top_ngram_chars(words, h, 2) == len("a rose") * 3
    assert ngrams.repeated(["x", "y", "x", "x"]) == (2, 2)
    # 3-grams "a rose is", "rose is a", "is a rose", then "a rose is" again at word 3: its 7
    # letters count and the walk jumps past it, to the end
    assert ngrams.repeated_ngram_chars(words, h, 3) == len("aroseis")
    assert ngrams.top_ngram_chars(words[:3], h[:3], 2) == 0     # nothing occurs twice


def test_token_counts_with_a_chosen_tokenizer_and_a_picture_that_parses(tmp_path):
    import xml.etree.ElementTree as ET

    import bpe
    docs = [prose(i) for i in range(6)]
    tok = bpe.Tokenizer.train("\n".join(docs), vocab_size=300)
    tok.save(tmp_path / "tok.json")
    card, rows = run(write_jsonl(tmp_path / "t.jsonl", docs), tmp_path / "out",
                     "--tokenizer", str(tmp_path / "tok.json"))
    assert card.tokens == sum(len(tok.encode(r["text"])) for r in rows) > 0
    assert f"{card.tokens:,} tokens" in (tmp_path / "out" / "datacard.md").read_text()
    assert ET.parse(tmp_path / "out" / "lengths.svg").getroot().tag.endswith("svg")
