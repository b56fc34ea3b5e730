"""The keeps the host agent launched: their records, and the thread that drives each one.

A keep's thread launches it (seconds, for a VM under emulation), or takes a warm keep launched
ahead of the request (:mod:`.warm`), provisions it and drives it until it ends
(:class:`motte.host.provisioned.ProvisionedKeep`), then closes it at once: a keep that ended
holds no process, socket or file. Records change on the event loop only; the threads post their
news there. A record stays, for status, until it is deleted or, once the keep ended,
until it is among the oldest when there are more than ``max_records``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from motte.host.agent.warm import WarmKeep, WarmPool
from motte.host.backends.base import Backend, KeepHandle, LaunchSpec
from motte.host.provisioned import KeepEnd, ProvisionedKeep
from motte.outside.agent_api import KeepExit, KeepRecord, KeepRequest
from motte.outside.http_errors import ApiError
from motte.shared.control import Provision
from motte.shared.errors import MotteError
from motte.shared.printable import printable

if TYPE_CHECKING:
    from motte.host.agent.relay import SessionRelay

#: ``tap(keep id, event, stream, data)``: every byte the agent handles for its keeps: the channel
#: (``channel-to-keep``, ``channel-from-keep``), the session websockets (``ws-from-tenant``,
#: ``ws-to-tenant``) and the workload's network connections (``open``, ``to-keep``,
#: ``from-keep``, ``close``). For tests; it runs on many threads.
AgentTap = Callable[[str, str, int, bytes], None]
Log = Callable[[str], None]


@dataclass(frozen=True)
class AgentLimits:
    max_keeps: int = 8  # keeps starting or running at once (beyond: 429)
    max_records: int = 256  # records kept, for status, of keeps that ended
    max_memory: int = 4 << 30  # the largest memory cap a keep may ask for
    default_memory: int = 1 << 30
    max_sessions: int = 4  # tenant connections open at once to one keep
    boot_timeout: float = 120.0  # seconds a launch may take (a VM keep under emulation is slow)
    #: warm keeps per backend, launched ahead of requests (they do not count against max_keeps)
    warm: Mapping[str, int] = field(default_factory=dict)


class ManagedKeep:
    """One keep: its record (changed on the event loop only) and what drives it (a thread)."""

    def __init__(self, record: KeepRecord, loop: asyncio.AbstractEventLoop):
        self.record = record
        self.launched = asyncio.Event()  # the keep left "starting" (launched, or failed to)
        self.done: asyncio.Future[None] = loop.create_future()  # its thread has finished
        self.sessions: set[SessionRelay] = set()
        self.pool: WarmPool | None = None  # the warm pool it came from, which it refills once provisioned
        self._lock = threading.Lock()
        self._provisioned: ProvisionedKeep | None = None
        self._stop_requested = False

    @property
    def provisioned(self) -> ProvisionedKeep | None:
        return self._provisioned

    def attach(self, provisioned: ProvisionedKeep) -> bool:
        """The keep's thread: the keep is up; False if it was asked to stop meanwhile."""
        with self._lock:
            if self._stop_requested:
                return False
            self._provisioned = provisioned
            return True

    def request_stop(self) -> None:
        """Any thread: end the keep now, or as soon as its launch returns. Blocks briefly."""
        with self._lock:
            self._stop_requested = True
            provisioned = self._provisioned
        if provisioned is not None:
            provisioned.stop()


