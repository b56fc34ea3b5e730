"""The control messages and their sequence (motte.shared.control): typed values, one canonical
encoding, a table both ends follow, and errors that name the side that broke the protocol."""

from __future__ import annotations

import json
from typing import Any

import pytest

from motte.outside.enarx_toml import parse_enarx_toml
from motte.shared.channel import canonical_json
from motte.shared.control import (
    MAX_PREOPENS,
    MESSAGES,
    SEQUENCE,
    Accepted,
    Bye,
    ConnectionFailed,
    ControlError,
    ControlMessage,
    Conversation,
    Exit,
    Launch,
    LaunchStreams,
    LaunchTerms,
    Phase,
    Stats,
)
from motte.shared.endpoint import Endpoint

CONFIG = parse_enarx_toml("""
args = ["--verbose"]
steward = "https://steward.example"
[env]
GREETING = "grüß dich"
[[files]]
kind = "stdin"
[[files]]
kind = "stdout"
[[files]]
kind = "stderr"
[[files]]
kind = "connect"
prot = "tls"
host = "api.example"
port = 443
""")
TERMS = LaunchTerms(
    wasm_size=1234, wasm_sha256="ab" * 32, config=CONFIG, dirs=("/data", "/srv"), memory_limit=64 << 20,
    timeout_ms=1500, ca_bundles={3: "-----BEGIN CERTIFICATE-----\n"}, steward_ca="STEWARD PEM",
)
STREAMS = LaunchStreams(wasm=1, stdio={0: 3, 1: 5, 2: 7}, dirs=(9, 11), cache_dir="/tmp/cache",
                        terminals=frozenset({1}))
LAUNCH = Launch(TERMS, STREAMS)


def over_the_wire(message: ControlMessage) -> dict[str, Any]:
    """What the peer's channel hands to its conversation: the canonical JSON, parsed."""
    value: dict[str, Any] = json.loads(canonical_json(message.to_message()))
    return value


@pytest.mark.parametrize("message", [
    LAUNCH, Accepted(12), ConnectionFailed(3, "[::1]:50211", "TLS handshake failed: http request"),
    Stats(cached=True, compile_us=1500), Exit(0, "exit"),
    Exit(134, "trap", "unreachable", ("0: 0x2a - main.wasm!f",)), Bye(),
], ids=lambda m: m.to_message()["op"])
def test_every_message_round_trips(message: ControlMessage) -> None:
    assert type(message).from_message(over_the_wire(message)) == message
    assert MESSAGES[message.to_message()["op"]] is type(message)


def test_launch_has_one_canonical_encoding() -> None:
    again = LaunchTerms(
        wasm_size=1234, wasm_sha256="ab" * 32, config=CONFIG, dirs=("/data", "/srv"), memory_limit=64 << 20,
        timeout_ms=1500, ca_bundles=dict(reversed(list({3: "-----BEGIN CERTIFICATE-----\n"}.items()))),
        steward_ca="STEWARD PEM",
    )
    assert again.canonical_bytes() == TERMS.canonical_bytes()
    parsed = LaunchTerms.from_message(json.loads(TERMS.canonical_bytes()))
    assert parsed.canonical_bytes() == TERMS.canonical_bytes()
    encoded = TERMS.canonical_bytes()
    assert encoded.isascii() and b"gr\\u00fc\\u00df dich" in encoded
    assert json.dumps(json.loads(encoded), sort_keys=True, separators=(",", ":")).encode() == encoded


def test_launch_terms_leave_out_what_depends_on_the_channel() -> None:
    moved = Launch(TERMS, LaunchStreams(wasm=41, stdio={0: 43, 1: 45, 2: 47}, dirs=(49, 51), cache_dir=None))
    assert moved.terms.canonical_bytes() == LAUNCH.terms.canonical_bytes()
    assert canonical_json(moved.to_message()) != canonical_json(LAUNCH.to_message())


def test_any_change_to_the_terms_changes_their_encoding() -> None:
    variants = [
        TERMS._replace(wasm_sha256="cd" * 32),
        TERMS._replace(config=CONFIG.with_extra(["--other"], {})),
        TERMS._replace(dirs=("/data",)),
        TERMS._replace(timeout_ms=None),
        TERMS._replace(ca_bundles={}),
        TERMS._replace(steward_ca=None),
    ]
    encodings = {v.canonical_bytes() for v in variants} | {TERMS.canonical_bytes()}
    assert len(encodings) == len(variants) + 1


