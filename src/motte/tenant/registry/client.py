"""An HTTPS client of the registry's API: one keep-alive connection, the Meta headers of every
answer, bodies read within the length they must have, and refusals turned into one-line errors."""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple

from motte.registry.formats import FormatError, Meta, Route, parse_content_digest
from motte.shared.errors import MotteError
from motte.shared.printable import printable

CHUNK = 1 << 20
TIMEOUT = 60.0

#: progress(bytes done, bytes in all): called as a transfer goes on
Progress = Callable[[int, int], None]


class RegistryError(MotteError):
    """The registry refused, could not be reached, or answered something that does not check out."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class RegistryTrust:
    """How to reach a registry: the CAs its TLS certificate must chain to (None: the system's),
    a client certificate for private repositories (a Steward-issued one), a token for writes."""

    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    token: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise RegistryError(f"cannot load the registry CA {self.ca_file}: {exc}", hint="a PEM file") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.client_cert is not None:
            try:
                context.load_cert_chain(self.client_cert, self.client_key)
            except (OSError, ssl.SSLError) as exc:
                raise RegistryError(f"cannot load the client certificate {self.client_cert}: {exc}") from None
        return context


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def split_host(host: str) -> tuple[str, int | None]:
    """``name``, ``name:port``, ``[v6]`` or ``[v6]:port`` (a slug's host) -> name, port."""
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and (name.endswith("]") or ":" not in name):
        return name.strip("[]"), int(port)
    return host.strip("[]"), None


class RegistryClient:
    def __init__(self, host: str, trust: RegistryTrust | None = None, *, timeout: float = TIMEOUT) -> None:
        self.host = host
        self.trust = trust or RegistryTrust()
        name, port = split_host(host)
        self._conn = http.client.HTTPSConnection(name, port, timeout=timeout, context=self.trust.ssl_context(),
                                                 blocksize=CHUNK)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- requests ---
    def _send(self, method: str, route: Route, body: bytes | IO[bytes] | None = None,
              headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        all_headers = dict(headers or {})
        if self.trust.token is not None:
            all_headers["Authorization"] = f"Bearer {self.trust.token}"
        # A kept-alive connection the server has closed meanwhile fails on first use: once, a
        # request whose body can be sent again is sent again on a new connection.
        retries = 1 if body is None or isinstance(body, bytes) else 0
        while True:
            try:
                return self._exchange(method, route.url_path(), body, all_headers)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self._conn.close()
                if retries:
                    retries -= 1
                    continue
                raise RegistryError(f"{self.host}: {method} {route.url_path()} failed: {exc}") from None
            except ssl.SSLCertVerificationError as exc:
                self._conn.close()
                raise RegistryError(f"{self.host}: its TLS certificate is not trusted: {exc.verify_message}",
                                    hint="give the registry's CA with --ca") from None
            except (OSError, http.client.HTTPException) as exc:
                self._conn.close()
                raise RegistryError(f"{self.host}: {method} {route.url_path()} failed: {exc}") from None

    def _exchange(self, method: str, path: str, body: bytes | IO[bytes] | None,
                  headers: dict[str, str]) -> http.client.HTTPResponse:
        try:
            self._conn.request(method, path, body=body, headers=headers)
        except (BrokenPipeError, ConnectionResetError):
            # The server may have refused before reading the whole body, and closed: what it said
            # is the answer (and if it said nothing, the error stands).
            try:
                return self._conn.getresponse()
            except (OSError, http.client.HTTPException):
                pass
            raise
        return self._conn.getresponse()

    def request(self, method: str, route: Route, body: bytes | IO[bytes] | None = None,
                headers: dict[str, str] | None = None, *, limit: int = 1 << 20) -> Reply:
        """A request whose answer is small (at most ``limit`` bytes); refusals raise."""
        response = self._send(method, route, body, headers)
        data = self._read(response, limit)
        reply = Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        if reply.status >= 400:
            raise self._refusal(method, route, reply)
        return reply

    def _read(self, response: http.client.HTTPResponse, limit: int) -> bytes:
        try:
            data = response.read(limit + 1)
            if len(data) > limit:
                self._conn.close()
                raise RegistryError(f"{self.host}: an answer larger than {limit} bytes")
            return data
        except (OSError, http.client.HTTPException) as exc:
            self._conn.close()
            raise RegistryError(f"{self.host}: the answer was cut short: {exc}") from None

    def _refusal(self, method: str, route: Route, reply: Reply) -> RegistryError:
        message, code = f"HTTP {reply.status}", None
        try:
            value = json.loads(reply.body)
            if isinstance(value, dict) and isinstance(value.get("error"), str):
                message, code = value["error"], str(value.get("code"))
        except ValueError:
            if reply.body:
                message = reply.body.decode("utf-8", "replace")
        return RegistryError(f"{self.host}: {printable(message, 300)}", status=reply.status, code=code)

    def stream(self, route: Route, expected: Meta, progress: Progress | None = None) -> Iterator[bytes]:
        """GET a node, checking that its headers are ``expected``'s Meta; yields its bytes, at most
        ``expected.length`` of them. (The caller hashes them: the headers are the registry's word.)"""
        response = self._send("GET", route)
        headers = {k.lower(): v for k, v in response.getheaders()}
        if response.status != 200:
            raise self._refusal("GET", route, Reply(response.status, headers, self._read(response, 1 << 16)))
        where = f"{self.host}: /{'/'.join(route.path)}"
        self._check_meta(headers, expected, where)
        done = 0
        while done < expected.length:
            try:
                chunk = response.read(min(CHUNK, expected.length - done))
            except (OSError, http.client.HTTPException) as exc:
                self._conn.close()
                raise RegistryError(f"{where}: the download was cut short: {exc}") from None
            if not chunk:
                self._conn.close()
                raise RegistryError(f"{where}: the download was cut short at {done} of {expected.length} bytes")
            done += len(chunk)
            if progress is not None:
                progress(done, expected.length)
            yield chunk

    def _check_meta(self, headers: dict[str, str], expected: Meta, where: str) -> None:
        if headers.get("content-type") != expected.type:
            raise RegistryError(f"{where}: served as {printable(headers.get('content-type', 'nothing'), 80)}, "
                                f"but the tree says {expected.type}")
        if headers.get("content-length") != str(expected.length):
            length = printable(headers.get("content-length", "?"), 40)
            raise RegistryError(f"{where}: served with a length of {length}, but the tree says {expected.length}")
        try:
            claimed = parse_content_digest(headers.get("content-digest", ""))
        except FormatError as exc:
            raise RegistryError(f"{where}: {exc}") from None
        if any(expected.digest.get(name, value) != value for name, value in claimed.items()):
            raise RegistryError(f"{where}: its Content-Digest is not the digest the tree names")

