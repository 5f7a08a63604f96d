"""sentencepiece_bpe.py: SentencePiece-style BPE read from tokenizer.json (a companion of bpe.py).

Llama 2, TinyLlama and Mistral ship a BPE that differs from bpe.py's byte-level one in three ways,
all visible in their tokenizer.json (docs/sentencepiece_bpe.md shows the fields):

- a space is written "▁" (U+2581) and a "▁" is put in front of the text, either by the normalizer
  (Prepend("▁") then Replace(" ", "▁"), Llama 2 and TinyLlama) or by a Metaspace pre-tokenizer
  (prepend_scheme "first", "always" or "never"; split into words at each "▁" or not; Mistral v0.3);
- BPE starts from characters, not bytes: the vocabulary holds "▁the", "é", "日" as plain strings,
  and merges join characters;
- a character without a token becomes one token per UTF-8 byte, "<0xE6>" "<0x97>" "<0xA5>"
  (byte_fallback), or else "<unk>" (consecutive unknown characters fused into one with fuse_unk).

Decoding runs the file's decoder steps on the token strings: Replace("▁", " "), ByteFallback (a
run of byte tokens read as UTF-8, or one U+FFFD per byte where the run is not valid UTF-8), Fuse,
Strip(" ", 1, 0) (one leading space off the whole text), or a Metaspace decoder.

    tok = hf_tokenizer.from_hf("Llama-2-7b/tokenizer.json")   # a SentencePieceTokenizer
    tok.save("out/llama/tokenizer.json")                       # our format, version 3
    tok = sentencepiece_bpe.load_tokenizer("out/llama/tokenizer.json")  # any slm tokenizer file
    tok = hf_tokenizer.from_gguf(metadata, "llama-2.gguf")   # GGUF's "llama" tokenizer: from_gguf

SentencePieceTokenizer is a subclass of bpe.Tokenizer: encode's added-token handling, special
tokens, vocab_size, id_to_bytes ("▁" as a space, a byte token as its byte) and everything else are
bpe.py's; it overrides how a text between added tokens becomes ids, decode, and save.
load_tokenizer(path) is the one loader for run directories (version 3 here, versions 1 and 2 by
bpe.Tokenizer.load). GGUF's "llama" tokenizer section is written (gguf_tokenizer) and read
(from_gguf: the merges rebuilt from its scores, so it encodes as llama.cpp does) here too.
Imports bpe.py only. Imported by hf_tokenizer.py (from_hf, to_hf and GGUF dispatch here by the
file's structure), rundir.py, data.py and prepare.py (load_tokenizer).
"""
import itertools
import json
import operator
import os
import re

import numpy as np

from bpe import FORMAT_NAME, Tokenizer, UserError, apply_merges, cut_at_names, read_json

SPM_VERSION = 3      # the version of our saved file; bpe.Tokenizer.load refuses it with a hint
BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def is_sentencepiece(data):
    """Whether a parsed tokenizer.json is a SentencePiece-style BPE: a BPE model with no ByteLevel
    step anywhere, and byte_fallback or "▁" in its normalizer, pre-tokenizer or decoder."""
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE":
        return False
    steps = json.dumps([data.get(k) for k in ("normalizer", "pre_tokenizer", "decoder")],
                       ensure_ascii=False)
    return '"ByteLevel"' not in steps and (model.get("byte_fallback") is True or "▁" in steps)


class Kinds(dict):
    """str.translate's table: a character -> its kind as chr(0..3): the space mark ("▁"), a
    digit, a letter, anything else. Filled as characters are met (then a lookup in C)."""

    def __init__(self, space):
        super().__init__()
        self.space = space

    def of(self, ch):
        return ord(self[ord(ch)])

    def __missing__(self, code):
        ch = chr(code)
        self[code] = kind = chr(0 if ch == self.space else 1 if re.fullmatch(r"\d", ch) else
                                2 if re.fullmatch(r"[^\W\d_]", ch) else 3)
        return kind


def flat(step, key):
    """A normalizer/decoder object -> the list of its steps (a Sequence's members, or itself)."""
    if step is None:
        return []
    if isinstance(step, dict) and step.get("type") == "Sequence":
        return list(step.get(key) or [])
    return [step]


