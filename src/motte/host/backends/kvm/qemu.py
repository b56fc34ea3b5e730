"""QEMU for the kvm keep: finding the binary, what it supports, and the micro-VM command line."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import shutil
import subprocess
from typing import Literal

from motte.host.backends.base import Check
from motte.host.image.cache import cache_root
from motte.shared.errors import MotteError
from motte.shared.vm_port import PORT_NAME

QEMU = "qemu-system-x86_64"
QEMU_HINT = "apt-get install qemu-system-x86"
MIB = 1 << 20
#: Guest RAM beyond the workload's cap: kernel (~30 MB), the unpacked initramfs, which stays in
#: RAM as the root filesystem (~62 MB), Python + wasmtime + cryptography (~60 MB), and room for
#: Cranelift's compile-time memory (what a booted keep uses: docs/vm-keep.md).
RUNTIME_OVERHEAD_MIB = 256
Accel = Literal["kvm", "tcg"]

#: Boot-time work a kvm keep's kernel skips (appended to the image's command line by this backend
#: only: the confidential backends' command line is measured and is left as it is). What each
#: saves under TCG is in docs/vm-keep.md.
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


#: The CPU TCG emulates: ``max`` (wasmtime needs SSE4.1 or later: never the default ``qemu64``),
#: less ERMS and FSRM, which only say that ``rep movsb``/``rep stosb`` are fast. They are not
#: under TCG, which runs them a byte per iteration; with them the guest kernel's copies to user
#: space (every read of the channel's port) and page clearing, and glibc's memcpy, take that
#: path. Cranelift does not use either, so compiled modules are the same (docs/vm-keep.md).
TCG_CPU = "max,erms=off,fsrm=off"


def kvm_boot_params() -> str:
    return " ".join(KVM_BOOT_PARAMS)


# ---- the command line (pure) ----------------------------------------------------------------


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
    cpu = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg", "-cpu", TCG_CPU]
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


# ---- the binary -----------------------------------------------------------------------------


def qemu_path() -> str | None:
    return shutil.which(QEMU)


def require_qemu() -> str:
    binary = qemu_path()
    if binary is None:
        raise MotteError(f"{QEMU} is not installed; the kvm backend needs it", hint=QEMU_HINT)
    return binary


def qemu_version(qemu: str | None = None) -> tuple[int, int, int] | None:
    binary = qemu or qemu_path()
    if binary is None:
        return None
    version = _qemu_facts(binary)["version"]
    return (int(version[0]), int(version[1]), int(version[2])) if isinstance(version, list) else None


def qemu_has_sandbox(qemu: str) -> bool:
    """Whether this QEMU was built with seccomp (``-sandbox``); Debian's is."""
    return bool(_qemu_facts(qemu)["sandbox"])


def qemu_check() -> Check:
    """The one check that decides whether this host can run kvm keeps at all."""
    qemu = qemu_path()
    if qemu is None:
        return Check("QEMU", False, f"{QEMU} not found: {QEMU_HINT}")
    return Check("QEMU", True, f"{qemu} {'.'.join(map(str, qemu_version(qemu) or ()))}")


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
