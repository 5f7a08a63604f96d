"""sources.py: reading a corpus's files into documents (a companion of prepare.py, chapter 4).

    for doc in sources.read_sources(["reports/", "notes.jsonl"], field="text", column="text",
                                    problems=problems, skip=Path("data/clean")):
        doc.text, doc.source, doc.line      # the text, its file, the line it starts on

A source is a file or a folder read recursively in sorted order (so a run is deterministic):
.txt and .md (one document per file, or several separated by <|endoftext|>, as bpe.py reads
them), .jsonl (one document per line, from a chosen field), .csv (one document per row, from a
chosen column) and .html/.htm (the visible text, scripts and styles dropped). Bytes are decoded as a
person expects: a UTF-8 or UTF-16 byte-order mark is honoured, UTF-8 is tried next, and a file
that is not UTF-8 but holds no NUL bytes is read as Latin-1 with a note saying so. A file that
cannot be read (binary, unreadable, an unknown encoding) is one line in `problems`, not the end of
the run; a malformed line in a file that was read (a .jsonl line without the field) is the user's
mistake and raises UserError naming FILE:LINE.

Imported by prepare.py. Imports bpe.py (UserError, the project's one error type).
"""
import codecs
import csv
import html.parser
import io
import os
from dataclasses import dataclass
from pathlib import Path

from bpe import UserError, jsonl_objects

SUFFIXES = (".txt", ".md", ".jsonl", ".csv", ".html", ".htm")


@dataclass
class Document:
    text: str
    source: str     # the file it came from
    line: int = 1   # the line it starts on (a .jsonl line, a .csv row)


def list_files(paths, skip=None):
    """Every readable file under `paths` (files as given, folders recursively, sorted), leaving out
    the folder `skip` (the output, which may sit inside a source folder). An empty result, or a
    path that does not exist, is a UserError."""
    files = []
    skip = Path(skip).resolve() if skip else None
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p}: no such file or folder")
        if p.is_file():
            files.append(p)
            continue
        found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES
                       and not (skip and skip in f.resolve().parents))
        if not found:
            raise UserError(f"{p}: no {' '.join(SUFFIXES)} files in this folder")
        files += found
    return files


# ---------------------------------------------------------------------------------------------
# Bytes to text
# ---------------------------------------------------------------------------------------------
def decode(raw):
    """bytes -> (text, note). A byte-order mark decides first (UTF-8, UTF-16 LE/BE); then UTF-8;
    then, for bytes that hold no NUL (which text in a one-byte encoding never does), Latin-1, which
    maps every byte to a character and so never fails: the note says so, since the characters
    may be wrong (cp1252's curly quotes come out as control characters). Raises ValueError for
    bytes that look binary."""
    if raw.startswith(codecs.BOM_UTF8):
        return raw[3:].decode("utf-8", errors="replace"), ""
    for bom, name in ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        if raw.startswith(bom):
            try:
                return raw[2:].decode(name), f"decoded as {name.upper()} (byte-order mark)"
            except UnicodeDecodeError as e:
                raise ValueError(f"a UTF-16 byte-order mark, then bytes that are not UTF-16 "
                                 f"(at byte {e.start + 2})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if b"\x00" in raw:
            raise ValueError("binary (NUL bytes), not text") from None
        return raw.decode("latin-1"), (f"not UTF-8 (byte {e.start}): decoded as Latin-1, "
                                       f"check its accented characters")
    if "\x00" in text:  # valid UTF-8, yet no text file holds NUL characters
        raise ValueError("binary (NUL bytes), not text")
    return text, ""


class _VisibleText(html.parser.HTMLParser):
    """The text a browser shows: data outside <script>/<style>, a line break at each block tag."""
    BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "table",
              "section", "article", "header", "footer", "blockquote", "dd", "dt", "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.hidden = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data)


def html_text(markup):
    """The visible text of an HTML page: `<p>a <b>b</b></p><script>x()</script>` -> "a b"."""
    parser = _VisibleText()
    parser.feed(markup)
    parser.close()
    return "".join(parser.parts)


# ---------------------------------------------------------------------------------------------
# Files to documents
# ---------------------------------------------------------------------------------------------
def _jsonl_documents(path, lines, field):
    """Documents from (line number, line) pairs of a .jsonl file."""
    for lineno, obj in jsonl_objects(path, lines):
        if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
            raise UserError(f'{path}:{lineno}: no "{field}" string in this line '
                            f"(--field names the field to read)")
        yield Document(obj[field], str(path), lineno)


def _csv_documents(path, text, column):
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if column not in (reader.fieldnames or []):
        raise UserError(f'{path}:1: no column "{column}" (the columns are '
                        f"{', '.join(reader.fieldnames or [])}; --column chooses one)")
    start = 2
    for row in reader:
        if row.get(column):
            yield Document(row[column], str(path), start)
        start = reader.line_num + 1


def _is_utf8(path):
    """Whether the file's bytes are UTF-8, checked in 1 MB pieces so a large file is never held
    whole."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as f:
            while piece := f.read(1 << 20):
                decoder.decode(piece)
        decoder.decode(b"", final=True)
        return True
    except UnicodeDecodeError:
        return False


def _jsonl_lines(path, field):
    """A UTF-8 .jsonl read one line at a time, so a file larger than memory streams."""
    with open(path, encoding="utf-8-sig") as f:
        yield from _jsonl_documents(path, enumerate(f, 1), field)


def file_documents(path, field="text", column="text"):
    """(documents, note) of one file; raises ValueError or OSError when the file cannot be read.
    A UTF-8 .jsonl streams; any other file is read whole (a document is held whole anyway)."""
    suffix = path.suffix.lower()
    with open(path, "rb") as f:
        head = f.read(2)
    if (suffix == ".jsonl" and not head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
            and _is_utf8(path)):
        return _jsonl_lines(path, field), ""
    with open(path, "rb") as f:
        text, note = decode(f.read())
    if suffix == ".jsonl":
        return _jsonl_documents(path, enumerate(io.StringIO(text), 1), field), note
    if suffix == ".csv":
        return _csv_documents(path, text, column), note
    if suffix in (".html", ".htm"):
        text = html_text(text)
    return (Document(d, str(path)) for d in text.split("<|endoftext|>") if d.strip()), note


def read_sources(paths, field="text", column="text", problems=None, skip=None):
    """Yield the Documents of every file under `paths`, in order. A file that cannot be read is
    appended to `problems` as "FILE: why" (and so is a note such as a Latin-1 fallback, marked
    "note"); a malformed line raises UserError."""
    problems = [] if problems is None else problems
    for path in list_files(paths, skip):
        try:
            docs, note = file_documents(path, field, column)
        except (OSError, ValueError) as e:
            problems.append(f"{path}: skipped, {getattr(e, 'strerror', None) or e}")
            continue
        if note:
            problems.append(f"{path}: note, {note}")
        yield from docs
