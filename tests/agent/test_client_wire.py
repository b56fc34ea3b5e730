"""The tenant's agent client on the wire, against real aiohttp servers (the host agent's own
stack): heartbeats answered while the client waits, a server's pings answered with their payload,
what the client does with a text message or a message over the limit, and the API and a session
over TLS (https)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from motte.outside.agent_api import MAX_MESSAGE, KeepRequest
from motte.tenant.agent_client import AgentClient, AgentError, SessionClosed
from tests.agent.conftest import AgentFactory, PairBackend
from tests.agent.test_relay import accept, launched, round_trip
from tests.serving import serving

Handler = Callable[[web.WebSocketResponse], Awaitable[None]]


@contextlib.contextmanager
def ws_server(handler: Handler | None = None, *, heartbeat: float | None = None,
              ssl_context: ssl.SSLContext | None = None,
              app: web.Application | None = None) -> Iterator[tuple[str, list[object]]]:
    """An aiohttp server (``app``, or one whose session route runs ``handler``); yields its URL
    and the close codes of the sessions ``handler`` ran."""
    notes: list[object] = []

    async def session(request: web.Request) -> web.WebSocketResponse:
        assert handler is not None
        ws = web.WebSocketResponse(heartbeat=heartbeat, autoping=heartbeat is not None)
        await ws.prepare(request)
        await handler(ws)
        if ws.close_code is not None:
            notes.append(ws.close_code)
        return ws

    application = app
    if application is None:
        application = web.Application()
        application.router.add_get("/v1/keeps/{id}/session", session)

    async def serve(stop: asyncio.Event, on_ready: Callable[[str], None]) -> None:
        runner = web.AppRunner(application)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = runner.addresses[0][1]
        on_ready(f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}")
        await stop.wait()
        await runner.cleanup()

    with serving(serve, "ws server") as url:
        yield url, notes


def test_the_client_answers_heartbeats_while_it_waits() -> None:
    async def quiet_then_speak(ws: web.WebSocketResponse) -> None:
        await asyncio.sleep(1.0)  # five heartbeats: aiohttp closes the session if one goes unanswered
        await ws.send_bytes(b"still there")
        await ws.receive()

    with ws_server(quiet_then_speak, heartbeat=0.2) as (url, notes), AgentClient(url).session("k") as session:
        assert session.receive() == b"still there"
    assert notes == [1000]


def test_pings_are_answered_with_their_payload() -> None:
    async def ping_and_report(ws: web.WebSocketResponse) -> None:
        await ws.ping(b"payload-1")
        pong = await ws.receive()
        assert pong.type == WSMsgType.PONG
        await ws.send_bytes(b"pong: " + pong.data)
        await ws.receive()

    with ws_server(ping_and_report) as (url, notes), AgentClient(url).session("k") as session:
        assert session.receive() == b"pong: payload-1"
    assert notes == [1000]


@pytest.mark.parametrize(("send", "error", "ends"), [
    (lambda ws: ws.send_str("text"), "sent a text message", {1003}),
    # refused from the frame's header: the client may close before the server has sent the payload
    (lambda ws: ws.send_bytes(bytes(MAX_MESSAGE + 1)), f"a message is larger than {MAX_MESSAGE} bytes",
     {1009, "lost"}),
])
def test_what_a_session_does_not_take(send: Callable[[web.WebSocketResponse], Awaitable[None]], error: str,
                                      ends: set[object]) -> None:
    async def misbehave(ws: web.WebSocketResponse) -> None:
        try:
            await send(ws)
            await ws.receive()
        except ConnectionError:
            ended.append("lost")

    ended: list[object] = []
    with ws_server(misbehave) as (url, notes), AgentClient(url).session("k") as session, \
            pytest.raises(SessionClosed, match=error):
        session.receive()
    assert len(ended + notes) == 1 and (ended + notes)[0] in ends


def test_the_api_and_a_session_over_tls(make_agent: AgentFactory, tmp_path: Path) -> None:
    server_context, client_context = tls_contexts(tmp_path)
    pair = PairBackend()
    agent = make_agent({"pair": pair})

    app = agent.app()
    app.on_startup.append(lambda _: agent.start())
    app.on_cleanup.append(lambda _: agent.close())
    with ws_server(ssl_context=server_context, app=app) as (url, _):
        assert url.startswith("https://")
        client = AgentClient(url, ssl_context=client_context)
        assert client.info()["backends"]["pair"]["supported"] is True
        record, keep = launched(client, pair, KeepRequest(detach=True))
        with client.session(record.id) as session:
            round_trip(session, keep, accept(keep), b"over TLS", b"and back")
        with pytest.raises(AgentError, match="CERTIFICATE_VERIFY_FAILED"):
            AgentClient(url).info()  # the default trust does not know this certificate
    assert keep.closed.is_set()


def tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a self-signed certificate for 127.0.0.1, and a client one trusting it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    return server, ssl.create_default_context(cafile=str(cert_path))