def test_the_whole_sequence_as_both_ends_see_it() -> None:
    host, keep = Conversation("host"), Conversation("keep")
    for sender, receiver, message in [
        (host, keep, LAUNCH), (keep, host, Accepted(4)), (keep, host, Accepted(6)),
        (keep, host, Stats(cached=False, compile_us=9)), (keep, host, Exit(3, "exit")), (host, keep, Bye()),
    ]:
        assert receiver.received(sender.sending(message)) == message
    assert host.phase is keep.phase is Phase.DONE


def test_a_keep_that_refuses_the_launch_still_reports_its_exit() -> None:
    keep = Conversation("keep")
    with pytest.raises(ControlError, match=r"^the host sent an unknown control message 'start'"):
        keep.received({"op": "start"})
    host = Conversation("host")
    host.sending(LAUNCH)
    assert host.received(keep.sending(Exit(125, "error", "malformed launch"))) == Exit(125, "error", "malformed launch")


@pytest.mark.parametrize(("role", "before", "data", "error"), [
    ("keep", [], {"op": "bye"},
     r"the host sent 'bye' out of turn \(awaiting launch: it may send 'launch' or 'provision'\)"),
    ("host", [LAUNCH], {"op": "launch"}, r"the keep sent 'launch' out of turn"),
    ("keep", [LAUNCH], LAUNCH.to_message(), r"the host sent 'launch' out of turn \(running: it may send nothing\)"),
    ("host", [LAUNCH], {"op": "exited"}, r"the keep sent an unknown control message 'exited'"),
    ("host", [LAUNCH], {"no": "op"}, r"the keep sent an unknown control message None"),
    ("host", [LAUNCH], {"op": "bye"}, r"the keep sent 'bye' out of turn"),
    ("host", [LAUNCH], {"op": "stats", "cached": 1, "compile_us": 3}, r"the keep sent a malformed 'stats' message"),
    ("host", [LAUNCH], {"op": "exit", "status": 256, "reason": "exit", "message": "", "backtrace": []},
     r"the keep sent a malformed 'exit' message: status must be an integer from 0 to 255"),
    ("host", [LAUNCH], {"op": "exit", "status": 1, "reason": "crash", "message": "", "backtrace": []},
     r"malformed 'exit' message: reason must be one of"),
    ("host", [LAUNCH], {"op": "accepted", "stream": True}, r"malformed 'accepted' message: stream must be an integer"),
    ("host", [LAUNCH], {"op": "connection_failed", "fd": 3, "peer": "x" * 65, "reason": ""},
     r"malformed 'connection_failed' message: peer is longer than 64 characters"),
])
def test_out_of_order_unknown_and_malformed_messages_name_the_side(
    role: str, before: list[ControlMessage], data: dict[str, Any], error: str,
) -> None:
    conversation = Conversation(role)  # type: ignore[arg-type]
    for message in before:
        conversation.sending(message) if role == "host" else conversation.received(message.to_message())
    with pytest.raises(ControlError, match=error):
        conversation.received(data)


def test_stats_come_once_and_nothing_comes_after_the_exit() -> None:
    host = Conversation("host")
    host.sending(LAUNCH)
    host.received(Stats(False, 1).to_message())
    with pytest.raises(ControlError, match="the keep sent 'stats' out of turn"):
        host.received(Stats(False, 1).to_message())
    host.received(Exit(0, "exit").to_message())
    with pytest.raises(ControlError, match="the keep sent 'accepted' out of turn"):
        host.received(Accepted(8).to_message())


def test_a_side_cannot_send_out_of_turn_either() -> None:
    with pytest.raises(ControlError, match="the host sent 'bye' out of turn"):
        Conversation("host").sending(Bye())
    with pytest.raises(ControlError, match="the keep sent 'stats' out of turn"):
        Conversation("keep").sending(Stats(False, 1))


def test_the_table_says_who_sends_what() -> None:
    senders = {op: {s for (_, s, o) in SEQUENCE if o == op} for op in MESSAGES}
    assert senders == {"launch": {"host"}, "provision": {"host"}, "served": {"host"}, "bye": {"host"},
                       "serve": {"keep"}, "accepted": {"keep"}, "connection_failed": {"keep"}, "stats": {"keep"},
                       "exit": {"keep"}}
    reachable = {Phase.AWAITING_LAUNCH} | set(SEQUENCE.values())
    assert reachable == set(Phase)


def launch_with(terms: dict[str, Any] | None = None, streams: dict[str, Any] | None = None) -> dict[str, Any]:
    message = LAUNCH.to_message()
    message["terms"].update(terms or {})
    message["streams"].update(streams or {})
    return message