def metaspace_scheme(step):
    """A Metaspace step's prepend_scheme; older files write add_prefix_space (true: "always")."""
    if "prepend_scheme" in step:
        return step["prepend_scheme"]
    return "always" if step.get("add_prefix_space", True) else "never"


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece-style BPE: pieces {id: "▁the"}, merges of pieces, added tokens, and the
    normalizer, pre-tokenizer and decoder of its tokenizer.json (kept as that file writes them,
    so to_hf and save write them back unchanged). Make one with hf_tokenizer.from_hf."""

    def __init__(self, pieces, merges, added_tokens, *, normalizer, pre_tokenizer, decoder,
                 byte_fallback, unk_token, fuse_unk, ignore_merges, bos_added, eos_added,
                 scores=None):
        self.pieces = dict(pieces)                                # id -> "▁the"
        self.piece_ids = {s: i for i, s in sorted(self.pieces.items(), reverse=True)}
        self.hf_steps = {"normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
                         "decoder": decoder}
        self.byte_fallback, self.unk_token, self.fuse_unk = byte_fallback, unk_token, fuse_unk
        self._normalizers = flat(normalizer, "normalizers")
        self._decoders = flat(decoder, "decoders")
        metaspace = flat(pre_tokenizer, "pretokenizers")
        self._metaspace = metaspace[0] if metaspace else None
        # A token's bytes, for id_to_bytes (bits per byte, streaming): what the decoder makes of
        # it alone ("▁the" -> b" the", "<0x0A>" -> b"\n"), before Strip and first-token rules.
        has_bytes = any(d.get("type") == "ByteFallback" for d in self._decoders)
        vocab = {}
        for id, s in self.pieces.items():
            m = BYTE_TOKEN.fullmatch(s) if has_bytes else None
            vocab[id] = bytes([int(m[1], 16)]) if m else self._alone(s).encode("utf-8")
        super().__init__(vocab, merges, added_tokens, split=(), ignore_merges=ignore_merges,
                         bos_added=bos_added, eos_added=eos_added)
        self._byte_piece = [self.piece_ids.get(f"<0x{b:02X}>") for b in range(256)]
        self._unk_id = self.piece_ids.get(unk_token) if unk_token is not None else None
        # scores {id: float}: a GGUF file's (from_gguf). The merges then rank by the score of the
        # token they make, highest first, and merges of equal score share a rank (score_ranks).
        self.scores = None if scores is None else dict(scores)
        if self.scores is not None:
            self._ranks = score_ranks(self.merges, self.merged, self.scores)
        self._cut = self.cutter()

    def cutter(self):
        """Speed, not meaning. With no Metaspace split (Llama 2's files) the whole text is one
        word for BPE, and BPE over thousands of characters is slow in Python. SentencePiece never
        learns a piece across a space, a change of script or two digits (Llama 2), so cut the
        text between characters of four kinds ("▁", digit, letter, other) wherever no merged
        piece has those two kinds side by side (a few exceptions, "².", are named and not cut).
        No merge can cross such a place (its piece would hold the two characters), so the ids
        are the same, and the word cache serves. Not where the cut could be seen: ignore_merges
        (whole words looked up), merges of byte or unknown pieces, unknown characters fused
        into one <unk>. Returns (the kinds, where to cut and where to look at the characters,
        each a [kind, kind] table, the pairs of characters not cut), or None."""
        r = self._metaspace["replacement"] if self._metaspace else "\u2581"
        atoms = {*self._byte_piece, self._unk_id} - {None}
        fused = self.fuse_unk and self._unk_id is not None and not (
            self.byte_fallback and None not in self._byte_piece)
        if self.ignore_merges or fused or any(a in atoms or b in atoms for a, b in self._ranks):
            return None
        kinds = Kinds(r)
        seen = {}   # (kind, kind) -> the pairs of characters side by side in merged pieces
        for _, new in self._ranks.values():
            piece = self.pieces.get(new, "")
            for a, b in zip(piece, piece[1:]):
                seen.setdefault((kinds.of(a), kinds.of(b)), set()).add((a, b))
        cut, look = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
        keep = set()   # a few pairs ("².") of a kind pair that is cut are kept whole, by name
        for (a, b), pairs in [((a, b), seen.get((a, b), ())) for a in range(4) for b in range(4)]:
            if len(pairs) <= 20:
                cut[a, b], look[a, b] = True, bool(pairs)
                keep.update(pairs)
        return (kinds, cut, look, keep) if cut.any() else None

    def _alone(self, s):
        """A token string as the decoder's Replace / Metaspace steps write it when not first."""
        for d in self._decoders:
            if d.get("type") == "Replace":
                s = s.replace(d["pattern"]["String"], d["content"])
            elif d.get("type") == "Metaspace":
                s = s.replace(d["replacement"], " ")
        return s

    # -- encoding: normalize each segment, pre-tokenize, then BPE on characters ----------------

    def _encode(self, text, specials):
        """As bpe.Tokenizer._encode (names in the raw text first, then each segment between them
        normalized on its own: that is why Llama 2 encodes "<s>Hello" as <s> "▁Hello"), with
        the Metaspace rule "first" meaning: the segment that starts the original text."""
        names = frozenset([*specials, *self.added_tokens])
        late = names & self._normalized
        ids, out, at = self._name_ids, [], 0
        for piece, is_name in cut_at_names(text, names - late):
            first, at = at == 0, at + len(piece)
            if is_name:
                out.append(ids[piece])
                continue
            for part, is_name in cut_at_names(self.normalize(piece), late):
                out.extend([ids[part]] if is_name else self._encode_segment(part, first))
                first = False
        return out

    def normalize(self, text):
        """The normalizer's Prepend and Replace steps, in order (Prepend only on non-empty text)."""
        for step in self._normalizers:
            if step["type"] == "Prepend":
                text = step["prepend"] + text if text else text
            else:
                text = text.replace(step["pattern"]["String"], step["content"])
        return text

    def words(self, text, first):
        """The Metaspace pre-tokenizer: spaces to "▁", the prepend scheme (never twice), and the
        split before every "▁" when split is true.  ("a  b", first) -> ["▁a", "▁", "▁b"]"""
        m = self._metaspace
        if m is None:
            return self.cut(text)
        r = m["replacement"]
        text = text.replace(" ", r)
        scheme = metaspace_scheme(m)
        if text and not text.startswith(r) and (scheme == "always" or scheme == "first" and first):
            text = r + text
        if not m.get("split", True):
            return self.cut(text)
        return [c for w in re.split(f"(?={re.escape(r)})", text) if w for c in self.cut(w)]

    def cut(self, text):
        """A word for BPE, cut where no merge can cross (see cutter)."""
        if not text:
            return []
        if self._cut is None:
            return [text]
        kinds, cut, look, keep = self._cut
        k = np.frombuffer(text.translate(kinds).encode("ascii"), np.uint8)
        at = np.flatnonzero(cut[k[:-1], k[1:]]) + 1    # numpy: no Python loop over characters
        if keep:
            kept = [i for i in (np.flatnonzero(look[k[:-1], k[1:]]) + 1).tolist()
                    if (text[i - 1], text[i]) in keep]
            at = np.setdiff1d(at, kept) if kept else at
        if "\0" not in text:   # a NUL put at each cut, then split there: it all runs in C
            codes = np.insert(np.frombuffer(text.encode("utf-32-le"), np.uint32), at, 0)
            return codes.tobytes().decode("utf-32-le").split("\0")
        at = at.tolist()
        return [text[i:j] for i, j in zip([0, *at], [*at, len(text)])]

    def _encode_segment(self, text, first):
        """The ids of a normalized segment: its words, each from the cache or encoded once
        (map and chain: the loops over the words run in C)."""
        words, cache = self.words(text, first), self._cache
        ids = list(map(cache.get, words))
        if None in ids:
            new = set(itertools.compress(words, map(operator.not_, ids)))   # not cached yet
            if len(cache) >= 200_000:   # keep memory bounded on endless streams of text
                cache.clear()
                new = set(words)
            for word in new:
                cache[word] = self._encode_word(word)
            ids = list(map(cache.__getitem__, words))
        return list(itertools.chain.from_iterable(ids))

    def _encode_word(self, word):
        """One word -> ids: each character's token, or its UTF-8 bytes' tokens (byte_fallback),
        or <unk> (a run of unknown characters is one <unk> with fuse_unk; with no unk token the
        character is dropped, as `tokenizers` does); then the merges, lowest rank first."""
        if self.ignore_merges and word in self.piece_ids:
            return [self.piece_ids[word]]
        ids = list(map(self.piece_ids.get, word))   # map: the loop runs in C
        if None not in ids:
            return apply_merges(ids, self._ranks)
        ids, unk_before = [], False
        for ch in word:
            id = self.piece_ids.get(ch)
            if id is not None:
                ids.append(id)
                unk_before = False
                continue
            if self.byte_fallback:
                tokens = [self._byte_piece[b] for b in ch.encode("utf-8")]
                if None not in tokens:
                    ids.extend(tokens)
                    unk_before = False
                    continue
            if self._unk_id is not None and not (self.fuse_unk and unk_before):
                ids.append(self._unk_id)
            unk_before = self._unk_id is not None
        return apply_merges(ids, self._ranks)

    # -- decoding: the decoder's steps on the token strings -------------------------------------

    def token_string(self, id):
        """The string of an id, as tokenizer.json writes it: "▁the", "<0x0A>", "<s>"."""
        name = self._special_by_id.get(id)
        if name is None and id not in self.pieces:
            self.id_to_bytes(id)   # raises the clear error for an id out of range or unused
            name = self._vocab[id].decode("utf-8")  # an added token that is not special
        return name if name is not None else self.pieces[id]

    def decode(self, ids):
        """ids -> text exactly as `tokenizers`' decode(ids, skip_special_tokens=False)."""
        tokens = [self.token_string(i) for i in ids]
        for d in self._decoders:
            kind = d["type"]
            if kind == "Replace":
                tokens = [t.replace(d["pattern"]["String"], d["content"]) for t in tokens]
            elif kind == "ByteFallback":
                tokens = fall_back_bytes(tokens)
            elif kind == "Fuse":
                tokens = ["".join(tokens)]
            elif kind == "Strip":
                tokens = [strip(t, d["content"], d["start"], d["stop"]) for t in tokens]
            else:  # Metaspace: "▁" is a space, except in the first token, where it goes
                keep = metaspace_scheme(d) == "never"
                tokens = [t.replace(d["replacement"], " " if i or keep else "")
                          for i, t in enumerate(tokens)]
        return "".join(tokens)

    @property
    def strips_first_space(self):
        """Whether decode drops a leading space of the first token (Strip, or Metaspace's rule):
        text streamed token by token from id_to_bytes must drop it too to equal decode."""
        return any(d["type"] == "Strip" and d["content"] == " " and d["start"] > 0 or
                   d["type"] == "Metaspace" and metaspace_scheme(d) != "never"
                   for d in self._decoders)

    def first_bytes(self, id):
        """The bytes of a reply's first shown token as decode writes it (Strip takes its leading
        space, Metaspace its "▁"s), for text streamed token by token: chat.py's Answer takes
        id_to_bytes for the others. A lone byte token that is not text alone keeps its byte."""
        data = self.id_to_bytes(id)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return data
        return self.decode([id]).encode("utf-8")

    # -- tokenizer.json out, and our own file --------------------------------------------------

    def to_hf(self):
        """The tokenizer.json of this tokenizer (post_processor left to hf_tokenizer.to_hf)."""
        return {
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": id, "content": name, "single_word": False, "lstrip": False,
                              "rstrip": False, "normalized": normalized, "special": special}
                             for id, name, special, normalized in self.added_list()],
            **self.hf_steps, "post_processor": None,
            "model": {"type": "BPE", "dropout": None, "unk_token": self.unk_token,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": self.fuse_unk, "byte_fallback": self.byte_fallback,
                      "ignore_merges": self.ignore_merges,
                      "vocab": {s: id for id, s in sorted(self.pieces.items())},
                      "merges": [[self.pieces[a], self.pieces[b]] for a, b in self.merges]},
        }

    def save(self, path):
        """Version 3 of bpe.py's file: the header, then the tokenizer.json fields, one token or
        merge a line (bpe.Tokenizer.load refuses it and names load_tokenizer)."""
        hf = self.to_hf()
        model = hf.pop("model")

        def dump(value):
            return json.dumps(value, ensure_ascii=False)
        lines = ["{", f'  "format": {dump(FORMAT_NAME)},', f'  "version": {SPM_VERSION},',
                 '  "kind": "sentencepiece",', f'  "vocab_size": {self.vocab_size},',
                 f'  "bos_added": {dump(self.bos_added)},',
                 f'  "eos_added": {dump(self.eos_added)},']
        lines += [f'  "{key}": {dump(value)},' for key, value in hf.items()
                  if key not in ("version", "added_tokens")]
        if self.scores is not None:   # a GGUF file's: what ranks the merges (from_gguf)
            scores = [self.scores.get(i) for i in range(len(self._vocab))]
            lines.append(f'  "scores": {dump(scores)},')
        lines += ['  "added_tokens": [', ",\n".join(f"    {dump(t)}" for t in hf["added_tokens"]),
                  "  ],", '  "model": {']
        lines += [f'    "{key}": {dump(value)},' for key, value in model.items()
                  if key not in ("vocab", "merges")]
        lines += ['    "vocab": {', ",\n".join(f"      {dump(s)}: {id}"
                                              for s, id in model["vocab"].items()), "    },",
                  '    "merges": [', ",\n".join(f"      {dump(m)}" for m in model["merges"]),
                  "    ]", "  }", "}"]
        tmp = f"{path}.tmp{os.getpid()}"   # as bpe.py: a crash halfway leaves the old file
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# GGUF's tokenizer section, llama.cpp's "llama" (SentencePiece) model, written and read
# ---------------------------------------------------------------------------------------------
# llama.cpp does not replay a merge list (src/llama-vocab.cpp, the SPM tokenizer). It cuts the
# text into characters and, again and again, joins the neighbouring pair whose joined string is a
# token (any token: control, byte and user-defined ones too) of the highest score, the leftmost
# pair among equal scores; a character left without a token becomes its UTF-8 bytes' <0xNN>
# tokens. Before that it cuts out the control and unknown tokens (when told to parse specials)
# and the user-defined ones (always), and with add_space_prefix it puts a space in front of the
# text and after each token it cut out; then every space is "▁". That is the Prepend and Replace
# normalizer, per stretch between added tokens, as this file runs it.
#
# Writing: a token made by merge r scores -r, which replays the merges in their order; a token
# no merge makes scores below all of them. (Metaspace "first" differs after special tokens, and
# split true where the vocabulary has tokens across a "▁": one trained with split true has none.)
#
# Reading (from_gguf): the merges are rebuilt from the scores, as transformers' converter builds
# Llama 2's tokenizer.json from its SentencePiece model: every way of cutting a token in two
# tokens is a merge, ranked by the score of the token it makes, highest first. Merges of equal
# score share one rank, so bpe.apply_merges takes the leftmost of them, as llama.cpp does
# (ScoreRank); a tokenizer.json cannot say that, so to_hf writes them in id order.
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = \
    1, 2, 3, 4, 5, 6


