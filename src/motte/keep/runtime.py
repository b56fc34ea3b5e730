"""The keep runtime: receive a workload over the channel, run it, report how it ended.

The same code runs in every backend; only the transport under the channel differs.

Sequence on the channel (after HELLO)::

    host -> keep   OPEN wasm stream, OPEN one stream per stdio file and per --dir, CONTROL launch
    host -> keep   DATA (the wasm bytes), EOF
    keep -> host   CONTROL started {cached, compile_ms}
    both           DATA on stdio streams; hostfs requests and answers on --dir streams
    keep -> host   CONTROL exit {status, reason, message, backtrace}
    host -> keep   CONTROL bye           (only then may a VM keep power off: nothing is lost)
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import wasmtime

from motte.keep.engine import ModuleCache, engine_settings, make_engine
from motte.keep.memory_limit import MemoryLimit
from motte.keep.wasi.files import ChannelInput, ChannelOutput, ChannelOutputs, NullFile, WasiFile
from motte.keep.wasi.hostcall import GuestMemory, HostFunctions, HostTrap
from motte.keep.wasi.preview1 import DeadlineHit, Preview1, ProcExit
from motte.shared.enarx_config import ConfigError, WorkloadConfig
from motte.shared.endpoint import Endpoint
from motte.shared.errors import EXIT_MEMORY, EXIT_MOTTE_ERROR, EXIT_TIMEOUT, EXIT_TRAP, MotteError
from motte.shared.wasi_abi import WasiError

if TYPE_CHECKING:
    from motte.keep.wasi.remote_fs import HostFsClient

MAX_WASM_SIZE = 512 << 20
MAX_CA_BUNDLE = 128 << 10  # a PEM CA bundle for one connect file
WASM_PAGE = 64 << 10
ARGV0 = "main.wasm"
MAX_PREOPENS = 64


class Outcome(NamedTuple):
    """How the workload ended; sent to the host as the ``exit`` control message."""

    status: int
    reason: str  # exit | trap | timeout | memory | error
    message: str = ""
    backtrace: list[str] = []  # noqa: RUF012 - never mutated

    def to_message(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "message": self.message, "backtrace": self.backtrace}


class LaunchError(MotteError):
    """The workload could not be started (bad module, bad launch request)."""


class Launch(NamedTuple):
    config: WorkloadConfig
    wasm_stream: int
    wasm_size: int
    wasm_sha256: str
    stdio_streams: dict[int, int]  # fd -> stream
    dirs: list[Preopen]
    memory_limit: int
    timeout: float | None
    cache_dir: str | None
    ca_bundles: dict[int, str] = {}  # noqa: RUF012 - fd -> PEM of the extra CA for a TLS connect
    steward_ca: str | None = None  # PEM of the CA the keep trusts for the Steward's TLS certificate

    @classmethod
    def parse(cls, message: dict[str, Any]) -> Launch:
        """Validate a launch request: it comes from the untrusted host."""
        try:
            config = WorkloadConfig.from_json(message.get("config"))
            wasm = message["wasm"]
            stdio = {int(fd): _int(stream, "stream") for fd, stream in dict(message.get("stdio", {})).items()}
            dirs = [Preopen.parse(d) for d in message.get("dirs", [])]
            limits = message.get("limits", {})
            timeout = limits.get("timeout")
            launch = cls(
                config=config,
                wasm_stream=_int(wasm["stream"], "wasm.stream"),
                wasm_size=_int(wasm["size"], "wasm.size"),
                wasm_sha256=_str(wasm["sha256"], "wasm.sha256"),
                stdio_streams=stdio,
                dirs=dirs,
                memory_limit=_int(limits["memory"], "limits.memory"),
                timeout=None if timeout is None else float(timeout),
                cache_dir=None if message.get("cache_dir") is None else _str(message["cache_dir"], "cache_dir"),
                ca_bundles={int(fd): _str(pem, "ca") for fd, pem in dict(message.get("ca", {})).items()},
                steward_ca=None if message.get("steward_ca") is None else _str(message["steward_ca"], "steward_ca"),
            )
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LaunchError(f"malformed launch request: {exc}") from None
        if not 0 < launch.wasm_size <= MAX_WASM_SIZE:
            raise LaunchError(f"workload size {launch.wasm_size} outside 1..{MAX_WASM_SIZE} bytes")
        if launch.memory_limit < WASM_PAGE:
            raise LaunchError("memory limit below one wasm page")
        if len(launch.dirs) > MAX_PREOPENS:
            raise LaunchError(f"{len(launch.dirs)} preopened directories, more than {MAX_PREOPENS}")
        for fd, pem in launch.ca_bundles.items():
            spec = launch.config.files[fd] if 0 <= fd < len(launch.config.files) else None
            if spec is None or spec.kind != "connect" or spec.prot != "tls":
                raise LaunchError(f"a CA bundle was sent for fd {fd}, which is no TLS connect file")
            if len(pem) > MAX_CA_BUNDLE:
                raise LaunchError(f"the CA bundle for fd {fd} exceeds {MAX_CA_BUNDLE} bytes")
        if launch.steward_ca is not None:
            if launch.config.steward is None:
                raise LaunchError("a Steward CA bundle was sent, but the workload config names no steward")
            if len(launch.steward_ca) > MAX_CA_BUNDLE:
                raise LaunchError(f"the Steward CA bundle exceeds {MAX_CA_BUNDLE} bytes")
        return launch


class Preopen(NamedTuple):
    """A ``--dir``: served by the host on a channel stream."""

    guest: str
    stream: int

    @classmethod
    def parse(cls, entry: Any) -> Preopen:
        guest = _str(entry["guest"], "dir.guest")
        if not 0 < len(guest.encode()) <= 1024 or "\0" in guest:
            raise ValueError("dir.guest must be a path of 1 to 1024 bytes without NUL")
        return cls(guest, _int(entry["stream"], "dir.stream"))


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    return value


class KeepRuntime:
    def __init__(self, endpoint: Endpoint, *, allow_host_cache: bool = False, backend: str = "nil"):
        self.endpoint = endpoint
        self.allow_host_cache = allow_host_cache
        self.backend = backend  # chooses the evidence source when the config names a Steward
        self.hostfs_clients: list[HostFsClient] = []  # one per served directory

    def serve(self) -> Outcome:
        """Handle one launch request; always tells the host how it ended."""
        launch: Launch | None = None
        try:
            message = self.endpoint.recv_control()
            if message.get("op") != "launch":
                raise LaunchError(f"expected a launch request, got {message.get('op')!r}")
            launch = Launch.parse(message)
            outcome = self.run(launch)
        except MotteError as exc:
            outcome = Outcome(EXIT_MOTTE_ERROR, "error", str(exc))
            for stream in launch.stdio_streams.values() if launch is not None else ():
                self.endpoint.eof(stream)  # the host stops waiting for output the workload never wrote
        self.endpoint.send_control("exit", **outcome.to_message())
        try:
            self.endpoint.recv_control(timeout=10.0)  # "bye": the host has everything
        except MotteError:
            pass
        return outcome

    def _receive_wasm(self, launch: Launch) -> bytes:
        chunks = bytearray()
        while True:
            data = self.endpoint.read(launch.wasm_stream, 1 << 20, timeout=60.0)
            if not data:
                break
            chunks += data
            if len(chunks) > launch.wasm_size:
                raise LaunchError("the host sent more workload bytes than it announced")
        if len(chunks) != launch.wasm_size:
            raise LaunchError(f"workload truncated: {len(chunks)} of {launch.wasm_size} bytes arrived")
        wasm = bytes(chunks)
        if hashlib.sha256(wasm).hexdigest() != launch.wasm_sha256:
            raise LaunchError("workload digest mismatch: the bytes that arrived are not the ones announced")
        return wasm

    def _files(self, launch: Launch, outputs: ChannelOutputs) -> list[WasiFile]:
        files: list[WasiFile] = []
        network = None
        steward = launch.config.steward
        if steward is not None or any(spec.kind in ("listen", "connect") for spec in launch.config.files):
            from motte.keep.net.setup import NetworkSetup  # only workloads with sockets load ssl

            network = NetworkSetup(self.endpoint, launch.ca_bundles, on_block=outputs.flush_all)
            if steward is not None:
                # Before the workload starts: without the Steward's certificate it does not run.
                network.use_steward(steward, self.backend, launch.steward_ca)
        for fd, spec in enumerate(launch.config.files):
            if spec.kind == "null":
                files.append(NullFile())
            elif spec.kind in ("stdin", "stdout", "stderr"):
                stream = launch.stdio_streams.get(fd)
                if stream is None:
                    raise LaunchError(f"no channel stream for fd {fd} ({spec.kind})")
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
        deadline = None if launch.timeout is None else time.monotonic() + launch.timeout  # as run() sets it
        for preopen in launch.dirs:
            from motte.keep.wasi.remote_fs import HostFsClient, RemoteDir

            client = HostFsClient(self.endpoint, preopen.stream, deadline)
            self.hostfs_clients.append(client)
            files.append(RemoteDir.preopen(client, preopen.guest))
        return files

    def run(self, launch: Launch) -> Outcome:
        wasm = self._receive_wasm(launch)
        started = time.monotonic()
        try:
            interruptible = launch.timeout is not None
            memory_limit = MemoryLimit(launch.memory_limit)
            engine = make_engine(interruptible, memory_limit)
            cache = ModuleCache(launch.cache_dir if self.allow_host_cache else None, engine_settings(interruptible))
            compiled = cache.load(engine, wasm, launch.wasm_sha256)
        except wasmtime.WasmtimeError as exc:
            raise LaunchError(f"not a valid WebAssembly module: {_first_line(exc)}") from None
        compile_ms = (time.monotonic() - started) * 1000
        outputs = ChannelOutputs()
        files = self._files(launch, outputs)
        memory = GuestMemory()
        deadline = None if launch.timeout is None else time.monotonic() + launch.timeout
        wasi = Preview1(
            [ARGV0, *launch.config.args], launch.config.workload_env(), files, memory,
            deadline=deadline, before_block=outputs.flush_all,
        )
        linker = wasmtime.Linker(engine)
        host = HostFunctions(linker)
        # A refused memory.grow ends the workload at its next WASI call (or when it ends).
        memory_limit.on_refusal = lambda wanted: setattr(host, "stop", MemoryRefused(wanted))
        wasi.register(host)
        store = wasmtime.Store(engine)
        timer = None
        if launch.timeout is not None:
            store.set_epoch_deadline(1)
            timer = threading.Timer(launch.timeout, engine.increment_epoch)
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
        self.endpoint.send_control("stats", cached=compiled.from_cache, compile_ms=round(compile_ms, 3))
        return outcome

    def _execute(self, store: wasmtime.Store, linker: wasmtime.Linker, host: HostFunctions,
                 module: wasmtime.Module, memory: GuestMemory, launch: Launch) -> Outcome:
        try:
            instance = linker.instantiate(store, module)
        except wasmtime.Trap as exc:
            return _classify_trap(exc, host, launch)
        except wasmtime.WasmtimeError as exc:
            text = _first_line(exc)
            hint = "raise --max-memory" if "exceeds the memory limit" in text else None
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
            return Outcome(EXIT_TRAP, "trap", _first_line(exc))
        return _ended(ProcExit(0), launch)


def _ended(how: object, launch: Launch) -> Outcome:
    """The outcome of a deliberate end: proc_exit, the deadline, or the memory cap."""
    if isinstance(how, DeadlineHit):
        return _timeout(launch)
    if isinstance(how, MemoryRefused):
        return _memory_outcome(launch, f"a memory.grow to {how.wanted} bytes was refused")
    assert isinstance(how, ProcExit)
    if how.status > 255:
        return Outcome(EXIT_MOTTE_ERROR, "exit", f"the workload exited with status {how.status}, beyond 255")
    return Outcome(how.status, "exit")


def _classify_trap(trap: wasmtime.Trap, host: HostFunctions, launch: Launch) -> Outcome:
    pending = host.take_pending()
    if isinstance(pending, HostTrap):
        return _ended(pending.outcome, launch)
    if trap.trap_code == wasmtime.TrapCode.INTERRUPT:
        return _timeout(launch)
    backtrace = [_frame_text(i, frame) for i, frame in enumerate(trap.frames)]
    cause = _trap_cause(trap.message)
    if pending is not None:
        return Outcome(EXIT_TRAP, "error", f"keep runtime failure in a WASI call: {pending!r}", backtrace)
    return Outcome(EXIT_TRAP, "trap", cause, backtrace)


def _timeout(launch: Launch) -> Outcome:
    return Outcome(EXIT_TIMEOUT, "timeout", f"the workload ran past its {launch.timeout:g} s deadline")


class MemoryRefused(NamedTuple):
    wanted: int  # bytes the refused grow asked for


def _memory_outcome(launch: Launch, then: str) -> Outcome:
    mib = launch.memory_limit / (1 << 20)
    return Outcome(EXIT_MEMORY, "memory", f"the workload reached its memory limit of {mib:g} MiB; {then}")


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
