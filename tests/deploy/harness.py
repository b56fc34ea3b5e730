"""A minimal host side for a provisioned keep, for the keep's and the tenant's tests: it sends
``provision``, relays one tenant session on a channel stream, answers ``serve``, collects the exit."""

from __future__ import annotations

import threading
from typing import Any

from motte.shared.control import PROVISION_STREAM, Bye, Conversation, Exit, Provision, Serve, Served, Stats
from motte.shared.endpoint import ChannelClosed, Endpoint


class StreamChannel:
    """A :class:`motte.tenant.deploy.session.ByteChannel` on one channel stream ."""

    def __init__(self, endpoint: Endpoint, stream: int, tap: list[bytes] | None = None):
        self.endpoint = endpoint
        self.stream = stream
        self.tap = tap

    def send(self, data: bytes) -> None:
        if self.tap is not None:
            self.tap.append(data)
        self.endpoint.write(self.stream, data)

    def receive(self) -> bytes:
        data = self.endpoint.read(self.stream, 1 << 20)
        if self.tap is not None:
            self.tap.append(data)
        return data


class ProvisionedHost:
    def __init__(self, endpoint: Endpoint, provision: Provision):
        self.endpoint = endpoint
        self.conversation = Conversation("host")
        self.exit: Exit | None = None
        self.serve: Serve | None = None
        self.messages: list[Any] = []
        endpoint.send_control(**self.conversation.sending(provision))
        self._thread = threading.Thread(target=self._control, daemon=True)
        self._thread.start()

    def session(self, tap: list[bytes] | None = None) -> StreamChannel:
        return StreamChannel(self.endpoint, self.endpoint.open_stream(PROVISION_STREAM), tap)

    def _control(self) -> None:
        try:
            self._converse()
        except ChannelClosed:
            pass  # the test stopped the keep

    def _converse(self) -> None:
        while True:
            message = self.conversation.received(self.endpoint.recv_control(timeout=120))
            self.messages.append(message)
            if isinstance(message, Serve):
                self.serve = message
                self.endpoint.send_control(**self.conversation.sending(Served(None)))
            elif isinstance(message, Exit):
                self.exit = message
                self.endpoint.send_control(**self.conversation.sending(Bye()))
                return
            else:
                assert isinstance(message, Stats)

    def join(self, timeout: float = 60) -> Exit:
        self._thread.join(timeout)
        assert self.exit is not None, "the keep reported no exit"
        return self.exit
