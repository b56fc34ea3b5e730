"""The ``kvm`` backend: the keep runs in a QEMU micro-VM.

The guest is the pinned Debian cloud kernel booted PVH-direct (``-M microvm``, no firmware, no
disk, no NIC, no serial port) with the keep image as its initramfs. The only device is one
virtio serial port, wired to a unix socket in a per-keep run directory: that is the channel.
QEMU is started with ``wait=on``, so the guest does not start until the launcher has connected,
and no byte the keep writes can be dropped for want of a reader (pitfall 5 of the VM notes).

Accelerator: ``kvm`` where KVM can really boot a guest, else QEMU's TCG emulator with
``-cpu max`` (wasmtime needs SSE4.1; the default ``qemu64`` CPU would SIGILL). ``auto`` decides
with :func:`kvm_verdict`: a paravirtual KVM (``kvm_pvm``, as on this project's CI machines)
emulates every guest ring-0 instruction, so a stock kernel boots at 1/1000 speed and dies; there
``auto`` uses TCG without trying. Elsewhere a probe boot decides once and the verdict is cached.

Under TCG the command line also gets ``tsc_early_khz=<host TSC kHz> tsc=reliable``: without it
the guest calibrates its TSC against the emulated PIT, which fails under host load, and then
hangs for want of any clock (3 of 15 boots here under load; none in ~40 boots since). See :func:`tcg_clock_params`.

Start-up, measured under TCG on this project's machines (``motte run --backend kvm hello.wasm``,
image cached, launch to the first byte of output; medians): 3.76 s booting as first built;
2.8-2.9 s booting with :data:`KVM_BOOT_PARAMS` (the kernel reaches /init ~0.65 s sooner); 0.68 s
restoring a snapshot (0.2 s to HELLO; most of the rest is compiling the module). Of a boot,
~1.2 s is the kernel (unpacking the 62 MB initramfs alone ~0.4 s) and ~1.1 s is Python starting
and importing wasmtime and the runtime, all of it CPU work that TCG runs 15-30x slower than
native, and the same in every boot.

Warm starts: the keep runtime *parks* (``MOTTE_PARK=1`` on its command line) once it has loaded
the engine, before HELLO, i.e. before anything of a tenant reaches it; see
:func:`motte.keep.vm_channel.park`. The first boot of a given configuration (command line incl.
memory size, QEMU binary, kernel and initrd files, under KVM the host CPU) is then live-migrated
into a file in ``<cache>/kvm-snapshots`` (0.1-0.2 s: the parked guest is idle) and goes on; later
launches of that configuration start QEMU with ``-incoming`` from the file and resume the parked
keep: the VM is running 0.1-0.2 s after launch, and the workload's own compile and run follow.
Every launch sends the parked keep the host's wall clock and 64 bytes of fresh entropy, which it
credits to the kernel RNG and reseeds it with: the copies would otherwise share the snapshot's
clock and RNG state. They still share what only a new boot changes: the guest kernel's and the
keep process's address-space layout and Python's hash seed. That weakens only defence in depth
*inside* the guest (against a workload that escapes wasmtime), which a kvm keep does not rely
on for the host's safety; confidential keeps never park (their command line has no
``MOTTE_PARK``, and their launch must be measured). ``MOTTE_KVM_SNAPSHOT=0`` turns it off. A
snapshot that fails to restore is deleted and the keep boots; four are kept (~190 MB each).

Isolation: the workload cannot reach the host except through the channel; the host can read the
keep's memory (no encryption: that is what ``snp``/``tdx`` add) and there is no attestation.

Cleanup: every keep has a private run directory (socket, QEMU log); ``close`` kills QEMU by PID
and removes the directory. QEMU runs under ``setpriv --pdeathsig KILL`` when launched from the
main thread, so it dies with the host process even on SIGKILL; run directories whose host
process is gone are swept at the next launch.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import math
import os
import platform as platform_mod
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from motte.host.backends.base import Backend, KeepHandle, LaunchSpec, Progress
from motte.host.image.cache import cache_root
from motte.shared.endpoint import ChannelClosed, Endpoint, SocketTransport, Timeout
from motte.shared.errors import MotteError
from motte.shared.vm_port import PARK_PARAM, PARKED, PORT_NAME, RESUME_ENTROPY, Resume

QEMU = "qemu-system-x86_64"
QEMU_HINT = "apt-get install qemu-system-x86"
MIB = 1 << 20
#: Guest RAM beyond the workload's cap: kernel (~30 MB), the unpacked initramfs, which stays in
#: RAM as the root filesystem (~62 MB), Python + wasmtime + cryptography (~60 MB), and room for
#: Cranelift's compile-time memory. The VM notes measured 156-160 MB in use at boot.
RUNTIME_OVERHEAD_MIB = 256
#: A first boot attempt that shows no HELLO by then is taken for a hang (2-4% of TCG boots hang
#: silently, per the notes; a normal TCG boot takes 2-4 s, under load up to ~10 s). The retry
#: gets the rest of ``LaunchSpec.boot_timeout``.
HANG_TIMEOUT = 25.0
HANG_HINT = "TCG boots hang now and then; a slow or loaded host may need a larger boot timeout"
CONNECT_POLL = 0.005
RUNDIR_PREFIX = "motte-kvm-"
Accel = Literal["kvm", "tcg"]


# ---- QEMU command line (pure) ---------------------------------------------------------------


def guest_memory_mib(memory_bytes: int) -> int:
    """Guest RAM for a workload cap: the cap plus the runtime's overhead, rounded up to 2 MiB."""
    mib = math.ceil(max(memory_bytes, 0) / MIB) + RUNTIME_OVERHEAD_MIB
    return mib + (mib % 2)


