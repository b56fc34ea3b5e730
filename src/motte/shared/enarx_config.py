"""The workload config, in Enarx's ``Enarx.toml`` format (README.md, section ``Enarx.toml``):
optional ``steward``, ``args``, an ``[env]`` table and ``[[files]]`` tables whose position is the
workload's WASI fd; motte adds ``steward_ca`` and a connect file's ``ca``.

Here are its values and their checks. The keep runs them on the JSON the untrusted host sends
(:meth:`WorkloadConfig.from_json`), as strictly as the host checks the TOML a user wrote; reading
that TOML, and finding the line of each key for error messages, is the host's
(``motte.outside.enarx_toml``). Pure: no I/O.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from motte.shared.errors import MotteError
from motte.shared.printable import printable

FileKind = Literal["null", "stdin", "stdout", "stderr", "listen", "connect"]
Protocol = Literal["tls", "tcp"]

# Literal-typed lookups, so validated strings get their Literal type without casts.
_KINDS: dict[str, FileKind] = {
    "null": "null",
    "stdin": "stdin",
    "stdout": "stdout",
    "stderr": "stderr",
    "listen": "listen",
    "connect": "connect",
}
_PROTOCOLS: dict[str, Protocol] = {"tls": "tls", "tcp": "tcp"}
_DEFAULT_PORTS: dict[Protocol, int] = {"tls": 443, "tcp": 80}
_DEFAULT_ADDR = "::"

# The keys each kind takes, in the order hints list them.
_KIND_KEYS: dict[FileKind, tuple[str, ...]] = {
    "null": ("kind", "name"),
    "stdin": ("kind", "name"),
    "stdout": ("kind", "name"),
    "stderr": ("kind", "name"),
    "listen": ("kind", "name", "prot", "addr", "port"),
    "connect": ("kind", "name", "prot", "host", "port", "ca"),
}
_FILE_KEYS = ("kind", "name", "prot", "addr", "host", "port", "ca")
_TOP_KEYS = ("steward", "steward_ca", "args", "env", "files")

# FD_COUNT and FD_NAMES describe the files motte actually opened, so they override the user's env.
# They are Enarx's contract for workloads with a config file: without one the environment is only
# what the command line gives (as wasmtime's).
FD_COUNT = "FD_COUNT"
FD_NAMES = "FD_NAMES"
_NAME_SEPARATOR = ":"


class ConfigError(MotteError):
    """An invalid workload config. ``source``, ``line`` and ``path`` locate it for callers and tests."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        source: str | None = None,
        line: int | None = None,
        path: str | None = None,
    ):
        super().__init__(message, hint=hint)
        self.source = source
        self.line = line
        self.path = path


