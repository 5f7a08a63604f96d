"""pii.py: private data (personally identifiable information) found by pattern and replaced
by placeholders (a companion of prepare.py, chapter 4).

    text, counts = pii.redact("mail bob@example.com or call +1 415 555 0134", ["email", "phone"])
    # -> ("mail <EMAIL> or call <PHONE>", {"email": 1, "phone": 1})

The kinds: "key" (private key blocks, cloud and API tokens by their known prefixes, and the value
of an assignment such as `password = "..."`), "email", "card" (13 to 19 digits that pass the
Luhn check), "ip" (IPv4, and IPv6 written out in full; loopback, 0.0.0.0 and broadcast are kept)
and "phone" (international or national forms with 9 to 15 digits). They are applied in that
order, so a key's digits are never taken for a card and a card's never for a phone number.
Patterns find most, not all: names and postal addresses need a trained recogniser, which this
file does not pretend to be.

Imported by prepare.py. Imports nothing from the project.
"""
import re
from collections import Counter

PATTERNS = {  # kind: (pattern, placeholder); applied in this order (a key may hold digits)
    "key": (r"-----BEGIN [A-Z ]*PATTERNS KEY-----[\s\S]*?-----END [A-Z ]*PATTERNS KEY-----"
            r"|\b(?:AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36}|sk-[A-Za-z0-9_-]{20,}"
            r"|xox[baprs]-[A-Za-z0-9-]{10,})\b", "<KEY>"),
    "email": (r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b", "<EMAIL>"),
    "card": (r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])", "<CARD>"),
    "ip": (r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)"
           r"(?![\d.])|\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b", "<IP_ADDRESS>"),
    "phone": (r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}"
              r"(?:[ .-]\d{2,4}){1,3}(?![\w-])", "<PHONE>"),
}
# an assignment's value is replaced, not its name: password = "hunter2hunter2"
_SECRET_VALUE = re.compile(r"((?:api[_-]?key|secret|token|password)\s*[:=]\s*['\"]?)"
                           r"[A-Za-z0-9/+_\-]{12,}", re.IGNORECASE)


def luhn_ok(digits):
    """The check digit every payment card carries: from the right, double every second digit
    (subtracting 9 above 9), and the sum is a multiple of 10. 4111 1111 1111 1111 passes; a
    random 16-digit number passes one time in ten, so most order and part numbers are kept."""
    total = 0
    for i, d in enumerate(int(c) for c in reversed(digits)):
        total += (d * 2 - 9 if d > 4 else d * 2) if i % 2 else d
    return total % 10 == 0


def keep_address(ip):
    """Loopback, unspecified and broadcast addresses belong to no one: documentation is full of
    127.0.0.1 and 0.0.0.0, and replacing them would teach nothing private."""
    return ip.startswith("127.") or ip in ("0.0.0.0", "255.255.255.255")


def redact(text, kinds):
    """(text with private data replaced, {kind: count})."""
    counts = Counter()

    def replace(kind, placeholder):
        def sub(m):
            s = m.group(0)
            digits = re.sub(r"\D", "", s)
            if ((kind == "card" and not luhn_ok(digits)) or (kind == "ip" and keep_address(s))
                    or (kind == "phone" and not 9 <= len(digits) <= 15)):
                return s
            counts[kind] += 1
            return placeholder
        return sub

    for kind in (k for k in PATTERNS if k in kinds):
        pattern, placeholder = PATTERNS[kind]
        if kind == "key":
            text, n = _SECRET_VALUE.subn(r"\1<KEY>", text)
            counts[kind] += n
        text = re.sub(pattern, replace(kind, placeholder), text)
    return text, {k: v for k, v in counts.items() if v}
