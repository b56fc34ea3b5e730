"""The keep runtime: receive a workload, run it, report how it ended.

The workload comes from the host (``motte run``: a ``launch`` message and channel streams), or
from the tenant over TLS that ends in this keep (``motte deploy``: a ``provision`` message, then
:mod:`motte.keep.provisioning`). The same code runs in every backend; only the transport under the
channel differs. The control messages it exchanges with the host, and their order, are defined in
:mod:`motte.shared.control`.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import wasmtime

from motte.keep.engine import ModuleCache, engine_settings, make_engine
from motte.keep.memory_limit import MemoryLimit
from motte.keep.module_stores import module_store
from motte.keep.wasi.files import ChannelInput, ChannelOutput, ChannelOutputs, NullFile, WasiFile
from motte.keep.wasi.hostcall import GuestMemory, HostFunctions, HostTrap
from motte.keep.wasi.preview1 import DeadlineHit, Preview1, ProcExit
from motte.shared.control import (
    MAX_BACKTRACE,
    STDIO_KINDS,
    Bye,
    ControlMessage,
    Conversation,
    Exit,
    Launch,
    LaunchTerms,
    Provision,
    Serve,
    Served,
    Stats,
)
from motte.shared.enarx_config import FileSpec
from motte.shared.endpoint import Endpoint, Timeout
from motte.shared.errors import EXIT_MEMORY, EXIT_MOTTE_ERROR, EXIT_TIMEOUT, EXIT_TRAP, MotteError
from motte.shared.wasi_abi import WasiError

if TYPE_CHECKING:
    from motte.keep.evidence import EvidenceSource
    from motte.keep.provisioning import Deployment
    from motte.keep.wasi.remote_fs import HostFsClient
    from motte.shared.module_store import ModuleStore

ARGV0 = "main.wasm"
SERVE_TIMEOUT = 60.0  # seconds the host has to bind a deployed workload's sockets

#: Makes the WASI file of a stdio entry of the config: (fd, its spec, the outputs to flush).
StdioFiles = Callable[[int, FileSpec, ChannelOutputs], WasiFile]


#: seconds without a first message after which a keep takes itself for a warm one (see _first_control)
IDLE_BEFORE_PRELOAD = 0.2


class LaunchError(MotteError):
    """The workload could not be started (bad module, bad launch request)."""


class KeepRuntime:
    def __init__(self, endpoint: Endpoint, *, allow_host_cache: bool = False, backend: str = "nil",
                 evidence: EvidenceSource | None = None, handover: socket.socket | None = None):
        self.endpoint = endpoint
        self.handover = handover  # where a nil keep's host hands over its listen sockets
        self.allow_host_cache = allow_host_cache
        self.backend = backend  # chooses the evidence source (unless one is given)
        self._evidence = evidence
        self.hostfs_clients: list[HostFsClient] = []  # one per served directory
        self.conversation = Conversation("keep")

    def _handed_over(self) -> dict[int, socket.socket]:
        """The listen sockets the host handed over (none but to a nil keep; the host sends them
        before the launch)."""
        if self.handover is None:
            return {}
        from motte.shared.socket_handover import receive_sockets

        return receive_sockets(self.handover)

    def report(self, message: ControlMessage) -> None:
        """Send a control message to the host, once the sequence allows it."""
        self.endpoint.send_control(**self.conversation.sending(message))

    def serve(self) -> Exit:
        """Handle one launch (or provisioning); always tells the host how it ended."""
        try:
            first = self.conversation.received(self._first_control())
        except MotteError as exc:
            return self._finish(Exit(EXIT_MOTTE_ERROR, "error", str(exc)))
        if isinstance(first, Provision):
            return self.serve_deployment(first)
        assert isinstance(first, Launch)  # the only other message the host may send first
        try:
            outcome = self.run(first)
        except MotteError as exc:
            outcome = Exit(EXIT_MOTTE_ERROR, "error", str(exc))
            for stream in first.streams.stdio.values():
                self.endpoint.eof(stream)  # the host stops waiting for output the workload never wrote
        return self._finish(outcome)

    def _finish(self, outcome: Exit, told: Exit | None = None) -> Exit:
        """Tell the host how the run ended (``told``: what of it the host may know), then wait
        for its bye. A host that is gone is nobody to tell."""
        try:
            self.report(told or outcome)
        except MotteError:
            return outcome
        self._await_bye()
        return outcome

    def _first_control(self) -> dict[str, Any]:
        """The host's first message. A keep that hears nothing for a while waits in a host agent's
        pool of warm keeps, to be provisioned: it loads the provisioning code meanwhile, off its
        tenant's critical path. (A ``motte run`` keep, or one the agent launched for a request,
        gets its first message at once.)"""
        try:
            return self.endpoint.recv_control(timeout=IDLE_BEFORE_PRELOAD)
        except Timeout:
            from motte.keep.provisioning import preload

            preload()
            return self.endpoint.recv_control()

    def _await_bye(self) -> None:
        try:
            bye = self.conversation.received(self.endpoint.recv_control(timeout=10.0))
            assert isinstance(bye, Bye)  # the host has everything
        except MotteError:
            pass

    def evidence_source(self) -> EvidenceSource:
        if self._evidence is None:
            from motte.keep.evidence import source_for

            self._evidence = source_for(self.backend)
        return self._evidence

    def serve_deployment(self, provision: Provision) -> Exit:
        """Wait for the tenant, run what it deploys; the tenant gets the whole exit, the host only
        its status and reason (a trap's message is the workload's, not the host's business)."""
        from motte.keep.provisioning import await_deployment

        deployment: Deployment | None = None
        self.endpoint.limit_buffers(provision.memory_limit)
        try:
            deployment = await_deployment(self.endpoint, provision, self.evidence_source(), self.backend)
            self.report(Serve(Serve.network_view(deployment.terms.config)))
            served = self.conversation.received(self.endpoint.recv_control(timeout=SERVE_TIMEOUT))
            assert isinstance(served, Served)  # the only message the host may send now
            if served.error is not None:
                raise LaunchError(f"the host cannot serve the workload's sockets: {served.error}")
            outcome = self._run_deployment(deployment)
        except MotteError as exc:
            outcome = Exit(EXIT_MOTTE_ERROR, "error", str(exc))
        if deployment is not None:
            session = deployment.session
            if session.order.state in ("running", "detached"):
                try:
                    session.send(outcome)
                    session.close()
                except MotteError:
                    pass
            else:
                session.abort(outcome.message)
        return self._finish(outcome, told=Exit(outcome.status, outcome.reason))

    def _run_deployment(self, deployment: Deployment) -> Exit:
        from motte.keep.provisioning import SessionOutput
        from motte.shared.provision import Frame, Started

        session = deployment.session

        def stdio(fd: int, spec: FileSpec, outputs: ChannelOutputs) -> WasiFile:
            if spec.kind == "stdin":
                return NullFile()  # a deployed workload reads no input: see docs/deploy.md
            output = SessionOutput(session, Frame.STDOUT if spec.kind == "stdout" else Frame.STDERR,
                                   buffered=spec.kind == "stdout")
            outputs.add(output)
            return output

        def started(chain_pem: bytes | None) -> None:
            terms = deployment.terms
            launch_sha256 = hashlib.sha256(terms.canonical_bytes()).hexdigest()
            session.send(Started(terms.wasm_sha256, launch_sha256, chain_pem.decode() if chain_pem else None))
            session.watch()

        env = {secret.name: secret.value.decode("utf-8", "surrogateescape")
               for secret in deployment.secrets if secret.kind == "env"}
        preopens: list[WasiFile] = []
        files = {secret.name: secret.value for secret in deployment.secrets if secret.kind == "file"}
        if files:
            from motte.keep.wasi.secrets_dir import SecretsDir

            preopens.append(SecretsDir(files))
        # No module cache: a compiled deployed workload must not reach the host's disk.
        return self._run(deployment.terms, deployment.wasm, stdio, cache=None, env=env, preopens=preopens,
                         started=started)

    def _receive_wasm(self, launch: Launch) -> bytes:
        size = launch.terms.wasm_size
        # Hashed as the chunks arrive (the hash releases the GIL while the channel thread reads the
        # next), not after: a large module (CPython's) costs no extra pass.
        chunks: list[bytes] = []
        digest = hashlib.sha256()
        received = 0
        while True:
            data = self.endpoint.read(launch.streams.wasm, 1 << 20, timeout=60.0)
            if not data:
                break
            if received + len(data) > size:
                raise LaunchError("the host sent more workload bytes than it announced")
            chunks.append(data)
            digest.update(data)
            received += len(data)
        if received != size:
            raise LaunchError(f"workload truncated: {received} of {size} bytes arrived")
        if digest.hexdigest() != launch.terms.wasm_sha256:
            raise LaunchError("workload digest mismatch: the bytes that arrived are not the ones announced")
        return b"".join(chunks)

    def _channel_stdio(self, launch: Launch) -> StdioFiles:
        """A run's stdio: channel streams the host opened and pumps to its own stdio."""

        def stdio(fd: int, spec: FileSpec, outputs: ChannelOutputs) -> WasiFile:
            stream = launch.streams.stdio[fd]  # the launch was checked: every stdio file has one
            terminal = fd in launch.streams.terminals
            if spec.kind == "stdin":
                self.endpoint.eof(stream)  # nothing flows keep -> host on stdin
                return ChannelInput(self.endpoint, stream, on_block=outputs, terminal=terminal)
            output = ChannelOutput(self.endpoint, stream, buffered=spec.kind == "stdout", terminal=terminal)
            outputs.add(output)
            return output

        return stdio

    def _files(self, terms: LaunchTerms, stdio: StdioFiles, outputs: ChannelOutputs,
               dir_streams: tuple[int, ...]) -> tuple[list[WasiFile], bytes | None]:
        """The workload's files, and the PEM chain the Steward issued (when the config names one)."""
        files: list[WasiFile] = []
        network = None
        chain_pem = None
        steward = terms.config.steward
        if steward is not None or any(spec.kind in ("listen", "connect") for spec in terms.config.files):
            from motte.keep.net.setup import NetworkSetup  # only workloads with sockets load ssl

            network = NetworkSetup(self.endpoint, terms.ca_bundles, report=self.report, on_block=outputs.flush_all,
                                   handed_over=self._handed_over())
            if steward is not None:
                from motte.shared.binding import KeepClaims

                # Before the workload starts: without the Steward's certificate it does not run.
                # terms.wasm_sha256 is the keep's own digest of the bytes (checked as they arrived, or
                # when the cached compiled module was made: see run()).
                claims = KeepClaims.of(bytes.fromhex(terms.wasm_sha256), terms)
                identity = network.use_steward(steward, self.evidence_source(), terms.steward_ca, claims=claims)
                chain_pem = identity.chain_pem()
        for fd, spec in enumerate(terms.config.files):
            if spec.kind == "null":
                files.append(NullFile())
            elif spec.kind in STDIO_KINDS:
                files.append(stdio(fd, spec, outputs))
            elif network is not None:
                try:
                    files.append(network.socket(fd, spec))
                except MotteError as exc:
                    raise LaunchError(f"files[{fd}] ({spec.kind} {spec.name!r}): {exc}") from None
            else:
                raise LaunchError(f"files[{fd}] has unknown kind {spec.kind!r}")
        if network is not None:
            network.start()
        deadline = None if terms.timeout is None else time.monotonic() + terms.timeout  # as _run() sets it
        if terms.dirs:
            from motte.keep.wasi.remote_fs import HostFsClient, RemoteDir

            for guest, stream in zip(terms.dirs, dir_streams, strict=True):
                client = HostFsClient(self.endpoint, stream, deadline)
                self.hostfs_clients.append(client)
                files.append(RemoteDir.preopen(client, guest))
        return files, chain_pem

    def run(self, launch: Launch) -> Exit:
        """Run what the host launched. A module found compiled in the cache is not received at all
        (a VM keep would spend seconds on the transfer and its hash): the entry is keyed by the
        digest, and only ever holds what a keep compiled from bytes it checked against it. The
        host's sender then waits on the unread stream's credit (one window) until the run ends."""
        self.endpoint.limit_buffers(launch.terms.memory_limit)
        cache_dir = launch.streams.cache_dir if self.allow_host_cache else None
        cache = module_store(self.endpoint, self.backend, cache_dir)
        return self._run(launch.terms, lambda: self._receive_wasm(launch), self._channel_stdio(launch),
                         cache=cache, dir_streams=launch.streams.dirs)

    def _run(self, terms: LaunchTerms, wasm: bytes | Callable[[], bytes], stdio: StdioFiles, *,
             cache: ModuleStore | None,
             dir_streams: tuple[int, ...] = (), env: dict[str, str] | None = None,
             preopens: list[WasiFile] | None = None,
             started: Callable[[bytes | None], None] | None = None) -> Exit:
        began = time.monotonic()
        try:
            interruptible = terms.timeout is not None
            memory_limit = MemoryLimit(terms.memory_limit)
            engine = make_engine(interruptible, memory_limit)
            compiled = ModuleCache(cache, engine_settings(interruptible)).load(engine, wasm, terms.wasm_sha256)
        except wasmtime.WasmtimeError as exc:
            raise LaunchError(f"not a valid WebAssembly module: {_first_line(exc)}") from None
        compile_us = round((time.monotonic() - began) * 1e6)
        outputs = ChannelOutputs()
        files, chain_pem = self._files(terms, stdio, outputs, dir_streams)
        files += preopens or []
        if started is not None:
            started(chain_pem)
        memory = GuestMemory()
        deadline = None if terms.timeout is None else time.monotonic() + terms.timeout
        wasi = Preview1(
            [ARGV0, *terms.config.args], {**terms.config.workload_env(), **(env or {})}, files, memory,
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
        if terms.timeout is not None:
            store.set_epoch_deadline(1)
            timer = threading.Timer(terms.timeout, engine.increment_epoch)
            timer.daemon = True
            timer.start()
        outputs.start()
        try:
            outcome = self._execute(store, linker, host, compiled.module, memory, terms)
            if memory_limit.refused and outcome.reason in ("exit", "trap"):
                how = f"exited with status {outcome.status}" if outcome.reason == "exit" else "trapped"
                outcome = _memory_outcome(terms, f"a memory.grow was refused and the workload then {how}")
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
                 module: wasmtime.Module, memory: GuestMemory, terms: LaunchTerms) -> Exit:
        try:
            instance = linker.instantiate(store, module)
        except wasmtime.Trap as exc:
            if _trapped_in_guard(exc):  # the start function's table.grow: no instance holds the count
                return _memory_outcome(terms, "a table.grow in the module's start function was refused")
            return _classify_trap(exc, host, terms)
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
            refused = _refused_table_grow(store, exports)
            return _ended(refused, terms) if refused is not None else _classify_trap(exc, host, terms)
        except wasmtime.WasmtimeError as exc:
            pending = host.take_pending()
            if isinstance(pending, HostTrap):
                return _ended(pending.outcome, terms)
            if pending is not None:
                return _internal_error(host, pending)
            return Exit(EXIT_TRAP, "trap", _first_line(exc))
        return _ended(ProcExit(0), terms)


def _ended(how: object, terms: LaunchTerms) -> Exit:
    """The outcome of a deliberate end: proc_exit, the deadline, or the memory cap."""
    if isinstance(how, DeadlineHit):
        return _timeout(terms)
    if isinstance(how, MemoryRefused):
        return _memory_outcome(terms, f"a memory.grow to {how.wanted} bytes was refused")
    if isinstance(how, TableGrowRefused):
        return _memory_outcome(terms, f"a table.grow by {how.elements} elements was refused")
    assert isinstance(how, ProcExit)
    if how.status > 255:
        return Exit(EXIT_MOTTE_ERROR, "exit", f"the workload exited with status {how.status}, beyond 255")
    return Exit(how.status, "exit")


def _classify_trap(trap: wasmtime.Trap, host: HostFunctions, terms: LaunchTerms) -> Exit:
    pending = host.take_pending()
    if isinstance(pending, HostTrap):
        return _ended(pending.outcome, terms)
    if trap.trap_code == wasmtime.TrapCode.INTERRUPT:
        return _timeout(terms)
    backtrace = tuple(_frame_text(i, frame) for i, frame in enumerate(trap.frames[:MAX_BACKTRACE]))
    cause = _trap_cause(trap.message)
    if pending is not None:
        return _internal_error(host, pending, backtrace)
    return Exit(EXIT_TRAP, "trap", cause, backtrace)


def _internal_error(host: HostFunctions, pending: BaseException, backtrace: tuple[str, ...] = ()) -> Exit:
    """A WASI call failed in motte's own code: motte's fault, not the workload's trap."""
    detail = f"{type(pending).__name__}: {pending}" if str(pending) else type(pending).__name__
    return Exit(EXIT_MOTTE_ERROR, "error", f"internal error in the keep runtime, in {host.pending_call}: {detail}",
                backtrace)


def _timeout(terms: LaunchTerms) -> Exit:
    return Exit(EXIT_TIMEOUT, "timeout", f"the workload ran past its {terms.timeout:g} s deadline")


class MemoryRefused(NamedTuple):
    wanted: int  # bytes the refused grow asked for


class TableGrowRefused(NamedTuple):
    elements: int  # how many the refused grow asked to add


def _refused_table_grow(store: wasmtime.Store, exports: Mapping[str, object]) -> TableGrowRefused | None:
    """The table.grow the cap refused, if that is what the workload trapped on: the module's
    guard (:mod:`motte.keep.table_guard`) recorded it just before trapping."""
    from motte.keep.table_guard import REFUSED_EXPORT  # (only after a trap)

    refused = exports.get(REFUSED_EXPORT)
    if not isinstance(refused, wasmtime.Global):
        return None
    elements = refused.value(store)
    return TableGrowRefused(elements % (1 << 64)) if isinstance(elements, int) and elements else None


def _trapped_in_guard(trap: wasmtime.Trap) -> bool:
    from motte.keep.table_guard import GUARD_NAME  # (only after a trap)

    frames = trap.frames
    return bool(frames) and frames[0].func_name == GUARD_NAME


def _memory_outcome(terms: LaunchTerms, then: str) -> Exit:
    mib = terms.memory_limit / (1 << 20)
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