class FrozenEnv(Mapping[str, str]):
    """An immutable, hashable str -> str mapping, so a WorkloadConfig can be frozen and hashable."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | None = None):
        self._items: dict[str, str] = dict(items or {})

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return f"FrozenEnv({self._items!r})"


class FileSpec(NamedTuple):
    """One pre-opened file; file *i* of a config is the workload's WASI fd *i*."""

    kind: FileKind
    name: str
    prot: Protocol | None = None
    addr: str | None = None  # listen only
    host: str | None = None  # connect only
    port: int | None = None  # listen/connect, defaults applied
    ca: str | None = None  # connect + tls only: path of an extra CA bundle (motte extension)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "name": self.name}
        for key in ("prot", "addr", "host", "port", "ca"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


_EMPTY_ENV: Mapping[str, str] = MappingProxyType({})
_DEFAULT_FILES = (FileSpec("stdin", "stdin"), FileSpec("stdout", "stdout"), FileSpec("stderr", "stderr"))


class WorkloadConfig:
    """A validated workload config. The defaults are those of an Enarx.toml that sets nothing;
    :func:`default_config` is the config of a workload without one.

    Immutable and hashable. (A plain class rather than a dataclass: this module is on the keep's
    start-up path, where importing and applying ``dataclasses`` costs several milliseconds.)
    """

    __slots__ = ("args", "env", "fd_env", "files", "steward", "steward_ca")
    steward: str | None
    steward_ca: str | None  # path of the PEM CA bundle the keep trusts for the Steward (motte extension)
    args: tuple[str, ...]
    env: Mapping[str, str]
    files: tuple[FileSpec, ...]
    fd_env: bool  # FD_COUNT and FD_NAMES join the workload's environment (a config from a file)

    def __init__(self, steward: str | None = None, args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 files: Sequence[FileSpec] = _DEFAULT_FILES, steward_ca: str | None = None, fd_env: bool = True):
        # Normalise what callers pass (lists, dicts) so the instance really is immutable and hashable.
        object.__setattr__(self, "steward", steward)
        object.__setattr__(self, "steward_ca", steward_ca)
        object.__setattr__(self, "args", tuple(args))
        object.__setattr__(self, "env", env if isinstance(env, FrozenEnv) else FrozenEnv(env or {}))
        object.__setattr__(self, "files", tuple(files))
        object.__setattr__(self, "fd_env", fd_env)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"WorkloadConfig is immutable: cannot set {name}")

    def _key(self) -> tuple[object, ...]:
        return (self.steward, self.args, self.env, self.files, self.steward_ca, self.fd_env)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WorkloadConfig) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"WorkloadConfig(steward={self.steward!r}, args={self.args!r}, env={self.env!r}, files={self.files!r}"
                + (f", steward_ca={self.steward_ca!r}" if self.steward_ca is not None else "")
                + (")" if self.fd_env else ", fd_env=False)"))

    def fd_names(self) -> str:
        return _NAME_SEPARATOR.join(f.name for f in self.files)

    def workload_env(self) -> dict[str, str]:
        """The workload's environment: its env, plus FD_COUNT and FD_NAMES when ``fd_env`` (motte's
        win, as in Enarx)."""
        env = dict(self.env)
        if not self.fd_env:
            return env
        env[FD_COUNT] = str(len(self.files))
        env[FD_NAMES] = self.fd_names()
        return env

    def with_extra(self, args: Sequence[str] = (), env: Mapping[str, str] = _EMPTY_ENV) -> WorkloadConfig:
        """Add the command line's trailing args and ``--env`` values: args are appended, env merged with
        the command line winning. They are validated like the file's."""
        if isinstance(args, str):
            raise TypeError("args must be a sequence of strings, not a string")
        report = _Reporter("command line", None)
        extra_args = [_check_arg(a, ("args", i), report) for i, a in enumerate(args)]
        extra_env = _check_env(dict(env), report)
        merged = {**self.env, **extra_env}
        return WorkloadConfig(self.steward, (*self.args, *extra_args), FrozenEnv(merged), self.files, self.steward_ca,
                              self.fd_env)

    def to_json(self) -> dict[str, Any]:
        """A plain JSON-able dict, with every default resolved, for the host <-> keep channel."""
        out: dict[str, Any] = {}
        if self.steward is not None:
            out["steward"] = self.steward
        if self.steward_ca is not None:
            out["steward_ca"] = self.steward_ca
        out["args"] = list(self.args)
        out["env"] = dict(self.env)
        out["files"] = [f.to_json() for f in self.files]
        if not self.fd_env:
            out["fd_env"] = False
        return out

    @classmethod
    def from_json(cls, data: Any, *, source: str = "workload config") -> WorkloadConfig:
        """Validate a dict from :meth:`to_json` (or anything else: the host is untrusted).

        The rules are the TOML ones; anything invalid raises :class:`ConfigError` naming the field.
        ``fd_env``, which no TOML has, may be there too.
        """
        fd_env = data.get("fd_env", True) if isinstance(data, dict) else True
        if not isinstance(fd_env, bool):
            raise ConfigError(f"{source}: fd_env must be true or false", source=source, path="fd_env")
        if isinstance(data, dict) and "fd_env" in data:
            data = {key: value for key, value in data.items() if key != "fd_env"}
        config = validate(data, source)
        if fd_env:
            return config
        return WorkloadConfig(config.steward, config.args, config.env, config.files, config.steward_ca, fd_env=False)


def default_config() -> WorkloadConfig:
    """The config of a workload without Enarx.toml: stdin, stdout and stderr, and an environment of
    the command line's ``--env`` values only."""
    return WorkloadConfig(fd_env=False)


