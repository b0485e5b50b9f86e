"""Text safe to print on a terminal: every name and path the command shows."""

from __future__ import annotations

import unicodedata
from typing import Final

# Characters that would act on a terminal rather than show: controls (escape
# sequences, newlines), format characters (bidirectional overrides), line and
# paragraph separators, and the lone surrogates of undecodable bytes.
_UNPRINTABLE: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SHORT_ESCAPES: Final = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"  # the undecodable byte itself
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: one line, nothing it would obey.

    Every control, format or separator character (and a backslash, so the
    escapes read back unambiguously) becomes a backslash escape: ``\\n``,
    ``\\x1b``, ``\\u202e``; an undecodable byte shows as ``\\xNN``. A name
    cannot clear the screen, retitle the window or forge a line of output.
    Every name and path the command prints goes through here.
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(
        _SHORT_ESCAPES.get(c)
        or (_escape(c) if unicodedata.category(c) in _UNPRINTABLE else c)
        for c in text
    )
