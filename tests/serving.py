"""Running an asyncio service (the Steward, the host agent) in a thread of its own for a test."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: ``serve(stop, on_ready)``: serves until ``stop`` is set, calling ``on_ready(url)`` once it listens.
Serve = Callable[[asyncio.Event, Callable[[str], None]], Awaitable[None]]


@contextmanager
def serving(serve: Serve, name: str, join_timeout: float = 30) -> Iterator[str]:
    """Run ``serve`` on an event loop in a background thread; yields the URL it reported. At the
    end it is stopped (as by SIGTERM), and an error it raised, then or at start, fails the test."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        box["stop"] = asyncio.Event()

        def on_ready(url: str) -> None:
            box["url"] = url
            ready.set()

        await serve(box["stop"], on_ready)

    def run() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # surfaced to the test below
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name=f"{name}-test", daemon=True)
    thread.start()
    ready.wait(30)
    try:
        if "error" in box:
            raise box["error"]
        yield box["url"]
    finally:
        if "stop" in box:
            loop.call_soon_threadsafe(box["stop"].set)
        thread.join(join_timeout)
        loop.close()
        assert not thread.is_alive(), f"the {name} did not stop"
        if "error" in box:
            raise box["error"]