def microvm_command(
    *,
    accel: Accel,
    vmlinux: str,
    initrd: str,
    cmdline: str,
    memory_mib: int,
    vcpus: int,
    socket_path: str,
    qemu: str = QEMU,
    console_log: str | None = None,
    sandbox: bool = True,
) -> list[str]:
    """The QEMU command line of a kvm keep. Pure: what the tests check, what launch runs."""
    cpu = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
    # isa-serial only for the debug console; rtc stays on (rtc=off made boots slow or hang).
    machine = "microvm,x-option-roms=off,isa-serial=" + ("on" if console_log else "off")
    command = [
        qemu, "-nodefaults", "-no-user-config", *cpu,
        "-machine", machine,
        "-m", str(memory_mib), "-smp", str(vcpus),
        "-kernel", vmlinux, "-initrd", initrd, "-append", cmdline,
        "-no-reboot", "-display", "none", "-monitor", "none",
        "-device", "virtio-serial-device",
        "-chardev", f"socket,id=ch0,path={socket_path},server=on,wait=on",
        "-device", f"virtserialport,chardev=ch0,name={PORT_NAME}",
    ]  # fmt: skip
    if console_log:
        command += ["-serial", f"file:{console_log}"]
    if sandbox:
        # QEMU's seccomp filter: a guest that escaped into QEMU still cannot spawn processes,
        # gain privileges or use obsolete system calls.
        command += ["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
    return command


# ---- probing --------------------------------------------------------------------------------


def qemu_path() -> str | None:
    return shutil.which(QEMU)


def qemu_version(qemu: str | None = None) -> tuple[int, int, int] | None:
    binary = qemu or qemu_path()
    if binary is None:
        return None
    version = _qemu_facts(binary)["version"]
    return (int(version[0]), int(version[1]), int(version[2])) if isinstance(version, list) else None


def qemu_has_sandbox(qemu: str) -> bool:
    """Whether this QEMU was built with seccomp (``-sandbox``); Debian's is."""
    return bool(_qemu_facts(qemu)["sandbox"])


def _probe_qemu(binary: str) -> dict[str, object]:
    version: list[int] | None = None
    sandbox = False
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        match = re.search(r"version (\d+)\.(\d+)\.(\d+)", out)
        version = [int(match[1]), int(match[2]), int(match[3])] if match else None
        sandbox = "\n-sandbox " in subprocess.run([binary, "-help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {"version": version, "sandbox": sandbox}


@functools.lru_cache(maxsize=4)
def _qemu_facts(binary: str) -> dict[str, object]:
    """What ``--version`` and ``-help`` say about a QEMU binary, cached on disk by the binary's
    size, mtime and inode: two subprocesses (20-30 ms) that every launch would otherwise run."""
    try:
        info = os.stat(binary)
    except OSError:
        return _probe_qemu(binary)
    identity = [binary, info.st_size, info.st_mtime_ns, info.st_ino]
    path = cache_root() / "qemu-facts.json"
    try:
        cached = json.loads(path.read_text())
        if cached.get("identity") == identity:
            return dict(cached)
    except (OSError, ValueError, AttributeError):
        pass
    facts = {"identity": identity, **_probe_qemu(binary)}
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(facts) + "\n")
        temporary.replace(path)  # atomic: a concurrent launch reads the old or the new file
    return facts


def require_qemu() -> str:
    binary = qemu_path()
    if binary is None:
        raise MotteError(f"{QEMU} is not installed; the kvm backend needs it", hint=QEMU_HINT)
    return binary


@dataclass(frozen=True)
class KvmVerdict:
    usable: bool | None  # None: unknown (no cached verdict, and booting was not allowed)
    reason: str
    probed: bool  # a probe boot ran (else the verdict follows from the host's facts)
    fingerprint: str = ""
    checked_at: float = 0.0


def is_pvm() -> bool:
    """``/dev/kvm`` is PVM, a paravirtual KVM that emulates the guest's ring 0 in software."""
    return os.path.isdir("/sys/module/kvm_pvm")


def _verdict_file() -> Path:
    return cache_root() / "kvm-verdict.json"


def _fingerprint() -> str:
    # The verdict holds for this host kernel, this QEMU and these KVM modules.
    modules = sorted(m for m in ("kvm_intel", "kvm_amd", "kvm_pvm") if os.path.isdir(f"/sys/module/{m}"))
    return json.dumps([platform_mod.release(), qemu_version(), modules])


def kvm_verdict(
    *, probe: bool = False, allow_boot: bool = True, timeout: float = 30.0, progress: Progress | None = None
) -> KvmVerdict:
    """Whether KVM can boot the keep on this host.

    Order: no usable /dev/kvm -> no; a cached verdict for this host, QEMU and KVM modules -> it;
    PVM -> no, without booting (a boot would take minutes and then crash); else a probe boot,
    if ``allow_boot`` (``motte platform info`` does not boot unless asked). ``probe=True`` always
    boots and replaces the cached verdict.
    """
    if not os.path.exists("/dev/kvm"):
        return KvmVerdict(False, "/dev/kvm does not exist (no KVM module loaded, or not exposed here)", False)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return KvmVerdict(False, "no read/write permission on /dev/kvm (join the 'kvm' group)", False)
    fingerprint = _fingerprint()
    if not probe:
        try:
            cached = json.loads(_verdict_file().read_text())
            if cached.get("fingerprint") == fingerprint:
                return KvmVerdict(**cached)
        except (OSError, ValueError, TypeError):
            pass
        if is_pvm():
            return KvmVerdict(
                False,
                "/dev/kvm is PVM (kvm_pvm): it emulates the guest kernel's ring 0 in software, so a stock "
                "kernel boots ~1000x slower and dies on cmpxchg16b/xrstor",
                False,
                fingerprint,
                time.time(),
            )
        if not allow_boot:
            return KvmVerdict(None, "not probed yet", False, fingerprint)
    verdict = _probe_boot(timeout, fingerprint, progress)
    with contextlib.suppress(OSError):
        _verdict_file().parent.mkdir(parents=True, exist_ok=True)
        _verdict_file().write_text(json.dumps(dataclasses.asdict(verdict)) + "\n")
    return verdict


def _probe_boot(timeout: float, fingerprint: str, progress: Progress | None) -> KvmVerdict:
    started = time.monotonic()
    try:
        keep = KvmBackend(guest_mode="selftest", retry_hangs=False).launch(
            LaunchSpec(memory_bytes=0, boot_timeout=timeout, accel="kvm"), progress
        )
    except MotteError as exc:
        return KvmVerdict(False, f"a probe boot under KVM failed: {exc.message}", True, fingerprint, time.time())
    try:
        keep.endpoint.send_control("bye")
        keep.wait(5)
    finally:
        keep.close()
    seconds = time.monotonic() - started
    return KvmVerdict(True, f"a probe boot under KVM said HELLO in {seconds:.2f} s", True, fingerprint, time.time())


def host_tsc_khz(cpuinfo: str | None = None) -> int | None:
    """The host's TSC frequency in kHz, when the host's TSC is constant (else None).

    Under TCG the guest's TSC is the host's (QEMU reads the host TSC for RDTSC), so the host knows
    the guest's TSC frequency. /proc/cpuinfo's "cpu MHz" is the TSC frequency only with
    ``constant_tsc``; without it (frequency scaling) it is the current clock and useless here.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = re.search(r"^flags\s*:(.*)$", cpuinfo, re.M)
    mhz = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, re.M)
    if not flags or "constant_tsc" not in flags[1].split() or not mhz:
        return None
    khz = round(float(mhz[1]) * 1000)
    return khz if 100_000 <= khz <= 10_000_000 else None


def tcg_clock_params(tsc_khz: int | None) -> str:
    """Kernel parameters that make TCG boots reliable.

    Under TCG the guest calibrates its TSC against the emulated PIT, with timing that depends on
    the host's load; when that fails ("Unable to calibrate against PIT ... Marking TSC unstable")
    microvm has no other clock (no HPET, no ACPI PM timer) and the boot hangs: that was every hang
    measured here (3 of 15 boots under load). ``tsc_early_khz`` gives the frequency instead, and
    ``tsc=reliable`` stops the clocksource watchdog from demoting the TSC to jiffies (4 ms
    resolution) when emulation delays its timer interrupts.
    """
    return f"tsc_early_khz={tsc_khz} tsc=reliable" if tsc_khz else "tsc=reliable"


#: Boot-time work a kvm keep's kernel skips (appended to the image's command line by this backend
#: only: the confidential backends' command line is measured and is left as it is). Measured
#: under TCG on this project's machines, from QEMU start to Python running in the guest
#: (medians of 5-8 interleaved boots): about 1.75 s with none of these, 0.45 s less with the
#: initcall list, 0.1-0.2 s less with ``ipv6.disable``, ``init_on_alloc=0`` and ``noreplace-smp``.
KVM_BOOT_PARAMS: tuple[str, ...] = (
    # Initcalls whose work the keep never uses, each 50-130 ms under TCG, some of which also wait
    # for the initramfs to be unpacked (a crypto allocation requests a module, and usermode
    # helpers wait for the rootfs), which serialises the boot:
    #   jent_mod_init: the jitter-entropy RNG's health test (the kernel's CRNG does not need it);
    #   crypto_kdf108_init: a self-test of the SP800-108 KDF; init_encrypted: "encrypted" keys;
    #   load_system_certificate_list: the module-signing certificates (unsigned-looking modules
    #     still load: no MODULE_SIG_FORCE, no lockdown; the kernel notes a taint);
    #   bpf_*_init: BTF kfunc sets for BPF TCP congestion control and struct_ops tests;
    #   trace_eval_init: enum names for ftrace output.
    "initcall_blacklist=jent_mod_init,crypto_kdf108_init,init_encrypted,load_system_certificate_list,"
    "bpf_tcp_ca_kfunc_init,bpf_dummy_struct_ops_init,trace_eval_init",
    "cryptomgr.notests",  # no crypto self-tests at registration (not a FIPS kernel)
    "ipv6.disable=1",  # the keep has no network device; its sockets are proxied over the channel
    # Zeroing every page at allocation hardens a kernel against leaks of stale kernel memory to
    # an unprivileged process. A kvm keep runs one tenant's one workload, which reaches the
    # kernel only through the keep runtime's WASI calls, and the host can read all of it anyway.
    "init_on_alloc=0",
    # Keep the SMP (lock-prefixed) instructions on a 1-vCPU guest instead of patching every lock
    # site to its UP form at boot: 0.1-0.2 s of code patching under TCG, nanoseconds saved after.
    "noreplace-smp",
)


def kvm_boot_params() -> str:
    return " ".join(KVM_BOOT_PARAMS)


def resolve_accel(requested: str, progress: Progress | None = None) -> tuple[Accel, str]:
    """``(accelerator, why)`` for ``auto``, ``kvm`` or ``tcg``."""
    if requested == "tcg":
        return "tcg", "TCG requested"
    if requested == "kvm":
        return "kvm", "KVM requested"
    if requested != "auto":
        raise MotteError(f"unknown accelerator {requested!r}", hint="use auto, kvm or tcg")
    verdict = kvm_verdict(progress=progress)
    if verdict.usable:
        return "kvm", verdict.reason
    return "tcg", f"KVM unusable: {verdict.reason}"


# ---- run directories and process hygiene ----------------------------------------------------

_live: set[KvmKeep] = set()
_live_lock = threading.Lock()


def _close_all_at_exit() -> None:
    with _live_lock:
        keeps = list(_live)
    for keep in keeps:
        keep.close(grace=0)


atexit.register(_close_all_at_exit)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rundir_base() -> str:
    # The channel socket lives in the run directory, and a unix socket path has at most 107
    # bytes; a deep TMPDIR falls back to /tmp.
    base = tempfile.gettempdir()
    return base if len(base) + len(RUNDIR_PREFIX) + len("XXXXXXXX/keep.sock") + 2 < 100 else "/tmp"


def sweep_stale_rundirs() -> None:
    """Remove run directories of host processes that died without cleaning up (SIGKILL)."""
    base = Path(_rundir_base())
    for rundir in base.glob(f"{RUNDIR_PREFIX}*"):
        try:
            owner = int((rundir / "host.pid").read_text())
        except (OSError, ValueError):
            continue
        if owner != os.getpid() and not _pid_alive(owner):
            shutil.rmtree(rundir, ignore_errors=True)


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip() and "QEMU waiting for connection" not in line]
    return " | ".join(kept[-lines:])


# ---- snapshots: starting a keep by restoring a parked one ----------------------------------

SNAPSHOT_FORMAT = 1
SNAPSHOTS_KEPT = 4  # snapshot files kept (newest used first): each is ~190 MB
SNAPSHOT_SAVE_TIMEOUT = 30.0


def snapshots_enabled() -> bool:
    """``MOTTE_KVM_SNAPSHOT=0`` turns warm starts off: every kvm keep then boots."""
    return os.environ.get("MOTTE_KVM_SNAPSHOT", "1") != "0"


def snapshot_dir() -> Path:
    return cache_root() / "kvm-snapshots"


def _file_identity(path: str) -> list[object]:
    info = os.stat(path)
    return [path, info.st_size, info.st_mtime_ns, info.st_ino]


def _host_cpu_identity() -> str:
    # Under KVM (-cpu host) the guest sees the host's CPU model and features; a snapshot taken on
    # one CPU must not be restored on another.
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return "\n".join(re.findall(r"^(?:vendor_id|model name|flags)\s*:.*$", text, re.M)[:3])


@dataclass(frozen=True)
class Snapshot:
    """The snapshot of a parked keep for one exact QEMU configuration, in the cache."""

    path: Path
    key: str

    @classmethod
    def for_command(cls, command: Sequence[str], qemu: str, accel: Accel, files: Sequence[str]) -> Snapshot | None:
        """Where the snapshot for this command line lives, or None if the cache is not private.

        The key covers everything a migration stream depends on: the full command line (the
        socket path aside), the QEMU binary, the kernel and initrd files, and under KVM the host
        CPU. A restore loads machine state QEMU trusts and code the guest runs, so the directory
        must be this user's alone, as for the module cache."""
        directory = snapshot_dir()
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = directory.stat()
        except OSError:
            return None
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            return None
        material = {
            "format": SNAPSHOT_FORMAT,
            "command": list(command),
            "qemu": _file_identity(qemu),
            "files": [_file_identity(f) for f in files],
            "cpu": _host_cpu_identity() if accel == "kvm" else "",
        }
        key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
        return cls(directory / f"{key[:32]}.snap", key)

    def exists(self) -> bool:
        return self.path.is_file()

    def open_for_restore(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:  # pruned or replaced by another launch since exists()
            raise MotteError(f"cannot open the keep snapshot {self.path}: {exc.strerror}") from None
        with contextlib.suppress(OSError):
            os.utime(self.path)  # the newest used are the ones pruning keeps
        return fd

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()

    def save_from(self, qmp_path: Path) -> bool:
        """Migrate the running, parked VM into the snapshot file and let it run on. The guest is
        idle, so the live migration converges at once (0.1-0.2 s for ~190 MB here). Returns
        whether a snapshot was written; another process making the same one is left to it."""
        lock_fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False
            if self.exists():
                return False
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()  # left by a process of the same pid that died saving
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                with _Qmp(qmp_path) as qmp:
                    completed = False
                    try:
                        qmp.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40})  # no 128 MiB/s cap
                        qmp.execute("getfd", {"fdname": "motte-snapshot"}, fds=[fd])
                        os.close(fd)
                        fd = -1
                        qmp.execute("migrate", {"uri": "fd:motte-snapshot"})
                        deadline = time.monotonic() + SNAPSHOT_SAVE_TIMEOUT
                        while time.monotonic() < deadline:
                            status = qmp.execute("query-migrate").get("status")
                            if status in ("completed", "failed", "cancelled"):
                                completed = status == "completed"
                                break
                            time.sleep(0.005)
                    finally:
                        # A completed migration leaves the source VM paused ("postmigrate"); this
                        # keep goes on. A failed one leaves it running, and cont is a no-op.
                        with contextlib.suppress(MotteError):
                            qmp.execute("cont")
                        if not completed:
                            with contextlib.suppress(MotteError):
                                qmp.execute("migrate_cancel")
                if not completed:
                    return False
                temporary.replace(self.path)
                _prune_snapshots(self.path.parent)
                return True
            finally:
                if fd >= 0:
                    os.close(fd)
                with contextlib.suppress(OSError):
                    temporary.unlink()
        finally:
            os.close(lock_fd)


def _prune_snapshots(directory: Path, keep: int = SNAPSHOTS_KEPT) -> None:
    snapshots = sorted(directory.glob("*.snap"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in snapshots[keep:]:
        with contextlib.suppress(OSError):
            old.unlink()
            old.with_suffix(".lock").unlink()
    for stale in directory.glob(".*.tmp"):  # a save that died midway
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > 3600:
                stale.unlink()


class _Qmp:
    """A minimal QMP client: one command at a time, events skipped."""

    def __init__(self, path: Path, timeout: float = 10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")
        self._reply()  # the greeting
        self.execute("qmp_capabilities")

    def __enter__(self) -> _Qmp:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.file.close()
        self.sock.close()

    def _reply(self) -> dict[str, Any]:
        while True:
            line = self.file.readline()
            if not line:
                raise MotteError("QEMU closed its QMP monitor")
            message = json.loads(line)
            if "event" not in message:
                return dict(message)

    def execute(self, command: str, arguments: dict[str, Any] | None = None, fds: Sequence[int] = ()) -> Any:
        request = json.dumps({"execute": command, **({"arguments": arguments} if arguments else {})}).encode()
        if fds:
            socket.send_fds(self.sock, [request + b"\n"], list(fds))
        else:
            self.sock.sendall(request + b"\n")
        reply = self._reply()
        if "error" in reply:
            raise MotteError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")


def _await_parked(
    sock: socket.socket, process: subprocess.Popen[bytes], deadline: float, log_path: Path, hang: str
) -> None:
    """Read the keep's PARKED record, which comes before the channel protocol starts."""
    received = b""
    while len(received) < len(PARKED):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BootHang(hang, hint=HANG_HINT)
        sock.settimeout(min(remaining, 0.5))
        try:
            data = sock.recv(len(PARKED) - len(received))
        except TimeoutError:
            continue
        if not data:
            status = process.wait(5) if process.poll() is None else process.returncode
            tail = _tail(log_path)
            if status != 0:
                raise MotteError(f"QEMU exited with status {status}: {tail or 'no output'}")
            raise MotteError(
                f"the micro-VM powered off before the keep started: {tail or 'no output'}",
                hint="the guest kernel or /init failed; set MOTTE_KVM_CONSOLE=/tmp/console.log to see its console",
            )
        received += data
    sock.settimeout(None)
    if received != PARKED:
        raise MotteError(f"the keep sent {received!r} where it parks")


# ---- the keep handle ------------------------------------------------------------------------


class KvmKeep(KeepHandle):
    backend = "kvm"

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        endpoint: Endpoint,
        rundir: Path,
        accel: Accel,
        command: Sequence[str],
        boot_seconds: float,
        attempts: int,
        restored: bool = False,
    ):
        self.process = process
        self.endpoint = endpoint
        self.rundir = rundir
        self.accel = accel
        self.command = list(command)
        self.boot_seconds = boot_seconds
        self.attempts = attempts
        #: started by restoring a snapshot of a parked keep, not by booting
        self.restored = restored
        #: this keep's boot left a snapshot for later keeps to start from
        self.snapshot_saved = False
        self.isolation = (
            f"a micro-VM under QEMU ({'KVM' if accel == 'kvm' else 'TCG software emulation'}): the workload "
            "cannot reach the host except through the channel, but the host can read the keep's memory; "
            "no attestation"
        )
        self._closed = False
        self._lock = threading.Lock()

    def memory_pid(self) -> int | None:
        return self.process.pid

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self, grace: float = 2.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.endpoint.close()
            if self.wait(grace) is None:
                _kill(self.process)
        finally:
            shutil.rmtree(self.rundir, ignore_errors=True)
            with _live_lock:
                _live.discard(self)


def _kill(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (QEMU exits at once on it), then SIGKILL; always reaps, so no zombie is left."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(1.0)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()


# ---- the backend ----------------------------------------------------------------------------


class BootHang(MotteError):
    """The guest did not say HELLO in time and QEMU is still running."""


class KvmBackend(Backend):
    name = "kvm"

    def __init__(
        self,
        *,
        guest_mode: str | None = None,
        retry_hangs: bool = True,
        vmlinux: str | None = None,
        initrd: str | None = None,
        cmdline: str | None = None,
        snapshots: bool | None = None,
    ):
        """``guest_mode`` selects ``MOTTE_MODE`` in the guest (None: the keep runtime;
        ``"selftest"``: the image's channel self test). ``vmlinux``/``initrd``/``cmdline`` override
        the cached image (tests, experiments); by default the image is built on first use.
        ``snapshots``: start keeps from a snapshot of a parked keep (None: unless
        ``MOTTE_KVM_SNAPSHOT=0``); only the keep runtime parks, so only it is ever restored."""
        self.guest_mode = guest_mode
        self.snapshots = snapshots_enabled() if snapshots is None else snapshots
        self.retry_hangs = retry_hangs
        self.vmlinux = vmlinux
        self.initrd = initrd
        self.cmdline = cmdline
        #: MOTTE_KVM_CONSOLE=<file>: attach a serial console and log the guest's kernel output
        #: there (a different command line, so a different measurement; for debugging only)
        self.console_log = os.environ.get("MOTTE_KVM_CONSOLE") or None

    def _image(self, progress: Progress | None) -> tuple[str, str, str]:
        if self.vmlinux and self.initrd:
            return self.vmlinux, self.initrd, self.cmdline or "quiet panic=-1"
        from motte.host.image.build import cached_image, ensure_image, kernel_cmdline

        image = cached_image()
        if image is None:
            if progress:
                progress("building the keep image (first use; cached afterwards)")
            image = ensure_image(progress)
        base = kernel_cmdline(self.guest_mode, console=bool(self.console_log))
        park = f" {PARK_PARAM}" if self.guest_mode is None and self.snapshots else ""
        cmdline = self.cmdline or f"{base} {kvm_boot_params()}{park}"
        return str(image.vmlinux), str(image.initrd), cmdline

    def launch(self, spec: LaunchSpec, progress: Progress | None = None) -> KvmKeep:
        qemu = require_qemu()
        if spec.vcpus < 1:
            raise MotteError(f"a keep needs at least one vCPU, not {spec.vcpus}")
        vmlinux, initrd, cmdline = self._image(progress)
        accel, why = resolve_accel(spec.accel, progress)
        if accel == "tcg":
            cmdline = f"{cmdline} {tcg_clock_params(host_tsc_khz())}"
        sweep_stale_rundirs()
        park = PARK_PARAM in cmdline.split()
        snapshot = None
        if park and self.snapshots:
            template = microvm_command(
                accel=accel, vmlinux=vmlinux, initrd=initrd, cmdline=cmdline,
                memory_mib=guest_memory_mib(spec.memory_bytes), vcpus=spec.vcpus, socket_path="@channel@",
                qemu=qemu, console_log=self.console_log, sandbox=qemu_has_sandbox(qemu),
            )  # fmt: skip
            snapshot = Snapshot.for_command(template, qemu, accel, [vmlinux, initrd])
        deadline = time.monotonic() + spec.boot_timeout
        attempts = 0
        restore_failed = False
        while True:
            attempts += 1
            remaining = deadline - time.monotonic()
            # The first attempt gets at most half the boot timeout (and HANG_TIMEOUT), so that a
            # hang leaves time for the one retry; the retry gets what is left.
            first = min(spec.boot_timeout / 2, HANG_TIMEOUT)
            budget = min(remaining, first) if self.retry_hangs and attempts == 1 else remaining
            restore = snapshot is not None and not restore_failed and snapshot.exists()
            if progress:
                if attempts > 1:
                    progress("the boot hung; retrying once")
                else:
                    progress(f"{'restoring' if restore else 'booting'} the micro-VM ({accel}: {why})")
            try:
                return self._boot(
                    qemu, accel, spec, vmlinux, initrd, cmdline, max(budget, 1.0), attempts,
                    park=park, snapshot=snapshot, restore=restore,
                )  # fmt: skip
            except MotteError as exc:
                if restore and snapshot is not None:
                    # A snapshot that does not restore (a damaged file, a change the key missed)
                    # is dropped, and the keep boots instead.
                    snapshot.discard()
                    restore_failed = True
                    attempts -= 1
                    continue
                if not isinstance(exc, BootHang):
                    raise
                if not self.retry_hangs or attempts >= 2 or deadline - time.monotonic() < 2.0:
                    raise MotteError(
                        f"the kvm keep did not boot: {exc.message}"
                        + (f" ({attempts} attempts)" if attempts > 1 else ""),
                        hint=exc.hint,
                    ) from None

    def _boot(
        self,
        qemu: str,
        accel: Accel,
        spec: LaunchSpec,
        vmlinux: str,
        initrd: str,
        cmdline: str,
        budget: float,
        attempt: int,
        *,
        park: bool = False,
        snapshot: Snapshot | None = None,
        restore: bool = False,
    ) -> KvmKeep:
        """Boot (or, with ``restore``, restore ``snapshot``) and complete HELLO. A keep started with
        ``park`` stops before HELLO and waits for the resume record; a booted one may first be
        saved as ``snapshot``."""
        started = time.monotonic()
        rundir = Path(tempfile.mkdtemp(prefix=RUNDIR_PREFIX, dir=_rundir_base()))
        process: subprocess.Popen[bytes] | None = None
        sock: socket.socket | None = None
        endpoint: Endpoint | None = None
        keep: KvmKeep | None = None
        try:
            (rundir / "host.pid").write_text(str(os.getpid()))
            socket_path = rundir / "keep.sock"
            log_path = rundir / "qemu.log"
            command = microvm_command(
                accel=accel,
                vmlinux=vmlinux,
                initrd=initrd,
                cmdline=cmdline,
                memory_mib=guest_memory_mib(spec.memory_bytes),
                vcpus=spec.vcpus,
                socket_path=str(socket_path),
                qemu=qemu,
                console_log=self.console_log,
                sandbox=qemu_has_sandbox(qemu),
            )
            restore_fd = -1
            qmp_path: Path | None = None
            if restore and snapshot is not None:
                restore_fd = snapshot.open_for_restore()
                command += ["-incoming", f"fd:{restore_fd}"]  # QEMU reads the migration stream from it
            elif park and snapshot is not None:
                qmp_path = rundir / "qmp.sock"  # to save the snapshot once the keep has parked
                command += ["-qmp", f"unix:{qmp_path},server=on,wait=off"]
            try:
                with log_path.open("wb") as log:
                    process = subprocess.Popen(
                        _with_pdeathsig(command),
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env={"PATH": os.defpath, "LC_ALL": "C"},
                        pass_fds=(restore_fd,) if restore_fd >= 0 else (),
                    )
            finally:
                if restore_fd >= 0:
                    os.close(restore_fd)
            sock = _connect(socket_path, process, started + budget, log_path)
            hang = f"no HELLO from the guest within {budget:.0f} s ({accel})"
            saved = False
            if park:
                if not restore:
                    _await_parked(sock, process, started + budget, log_path, hang)
                    if qmp_path is not None and snapshot is not None:
                        try:
                            saved = snapshot.save_from(qmp_path)
                        except (OSError, ValueError, MotteError):
                            saved = False  # only an optimisation: this keep runs on regardless
                # The restored keep waits at the very point where the saved one parked.
                with contextlib.suppress(OSError):  # QEMU died: HELLO below reports how
                    sock.sendall(Resume(time.time_ns(), os.urandom(RESUME_ENTROPY)).to_bytes())
            endpoint = Endpoint(SocketTransport(sock), "host", name="kvm-keep").start()
            keep = KvmKeep(process, endpoint, rundir, accel, command, 0.0, attempt, restored=restore)
            keep.snapshot_saved = saved
            with _live_lock:
                _live.add(keep)
            try:
                endpoint.hello(timeout=max(budget - (time.monotonic() - started), 0.1), backend="kvm")
            except Timeout:
                raise BootHang(hang, hint=HANG_HINT) from None
            except ChannelClosed as exc:
                status = process.wait(5) if process.poll() is None else process.returncode
                tail = _tail(log_path)
                if status != 0:
                    # QEMU itself failed (bad kernel file, unsupported option, no memory, ...).
                    raise MotteError(f"QEMU exited with status {status}: {tail or exc.message}") from None
                raise MotteError(
                    f"the micro-VM powered off before the keep said HELLO: {tail or exc.message}",
                    hint="the guest kernel or /init failed; set MOTTE_KVM_CONSOLE=/tmp/console.log to see its console",
                ) from None
            keep.boot_seconds = time.monotonic() - started
            return keep
        except BaseException:
            # Whatever went wrong (including KeyboardInterrupt): no QEMU, socket or directory stays.
            if keep is not None:
                keep.close(grace=0)
            else:
                if endpoint is not None:
                    endpoint.close()
                elif sock is not None:
                    sock.close()
                if process is not None:
                    _kill(process)
                shutil.rmtree(rundir, ignore_errors=True)
            raise


def _with_pdeathsig(command: list[str]) -> list[str]:
    # PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, so it is only safe
    # from the main thread (whose end is the process's end). setpriv sets it, then execs QEMU.
    setpriv = shutil.which("setpriv")
    if setpriv and threading.current_thread() is threading.main_thread():
        return [setpriv, "--pdeathsig", "KILL", "--", *command]
    return command


def _connect(path: Path, process: subprocess.Popen[bytes], deadline: float, log_path: Path) -> socket.socket:
    """Connect to QEMU's chardev socket as soon as it exists (QEMU holds the guest until then)."""
    while True:
        if process.poll() is not None:
            tail = _tail(log_path)
            raise MotteError(
                f"QEMU exited with status {process.returncode} before the keep started: {tail or 'no output'}"
            )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
        if time.monotonic() > deadline:
            raise BootHang("QEMU did not open its channel socket in time")
        time.sleep(CONNECT_POLL)