@pytest.mark.parametrize(("terms", "streams", "error"), [
    ({"wasm": {"size": 0, "sha256": "ab" * 32}}, None, "wasm.size must be an integer from 1"),
    ({"wasm": {"size": 8, "sha256": "AB" * 32}}, None, "wasm.sha256 must be 64 lower-case hex digits"),
    ({"wasm": {"size": 8}}, None, "'sha256' is missing"),
    ({"limits": {"memory": 100, "timeout_ms": None}}, None, "limits.memory must be an integer from 65536"),
    ({"limits": {"memory": 1 << 20, "timeout_ms": 1.5}}, None, "limits.timeout_ms must be an integer"),
    ({"limits": {"memory": 1 << 20, "timeout_ms": 1 << 53}}, None, "limits.timeout_ms must be an integer from 1 to"),
    ({"dirs": ["/data", ""]}, None, r"dirs\[1\] must be a path of 1 to 1024 bytes"),
    ({"dirs": ["/a\0b", "/srv"]}, None, "without NUL"),
    ({"dirs": ["/" + "x" * 1024, "/srv"]}, None, "longer than 1024"),
    ({"dirs": [f"/d{i}" for i in range(MAX_PREOPENS + 1)]}, None, "dirs has 65 entries, more than 64"),
    ({"dirs": ["/data"]}, None, "1 preopened directories but 2 streams"),
    (None, {"dirs": [9, "11"]}, r"streams.dirs\[1\] must be an integer"),
    (None, {"dirs": [9, 0]}, r"streams.dirs\[1\] must be an integer from 1"),
    ({"ca": [{"fd": 1, "pem": "x"}]}, None, "a CA bundle was sent for fd 1, which is no TLS connect file"),
    ({"ca": [{"fd": 3, "pem": "x"}, {"fd": 3, "pem": "y"}]}, None, "ca names fd 3 twice"),
    ({"ca": [{"fd": 3, "pem": "x" * (129 << 10)}]}, None, "the CA bundle for fd 3 is longer than 131072"),
    ({"ca": [{"fd": 3, "pem": "\u00e9" * (65 << 10)}]}, None, "the CA bundle for fd 3 exceeds 131072 bytes"),
    ({"steward_ca": 5}, None, "steward_ca must be a string"),
    ({"config": {"files": [{"kind": "socket"}]}}, None, "files"),
    (None, {"stdio": [{"fd": 0, "stream": 3}, {"fd": 1, "stream": 5}]}, r"no channel stream for fd 2 \(stderr\)"),
    (None, {"stdio": [{"fd": 0, "stream": 3}, {"fd": 1, "stream": 5}, {"fd": 2, "stream": 7}, {"fd": 3, "stream": 9}]},
     "a stdio stream was sent for fd 3, which is no stdio file"),
    (None, {"stdio": [{"fd": 0, "stream": 3}, {"fd": 0, "stream": 5}]}, "streams.stdio names fd 0 twice"),
    (None, {"cache_dir": 7}, "streams.cache_dir must be a string"),
    (None, {"terminals": [1, "2"]}, r"streams.terminals\[1\] must be an integer"),
    (None, {"terminals": [3]}, "streams.terminals names an fd that has no stdio stream"),
])
def test_the_keep_refuses_a_malformed_launch(terms: dict[str, Any] | None, streams: dict[str, Any] | None,
                                             error: str) -> None:
    with pytest.raises(ControlError, match=f"^the host sent a malformed 'launch' message: .*{error}"):
        Conversation("keep").received(launch_with(terms, streams))


def test_a_launch_without_a_steward_may_not_carry_its_ca() -> None:
    plain = parse_enarx_toml('[[files]]\nkind = "stdout"\n')
    terms = LaunchTerms(wasm_size=8, wasm_sha256="0" * 64, config=plain, steward_ca="PEM")
    with pytest.raises(ValueError, match="names no steward"):
        Launch(terms, LaunchStreams(wasm=1, stdio={0: 3})).to_message()


def test_the_sequence_runs_over_a_real_channel(pair: tuple[Endpoint, Endpoint]) -> None:
    host, keep = pair
    host_side, keep_side = Conversation("host"), Conversation("keep")
    host.send_control(**host_side.sending(LAUNCH))
    assert keep_side.received(keep.recv_control(timeout=5)) == LAUNCH
    keep.send_control(**keep_side.sending(Exit(7, "exit")))
    assert host_side.received(host.recv_control(timeout=5)) == Exit(7, "exit")