class KeepRegistry:
    """The agent's keeps, by id. Everything but the keeps' threads runs on the event loop."""

    def __init__(self, backends: Mapping[str, Backend], limits: AgentLimits, *, log: Log,
                 tap: AgentTap | None = None):
        self.backends = backends
        self.limits = limits
        self._log = log
        self._tap = tap
        self._keeps: dict[str, ManagedKeep] = {}  # in the order they were created
        self._stopping: set[asyncio.Task[None]] = set()
        self.pools: dict[str, WarmPool] = {}
        self.closing = False

    def start_pools(self, backends: Iterable[str]) -> None:
        """Launch the warm keeps of ``backends`` (those this host runs), as the limits ask."""
        memory = self.limits.default_memory
        for name in backends:
            size = self.limits.warm.get(name, 0)
            if size > 0 and name in self.backends and name not in self.pools:
                spec_for = functools.partial(self._launch_spec, memory=memory)
                self.pools[name] = WarmPool(self.backends[name], size, memory, spec_for, log=self._log)
                self._log(f"keeping {size} warm {name} keep{'s' if size > 1 else ''} of {memory} bytes")
                self.pools[name].start()

    def live(self) -> list[ManagedKeep]:
        return [keep for keep in self._keeps.values() if keep.record.live]

    def records(self) -> list[KeepRecord]:
        return [keep.record for keep in self._keeps.values()]

    def get(self, keep_id: str) -> ManagedKeep:
        keep = self._keeps.get(keep_id)
        if keep is None:
            raise ApiError(404, "no_such_keep", f"no keep {keep_id[:64]} here (it never was, or was deleted)")
        return keep

    def create(self, request: KeepRequest, backend: str, memory: int) -> ManagedKeep:
        """Start launching a keep (``request`` checked, its backend and memory resolved)."""
        if self.closing:
            raise ApiError(503, "shutting_down", "the host agent is shutting down")
        if len(self.live()) >= self.limits.max_keeps:
            raise ApiError(429, "too_many_keeps",
                           f"this agent runs at most {self.limits.max_keeps} keeps at once; stop one first")
        pool = self.pools.get(backend)
        warm = None if pool is None else pool.take(memory)
        keep_id = secrets.token_hex(8) if warm is None else warm.keep_id
        record = KeepRecord(id=keep_id, backend=backend, state="starting", created=_now(), memory=memory,
                            timeout_ms=request.timeout_ms, wait_ms=request.wait_ms, detach=request.detach)
        keep = ManagedKeep(record, asyncio.get_running_loop())
        keep.pool = None if warm is None else pool
        self._keeps[keep_id] = keep
        self._evict()
        timeout = "none" if record.timeout_ms is None else f"{record.timeout_ms} ms"
        self._log(f"keep {keep_id}: starting (backend {backend}, memory {memory} bytes, wait {record.wait_ms} ms, "
                  f"timeout {timeout}, detach {'yes' if record.detach else 'no'}{', warm' if warm else ''})")
        drive = functools.partial(self._drive, keep, self.backends[backend], asyncio.get_running_loop(), warm)
        if warm is not None:
            warm.hand_over(drive)  # on the thread that launched it, which the keep's process is bound to
        else:
            threading.Thread(target=drive, name=f"motte-keep-{keep_id}", daemon=True).start()
        return keep

    async def stop(self, keep: ManagedKeep) -> KeepRecord:
        """End the keep (if it still runs) and wait until its thread has closed it."""
        if keep.record.live:
            self._log(f"keep {keep.record.id}: stopping")
            await asyncio.to_thread(keep.request_stop)
        await asyncio.shield(keep.done)
        return keep.record

    def stop_soon(self, keep: ManagedKeep, grace: float = 0.0) -> None:
        """:meth:`stop` in a task of its own (for a request handler that must not wait for it),
        once the keep had ``grace`` seconds to end by itself."""
        task = asyncio.ensure_future(self._stop_after(keep, grace))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _stop_after(self, keep: ManagedKeep, grace: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(keep.done), grace)
        await self.stop(keep)

    async def delete(self, keep_id: str) -> KeepRecord:
        """Stop the keep, forget its record and answer with it."""
        record = await self.stop(self.get(keep_id))
        self._keeps.pop(keep_id, None)
        return record

    async def close(self) -> None:
        """Stop every keep, warm ones too, and wait until each is closed. No keep is created from now on."""
        self.closing = True
        await asyncio.gather(*(asyncio.to_thread(pool.close) for pool in self.pools.values()),
                             *(self.stop(keep) for keep in list(self._keeps.values()) if not keep.done.done()))

    def update(self, keep: ManagedKeep, **changes: Any) -> None:
        """Change ``keep``'s record (event loop)."""
        before = keep.record.state
        keep.record = keep.record._replace(**changes)
        record = keep.record
        if record.state != before:
            self._log(f"keep {record.id}: {_describe(record)}")
        if record.state != "starting":
            keep.launched.set()
        if before == "provisioning" and record.state != before and keep.pool is not None:
            keep.pool.refill()  # its keep is provisioned, or ended: see motte.host.agent.warm
        if not record.live:
            for relay in list(keep.sessions):
                relay.keep_ended(f"the keep has ended: {record.state}")

    def _evict(self) -> None:
        ended = [keep_id for keep_id, keep in self._keeps.items() if keep.done.done()]
        for keep_id in ended[: max(0, len(self._keeps) - self.limits.max_records)]:
            del self._keeps[keep_id]

    # ---- the keep's thread ----

    def _drive(self, keep: ManagedKeep, backend: Backend, loop: asyncio.AbstractEventLoop,
               warm: WarmKeep | None) -> None:
        post = functools.partial(self._post, loop, keep)
        try:
            end = self._launch_and_run(keep, backend, post, warm)
        except Exception as exc:  # a bug must not leave a record "running" forever
            end = KeepEnd("failed", error=f"internal error: {type(exc).__name__}: {exc}")
        keep_exit = None if end.exit is None else KeepExit(end.exit.status, end.exit.reason)
        post(state=end.state, ended=_now(), exit=keep_exit, error=end.error)
        with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody waits
            loop.call_soon_threadsafe(_resolve, keep.done)

    def _launch_and_run(self, keep: ManagedKeep, backend: Backend, post: Callable[..., None],
                        warm: WarmKeep | None) -> KeepEnd:
        record = keep.record  # (the fields read here never change)
        tap = None if self._tap is None else functools.partial(self._tap, record.id)
        if warm is not None:
            handle: KeepHandle = warm.handle
        else:
            try:
                handle = backend.launch(self._launch_spec(record.id, memory=record.memory),
                                        progress=lambda text: self._log(f"keep {record.id}: {text}"))
            except MotteError as exc:
                return KeepEnd("failed", error=str(exc))
        try:
            provisioned = ProvisionedKeep(handle, Provision(record.wait_ms, record.memory, record.timeout_ms),
                                          tap=tap, on_running=lambda: post(state="running"))
            if not keep.attach(provisioned):
                return KeepEnd("stopped")
            post(state="provisioning", isolation=handle.isolation, pid=handle.memory_pid())
            return provisioned.run()
        finally:
            handle.close()

    def _launch_spec(self, keep_id: str, *, memory: int) -> LaunchSpec:
        tap = None if self._tap is None else functools.partial(self._tap, keep_id)
        return LaunchSpec(memory_bytes=memory, boot_timeout=self.limits.boot_timeout, channel_tap=tap)

    def _post(self, loop: asyncio.AbstractEventLoop, keep: ManagedKeep, **changes: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody reads records
            loop.call_soon_threadsafe(functools.partial(self.update, keep, **changes))


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _describe(record: KeepRecord) -> str:
    if record.state == "provisioning":
        return f"waiting for its tenant ({record.isolation})"
    if record.exit is not None:
        return f"{record.state} (status {record.exit.status}, {record.exit.reason})"
    if record.error is not None:
        return f"{record.state}: {printable(record.error, 300)}"
    return record.state
