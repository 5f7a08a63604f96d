"""guard.py: what stands between the server and the people who use it (a companion of serve.py,
book chapters 11 and 12): who may connect (the exposure check, API keys), what may go in and out
(an optional blocklist of words, phrases and patterns, on the request and on the answer, also
while it streams), what the operator answers instead (--refusal-message), and a request log with
private data (e-mail addresses, phone and card numbers, keys) masked whatever --log-content says.

    python serve.py out/dpo --guard blocklist.txt --refusal-message "I can't help with that."

A blocklist file holds one entry a line: a word or phrase, matched whole and case-insensitively
("pipe bomb" matches "Pipe  Bomb" but "bomb" does not match "bombastic"), or `re:PATTERN`, a
Python regular expression; blank lines and `# comments` are skipped. Both routes are guarded
alike: a chat request whose messages match, or a /v1/completions prompt that matches, is not
generated: the answer is the refusal message, finish_reason "content_filter". An answer that
matches is cut there: the refusal message follows what was already sent.

Streaming: a phrase may arrive split across chunks ("pipe b" + "omb"). The guard sends only text
that no later text can complete into a match: it holds back the last H characters, H being the
longest phrase's length (and --guard-hold for patterns, whose matches have no fixed length), and
counts a match only once a character follows it (or the answer ends), so "bomb" is not taken for
a match while "bombastic" is still arriving. What was held back is sent when the answer ends.

Every decision (input or output, pass or block) and every masked item in the log is counted in
metrics.py's /metrics. Imported by serve.py. Imports pii.py (the patterns), rundir.py (UserError).
"""
import datetime
import hmac
import ipaddress
import json
import re
import sys
import threading
from pathlib import Path

import pii
from rundir import UserError


# ---------------------------------------------------------------------------------------------
# Who may connect: the exposure check and API keys
# ---------------------------------------------------------------------------------------------
def is_loopback(host):
    """Does listening on `host` keep the server to this machine? ("" and 0.0.0.0 mean
    everywhere.)"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(cfg):
    """Anyone who can reach an open server can use it (and its CPU): beyond 127.0.0.1 a key is
    required, unless --insecure says that this is meant (a trusted network, a proxy in front)."""
    if not (cfg.api_key or cfg.insecure or is_loopback(cfg.host)):
        raise UserError(f"--host {cfg.host} lets other machines reach the server: set an API key "
                        f"(--api-key KEY or SLM_API_KEY), or add --insecure if that is what "
                        "you want")


def authorized(headers, key):
    """Is 'Authorization: Bearer KEY' there? Compared in constant time (hmac.compare_digest), so the
    time a wrong key takes to refuse does not tell an attacker how many characters were right."""
    sent = headers.get("Authorization", "")
    return hmac.compare_digest(sent.encode("utf-8", "replace"), f"Bearer {key}".encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# What may go in and out: the blocklist, on requests and on answers
# ---------------------------------------------------------------------------------------------
class Policy:
    """The blocklist: [(entry as written, compiled pattern)], and how much to hold back."""

    def __init__(self, entries=(), pattern_hold=64):
        self.rules, hold = [], 0
        for entry, where in entries:
            if entry.startswith("re:"):
                try:
                    rule = re.compile(entry[3:], re.IGNORECASE)
                except re.error as e:
                    raise UserError(f"{where}: bad pattern {entry[3:]!r}: {e}")
                hold = max(hold, pattern_hold)
            else:  # whole words, any spacing between them, any case
                words = entry.split()
                rule = re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, words)) + r"(?!\w)",
                                  re.IGNORECASE)
                hold = max(hold, len(entry) + 8)  # + 8: room for wider spacing between words
            self.rules.append((entry, rule))
        self.hold = hold

    @classmethod
    def load(cls, path, pattern_hold=64):
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such blocklist file (--guard)")
        lines = path.read_text(encoding="utf-8").splitlines()
        entries = [(s.strip(), f"{path}:{n}") for n, s in enumerate(lines, 1)
                   if s.strip() and not s.strip().startswith("#")]
        return cls(entries, pattern_hold)

    def search(self, text, final=True):
        """(entry, start) of the earliest match, or None. final=False: the text is still growing,
        so a match that reaches its end may not be one yet ("bomb" of "bombastic")."""
        best = None
        for entry, rule in self.rules:
            for m in rule.finditer(text):
                if final or m.end() < len(text):
                    if best is None or m.start() < best[1]:
                        best = (entry, m.start())
                    break
        return best


class Guard:
    """The policy, the refusal message and the counters: serve.py asks it about every prompt of
    both routes (blocks_input) and passes every answer through it (watch)."""

    def __init__(self, policy, refusal, metrics):
        self.policy, self.refusal, self.metrics = policy, refusal, metrics

    def decide(self, stage, hit, entry):
        self.metrics.guard_decision(stage, "block" if hit else "pass")
        if hit:  # a request of several prompts (/v1/completions) may have several reasons
            reason = f"{stage} blocked: {hit[0]}"
            entry["guard"] = f"{entry['guard']}; {reason}" if "guard" in entry else reason
        return bool(hit)

    def blocks_input(self, prompt, entry):
        """Does the prompt match: a chat request's messages, or a completion's prompt text?
        (Counted; the log entry says which rule.)"""
        if not self.policy.rules:
            return False
        text = prompt if isinstance(prompt, str) else "\n".join(
            m["content"] for m in prompt if isinstance(m.get("content"), str))
        return self.decide("input", self.policy.search(text), entry)

    def watch(self, answer, entry):
        return Watched(self, answer, entry)


class Watched:
    """An answer (chat.Answer, or Refused) seen through the guard: .stream() yields only text
    checked against the policy, .text is what was sent, .finish_reason "content_filter" when the
    answer was cut. Everything else is the answer's own."""

    def __init__(self, guard, answer, entry):
        self.guard, self.answer, self.entry, self.cut = guard, answer, entry, False

    def __getattr__(self, name):
        return getattr(self.answer, name)

    @property
    def finish_reason(self):
        return "content_filter" if self.cut else self.answer.finish_reason

    def stream(self):
        policy, pieces = self.guard.policy, self.answer.stream()
        if not policy.rules:
            yield from pieces
            self.text = self.answer.text
            return
        text, sent = "", 0
        try:
            for piece in pieces:
                text += piece
                hit = policy.search(text, final=False)
                if hit:
                    break
                if len(text) - policy.hold > sent:  # the tail stays back: a match may grow there
                    yield text[sent:len(text) - policy.hold]
                    sent = len(text) - policy.hold
            else:
                hit = policy.search(text)
        finally:
            pieces.close()
        self.cut = self.guard.decide("output", hit, self.entry)
        rest = self.guard.refusal if self.cut else text[sent:]
        self.text = text[:sent] + rest
        if rest:
            yield rest