# --- validation ------------------------------------------------------------------------------------

#: Where a value is in the config: ("files", 3, "prot") is the prot of the fourth file.
KeyPath = tuple[str | int, ...]
#: A TOML bare key: written without quotes in the config, and in messages.
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if BARE_KEY.fullmatch(part) else _quote(part)
            out += f".{key}" if out else key
    return out


def _quote(value: str, limit: int = 60) -> str:
    """A string for a message: quoted, shortened, control characters escaped (it may be hostile)."""
    return printable(json.dumps(value[:limit], ensure_ascii=False)) + ("…" if len(value) > limit else "")


def _show(value: Any) -> str:
    """A value of the expected type, for "got ..." in a message."""
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _describe(value: Any) -> str:
    """A value of the wrong type, for "got ..." in a message: its TOML type, and the value if short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {_show(value)}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value!r}"
    if isinstance(value, str):
        return f"string {_quote(value)}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return {"datetime": "a date-time", "date": "a date", "time": "a time"}.get(
        type(value).__name__, f"a {type(value).__name__}"
    )


def _did_you_mean(key: str, valid: Sequence[str]) -> str:
    import difflib  # only for error messages: kept off the start-up path

    close = difflib.get_close_matches(key, valid, n=1)
    return f'did you mean "{close[0]}"? ' if close else ""


class _Reporter:
    """Builds ConfigErrors for one source; ``locate`` maps a key path to its line, if known."""

    def __init__(self, source: str, locate: Callable[[KeyPath], int | None] | None):
        self.source = source
        self.locate = locate

    def error(
        self, path: KeyPath, message: str, *, hint: str | None = None, at: KeyPath | None = None
    ) -> ConfigError:
        line = self.locate(at if at is not None else path) if self.locate else None
        where = f"{self.source}:{line}" if line is not None else self.source
        shown = _format_path(path)
        text = f"{where}: {shown}: {message}" if shown else f"{where}: {message}"
        return ConfigError(text, hint=hint, source=self.source, line=line, path=shown or None)


def _has_control(value: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in value)


def _is_utf8(value: str) -> bool:
    # Lone surrogates (from a hostile JSON peer, or text decoded with surrogateescape) cannot be
    # encoded for the workload.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _string(value: Any, path: KeyPath, report: _Reporter, what: str = "a string") -> str:
    if not isinstance(value, str):
        raise report.error(path, f"must be {what}, got {_describe(value)}")
    if not _is_utf8(value):
        raise report.error(path, "must be valid Unicode (it has a lone surrogate)")
    return value


def _check_arg(value: Any, path: KeyPath, report: _Reporter) -> str:
    text = _string(value, path, report)
    if "\0" in text:
        # WASI hands args to the workload as NUL-terminated strings.
        raise report.error(path, "must not contain a NUL character")
    return text


def _check_env(value: Any, report: _Reporter) -> dict[str, str]:
    if not isinstance(value, dict):
        raise report.error(("env",), f"must be a table of strings, got {_describe(value)}")
    env: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise report.error(("env",), f"keys must be strings, got {_describe(key)}")
        if not _is_utf8(key):
            raise report.error(("env",), f"key {_quote(key)} must be valid Unicode (it has a lone surrogate)")
        path: KeyPath = ("env", key)
        # WASI passes the environment as NUL-terminated "KEY=VALUE" strings.
        if not key or "=" in key or "\0" in key:
            raise report.error(path, 'a variable name must be non-empty, without "=" or NUL')
        text = _string(item, path, report)
        if "\0" in text:
            raise report.error(path, "must not contain a NUL character")
        env[key] = text
    return env


def _check_steward(value: Any, report: _Reporter) -> str:
    path: KeyPath = ("steward",)
    url = _string(value, path, report, "an https:// URL")
    hint = 'e.g. steward = "https://steward.example.com"'
    if _has_control(url) or any(c.isspace() for c in url):
        raise report.error(path, f"must be an https:// URL, got {_quote(url)}", hint=hint)
    try:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        host = parts.hostname
        if parts.port == 0:  # reading .port raises ValueError for a port that is not a number
            raise ValueError("port 0")
    except ValueError:
        raise report.error(path, f"is not a valid URL: {_quote(url)}", hint=hint) from None
    if parts.scheme.lower() != "https" or not host:
        # The Steward issues the keep's certificate; it must be reached over an authenticated channel.
        raise report.error(path, f"must be an https:// URL, got {_quote(url)}", hint=hint)
    return url


def _check_name(value: Any, path: KeyPath, report: _Reporter) -> str:
    name = _string(value, path, report)
    if not name:
        raise report.error(path, "must not be empty")
    if _NAME_SEPARATOR in name:
        raise report.error(
            path,
            f'must not contain ":", got {_quote(name)}',
            hint='":" separates the names in FD_NAMES; choose another name',
        )
    if _has_control(name):
        raise report.error(path, f"must not contain control characters, got {_quote(name)}")
    return name


def _check_host(value: Any, path: KeyPath, report: _Reporter, what: str) -> str:
    text = _string(value, path, report)
    if not text or _has_control(text) or any(c.isspace() for c in text):
        raise report.error(path, f"must be {what}, got {_quote(text)}")
    return text


def _check_port(value: Any, path: KeyPath, report: _Reporter) -> int:
    what = "an integer from 1 to 65535"
    if isinstance(value, bool) or not isinstance(value, int):
        hint = f"write port = {value} without quotes" if isinstance(value, str) and value.isdigit() else None
        raise report.error(path, f"must be {what}, got {_describe(value)}", hint=hint)
    if not 1 <= value <= 65535:
        raise report.error(path, f"must be {what}, got {value}")
    return value


def _check_file(entry: Any, index: int, report: _Reporter) -> FileSpec:
    base: KeyPath = ("files", index)
    if not isinstance(entry, dict):
        raise report.error(
            base,
            f"must be a table, got {_describe(entry)}",
            hint='write each file as a [[files]] table with a kind, e.g. kind = "stdin"',
        )
    kinds_hint = "kind is one of " + ", ".join(_KINDS)
    if "kind" not in entry:
        raise report.error((*base, "kind"), "is required", hint=kinds_hint)
    raw_kind = _string(entry["kind"], (*base, "kind"), report)
    kind = _KINDS.get(raw_kind)
    if kind is None:
        raise report.error((*base, "kind"), f"unknown kind {_quote(raw_kind)}", hint=kinds_hint)

    allowed = _KIND_KEYS[kind]
    takes = f"a {kind} entry takes " + ", ".join(allowed)
    for key in entry:
        if not isinstance(key, str):
            raise report.error(base, f"keys must be strings, got {_describe(key)}")
        if key not in _FILE_KEYS:
            raise report.error((*base, key), "unknown key", hint=_did_you_mean(key, allowed) + takes)
        if key not in allowed:
            raise report.error((*base, key), f'is not valid for kind "{kind}"', hint=takes)

    if kind in ("null", "stdin", "stdout", "stderr"):
        name = _check_name(entry["name"], (*base, "name"), report) if "name" in entry else kind
        return FileSpec(kind, name)

    if "prot" not in entry:
        raise report.error(
            (*base, "prot"),
            f'is required for kind "{kind}"',
            hint='add prot = "tls", which Enarx assumed, or prot = "tcp"',
            at=base,
        )
    raw_prot = _string(entry["prot"], (*base, "prot"), report)
    prot = _PROTOCOLS.get(raw_prot)
    if prot is None:
        raise report.error((*base, "prot"), f'must be "tls" or "tcp", got {_quote(raw_prot)}')
    port = _check_port(entry["port"], (*base, "port"), report) if "port" in entry else _DEFAULT_PORTS[prot]

    if kind == "listen":
        if "name" not in entry:
            raise report.error(
                (*base, "name"),
                'is required for kind "listen"',
                hint="the workload finds its socket by this name in FD_NAMES",
            )
        name = _check_name(entry["name"], (*base, "name"), report)
        addr = (
            _check_host(entry["addr"], (*base, "addr"), report, "an address to listen on")
            if "addr" in entry
            else _DEFAULT_ADDR
        )
        return FileSpec(kind, name, prot=prot, addr=addr, port=port)

    return _check_connect(entry, base, prot, port, report)


def _check_connect(entry: dict[Any, Any], base: KeyPath, prot: Protocol, port: int, report: _Reporter) -> FileSpec:
    """The rest of a ``connect`` file, whose keys, ``prot`` and ``port`` are checked."""
    if "host" not in entry:
        raise report.error((*base, "host"), 'is required for kind "connect"', hint="the host to connect to")
    host = _check_host(entry["host"], (*base, "host"), report, "a host name or address")
    if "name" in entry:
        name = _check_name(entry["name"], (*base, "name"), report)
    elif _NAME_SEPARATOR in host:
        # The name defaults to the host, and an IPv6 address would split FD_NAMES.
        raise report.error(
            (*base, "name"),
            f'must be set, since host {_quote(host)} contains ":"',
            hint='":" separates the names in FD_NAMES; set a name',
            at=(*base, "host"),
        )
    else:
        name = host
    ca = None
    if "ca" in entry:
        ca = _string(entry["ca"], (*base, "ca"), report, "a path to a CA bundle")
        if not ca or _has_control(ca):
            raise report.error((*base, "ca"), f"must be a path to a CA bundle, got {_quote(ca)}")
        if prot != "tls":
            raise report.error(
                (*base, "ca"), 'is only valid with prot = "tls"', hint='set prot = "tls" or remove ca'
            )
    return FileSpec("connect", name, prot=prot, host=host, port=port, ca=ca)


def _check_unique_names(files: tuple[FileSpec, ...], report: _Reporter) -> None:
    """The workload finds its files by name in FD_NAMES, so no two may share one."""
    first: dict[str, int] = {}
    for fd, spec in enumerate(files):
        earlier = first.setdefault(spec.name, fd)
        if earlier != fd:
            raise report.error(("files", fd, "name"), f"{_quote(spec.name)} is already the name of files[{earlier}]",
                               hint="give each file its own name: FD_NAMES lists them for the workload")


def validate(data: Any, source: str, locate: Callable[[KeyPath], int | None] | None = None) -> WorkloadConfig:
    """The config ``data`` (parsed TOML, or JSON from :meth:`WorkloadConfig.to_json`) holds, checked.

    Errors name ``source`` and, where ``locate`` knows it, the line of the key that is wrong."""
    report = _Reporter(source, locate)
    if not isinstance(data, dict):
        raise report.error((), f"must be a table, got {_describe(data)}")
    top_hint = "the top-level keys are " + ", ".join(_TOP_KEYS)
    for key in data:
        if not isinstance(key, str):
            raise report.error((), f"keys must be strings, got {_describe(key)}")
        if key not in _TOP_KEYS:
            raise report.error((key,), "unknown key", hint=_did_you_mean(key, _TOP_KEYS) + top_hint)

    steward = _check_steward(data["steward"], report) if "steward" in data else None
    steward_ca = None
    if "steward_ca" in data:
        steward_ca = _string(data["steward_ca"], ("steward_ca",), report, "a path to a CA bundle")
        if not steward_ca or _has_control(steward_ca):
            raise report.error(("steward_ca",), f"must be a path to a CA bundle, got {_quote(steward_ca)}")
        if steward is None:
            raise report.error(("steward_ca",), "is only valid with steward",
                               hint='set steward = "https://..." or remove steward_ca')

    raw_args = data.get("args", [])
    if not isinstance(raw_args, list):
        raise report.error(
            ("args",),
            f"must be an array of strings, got {_describe(raw_args)}",
            hint='e.g. args = ["--verbose"]',
        )
    args = tuple(_check_arg(a, ("args", i), report) for i, a in enumerate(raw_args))

    env = _check_env(data.get("env", {}), report)

    # As in Enarx, a config without `files` has no files; only a missing Enarx.toml means stdio.
    raw_files = data.get("files", [])
    if not isinstance(raw_files, list):
        raise report.error(
            ("files",),
            f"must be an array of tables, got {_describe(raw_files)}",
            hint="write [[files]] tables",
        )
    files = tuple(_check_file(entry, i, report) for i, entry in enumerate(raw_files))
    _check_unique_names(files, report)
    return WorkloadConfig(steward=steward, args=args, env=FrozenEnv(env), files=files, steward_ca=steward_ca)
