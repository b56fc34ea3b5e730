"""Read an ``Enarx.toml``: the TOML text a user wrote, into a checked workload config.

The config's values and checks are :mod:`motte.shared.enarx_config` (the keep runs those on the
JSON the host sends); reading TOML is the host's alone. Semantic errors name the file, the line and
the key (``Enarx.toml:12: files[3].prot: ...``). ``tomllib`` reports lines only for syntax errors,
so :class:`_Locator` scans the (already valid) TOML text once to map each key path to the line it
is written on.
"""

from __future__ import annotations

import bisect
import contextlib
import re
import tomllib

from motte.shared.enarx_config import BARE_KEY, ConfigError, KeyPath, WorkloadConfig, validate

_SCALAR = re.compile(r"[^,\]}#\r\n]+")
MAX_CONFIG_SIZE = 1 << 20  # an Enarx.toml is a few hundred bytes; the launch message carries at most 1 MiB


def parse_enarx_toml(text: str, source: str = "Enarx.toml") -> WorkloadConfig:
    """Parse and validate the text of an Enarx.toml. ``source`` names it in error messages."""
    # Editors on Windows may save a byte-order mark, which tomllib rejects; it is not content.
    text = text.removeprefix("\ufeff")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        line = _toml_error_line(message, text)
        where = f"{source}:{line}" if line is not None else source
        raise ConfigError(f"{where}: invalid TOML: {message}", source=source, line=line) from None
    except RecursionError:  # tomllib recurses once per level of nested arrays and tables
        raise ConfigError(f"{source}: invalid TOML: arrays or tables nested too deeply", source=source) from None
    return validate(data, source, _Locator(text).line_of)


def _toml_error_line(message: str, text: str) -> int | None:
    m = re.search(r"\(at line (\d+), column \d+\)", message)
    if m:
        return int(m.group(1))
    if "at end of document" in message:
        return max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
    return None


# --- finding the line of a key ---------------------------------------------------------------------


class _ScanError(Exception):
    """The scanner met something it does not understand; the lines found so far still serve."""


class _Locator:
    """Maps key paths of a valid TOML document to the line each is written on.

    A small scanner that understands just enough TOML to skip values: strings of all four kinds,
    arrays and inline tables (whose elements and keys it records too), comments and table headers.
    ``[[files]]`` headers count up so path ``("files", 3, "prot")`` is the prot of the fourth entry.
    """

    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.lines: dict[KeyPath, int] = {}
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self._aot_index: dict[KeyPath, int] = {}
        # It only runs on text tomllib accepted; should it still get lost, what it found so far serves.
        with contextlib.suppress(_ScanError, IndexError, ValueError, RecursionError):
            self._scan()

    def line_of(self, path: KeyPath) -> int | None:
        """The line of ``path``, or else of its nearest enclosing key or table that is written down."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def _line(self, pos: int) -> int:
        return bisect.bisect_right(self._line_starts, pos)

    def _record(self, path: KeyPath, pos: int) -> None:
        self.lines.setdefault(path, self._line(pos))

    def _peek(self, s: str) -> bool:
        return self.text.startswith(s, self.pos)

    def _skip_blank(self, newlines: bool) -> None:
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c in " \t" or (newlines and c in "\r\n"):
                self.pos += 1
            elif newlines and c == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    def _expect(self, s: str) -> None:
        if not self._peek(s):
            raise _ScanError(f"expected {s!r} at {self.pos}")
        self.pos += len(s)

    def _scan(self) -> None:
        table: KeyPath = ()
        while True:
            self._skip_blank(newlines=True)
            if self.pos >= len(self.text):
                return
            start = self.pos
            array = self._peek("[[")
            if array or self._peek("["):
                self.pos += 2 if array else 1
                table = self._resolve_header(self._key(), array=array)
                self._skip_blank(newlines=False)
                self._expect("]]" if array else "]")
                self._record(table, start)
            else:
                self._key_value(table)

    def _resolve_header(self, keys: tuple[str, ...], *, array: bool) -> KeyPath:
        # Each component that names an array of tables refers to its latest element.
        path: KeyPath = ()
        for key in keys[:-1]:
            path += (key,)
            if path in self._aot_index:
                path += (self._aot_index[path],)
        path += (keys[-1],)
        if array:
            self._aot_index[path] = self._aot_index.get(path, -1) + 1
            path += (self._aot_index[path],)
        return path

    def _key_value(self, table: KeyPath) -> None:
        start = self.pos
        keys = self._key()
        for i in range(1, len(keys) + 1):
            self._record(table + keys[:i], start)
        self._skip_blank(newlines=False)
        self._expect("=")
        self._skip_blank(newlines=False)
        self._value(table + keys)

    def _key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self._skip_blank(newlines=False)
            start = self.pos
            c = self.text[self.pos]
            if c == "'":
                self._string()
                parts.append(self.text[start + 1 : self.pos - 1])
            elif c == '"':
                self._string()
                # Let tomllib undo the escapes, so the key matches the parsed dict's.
                parts.extend(tomllib.loads(self.text[start : self.pos] + " = 0"))
            else:
                m = BARE_KEY.match(self.text, self.pos)
                if not m:
                    raise _ScanError(f"expected a key at {self.pos}")
                parts.append(m.group())
                self.pos = m.end()
            self._skip_blank(newlines=False)
            if not self._peek("."):
                return tuple(parts)
            self.pos += 1

    def _string(self) -> None:
        text = self.text
        for quote in ('"""', "'''"):
            if self._peek(quote):
                self.pos += 3
                while not self._peek(quote):
                    if self.pos >= len(text):
                        raise _ScanError("unterminated string")
                    self.pos += 2 if quote == '"""' and text[self.pos] == "\\" else 1
                # Up to two quotes may sit right before the closing three.
                run = 3
                while run < 5 and self.pos + run < len(text) and text[self.pos + run] == quote[0]:
                    run += 1
                self.pos += run
                return
        quote = text[self.pos]
        self.pos += 1
        while text[self.pos] != quote:
            if text[self.pos] in "\r\n":
                raise _ScanError("unterminated string")
            self.pos += 2 if quote == '"' and text[self.pos] == "\\" else 1
        self.pos += 1

    def _value(self, path: KeyPath) -> None:
        c = self.text[self.pos]
        if c in "\"'":
            self._string()
        elif c == "[":
            self.pos += 1
            index = 0
            while True:
                self._skip_blank(newlines=True)
                if self._peek("]"):
                    self.pos += 1
                    return
                self._record((*path, index), self.pos)
                self._value((*path, index))
                index += 1
                self._skip_blank(newlines=True)
                if self._peek(","):
                    self.pos += 1
                elif not self._peek("]"):
                    raise _ScanError(f"expected ',' or ']' at {self.pos}")
        elif c == "{":
            self.pos += 1
            while True:
                self._skip_blank(newlines=True)
                if self._peek("}"):
                    self.pos += 1
                    return
                self._key_value(path)
                self._skip_blank(newlines=True)
                if self._peek(","):
                    self.pos += 1
                elif not self._peek("}"):
                    raise _ScanError(f"expected ',' or '}}' at {self.pos}")
        else:
            # Numbers, booleans, dates: run to the next delimiter (a date-time may hold a space).
            m = _SCALAR.match(self.text, self.pos)
            if not m:
                raise _ScanError(f"expected a value at {self.pos}")
            self.pos = m.end()
