"""Text from the other side of a trust boundary, made safe to print on one line."""

from __future__ import annotations


def printable(text: str, limit: int = 200) -> str:
    """``text`` shortened to ``limit`` characters, with every character that is not printable
    (newlines, terminal escapes, bidirectional controls) shown as an escape: a peer cannot
    forge log lines or drive the terminal."""
    short = text[:limit]
    shown = "".join(c if c.isprintable() and c != "\\" else _escape(c) for c in short)
    return shown + ("…" if len(text) > limit else "")


def _escape(char: str) -> str:
    if char == "\\":
        return "\\\\"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