def gguf_tokenizer(tok, template, bos, eos, eot):
    """The tokenizer section of a GGUF file as (key, value, GGUF type) triples, for llama.cpp's
    "llama" model: the token strings, scores and types, BOS as the release's post-processor
    adds it (or the token the template calls bos_token), the end tokens and the chat template
    (the arguments as hf_tokenizer.gguf_tokenizer's)."""
    made = {m: -float(r) for r, m in enumerate(tok.merged)}   # merge r: score -r
    given = tok.scores if tok.scores is not None else made     # or the GGUF file's own
    low = min(given.values(), default=0.0) - 1.0               # below every merge
    strings, scores, types = [], [], []
    added = {*tok.added_tokens.values()}  # matched whole before BPE, as llama.cpp's user-defined
    for id in range(tok.vocab_size):
        s = tok.token_string(id) if id in tok.pieces or id in tok._name_ids.values() else None
        strings.append(s if s is not None else f"[PAD{id}]")
        scores.append(given.get(id, low))
        types.append(TOKEN_UNUSED if s is None else TOKEN_UNKNOWN if s == tok.unk_token else
                     TOKEN_CONTROL if tok.is_special(id) else
                     TOKEN_USER_DEFINED if id in added else
                     TOKEN_BYTE if BYTE_TOKEN.fullmatch(s) else TOKEN_NORMAL)
    if len(set(strings)) != len(strings) or any("\0" in s for s in strings):
        raise UserError("cannot export this tokenizer to GGUF: two ids have the same string, or "
                        "one holds a NUL character (llama.cpp reads a token as a C string)")
    scheme = metaspace_scheme(tok._metaspace) if tok._metaspace else \
        "always" if any(n["type"] == "Prepend" for n in tok._normalizers) else "never"
    sp = tok.special_tokens
    bos = sp[bos] if bos else (tok.bos_added or [sp["<|endoftext|>"]])[0]
    out = [("tokenizer.ggml.model", "llama", None), ("tokenizer.ggml.pre", "default", None),
           ("tokenizer.ggml.tokens", strings, "string"),
           ("tokenizer.ggml.scores", scores, "float32"),
           ("tokenizer.ggml.token_type", types, "int32"),
           ("tokenizer.ggml.add_space_prefix", scheme != "never", None),
           ("tokenizer.ggml.bos_token_id", bos, "uint32"),
           ("tokenizer.ggml.eos_token_id", sp[eos], "uint32"),
           ("tokenizer.ggml.eot_token_id", sp[eot], "uint32"),
           ("tokenizer.ggml.padding_token_id", sp["<|endoftext|>"], "uint32"),
           ("tokenizer.ggml.add_bos_token", bool(tok.bos_added), None),
           ("tokenizer.ggml.add_eos_token", bool(tok.eos_added), None),
           ("tokenizer.chat_template", template, None)]
    if tok._unk_id is not None:
        out.append(("tokenizer.ggml.unknown_token_id", tok._unk_id, "uint32"))
    return out


