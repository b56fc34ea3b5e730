"""Property tests of the channel protocol from both sides.

A hostile peer (a host attacking the keep, or a keep attacking the host) sends any frames: stream
ids across the whole u32 range, any type and flags, payloads larger than the credit, giant
lengths, credit that would overflow, data on closed streams and on streams that never existed,
floods of opens and of unknown streams. A reference model of the rules says, frame by frame,
which event (and which answer) each must give, or that it must end the channel with a
ProtocolError; the state must agree, and never raise anything else. Two honest peers, meanwhile,
never break the protocol whatever they do, and never hold more than the budget and the
initial credit of each open stream.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from tests.shared.channel_states import state_pair

from motte.shared import channel
from motte.shared.channel import (
    HEADER,
    MAX_PAYLOAD,
    MAX_REFUSED,
    MAX_STREAM_ID,
    MAX_STREAMS,
    MAX_WINDOW,
    PROTOCOL_VERSION,
    ChannelState,
    Control,
    CreditGranted,
    Data,
    Event,
    Frame,
    FrameDecoder,
    FrameType,
    Hello,
    ProtocolError,
    StreamEnded,
    StreamOpened,
    StreamRefused,
    StreamReset,
)

TYPES = {member.value for member in FrameType}
CASES = 400


class Broken(Exception):
    """The model's verdict: this frame must end the channel with a ProtocolError."""


@dataclass
class _ModelStream:
    credit: int  # what the peer may still send
    limit: int
    send: int  # what the victim may still send
    buffered: int = 0  # arrived, not yet consumed
    unacked: int = 0
    remote_eof: bool = False
    local_eof: bool = False


@dataclass
class Model:
    """The channel's rules, as the victim (``role``) must apply them to what its peer sends."""

    role: str
    window: int
    budget: int
    initial: int
    peer_window: int
    hello: bool  # the peer's HELLO came
    streams: dict[int, _ModelStream] = field(default_factory=dict)
    committed: int = 0
    next_id: int = 0
    peer_highest: int = 0
    refused: int = 0

    def __post_init__(self) -> None:
        self.next_id = 1 if self.role == "host" else 2

    def mine(self, stream: int) -> bool:
        return stream % 2 == self.next_id % 2

    def add(self, stream: int) -> None:
        self.streams[stream] = _ModelStream(self.initial, self.initial, self.peer_window)
        self.committed += self.initial

    def drop(self, stream: int) -> None:
        self.committed -= self.streams.pop(stream).limit

    def frame(self, stream: int, kind: int, flags: int, payload: bytes, length: int) -> tuple[list[Event], list[Frame]]:
        """The events one frame from the peer makes, and the frames the victim answers with."""
        if stream > MAX_STREAM_ID or length > MAX_PAYLOAD or kind not in TYPES or flags:
            raise Broken
        ftype = FrameType(kind)
        if stream == 0 and ftype is FrameType.HELLO:
            info = _json_object(payload) if not self.hello else {}
            window = info.get("window")
            if (info.get("protocol") != PROTOCOL_VERSION or info.get("role") not in ("host", "keep")
                    or info.get("role") == self.role or type(window) is not int or not 0 < window <= MAX_WINDOW):
                raise Broken
            self.hello, self.peer_window = True, window
            return [Hello(info)], []
        if not self.hello:
            raise Broken
        if stream == 0:
            if ftype is not FrameType.CONTROL:
                raise Broken
            message = _json_object(payload)
            if not isinstance(message.get("op"), str):
                raise Broken
            return [Control(message, len(payload))], []
        if ftype is FrameType.OPEN:
            meta = _json_object(payload) if not self.mine(stream) and stream not in self.streams else None
            if meta is None or len(self.streams) >= MAX_STREAMS or not isinstance(meta.get("kind"), str):
                raise Broken
            self.peer_highest = max(self.peer_highest, stream)
            self.add(stream)
            return [StreamOpened(stream, meta)], []
        state = self.streams.get(stream)
        if state is None:
            existed = stream < self.next_id if self.mine(stream) else stream <= self.peer_highest
            if ftype in (FrameType.RESET, FrameType.CREDIT) or existed:
                return [], []
            self.refused += 1
            if self.refused > MAX_REFUSED:
                raise Broken
            return [StreamRefused(stream, ftype)], [Frame(stream, FrameType.RESET, b"unknown stream")]
        if ftype is FrameType.DATA:
            if state.remote_eof or len(payload) > state.credit:
                raise Broken
            state.credit -= len(payload)
            state.buffered += len(payload)
            return [Data(stream, payload)], []
        if ftype is FrameType.EOF:
            if payload:
                raise Broken
            state.remote_eof = True
            if state.local_eof:
                self.drop(stream)
            return [StreamEnded(stream)], []
        if ftype is FrameType.RESET:
            self.drop(stream)
            return [StreamReset(stream, payload.decode("utf-8", "replace"))], []
        if ftype is FrameType.CREDIT:
            if len(payload) != 4 or state.send + struct.unpack("!I", payload)[0] > MAX_WINDOW:
                raise Broken
            state.send += struct.unpack("!I", payload)[0]
            return [CreditGranted(stream, state.send)], []
        raise Broken  # HELLO or CONTROL on a data stream

    def consume(self, stream: int, count: int) -> list[Frame]:
        state = self.streams.get(stream)
        if state is None or state.remote_eof:
            return []
        state.unacked += count
        if state.unacked < state.limit // 4:
            return []
        grant, state.unacked = state.unacked, 0
        growth = min(state.limit, self.window - state.limit, self.budget - self.committed)
        if growth > 0:
            state.limit += growth
            self.committed += growth
            grant += growth
        state.credit += grant
        return [Frame(stream, FrameType.CREDIT, struct.pack("!I", grant))]

    def open_local(self) -> int:
        stream, self.next_id = self.next_id, self.next_id + 2
        self.add(stream)
        return stream


