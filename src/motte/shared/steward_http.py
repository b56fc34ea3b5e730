"""HTTP/1.1 framing for the keep's request to its Steward, sans-I/O.

The keep does its own TLS to the Steward (the host relays the bytes), so it frames the request and
reads the response itself: the URL the workload config names, the request bytes, and a bounded
reader of the response. The bodies are the DER of :mod:`motte.shared.steward_protocol`.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit

from motte.shared.steward_protocol import PKCS10, StewardProtocolError

MAX_RESPONSE_HEAD = 16 * 1024
MAX_RESPONSE_BODY = 64 * 1024


class StewardUrl(NamedTuple):
    host: str
    port: int
    path: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 443 else f"{host}:{self.port}"


def parse_steward_url(url: str) -> StewardUrl:
    """Enarx.toml's ``steward``: an https URL. Plain http would let the host rewrite the answer."""
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError as exc:
        raise StewardProtocolError(f"steward URL {url!r}: {exc}") from exc
    if parts.scheme != "https" or not parts.hostname:
        raise StewardProtocolError(f"steward URL {url!r} must be https://host[:port][/path]")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise StewardProtocolError(f"steward URL {url!r}: no user, query or fragment allowed")
    return StewardUrl(parts.hostname, port, parts.path or "/")


def build_request(url: StewardUrl, csr_der: bytes) -> bytes:
    head = (
        f"POST {url.path} HTTP/1.1\r\n"
        f"Host: {url.host_header}\r\n"
        f"Content-Type: {PKCS10}\r\n"
        f"Content-Length: {len(csr_der)}\r\n"
        "Accept: application/octet-stream\r\n"
        "User-Agent: motte-keep\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + csr_der


class ResponseReader:
    """Sans-I/O reader of one HTTP/1.1 response: feed bytes as they arrive, then read ``status``,
    ``headers`` and ``body`` once ``complete``. Content-Length, chunked, and read-to-EOF bodies;
    every size bounded."""

    def __init__(self, max_body: int = MAX_RESPONSE_BODY) -> None:
        self.max_body = max_body
        self._buf = bytearray()
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self.body = b""
        self.complete = False
        self._head_done = False
        self._length: int | None = None
        self._chunked = False
        self._eof = False

    def feed(self, data: bytes) -> None:
        if self.complete:
            return
        self._buf += data
        self._advance()

    def feed_eof(self) -> None:
        self._eof = True
        self._advance()
        if not self.complete:
            raise StewardProtocolError("Steward response: connection closed before the response was complete")

    def _advance(self) -> None:
        if not self._head_done:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_RESPONSE_HEAD:
                    raise StewardProtocolError("Steward response: header section too large")
                return
            self._parse_head(bytes(self._buf[:end]))
            del self._buf[: end + 4]
            self._head_done = True
        if self._chunked:
            self._advance_chunked()
        elif self._length is not None:
            if len(self._buf) >= self._length:
                self._finish(bytes(self._buf[: self._length]))
        else:
            if len(self._buf) > self.max_body:
                raise StewardProtocolError(f"Steward response: body larger than {self.max_body} bytes")
            if self._eof:
                self._finish(bytes(self._buf))

    def _parse_head(self, head: bytes) -> None:
        try:
            lines = head.decode("latin-1").split("\r\n")
            version, code, *reason = lines[0].split(" ", 2)
            if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
                raise ValueError(lines[0])
            self.status, self.reason = int(code), reason[0] if reason else ""
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep or not name or name != name.strip():
                    raise ValueError(line)
                self.headers[name.lower()] = value.strip()
        except ValueError as exc:
            raise StewardProtocolError(f"Steward response: malformed HTTP response head ({exc})") from exc
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        length = self.headers.get("content-length")
        if length is not None and not self._chunked:
            if not length.isdigit() or int(length) > self.max_body:
                raise StewardProtocolError(f"Steward response: bad or too large Content-Length {length!r}")
            self._length = int(length)

    def _advance_chunked(self) -> None:
        body = bytearray()
        pos = 0
        buf = self._buf
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return
            size_text = bytes(buf[pos:eol]).split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError as exc:
                raise StewardProtocolError("Steward response: bad chunk size") from exc
            if len(body) + size > self.max_body:
                raise StewardProtocolError(f"Steward response: body larger than {self.max_body} bytes")
            if size == 0:
                if buf.find(b"\r\n\r\n", eol) < 0:
                    return  # the (possibly empty) trailer section is not complete yet
                self._finish(bytes(body))
                return
            if len(buf) < eol + 2 + size + 2:
                return
            body += buf[eol + 2 : eol + 2 + size]
            pos = eol + 2 + size + 2

    def _finish(self, body: bytes) -> None:
        self.body = body
        self.complete = True
