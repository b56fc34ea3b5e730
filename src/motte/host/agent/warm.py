"""Warm keeps: empty keeps the host agent launches before anyone asks, so that ``POST /v1/keeps``
hands out one already past HELLO. A nil keep's interpreter start-up and imports, or a VM keep's
boot, is then off the tenant's critical path.

An empty keep holds nothing of any tenant until it is provisioned (the ``provision`` message, the
tenant's TLS session), so launching it early is safe. What a launch does fix is the
:class:`~motte.host.backends.base.LaunchSpec`: a VM keep's guest is sized from its memory. So a
pool launches its keeps with the agent's default memory and serves only requests for that
memory; any other request launches a keep of its own.

Each warm keep waits on the thread that launched it, and that thread goes on to drive it once it
is handed out: a keep's process is bound to the thread that started it (a nil keep dies with it,
``PR_SET_PDEATHSIG`` being per thread), so that thread must live as long as the keep.

A keep taken from the pool is replaced once it is no longer provisioning (it runs, or it ended):
not at once, because the replacement's launch (a nil keep's start-up is a few hundred ms of CPU)
would compete with the keep and its tenant for the CPU exactly while the tenant waits for its
first output. A launch that fails is logged and not retried until a request finds the pool
empty (no launch loop on a broken host).
"""

from __future__ import annotations

import queue
import secrets
import threading
from collections.abc import Callable

from motte.host.backends.base import Backend, KeepHandle, LaunchSpec
from motte.shared.printable import printable

Log = Callable[[str], None]
#: the launch spec of the keep that will have this id
SpecFor = Callable[[str], LaunchSpec]
#: what drives a keep once it is handed out (on the thread that launched it)
Job = Callable[[], None]


class WarmKeep:
    """A launched, unprovisioned keep, and the thread that launched it waiting for its job."""

    def __init__(self, keep_id: str, handle: KeepHandle):
        self.keep_id = keep_id  # chosen at launch: the channel tap names the keep by it from its first byte
        self.handle = handle
        self.thread = threading.current_thread()
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()

    def hand_over(self, job: Job) -> None:
        """Run ``job`` on the keep's thread (it drives the keep until it ends, and closes it)."""
        self._jobs.put(job)

    def discard(self) -> None:
        """Close the keep, on its thread."""
        self._jobs.put(None)

    def serve(self) -> None:
        """The keep's thread: wait for the job, and run it; or close the keep."""
        job = self._jobs.get()
        if job is None:
            self.handle.close()
        else:
            job()


class WarmPool:
    """Up to ``size`` launched, unprovisioned keeps of one backend, all launched with the same
    memory. Thread-safe."""

    def __init__(self, backend: Backend, size: int, memory: int, spec_for: SpecFor, *, log: Log):
        self.backend = backend
        self.size = size
        self.memory = memory
        self._spec_for = spec_for
        self._log = log
        self._lock = threading.Lock()
        self._ready: list[WarmKeep] = []
        self._launching = 0
        self._threads: set[threading.Thread] = set()  # of keeps launching or waiting in the pool
        self._closing = False

    @property
    def ready(self) -> int:
        with self._lock:
            return len(self._ready)

    def start(self) -> None:
        self._fill()

    def take(self, memory: int) -> WarmKeep | None:
        """A launched keep for a request of ``memory`` bytes, if one is ready. The caller hands the
        keep its job, and calls :meth:`refill` once the keep is provisioned (or ended)."""
        if memory != self.memory:
            return None
        taken = None
        with self._lock:
            while self._ready and taken is None:
                keep = self._ready.pop(0)
                self._threads.discard(keep.thread)  # from now on, the keep's (the caller stops it)
                if keep.handle.endpoint.closed is None:
                    taken = keep
                else:
                    self._log(f"warm keep {keep.keep_id}: ended while it waited; discarded")
                    keep.discard()
        if taken is None:
            self.refill()  # nothing will call it for this request
        return taken

    def refill(self) -> None:
        """Launch keeps until the pool is full again (counting those launching)."""
        self._fill()

    def close(self) -> None:
        """Close every keep in the pool and wait until each is closed (launches under way included)."""
        with self._lock:
            self._closing = True
            ready, self._ready = self._ready, []
            threads = list(self._threads)
        for keep in ready:
            keep.discard()
        for thread in threads:
            thread.join()

    def _fill(self) -> None:
        with self._lock:
            if self._closing:
                return
            for _ in range(self.size - len(self._ready) - self._launching):
                keep_id = secrets.token_hex(8)
                thread = threading.Thread(target=self._run, args=(keep_id,), name=f"motte-keep-{keep_id}",
                                          daemon=True)
                self._launching += 1
                self._threads.add(thread)
                thread.start()

    def _run(self, keep_id: str) -> None:
        """A warm keep's thread: launch it, wait in the pool, then drive it (or close it)."""
        try:
            keep = self._launch(keep_id)
            with self._lock:
                self._launching -= 1
                pooled = keep is not None and not self._closing
                if keep is not None and pooled:
                    self._ready.append(keep)
            if keep is None:
                return
            if not pooled:  # the agent is stopping
                keep.handle.close()
                return
            self._log(f"warm keep {keep_id}: ready ({self.backend.name})")
            keep.serve()
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _launch(self, keep_id: str) -> WarmKeep | None:
        try:
            return WarmKeep(keep_id, self.backend.launch(self._spec_for(keep_id)))
        except Exception as exc:  # a bug too: the pool must not lose count of its launches
            self._log(f"warm keep {keep_id}: could not launch ({self.backend.name}): {printable(str(exc), 300)}")
            return None