def _json_object(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Broken from None
    if not isinstance(value, dict):
        raise Broken
    return value


# ---- what a hostile peer sends ----


def _weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``choices``, each drawn with its weight (``one_of`` merges equal strategies)."""

    def pick(draw: int) -> st.SearchStrategy[Any]:
        for weight, strategy in choices:
            if draw < weight:
                return strategy
            draw -= weight
        raise AssertionError("unreachable")

    return st.integers(0, sum(weight for weight, _ in choices) - 1).flatmap(pick)


# Mostly frames that keep the channel going (a few streams, valid types), so that sequences live
# long enough to reach the per-stream rules; now and then one that must end it.
# Stream ids: a few of the peer's (it opens them) and of the victim's (by their order: which side
# has odd ids depends on the victim's role), and any u32 now and then.
_ids = _weighted(
    (12, st.tuples(st.just("peer"), st.integers(0, 5))),  # 0-3 the peer opens first; 4, 5 not
    (3, st.tuples(st.just("own"), st.integers(0, 3))),
    (1, st.tuples(st.just("raw"), st.just(0))),
    (1, st.tuples(st.just("raw"), st.sampled_from([0, MAX_STREAM_ID - 1, MAX_STREAM_ID, MAX_STREAM_ID + 1,
                                                   2**32 - 1]))),
    (1, st.tuples(st.just("raw"), st.integers(0, 2**32 - 1))),
)
_kinds = _weighted(
    (6, st.just(FrameType.DATA)), (3, st.just(FrameType.CREDIT)), (2, st.just(FrameType.EOF)),
    (2, st.just(FrameType.RESET)), (2, st.just(FrameType.OPEN)), (1, st.just(FrameType.CONTROL)),
    (1, st.just(FrameType.HELLO)), (1, st.integers(0, 255)),
).map(int)
_flags = _weighted((20, st.just(0)), (1, st.integers(1, 255)))
_credits = st.one_of(st.integers(0, 4096), st.integers(MAX_WINDOW - 4096, MAX_WINDOW + 4096),
                     st.integers(2**32 - 4096, 2**32 - 1))
_sizes_of_data = _weighted((3, st.integers(0, 64)), (1, st.integers(0, 600)))
_opens = _weighted((10, st.just(b'{"kind":"accepted","fd":3}')),
                   (1, st.sampled_from([b'{"kind":1}', b"{}", b"[]", b"\xff"])))


_MISSING = object()
_hello_fields = st.fixed_dictionaries({
    "protocol": _weighted((8, st.just(PROTOCOL_VERSION)), (1, st.sampled_from([0, 2, "1", None, _MISSING]))),
    "role": _weighted((8, st.just("peer")), (1, st.sampled_from(["victim", "tenant", 1, _MISSING]))),
    "window": _weighted((8, st.integers(1, 4096)),
                        (1, st.sampled_from([0, -1, MAX_WINDOW, MAX_WINDOW + 1, True, 1.5, "16", _MISSING]))),
}).map(lambda fields: {key: value for key, value in fields.items() if value is not _MISSING})
_hellos = _weighted((6, _hello_fields.map(lambda fields: json.dumps(fields).encode())),
                    (1, st.sampled_from([b"[]", b"{", b"\xff"])))


@st.composite
def _frame(draw: st.DrawFn) -> tuple[Any, ...]:
    kind = draw(_kinds)
    if kind == FrameType.OPEN:
        payload = draw(_opens)
    elif kind == FrameType.CREDIT:
        payload = draw(st.one_of(_credits.map(lambda n: struct.pack("!I", n)), st.binary(max_size=6)))
    elif kind == FrameType.CONTROL:
        payload = draw(st.sampled_from([b'{"op":"x"}', b'{"op":2}', b"[1]", b"not json"]))
    elif kind == FrameType.HELLO:
        payload = draw(_hellos)
    elif kind == FrameType.DATA:  # mostly just within the stream's credit, or one byte beyond
        payload = draw(_weighted((4, st.tuples(st.just("credit"), st.integers(-8, 0))),
                                 (1, st.tuples(st.just("credit"), st.just(1))), (2, _sizes_of_data.map(b"d".__mul__))))
    else:
        payload = draw(st.sampled_from([b"", b"", b"why"]))
    flags = draw(_flags)
    return ("frame", draw(_ids), kind, flags, payload)


_actions = _weighted(
    (40, _frame()),
    (10, st.tuples(st.just("consume"), st.integers(0, 7), _sizes_of_data)),
    (3, st.tuples(st.just("open_local"))),
    (3, st.tuples(st.just("reset_local"), st.integers(0, 7))),
    (3, st.tuples(st.just("eof_local"), st.integers(0, 7))),
    (2, st.tuples(st.just("giant"), st.integers(MAX_PAYLOAD + 1, 2**32 - 1))),
    (1, st.tuples(st.just("flood_opens"), st.integers(MAX_STREAMS - 2, MAX_STREAMS + 1))),
    (2, st.tuples(st.just("flood_unknown"), st.integers(MAX_REFUSED - 2, MAX_REFUSED + 1))),
)


def _pick(model: Model, index: int) -> int:
    streams = sorted(model.streams)
    return streams[index % len(streams)] if streams else 1 + 2 * index


def _wire(action: tuple[Any, ...], model: Model) -> list[tuple[int, int, int, bytes, int]]:
    name = action[0]
    if name == "frame":
        _, (whose, number), kind, flags, payload = action
        own = 1 if model.role == "host" else 2
        stream = {"peer": 3 - own + 2 * number, "own": own + 2 * number}.get(whose, number)
        if isinstance(payload, tuple):  # ("credit", n): that many bytes more than the stream's credit
            state = model.streams.get(stream)
            payload = b"d" * max(0, (state.credit if state is not None else 8) + payload[1])
        if kind == FrameType.HELLO:  # the roles in a HELLO are drawn as "peer" and "victim"
            peer = "keep" if model.role == "host" else "host"
            payload = payload.replace(b'"peer"', f'"{peer}"'.encode()).replace(b'"victim"', f'"{model.role}"'.encode())
        return [(stream, kind, flags, payload, len(payload))]
    if name == "giant":
        return [(1, FrameType.DATA, 0, b"", action[1])]
    peer_ids = 2 if model.role == "host" else 1
    if name == "flood_opens":
        first = max(model.peer_highest + 2, peer_ids) | (peer_ids & 1)
        return [(first + 2 * i, FrameType.OPEN, 0, b'{"kind":"x"}', 12) for i in range(action[1])]
    return [(MAX_STREAM_ID - 1 + (peer_ids & 1), FrameType.EOF, 0, b"", 0)] * action[1]  # flood_unknown


def _run(role: str, sizes: tuple[int, int, int], hello: bytes | None, actions: list[tuple[Any, ...]]) -> None:
    """``sizes``: the initial credit, window and budget. With a ``hello``, the victim has not had
    the peer's HELLO yet: it comes first, after the first actions now and then."""
    initial, window, budget = sizes
    with patch.object(channel, "INITIAL_WINDOW", initial):  # small: the streams' credit grows
        if hello is None:
            host, keep = state_pair(window=window, budget=budget)
        else:
            host, keep = ChannelState("host", window, budget), ChannelState("keep", window, budget)
            host.send_hello()
            keep.send_hello()
    victim = keep if role == "keep" else host
    victim.outgoing_bytes()
    model = Model(role, window, budget, victim.initial_window, victim.initial_window, hello=hello is None)
    preamble: list[tuple[Any, ...]] = []
    if hello is not None:
        early = len(actions) % 3 == 0  # some actions come before the HELLO: each must end the channel
        preamble = [*actions[:2 * early], ("frame", ("raw", 0), FrameType.HELLO, 0, hello)]
        actions = actions[2 * early:]
    opens = [("frame", ("peer", number), FrameType.OPEN, 0, b'{"kind":"accepted"}') for number in range(4)]
    for action in preamble + opens + actions:  # the peer opens a few streams first: most frames are then for them
        name = action[0]
        if name in ("consume", "reset_local", "eof_local", "open_local"):
            _local(victim, model, action)
            continue
        for stream, kind, flags, payload, length in _wire(action, model):
            try:
                expected = model.frame(stream, kind, flags, payload, length)
            except Broken:
                expected = None
            try:
                events = victim.receive(HEADER.pack(stream, kind, flags, length) + payload)
            except ProtocolError as exc:
                assert expected is None, f"{role}: a frame the rules allow was refused: {(stream, kind, flags)}"
                event(f"cut off: {re.sub(r'[0-9]+', 'N', str(exc))}")  # which rules the cases reach
                return  # the channel ended cleanly: the peer is cut off
            assert expected is not None, f"{role}: a frame the rules forbid was taken: {(stream, kind, flags, length)}"
            assert events == expected[0]
            assert FrameDecoder().feed(victim.outgoing_bytes()) == expected[1]
            assert victim.committed == model.committed
            assert victim.committed <= budget + len(model.streams) * victim.initial_window


def _local(victim: ChannelState, model: Model, action: tuple[Any, ...]) -> None:
    name = action[0]
    if name == "open_local":
        if len(model.streams) >= MAX_STREAMS or not model.hello:
            with pytest.raises(ProtocolError, match=r"too many open streams|before the HELLO exchange"):
                victim.open_stream("connect")
            return
        assert victim.open_stream("connect") == model.open_local()
        FrameDecoder().feed(victim.outgoing_bytes())
        return
    stream = _pick(model, action[1])
    if name == "consume":
        state = model.streams.get(stream)
        count = min(action[2], state.buffered) if state is not None else 0
        if state is not None:
            state.buffered -= count
        granted = victim.consumed(stream, count)
        expected = model.consume(stream, count)
        assert FrameDecoder().feed(victim.outgoing_bytes()) == expected
        assert granted == bool(expected)
    elif name == "reset_local":
        if stream in model.streams:
            model.drop(stream)
        victim.reset_stream(stream, "local")
        victim.outgoing_bytes()
    else:  # eof_local
        state = model.streams.get(stream)
        if state is not None and not state.local_eof:
            state.local_eof = True
            if state.remote_eof:
                model.drop(stream)
        victim.send_eof(stream)
        victim.outgoing_bytes()
    assert victim.committed == model.committed


_settings = settings(max_examples=CASES, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                     phases=[phase for phase in Phase if phase is not Phase.explain])  # (explaining takes minutes)


# (initial credit, window, budget): the credit starts small, so streams grow (to the window or
# within the budget) from the few hundred bytes the frames carry.
_sizes = st.integers(1, 64).flatmap(
    lambda initial: st.tuples(st.just(initial), st.integers(1, 4096), st.integers(0, 48 * initial)))
_fresh = _weighted((4, st.none()), (1, _hellos))  # now and then, the victim has no HELLO yet


@_settings
@given(st.lists(_actions, max_size=40), _sizes, _fresh)
def test_the_keep_survives_a_hostile_host(actions: list[tuple[Any, ...]], sizes: tuple[int, int, int],
                                          hello: bytes | None) -> None:
    _run("keep", sizes, hello, actions)


@_settings
@given(st.lists(_actions, max_size=40), _sizes, _fresh)
def test_the_host_survives_a_hostile_keep(actions: list[tuple[Any, ...]], sizes: tuple[int, int, int],
                                          hello: bytes | None) -> None:
    _run("host", sizes, hello, actions)


@settings(max_examples=CASES, deadline=None)
@given(st.binary(max_size=4096))
def test_any_bytes_give_events_or_a_protocol_error_never_another_exception(data: bytes) -> None:
    _, keep = state_pair()
    try:
        keep.receive(data)
    except ProtocolError:
        pass


# ---- two honest peers ----

_honest = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.booleans()),
        st.tuples(st.just("send"), st.booleans(), st.integers(0, 9), st.integers(1, 3000)),
        st.tuples(st.just("consume"), st.booleans(), st.integers(0, 9), st.integers(1, 3000)),
        st.tuples(st.just("eof"), st.booleans(), st.integers(0, 9)),
        st.tuples(st.just("reset"), st.booleans(), st.integers(0, 9)),
        st.tuples(st.just("deliver"), st.booleans(), st.integers(1, 5000)),
    ),
    max_size=60,
)


