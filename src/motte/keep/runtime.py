"""The keep runtime: receive a workload over the channel, run it, report how it ended.

The same code runs in every backend; only the transport under the channel differs. The control
messages it exchanges with the host, and their order, are defined in :mod:`motte.shared.control`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import TYPE_CHECKING, NamedTuple

import wasmtime

from motte.keep.engine import ModuleCache, engine_settings, make_engine
from motte.keep.memory_limit import MemoryLimit
from motte.keep.wasi.files import ChannelInput, ChannelOutput, ChannelOutputs, NullFile, WasiFile
from motte.keep.wasi.hostcall import GuestMemory, HostFunctions, HostTrap
from motte.keep.wasi.preview1 import DeadlineHit, Preview1, ProcExit
from motte.shared.control import MAX_BACKTRACE, STDIO_KINDS, Bye, ControlMessage, Conversation, Exit, Launch, Stats
from motte.shared.endpoint import Endpoint
from motte.shared.errors import EXIT_MEMORY, EXIT_MOTTE_ERROR, EXIT_TIMEOUT, EXIT_TRAP, MotteError
from motte.shared.wasi_abi import WasiError

if TYPE_CHECKING:
    from motte.keep.wasi.remote_fs import HostFsClient

ARGV0 = "main.wasm"


class LaunchError(MotteError):
    """The workload could not be started (bad module, bad launch request)."""


class KeepRuntime:
    def __init__(self, endpoint: Endpoint, *, allow_host_cache: bool = False, backend: str = "nil"):
        self.endpoint = endpoint
        self.allow_host_cache = allow_host_cache
        self.backend = backend  # chooses the evidence source when the config names a Steward
        self.hostfs_clients: list[HostFsClient] = []  # one per served directory
        self.conversation = Conversation("keep")

    def report(self, message: ControlMessage) -> None:
        """Send a control message to the host, once the sequence allows it."""
        self.endpoint.send_control(**self.conversation.sending(message))

    def serve(self) -> Exit:
        """Handle one launch request; always tells the host how it ended."""
        conversation = self.conversation
        launch: Launch | None = None
        try:
            message = conversation.received(self.endpoint.recv_control())
            assert isinstance(message, Launch)  # the only message the host may send first
            launch = message
            outcome = self.run(launch)
        except MotteError as exc:
            outcome = Exit(EXIT_MOTTE_ERROR, "error", str(exc))
            for stream in launch.streams.stdio.values() if launch is not None else ():
                self.endpoint.eof(stream)  # the host stops waiting for output the workload never wrote
        self.report(outcome)
        try:
            bye = conversation.received(self.endpoint.recv_control(timeout=10.0))
            assert isinstance(bye, Bye)  # the host has everything
        except MotteError:
            pass
        return outcome

    def _receive_wasm(self, launch: Launch) -> bytes:
        size = launch.terms.wasm_size
        chunks = bytearray()
        while True:
            data = self.endpoint.read(launch.streams.wasm, 1 << 20, timeout=60.0)
            if not data:
                break
            chunks += data
            if len(chunks) > size:
                raise LaunchError("the host sent more workload bytes than it announced")
        if len(chunks) != size:
            raise LaunchError(f"workload truncated: {len(chunks)} of {size} bytes arrived")
        wasm = bytes(chunks)
        if hashlib.sha256(wasm).hexdigest() != launch.terms.wasm_sha256:
            raise LaunchError("workload digest mismatch: the bytes that arrived are not the ones announced")
        return wasm

    def _files(self, launch: Launch, outputs: ChannelOutputs) -> list[WasiFile]:
        files: list[WasiFile] = []
        network = None
        steward = launch.terms.config.steward
        if steward is not None or any(spec.kind in ("listen", "connect") for spec in launch.terms.config.files):
            from motte.keep.net.setup import NetworkSetup  # only workloads with sockets load ssl

            network = NetworkSetup(self.endpoint, launch.terms.ca_bundles, report=self.report,
                                   on_block=outputs.flush_all)
            if steward is not None:
                # Before the workload starts: without the Steward's certificate it does not run.
                network.use_steward(steward, self.backend, launch.terms.steward_ca)
        for fd, spec in enumerate(launch.terms.config.files):
            if spec.kind == "null":
                files.append(NullFile())
            elif spec.kind in STDIO_KINDS:
                stream = launch.streams.stdio[fd]  # the launch was checked: every stdio file has one
                if spec.kind == "stdin":
                    files.append(ChannelInput(self.endpoint, stream, on_block=outputs))
                    self.endpoint.eof(stream)  # nothing flows keep -> host on stdin
                else:
                    output = ChannelOutput(self.endpoint, stream, buffered=spec.kind == "stdout")
                    outputs.add(output)
                    files.append(output)
            elif network is not None:
                try:
                    files.append(network.socket(fd, spec))
                except MotteError as exc:
                    raise LaunchError(f"files[{fd}] ({spec.kind} {spec.name!r}): {exc}") from None
            else:
                raise LaunchError(f"files[{fd}] has unknown kind {spec.kind!r}")
        if network is not None:
            network.start()
        deadline = None if launch.terms.timeout is None else time.monotonic() + launch.terms.timeout  # as run() sets it
        if launch.terms.dirs:
            from motte.keep.wasi.remote_fs import HostFsClient, RemoteDir

            for guest, stream in zip(launch.terms.dirs, launch.streams.dirs, strict=True):
                client = HostFsClient(self.endpoint, stream, deadline)
                self.hostfs_clients.append(client)
                files.append(RemoteDir.preopen(client, guest))
        return files

    def run(self, launch: Launch) -> Exit:
        self.endpoint.limit_buffers(launch.terms.memory_limit)
        wasm = self._receive_wasm(launch)
        started = time.monotonic()
        try:
            interruptible = launch.terms.timeout is not None
            memory_limit = MemoryLimit(launch.terms.memory_limit)
            engine = make_engine(interruptible, memory_limit)
            cache_dir = launch.streams.cache_dir if self.allow_host_cache else None
            cache = ModuleCache(cache_dir, engine_settings(interruptible))
            compiled = cache.load(engine, wasm, launch.terms.wasm_sha256)
        except wasmtime.WasmtimeError as exc:
            raise LaunchError(f"not a valid WebAssembly module: {_first_line(exc)}") from None
        compile_us = round((time.monotonic() - started) * 1e6)
        outputs = ChannelOutputs()
        files = self._files(launch, outputs)
        memory = GuestMemory()
        deadline = None if launch.terms.timeout is None else time.monotonic() + launch.terms.timeout
        wasi = Preview1(
            [ARGV0, *launch.terms.config.args], launch.terms.config.workload_env(), files, memory,
            deadline=deadline, before_block=outputs.flush_all,
        )
        linker = wasmtime.Linker(engine)
        host = HostFunctions(linker)
        # A refused memory.grow ends the workload at its next WASI call (or when it ends).
        memory_limit.on_refusal = lambda wanted: setattr(host, "stop", MemoryRefused(wanted))
        wasi.register(host)
        store = wasmtime.Store(engine)
        memory_limit.limit_store(store)
        timer = None
        if launch.terms.timeout is not None:
            store.set_epoch_deadline(1)
            timer = threading.Timer(launch.terms.timeout, engine.increment_epoch)
            timer.daemon = True
            timer.start()
        outputs.start()
        try:
            outcome = self._execute(store, linker, host, compiled.module, memory, launch)
            if memory_limit.refused and outcome.reason in ("exit", "trap"):
                how = f"exited with status {outcome.status}" if outcome.reason == "exit" else "trapped"
                outcome = _memory_outcome(launch, f"a memory.grow was refused and the workload then {how}")
        finally:
            if timer is not None:
                timer.cancel()
            outputs.stop()
            for client in self.hostfs_clients:
                client.close()  # the host closes what the workload left open there
            for file in files:
                try:
                    file.close()
                except (OSError, WasiError):
                    pass
        stats = Stats(cached=compiled.from_cache, compile_us=compile_us)
        self.report(stats)
        return outcome

    def _execute(self, store: wasmtime.Store, linker: wasmtime.Linker, host: HostFunctions,
                 module: wasmtime.Module, memory: GuestMemory, launch: Launch) -> Exit:
        try:
            instance = linker.instantiate(store, module)
        except wasmtime.Trap as exc:
            return _classify_trap(exc, host, launch)
        except wasmtime.WasmtimeError as exc:
            text = _first_line(exc)
            limited = "exceeds the memory limit" in text or "exceeds table limits" in text
            hint = "raise --max-memory" if limited else None
            raise LaunchError(f"cannot instantiate the workload: {text}", hint=hint) from None
        exports = instance.exports(store)
        exported_memory = exports.get("memory")
        if isinstance(exported_memory, wasmtime.Memory):
            memory.bind(store, exported_memory)
        start = exports.get("_start")
        if not isinstance(start, wasmtime.Func):
            raise LaunchError(
                "the module has no _start function: it is not a WASI command",
                hint="build it as an executable (e.g. zig cc -target wasm32-wasi, not a library)",
            )
        try:
            start(store)
        except wasmtime.Trap as exc:
            return _classify_trap(exc, host, launch)
        except wasmtime.WasmtimeError as exc:
            pending = host.take_pending()
            if isinstance(pending, HostTrap):
                return _ended(pending.outcome, launch)
            return Exit(EXIT_TRAP, "trap", _first_line(exc))
        return _ended(ProcExit(0), launch)


def _ended(how: object, launch: Launch) -> Exit:
    """The outcome of a deliberate end: proc_exit, the deadline, or the memory cap."""
    if isinstance(how, DeadlineHit):
        return _timeout(launch)
    if isinstance(how, MemoryRefused):
        return _memory_outcome(launch, f"a memory.grow to {how.wanted} bytes was refused")
    assert isinstance(how, ProcExit)
    if how.status > 255:
        return Exit(EXIT_MOTTE_ERROR, "exit", f"the workload exited with status {how.status}, beyond 255")
    return Exit(how.status, "exit")


def _classify_trap(trap: wasmtime.Trap, host: HostFunctions, launch: Launch) -> Exit:
    pending = host.take_pending()
    if isinstance(pending, HostTrap):
        return _ended(pending.outcome, launch)
    if trap.trap_code == wasmtime.TrapCode.INTERRUPT:
        return _timeout(launch)
    backtrace = tuple(_frame_text(i, frame) for i, frame in enumerate(trap.frames[:MAX_BACKTRACE]))
    cause = _trap_cause(trap.message)
    if pending is not None:
        return Exit(EXIT_TRAP, "error", f"keep runtime failure in a WASI call: {pending!r}", backtrace)
    return Exit(EXIT_TRAP, "trap", cause, backtrace)


def _timeout(launch: Launch) -> Exit:
    return Exit(EXIT_TIMEOUT, "timeout", f"the workload ran past its {launch.terms.timeout:g} s deadline")


class MemoryRefused(NamedTuple):
    wanted: int  # bytes the refused grow asked for


def _memory_outcome(launch: Launch, then: str) -> Exit:
    mib = launch.terms.memory_limit / (1 << 20)
    return Exit(EXIT_MEMORY, "memory", f"the workload reached its memory limit of {mib:g} MiB; {then}")


def _frame_text(index: int, frame: wasmtime.Frame) -> str:
    name = frame.func_name or f"<func {frame.func_index}>"
    module = frame.module_name or ARGV0
    return f"{index}: {frame.module_offset:#x} - {module}!{name}"


def _trap_cause(message: str) -> str:
    # wasmtime's message embeds its own backtrace, then "Caused by:" and the cause: keep the cause.
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "trap"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
