"""The deploy protocol's frames, messages and order (sans-I/O), and the TLS pipe both ends run."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from motte.shared.control import Exit
from motte.shared.enarx_config import WorkloadConfig
from motte.shared.provision import (
    HEADER,
    MAX_CHUNK,
    MAX_MESSAGE,
    Abort,
    Deploy,
    Detach,
    EvidenceOffer,
    Frame,
    FrameReader,
    Hello,
    Order,
    Output,
    ProvisionError,
    Secret,
    Started,
    encode,
    encode_raw,
)
from motte.shared.tls_pipe import TlsPipe, TlsPipeError, client_context, server_context

DEPLOY = Deploy(WorkloadConfig(args=["a"]), 10, "ab" * 32, {3: "PEM"}, None, (Secret("env", "TOKEN", b"\0\xff"),))
MESSAGES = [
    Hello(bytes(range(32))),
    EvidenceOffer("snp", "snp", b"\x30\x00"),
    DEPLOY,
    Output(Frame.WASM, b"\0asm"),
    Started("cd" * 32, "ef" * 32, None),
    Output(Frame.STDOUT, b"out"),
    Output(Frame.STDERR, b""),
    Detach(),
    Exit(3, "exit", "why", ("0: frame",)),
    Abort("gave up"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_one_encoding(message: object) -> None:
    frame = encode(message)  # type: ignore[arg-type]
    reader = FrameReader("keep")
    # byte by byte: a frame split anywhere is reassembled
    parsed = [m for i in range(len(frame)) for m in reader.feed(frame[i : i + 1])]
    assert parsed == [message] and reader.pending == 0
    assert encode(parsed[0]) == frame


def test_secret_values_and_config_survive_as_sent() -> None:
    (parsed,) = FrameReader("tenant").feed(encode(DEPLOY))
    assert isinstance(parsed, Deploy)
    assert parsed.secrets == (Secret("env", "TOKEN", b"\0\xff"),) and parsed.config.args == ("a",)
    assert parsed.ca_bundles == {3: "PEM"}


@pytest.mark.parametrize(("frame", "error"), [
    (HEADER.pack(99, 0), "unknown frame type 99"),
    (HEADER.pack(Frame.WASM, MAX_CHUNK + 1), "WASM frame of"),
    (HEADER.pack(Frame.DEPLOY, MAX_MESSAGE + 1), "DEPLOY frame of"),
    (HEADER.pack(Frame.HELLO, 2) + b"{}", "malformed hello message: 'version' is missing"),
    (HEADER.pack(Frame.HELLO, 4) + b"nope", "malformed hello message"),
    (encode(Hello(b"\1" * 32)).replace(b'"version":1', b'"version":2'), "version must be 1"),
    (HEADER.pack(Frame.EXIT, 2) + b"{}", "malformed exit message"),
])
def test_malformed_frames_name_the_sender(frame: bytes, error: str) -> None:
    with pytest.raises(ProvisionError, match=f"the tenant sent .*{error}"):
        FrameReader("tenant").feed(frame)


def test_bad_deploy_fields_are_refused() -> None:
    payload = DEPLOY.payload()
    for change, error in [
        ({"secrets": [{"kind": "disk", "name": "x", "value": ""}]}, "kind must be 'file' or 'env'"),
        ({"secrets": [{"kind": "env", "name": "../x", "value": ""}]}, "name must be"),
        ({"secrets": [{"kind": "env", "name": "x", "value": "!!"}]}, "must be base64"),
        ({"wasm": {"size": 0, "sha256": "ab" * 32}}, "wasm.size"),
        ({"wasm": {"size": 1, "sha256": "AB" * 32}}, "wasm.sha256"),
        ({"config": {"files": [{"kind": "socket"}]}}, "config"),
    ]:
        with pytest.raises(ProvisionError, match=error):
            import json

            body = json.dumps({**payload, **change}).encode()
            FrameReader("tenant").feed(HEADER.pack(Frame.DEPLOY, len(body)) + body)


def test_the_order_both_sides_follow() -> None:
    tenant, keep = Order("tenant"), Order("keep")
    for sender, message in [("tenant", Hello(b"\0" * 32)), ("keep", EvidenceOffer("kvm", "nil", b"")),
                            ("tenant", DEPLOY), ("tenant", Output(Frame.WASM, b"x" * 4)),
                            ("tenant", Output(Frame.WASM, b"x" * 6)), ("keep", Started("a" * 64, "b" * 64, None)),
                            ("keep", Output(Frame.STDOUT, b"o")), ("tenant", Detach()),
                            ("keep", Output(Frame.STDERR, b"e")), ("keep", Exit(0, "exit"))]:
        (tenant.sent if sender == "tenant" else tenant.received)(message)  # type: ignore[arg-type]
        (keep.sent if sender == "keep" else keep.received)(message)  # type: ignore[arg-type]
    assert tenant.state == keep.state == "ended"


@pytest.mark.parametrize(("steps", "error"), [
    ([("keep", EvidenceOffer("kvm", "nil", b""))], "the keep sent evidence out of turn \\(session start\\)"),
    ([("tenant", Hello(b"\0" * 32)), ("tenant", DEPLOY)], "the tenant sent deploy out of turn"),
    ([("tenant", Hello(b"\0" * 32)), ("keep", EvidenceOffer("kvm", "nil", b"")), ("tenant", DEPLOY),
      ("tenant", Output(Frame.WASM, b"x" * 11))], "more workload bytes than it announced"),
    ([("tenant", Hello(b"\0" * 32)), ("keep", EvidenceOffer("kvm", "nil", b"")), ("tenant", DEPLOY),
      ("tenant", Output(Frame.WASM, b"x" * 9)), ("keep", Started("a" * 64, "b" * 64, None))],
     "the keep sent started out of turn \\(session sending\\)"),
    ([("tenant", Hello(b"\0" * 32)), ("keep", Output(Frame.STDOUT, b"early"))], "the keep sent stdout out of turn"),
])
def test_out_of_turn_is_an_error_naming_the_side(steps: list[tuple[str, object]], error: str) -> None:
    order = Order("keep")
    with pytest.raises(ProvisionError, match=error):
        for sender, message in steps:
            (order.sent if sender == "keep" else order.received)(message)  # type: ignore[arg-type]


def test_abort_ends_the_session_from_any_state() -> None:
    order = Order("tenant")
    order.sent(Hello(b"\0" * 32))
    order.received(Abort("no"))
    assert order.state == "ended"


def test_raw_frames_are_bounded() -> None:
    with pytest.raises(ValueError, match="at most"):
        encode_raw(Frame.STDOUT, b"x" * (MAX_CHUNK + 1))
    with pytest.raises(ValueError, match="raw bytes"):
        encode_raw(Frame.HELLO, b"")


def pipes() -> tuple[TlsPipe, TlsPipe]:
    server = TlsPipe(server_context(ec.generate_private_key(ec.SECP384R1())), server=True)
    client = TlsPipe(client_context(), server=False)
    flight = client.handshake()
    while flight or not (server.handshake_done and client.handshake_done):
        server.feed(flight)
        client.feed(server.handshake())
        flight = client.handshake()
    return server, client


def test_tls_pipe_both_ends_share_the_exporter_and_each_session_has_its_own() -> None:
    server, client = pipes()
    assert server.exporter() == client.exporter() and len(client.exporter()) == 32
    _, other_client = pipes()
    assert other_client.exporter() != client.exporter()
    assert server.feed(client.encrypt(b"hello " * 50_000)) == b"hello " * 50_000
    assert client.peer_spki() != other_client.peer_spki()  # each keep context has its own key


def test_tls_pipe_reports_tampering_and_close() -> None:
    server, client = pipes()
    record = bytearray(client.encrypt(b"secret"))
    record[-1] ^= 1
    with pytest.raises(TlsPipeError, match="TLS session failed"):
        server.feed(bytes(record))
    server, client = pipes()
    server.feed(client.close())
    assert server.peer_closed