@settings(max_examples=CASES, deadline=None)
@given(_honest, _sizes)
def test_honest_peers_never_break_the_protocol_nor_the_budget(
        actions: list[tuple[Any, ...]], sizes: tuple[int, int, int]) -> None:
    initial, window, budget = sizes
    with patch.object(channel, "INITIAL_WINDOW", initial):
        sides = state_pair(window=window, budget=budget)
    ended: set[tuple[int, int]] = set()  # (side, stream): that side sent EOF on it
    wires = [b"", b""]  # bytes in flight towards sides[0], sides[1]
    sent = [dict[int, bytes](), dict[int, bytes]()]  # per receiving side: what was sent to it on each stream
    got = [dict[int, bytearray](), dict[int, bytearray]()]  # what it received and has not consumed
    taken = [dict[int, bytes](), dict[int, bytes]()]  # what its consumer took
    for action in actions:
        name, which = action[0], int(action[1])
        me = sides[which]
        wires[1 - which] += me.outgoing_bytes()
        streams = sorted(s for s in me._streams)
        stream = streams[action[2] % len(streams)] if len(action) > 2 and streams else None
        if name == "open" and len(streams) < 20:
            me.open_stream("x")
        elif name == "send" and stream is not None and (which, stream) not in ended:
            credit = me.send_window(stream)
            data = bytes([stream & 0xFF]) * action[3]  # more than the credit, often: the rest waits
            queued = me.send_data(stream, data)
            assert queued == min(len(data), credit)
            sent[1 - which][stream] = sent[1 - which].get(stream, b"") + data[:queued]
        elif name == "consume" and stream is not None and got[which].get(stream):
            count = min(action[3], len(got[which][stream]))
            taken[which][stream] = taken[which].get(stream, b"") + bytes(got[which][stream][:count])
            del got[which][stream][:count]
            me.consumed(stream, count)
        elif name == "eof" and stream is not None:
            me.send_eof(stream)
            ended.add((which, stream))
        elif name == "reset" and stream is not None:
            me.reset_stream(stream, "done")
        elif name == "deliver":
            wires[1 - which] += me.outgoing_bytes()
            chunk, wires[which] = wires[which][: action[2]], wires[which][action[2]:]
            for event in me.receive(chunk):  # never a ProtocolError between honest peers
                if isinstance(event, Data):
                    got[which].setdefault(event.stream, bytearray()).extend(event.data)
                elif isinstance(event, StreamOpened):
                    got[which][event.stream] = bytearray()
        for side in sides:
            assert side.committed <= budget + len(side._streams) * side.initial_window
            assert all(state.recv_window >= 0 and state.send_window >= 0 for state in side._streams.values())
    for which in (0, 1):  # in order, and nothing but what was sent
        for stream, data in taken[which].items():
            assert sent[which].get(stream, b"").startswith(data + bytes(got[which].get(stream, b"")))
