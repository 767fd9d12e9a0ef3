"""Untrusted text made safe to print on a terminal.

File names, recipe keys, shard URLs and plugin names come from users, files and archives. Printed
raw, an ESC byte starts a terminal control sequence (``"\\x1b[2J"`` clears the screen, others set the
window title or rewrite what was printed before), CR overprints the line, BEL rings, and a line
separator splits one error line in two. :func:`printable` shows every such character as an escape
instead and keeps ordinary text, accents and scripts of every language included, unchanged.

A leaf module: it imports nothing from ``jepa``.
"""

from __future__ import annotations

import unicodedata

__all__ = ["printable"]

_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Bidirectional formatting characters: they reorder the text shown around them ("Trojan Source")."""

_ESCAPED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
"""Control characters (C0, DEL, C1), lone surrogates (not encodable), line and paragraph separators."""


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(name: str) -> str:
    """``name`` with every control character shown as an escape (``"\\x1b"``, ``"\\x07"``, ``"\\x0d"``,
    ``"\\u2028"``, ...) so that printing it cannot drive the terminal or break the line; other
    characters, non-ASCII letters included, are kept.

    Newlines and tabs are escaped too: apply it to one line (or one name) at a time.
    A backslash is not escaped, so the result is for reading, not for parsing back.
    """
    if name.isprintable():  # the common case: nothing to escape (isprintable is False for every escaped kind)
        return name
    return "".join(_escape(ch) if ch in _BIDI_CONTROLS or unicodedata.category(ch) in _ESCAPED_CATEGORIES else ch
                   for ch in name)
