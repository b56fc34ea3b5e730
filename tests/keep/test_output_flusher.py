"""The keep's stdout flusher: stop() ends it wherever it is, and what is pending is flushed."""

from __future__ import annotations

import threading

from motte.keep.wasi.files import ChannelOutputs


class RecordingOutput:
    """Stands in for a ChannelOutput: buffered, with something pending, counting flushes."""

    buffered = True

    def __init__(self) -> None:
        self.flushes = 0
        self.on_pending = None

    def pending(self) -> bool:
        return True

    def flush(self) -> None:
        self.flushes += 1


class StopLandsAfterTheWait(threading.Event):
    """The flusher's stop event. Its first timed-out wait holds the flusher until the real stop()
    has run its sets, then reports the timeout: stop() lands just after the flusher's wait and
    before the flusher clears its wake-up, the race that hung runs at their end."""

    def __init__(self) -> None:
        super().__init__()
        self.in_window = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        result = super().wait(timeout)
        if not result and not self.in_window.is_set():
            self.in_window.set()
            super().wait(10)  # until stop() sets this; its wake-up is set with it (it already was)
        return result


def test_stop_ends_the_flusher_even_when_it_lands_just_after_the_flushers_wait() -> None:
    outputs = ChannelOutputs(interval=0.001)
    output = RecordingOutput()
    outputs.add(output)  # type: ignore[arg-type]
    race = StopLandsAfterTheWait()
    outputs._stop = race
    outputs.start()
    outputs._gathering.set()  # output gathers: the flusher wakes and waits its interval
    assert race.in_window.wait(10)
    stopping = threading.Thread(target=outputs.stop, daemon=True)
    stopping.start()
    stopping.join(10)
    assert not stopping.is_alive(), "stop() hung: the flusher went back to waiting for output"
    assert output.flushes >= 1  # stop() flushed what was pending