class Refused:
    """The answer to a blocked request: the refusal message, no token generated."""

    def __init__(self, refusal, ids):
        self.text, self.ids, self.n_tokens, self.finish_reason = refusal, ids, 0, "content_filter"

    def stream(self):
        yield self.text


# ---------------------------------------------------------------------------------------------
# The request log, private data masked
# ---------------------------------------------------------------------------------------------
MASKED = ("key", "email", "card", "phone")  # pii.py's kinds; IP addresses: the client's is kept
KEEP = ("time", "client")  # operational fields, never content (an IPv4 address looks like a phone)


class RequestLog:
    """One JSON object per line and request: time, client, path, status, tokens, latency and time
    to first token. The conversation itself (messages or prompt, and answer) only with
    --log-content: it may be private. Every
    string written goes through pii.redact first, whatever --log-content says (an error message or
    a guard's reason can quote the request too); metrics counts what was masked."""

    def __init__(self, where, content=False, metrics=None):
        self.where, self.content, self.metrics = where, content, metrics
        self.lock = threading.Lock()

    def mask(self, value):
        if isinstance(value, str):
            value, counts = pii.redact(value, MASKED)
            for kind, n in counts.items():
                if self.metrics:
                    self.metrics.masked(kind, n)
            return value
        if isinstance(value, list):
            return [self.mask(v) for v in value]
        if isinstance(value, dict):
            return {k: v if k in KEEP else self.mask(v) for k, v in value.items()}
        return value

    def write(self, entry):
        if not self.where:
            return
        if not self.content:
            entry = {k: v for k, v in entry.items() if k not in ("messages", "prompt", "answer")}
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        line = json.dumps({"time": now, **self.mask(entry)}) + "\n"
        with self.lock:
            if self.where == "-":
                sys.stderr.write(line)
                sys.stderr.flush()
            else:
                with open(self.where, "a", encoding="utf-8") as f:
                    f.write(line)