class ScoreRank(tuple):
    """(rank, merged id), compared by the rank alone. bpe.apply_merges takes the pair of lowest
    rank, the leftmost among equals; it compares these whole on short words (min()), where a
    plain tuple would put the lower merged id first among merges of equal score."""
    __slots__ = ()

    def __lt__(self, other):
        return self[0] < other[0]

    def __gt__(self, other):
        return self[0] > other[0]


def score_ranks(merges, merged, scores):
    """{(left, right): ScoreRank((rank, merged id))}: rank 0 for the merges making the tokens of
    the highest score, 1 for the next score, and so on."""
    levels = {s: r for r, s in enumerate(sorted({scores[m] for m in merged}, reverse=True))}
    return {pair: ScoreRank((levels[scores[m]], m)) for pair, m in zip(merges, merged)}


def from_gguf(metadata, where):
    """A GGUF file's "llama" tokenizer section (gguf_file.GGUFFile.metadata) -> the
    SentencePieceTokenizer that encodes every text to the ids llama.cpp gives with that file
    (docs/sentencepiece_bpe.md lists the few places where it cannot, each refused or named)."""
    def get(key, default=None):
        value = metadata.get(f"tokenizer.ggml.{key}", default)
        if value is None:
            raise UserError(f"{where}: no tokenizer.ggml.{key}")
        return value
    tokens = get("tokens")
    n = len(tokens)
    types, scores = get("token_type", [TOKEN_NORMAL] * n), get("scores", [0.0] * n)
    if len(types) < n or len(scores) < n or not all(
            isinstance(x, (int, float)) and x == x for x in scores[:n]):
        raise UserError(f"{where}: tokenizer.ggml.token_type and scores must give a type and a "
                        f"score (a number) to each of the {n} tokens")
    if not all(isinstance(t, str) and t for t in tokens) or len(set(tokens)) != n:
        raise UserError(f"{where}: tokenizer.ggml.tokens has an empty or a repeated token")
    pieces = {i: t for i, t in enumerate(tokens) if types[i] != TOKEN_UNUSED}
    added = [(i, t, types[i] != TOKEN_USER_DEFINED, False) for i, t in pieces.items()
             if types[i] in (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_USER_DEFINED)]
    prefix = get("add_space_prefix", True)  # llama.cpp's default for this model
    spaces = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    decoders = [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]
    if prefix:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    ends = [[get(f"{end}_token_id")] if get(f"add_{end}_token", end == "bos") else []
            for end in ("bos", "eos")]  # llama.cpp's defaults: BOS in front, no EOS
    if not all(type(i) is int and 0 <= i < n for end in ends for i in end):
        raise UserError(f"{where}: tokenizer.ggml.bos_token_id / eos_token_id is not a token id")
    tok = SentencePieceTokenizer(
        pieces, merges_from_scores(tokens, pieces, scores, where), added,
        normalizer={"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                        spaces]} if prefix else spaces,
        pre_tokenizer=None, decoder={"type": "Sequence", "decoders": decoders},
        byte_fallback=True, fuse_unk=True, ignore_merges=False,
        unk_token=next((t for i, t in pieces.items() if types[i] == TOKEN_UNKNOWN), None),
        bos_added=ends[0], eos_added=ends[1], scores={i: scores[i] for i in pieces})
    tok.reserve(n)
    return tok


def merges_from_scores(tokens, pieces, scores, where):
    """[(left, right, merged)] ids: every cut of a token into two tokens, highest score first.
    Refused: a token llama.cpp could make here that this tokenizer cannot, one that joins a
    character without a token of its own (which byte fallback has already turned into bytes),
    or an unused token (left out of the vocabulary) that text can reach."""
    ids = {t: i for i, t in pieces.items()}
    merges = []
    for i, t in enumerate(tokens):
        if i not in pieces and len(t) == 1:
            raise UserError(f"{where}: tokenizer.ggml.tokens[{i}] {t!r} is an unused token of "
                            f"one character: not supported")
        for k in range(1, len(t)):
            a, b = t[:k], t[k:]
            if a in ids and b in ids and i in pieces:
                merges.append((ids[a], ids[b], i))
            elif (a in ids or len(a) == 1) and (b in ids or len(b) == 1):
                why = "it is unused" if i not in pieces else \
                    f"{a if a not in ids else b!r} is no token"
                raise UserError(f"{where}: tokenizer.ggml.tokens[{i}] {t!r}: llama.cpp joins "
                                f"{a!r} and {b!r} into it, but {why}: not supported")
    return sorted(merges, key=lambda m: (-scores[m[2]], m[2]))


def fall_back_bytes(tokens):
    """The ByteFallback decoder: a run of "<0xNN>" tokens becomes the text its bytes spell, or,
    when the run is not valid UTF-8, one U+FFFD per byte (as `tokenizers`, not Python's
    errors="replace", which gives one per broken sequence).
    ["<0xE6>", "<0x97>", "<0xA5>", "a"] -> ["日", "a"];  ["<0x41>", "<0xFF>"] -> ["�", "�"]"""
    out, run = [], []
    for t in tokens + [None]:
        m = BYTE_TOKEN.fullmatch(t) if t is not None else None
        if m:
            run.append(int(m[1], 16))
            continue
        if run:
            try:
                out.append(bytes(run).decode("utf-8"))
            except UnicodeDecodeError:
                out.extend("\ufffd" * len(run))
            run = []
        if t is not None:
            out.append(t)
    return out


def strip(token, content, start, stop):
    """The Strip decoder on one token: up to `start` leading and `stop` trailing `content`s."""
    a = 0
    while a < min(start, len(token)) and token[a] == content:
        a += 1
    b = len(token)
    while len(token) - b < stop and b > a and token[b - 1] == content:
        b -= 1
    return token[a:b]


# ---------------------------------------------------------------------------------------------
# Reading: tokenizer.json (through hf_tokenizer.from_hf), and our version-3 file
# ---------------------------------------------------------------------------------------------
NORMALIZERS = ("Prepend", "Replace")
DECODERS = ("Replace", "ByteFallback", "Fuse", "Strip", "Metaspace")


def check_steps(data, bad):
    """Refuse, with one line naming the field and value, any normalizer, pre-tokenizer or
    decoder step this file does not run exactly."""
    for step in flat(data.get("normalizer"), "normalizers"):
        kind = step.get("type") if isinstance(step, dict) else json.dumps(step)
        if kind not in NORMALIZERS or kind == "Replace" and not isinstance(
                step.get("pattern", {}).get("String"), str):
            raise bad(f"normalizer {json.dumps(step)} is not supported (SentencePiece-style BPE: "
                      f"Prepend, and Replace of a string)")
    pre = flat(data.get("pre_tokenizer"), "pretokenizers")
    if len(pre) > 1 or pre and not (isinstance(pre[0], dict) and pre[0].get("type") == "Metaspace"
                                     and metaspace_scheme(pre[0]) in ("first", "always", "never")):
        raise bad(f"pre_tokenizer {json.dumps(data.get('pre_tokenizer'))} is not supported "
                  f"(SentencePiece-style BPE: null or one Metaspace)")
    for step in flat(data.get("decoder"), "decoders"):
        kind = step.get("type") if isinstance(step, dict) else json.dumps(step)
        if kind not in DECODERS or kind == "Replace" and not isinstance(
                step.get("pattern", {}).get("String"), str):
            raise bad(f"decoder {json.dumps(step)} is not supported (SentencePiece-style BPE: "
                      f"{', '.join(DECODERS)})")


def from_hf(data, where, post=([], []), given_ids=None, scores=None):
    """A parsed tokenizer.json of a SentencePiece-style BPE -> SentencePieceTokenizer.
    post: (bos_added, eos_added), what its post-processor adds (hf_tokenizer reads it);
    scores: {id: score} that rank the merges instead of their order (a GGUF file's);
    given_ids: hf_tokenizer.ids_tokenizers_would_give, to refuse added tokens whose ids
    `tokenizers` would change. UserError("<where>: ...") for anything not run exactly."""
    def bad(why):
        return UserError(f"{where}: {why}")
    model = data["model"]
    check_steps(data, bad)
    if model.get("dropout") not in (None, 0):
        raise bad(f"model.dropout {model.get('dropout')} is not supported")
    for field in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(field) not in (None, ""):
            raise bad(f"model.{field} {json.dumps(model.get(field))} is not supported")
    strings = model.get("vocab")
    if not isinstance(strings, dict) or not all(
            isinstance(s, str) and s and type(i) is int and i >= 0 for s, i in strings.items()):
        raise bad("model.vocab must map token strings to non-negative ids")
    pieces = {i: s for s, i in strings.items()}
    if len(pieces) != len(strings):
        raise bad("model.vocab gives two tokens the same id")
    unk = model.get("unk_token")
    if unk is not None and unk not in strings:
        raise bad(f"model.unk_token {unk!r} is not in model.vocab")
    added = read_added(data.get("added_tokens") or [], strings, bad)
    if given_ids is not None:
        for (id, name, _, _), given in zip(added, given_ids(strings, [t[1] for t in added])):
            if id != given:
                raise bad(f"added token {name!r} has id {id}, but `tokenizers` gives it id "
                          f"{given} (the ids of added tokens must follow the vocabulary)")
    merges = []
    for r, m in enumerate(model.get("merges") or []):
        pair = m.split(" ") if isinstance(m, str) else m
        ok = isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
        ids = [strings.get(p) for p in (pair if ok else [])] + [strings.get("".join(pair))] \
            if ok else [None]
        if None in ids:
            raise bad(f"model.merges[{r}] {m!r}: expected two tokens of model.vocab whose join "
                      f"is one too")
        merges.append(tuple(ids))
    if scores is not None and any(m not in scores for _, _, m in merges):
        raise bad("scores: a token that a merge makes has no score")
    return SentencePieceTokenizer(
        pieces, merges, added, normalizer=data.get("normalizer"),
        pre_tokenizer=data.get("pre_tokenizer"), decoder=data.get("decoder"),
        byte_fallback=bool(model.get("byte_fallback")), unk_token=unk,
        fuse_unk=bool(model.get("fuse_unk")), ignore_merges=bool(model.get("ignore_merges")),
        bos_added=post[0], eos_added=post[1], scores=scores)


def read_added(items, strings, bad):
    """"added_tokens" -> [(id, name, special, normalized)]; a name the vocab has keeps its id."""
    if not isinstance(items, list):
        raise bad("added_tokens must be a list")
    out, ids = [], set(strings.values())
    for k, t in enumerate(items):
        if not (isinstance(t, dict) and isinstance(t.get("content"), str) and t["content"]
                and type(t.get("id")) is int and t["id"] >= 0):
            raise bad(f"added_tokens[{k}] is {t!r}; expected an object with an id and a content")
        for flag in ("lstrip", "rstrip", "single_word"):
            if t.get(flag):
                raise bad(f"added token {t['content']!r}: {flag} true is not supported")
        name, id = t["content"], t["id"]
        if strings.get(name, id) != id or name not in strings and id in ids:
            raise bad(f"added token {name!r} has id {id}, which model.vocab gives another token")
        ids.add(id)
        special = bool(t.get("special", False))
        out.append((id, name, special, bool(t.get("normalized", not special))))
    if len({name for _, name, _, _ in out}) != len(out):
        raise bad("added_tokens lists the same token twice")
    return out


def load_tokenizer(path):
    """Any tokenizer file slm writes -> its tokenizer: version 3 (this file) as a
    SentencePieceTokenizer, versions 1 and 2 by bpe.Tokenizer.load. Run directories, data.py's
    --tokenizer and prepare.py load through this one function."""
    data = read_json(path)
    if not (isinstance(data, dict) and data.get("format") == FORMAT_NAME
            and data.get("version") == SPM_VERSION):
        return Tokenizer.load(path)

    def bad(why):
        return UserError(f"{path}: {why}")
    if not isinstance(data.get("model"), dict):
        raise bad('"model" must be an object (the tokenizer.json model of this tokenizer)')
    known = set(data["model"].get("vocab", {}).values()) | {
        t.get("id") for t in data.get("added_tokens") or [] if isinstance(t, dict)}
    post = []
    for key in ("bos_added", "eos_added"):
        value = data.get(key, [])
        if value is not None and not (isinstance(value, list) and set(value) <= known):
            raise bad(f'"{key}" must be null or a list of ids of this tokenizer')
        post.append(value)
    scores = data.get("scores")
    if scores is not None and not (isinstance(scores, list) and all(
            x is None or isinstance(x, (int, float)) for x in scores)):
        raise bad('"scores" must be null or a list of numbers (or nulls), one for each id')
    tok = from_hf(data, path, post, scores=None if scores is None else
                  {i: x for i, x in enumerate(scores) if x is not None})
    size = data.get("vocab_size", tok.vocab_size)
    if type(size) is not int or size < tok.vocab_size:
        raise bad(f'"vocab_size" must be an integer of at least {tok.vocab_size}, not {size!r}')
    tok.reserve(size)
    return tok
