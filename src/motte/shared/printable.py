"""Text from outside motte (evidence, a CSR, a client, a workload config), made safe to print.

Whatever such text holds, once printed it stays on its own line and cannot drive the terminal:
every character that could move the cursor, start an escape sequence, change the title, hide or
reorder text is shown as a visible escape instead (``\\x1b``, ``\\x9b``, ``\\u202e``). Rich
markup is another matter: text given to rich goes in as a ``rich.text.Text``, never as markup.
"""

from __future__ import annotations

import unicodedata

#: C0 and C1 controls and DEL (Cc), format characters such as bidi overrides and zero-width ones
#: (Cf), lone surrogates (Cs), and the line and paragraph separators (Zl, Zp).
_UNSAFE = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with each unsafe character replaced by its escape; safe text comes back unchanged.
    With ``limit``, at most that many characters of it, and "…" when there was more."""
    cut = "" if limit is None or len(text) <= limit else "…"
    if cut:
        text = text[:limit]
    if text.isascii() and text.isprintable():
        return text + cut  # the common case, without a look at each character
    return "".join(_escape(c) if unicodedata.category(c) in _UNSAFE else c for c in text) + cut


def _escape(c: str) -> str:
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
