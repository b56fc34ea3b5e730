"""The kvm backend: real micro-VM boots (under TCG here), the HELLO exchange, hangs and cleanup."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from motte.host.backends.base import LaunchSpec
from motte.host.backends.kvm import KvmBackend, KvmKeep, accel, qemu
from motte.host.backends.kvm import snapshot as snapshots_module
from motte.host.backends.kvm.accel import resolve_accel
from motte.host.backends.kvm.qemu import guest_memory_mib, microvm_command
from motte.host.backends.kvm.rundir import sweep_stale_rundirs
from motte.host.image import build, inputs
from motte.host.image.cpio import Archive
from motte.shared.errors import MotteError
from motte.shared.vm_port import PARK_PARAM
from tests.host.conftest import DEFAULT_CACHE, qemu_pids, rundirs

needs_qemu = pytest.mark.skipif(qemu.qemu_path() is None, reason=f"QEMU is not installed ({qemu.QEMU_HINT})")
ROOT = Path(__file__).resolve().parents[2]


# ---- pure parts ---------------------------------------------------------------------------


def test_command_line_for_tcg_and_kvm() -> None:
    args = dict(vmlinux="/k", initrd="/i", cmdline="quiet", memory_mib=320, vcpus=2, socket_path="/r/keep.sock")
    tcg = microvm_command(accel="tcg", **args)  # type: ignore[arg-type]
    text = " ".join(tcg)
    assert tcg[0] == "qemu-system-x86_64" and "-nodefaults" in tcg and "-no-user-config" in tcg
    assert "-accel tcg -cpu max" in text, "wasmtime needs SSE4.1: never the default qemu64 CPU"
    assert "-cpu max,erms=off,fsrm=off" in text, "TCG runs rep movsb a byte at a time: the guest must not prefer it"
    assert "-machine microvm,x-option-roms=off,isa-serial=off" in text
    assert "-m 320 -smp 2" in text and "-kernel /k -initrd /i -append quiet" in text
    assert "-no-reboot" in tcg and "-display none" in text
    assert "-chardev socket,id=ch0,path=/r/keep.sock,server=on,wait=on" in text
    assert "-device virtserialport,chardev=ch0,name=motte.0" in text
    assert "spawn=deny" in text
    kvm_text = " ".join(microvm_command(accel="kvm", **args))  # type: ignore[arg-type]
    assert "-accel kvm -cpu host" in kvm_text
    debug = " ".join(microvm_command(accel="tcg", console_log="/tmp/c.log", **args))  # type: ignore[arg-type]
    assert "isa-serial=on" in debug and "-serial file:/tmp/c.log" in debug


def test_kvm_boot_params_skip_unused_kernel_work() -> None:
    params = qemu.kvm_boot_params().split()
    blacklist = next(p for p in params if p.startswith("initcall_blacklist=")).split("=", 1)[1].split(",")
    assert {"jent_mod_init", "crypto_kdf108_init", "init_encrypted"} <= set(blacklist)
    assert {"noreplace-smp", "ipv6.disable=1", "init_on_alloc=0", "cryptomgr.notests"} <= set(params)
    assert not [p for p in params if p.startswith("MOTTE_")], "guest modes come from kernel_cmdline"


def test_qemu_facts_are_cached_by_the_binary_identity(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    fake = tmp_path / "qemu-system-x86_64"
    script = (
        f"#!/bin/sh\necho x >> {calls}\n"
        'case "$1" in --version) echo "QEMU emulator version 9.2.1";; -help) printf "x\\n-sandbox on\\n";; esac\n'
    )
    fake.write_text(script)
    fake.chmod(0o755)

    def count() -> int:
        return len(calls.read_text().split()) if calls.exists() else 0

    qemu._qemu_facts.cache_clear()
    assert qemu.qemu_version(str(fake)) == (9, 2, 1) and qemu.qemu_has_sandbox(str(fake))
    assert count() == 2
    qemu._qemu_facts.cache_clear()  # a new process: the facts come from the cache file
    assert qemu.qemu_version(str(fake)) == (9, 2, 1) and count() == 2
    fake.write_text(script.replace("9.2.1", "10.1.0"))  # a QEMU update
    qemu._qemu_facts.cache_clear()
    assert qemu.qemu_version(str(fake)) == (10, 1, 0) and count() == 4
    qemu._qemu_facts.cache_clear()


def test_guest_memory_is_the_cap_plus_the_runtime() -> None:
    assert guest_memory_mib(0) == 256
    assert guest_memory_mib(64 << 20) == 320
    assert guest_memory_mib(1 << 30) == 1280
    assert guest_memory_mib((64 << 20) + 1) == 322  # rounded up to whole MiB, then to 2 MiB


def test_accelerator_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_accel("tcg")[0] == "tcg"
    with pytest.raises(MotteError, match="unknown accelerator"):
        resolve_accel("hvf")
    monkeypatch.setattr(accel, "kvm_verdict", lambda **_: accel.KvmVerdict(False, "PVM", False))
    assert resolve_accel("auto") == ("tcg", "KVM unusable: PVM")
    assert resolve_accel("kvm")[0] == "kvm"  # (a probe boot asks for KVM whatever the verdict)
    with pytest.raises(MotteError, match="--accel kvm: KVM cannot boot a guest on this host: PVM"):
        accel.refuse_known_unusable_kvm()  # a user's --accel kvm: at once, not after a boot timeout
    monkeypatch.setattr(accel, "kvm_verdict", lambda **_: accel.KvmVerdict(None, "not probed", False))
    accel.refuse_known_unusable_kvm()  # unknown: the user's choice is tried
    monkeypatch.setattr(accel, "kvm_verdict", lambda **_: accel.KvmVerdict(True, "probe ok", True))
    assert resolve_accel("auto") == ("kvm", "probe ok")
    accel.refuse_known_unusable_kvm()


@pytest.fixture
def no_boot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A verdict cache of the test's own (empty), and any probe boot fails the test; the cache file."""
    def boot(*_: object) -> accel.KvmVerdict:
        raise AssertionError("a verdict that needs no boot booted a guest")

    monkeypatch.setattr(accel, "_probe_boot", boot)
    monkeypatch.setattr(accel, "_verdict_file", lambda: tmp_path / "kvm-verdict.json")
    return tmp_path / "kvm-verdict.json"


def test_kvm_verdict_on_this_host_needs_no_boot(no_boot: Path) -> None:
    verdict = accel.kvm_verdict(allow_boot=False)
    if not os.path.exists("/dev/kvm"):
        assert (verdict.usable, verdict.probed) == (False, False) and "does not exist" in verdict.reason
    elif not os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert (verdict.usable, verdict.probed) == (False, False) and "permission" in verdict.reason
    elif accel.is_pvm():
        assert (verdict.usable, verdict.probed) == (False, False) and "PVM" in verdict.reason
    else:
        assert verdict == accel.KvmVerdict(None, "not probed yet", False, accel._fingerprint())


@pytest.mark.parametrize("pvm", [False, True])
def test_a_kvm_verdict_without_a_boot_is_the_cached_one_or_unknown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_boot: Path, pvm: bool
) -> None:
    """Every branch of the verdict that needs no boot, whatever this host's /dev/kvm is."""
    device = tmp_path / "kvm"
    device.touch()  # readable and writable: what the checks before the cache look at
    monkeypatch.setattr(accel, "DEV_KVM", str(device))
    monkeypatch.setattr(accel, "is_pvm", lambda: pvm)
    fingerprint = accel._fingerprint()
    unknown = accel.kvm_verdict(allow_boot=False)
    if pvm:  # known without a boot: no
        assert (unknown.usable, unknown.probed, unknown.fingerprint) == (False, False, fingerprint)
        assert "PVM" in unknown.reason
    else:
        assert unknown == accel.KvmVerdict(None, "not probed yet", False, fingerprint)
    cached = accel.KvmVerdict(True, "a probe boot under KVM said HELLO in 1.00 s", True, fingerprint, 1.0)
    no_boot.write_text(json.dumps(dataclasses.asdict(cached)))
    assert accel.kvm_verdict(allow_boot=False) == cached  # a probe's verdict outweighs the facts
    no_boot.write_text(json.dumps(dataclasses.asdict(dataclasses.replace(cached, fingerprint="another QEMU"))))
    stale = accel.kvm_verdict(allow_boot=False)  # a verdict for another QEMU does not count
    assert (stale.usable, stale.probed, stale.reason) == (unknown.usable, unknown.probed, unknown.reason)


def test_missing_qemu_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu.shutil, "which", lambda _name: None)
    with pytest.raises(MotteError) as caught:
        KvmBackend().launch(LaunchSpec(memory_bytes=1 << 20))
    assert "qemu-system-x86_64 is not installed" in str(caught.value)
    assert "apt-get install qemu-system-x86" in str(caught.value)


@needs_qemu
def test_qemu_failure_reports_its_stderr(tmp_path: Path, no_leaks: str) -> None:
    bogus = tmp_path / "not-a-kernel"
    bogus.write_bytes(b"this is not a kernel\n" * 100)
    backend = KvmBackend(vmlinux=str(bogus), initrd=str(bogus))
    with pytest.raises(MotteError) as caught:
        backend.launch(LaunchSpec(memory_bytes=1 << 20, accel="tcg", boot_timeout=20))
    message = str(caught.value)
    assert message.startswith("QEMU exited with status 1: ")
    assert "linux kernel too old" in message  # the tail of QEMU's own stderr


# ---- real boots ---------------------------------------------------------------------------


@pytest.fixture
def image(shared_cache: str) -> build.KeepImage:
    try:
        return build.ensure_image()
    except MotteError as exc:
        if "kernel" in exc.message:
            pytest.skip(f"the keep kernel cannot be had here: {exc}")
        raise


@pytest.mark.vm
@needs_qemu
def test_selftest_guest_boots_and_says_hello(image: build.KeepImage, no_leaks: str) -> None:
    keep = KvmBackend(guest_mode="selftest").launch(LaunchSpec(memory_bytes=32 << 20, boot_timeout=90))
    try:
        assert keep.backend == "kvm" and keep.accel in ("kvm", "tcg")
        assert keep.accel.upper() in keep.isolation or "TCG" in keep.isolation
        assert "host can read" in keep.isolation
        pid, rundir = keep.memory_pid(), keep.rundir
        assert pid is not None and qemu_pids(str(rundir)) == {pid}
        assert (rundir / "keep.sock").exists()
        keep.endpoint.send_control("ping", seq=7)
        assert keep.endpoint.recv_control(timeout=30) == {"op": "pong", "seq": 7}
        keep.endpoint.send_control("bye")
        assert keep.wait(30) == 0, "the guest powers off by itself after bye (QEMU -no-reboot)"
    finally:
        keep.close()
    assert not rundir.exists()
    assert not Path(f"/proc/{pid}").exists()


@pytest.mark.vm
@needs_qemu
def test_keep_runtime_boots_and_runs_a_workload(image: build.KeepImage, no_leaks: str) -> None:
    from motte.host.session import HostStdio, RunRequest, run_workload
    from motte.shared.enarx_config import default_config
    from tests.workloads import workload

    keep = KvmBackend().launch(LaunchSpec(memory_bytes=64 << 20, boot_timeout=90))
    try:
        hello = keep.endpoint.await_hello(timeout=1)
        assert hello["role"] == "keep" and hello["backend"] == "kvm"
        read_end, write_end = os.pipe()
        devnull = os.open(os.devnull, os.O_RDONLY)
        try:
            request = RunRequest(Path(workload("hello")).read_bytes(), default_config(), memory_limit=64 << 20)
            result = run_workload(keep, request, HostStdio(stdin=devnull, stdout=write_end, stderr=write_end))
            os.close(write_end)
            output = b"".join(iter(lambda: os.read(read_end, 65536), b""))
        finally:
            os.close(read_end)
            os.close(devnull)
        assert (result.status, result.reason) == (0, "exit"), result
        assert b"Hello" in output
        assert keep.wait(30) == 0
    finally:
        keep.close()


def _run(keep: KvmKeep, name: str, *args: str) -> tuple[int, str]:
    from motte.host.session import HostStdio, RunRequest, run_workload
    from motte.shared.enarx_config import default_config
    from tests.workloads import workload

    read_end, write_end = os.pipe()
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        config = default_config().with_extra(args=list(args))
        request = RunRequest(Path(workload(name)).read_bytes(), config, memory_limit=32 << 20)
        result = run_workload(keep, request, HostStdio(stdin=devnull, stdout=write_end, stderr=write_end))
        os.close(write_end)
        output = b"".join(iter(lambda: os.read(read_end, 65536), b"")).decode()
    finally:
        os.close(read_end)
        os.close(devnull)
    return result.status, output


@pytest.mark.vm
@needs_qemu
def test_a_parked_keep_is_snapshotted_then_restored_with_a_fresh_clock_and_rng(
    image: build.KeepImage, tmp_path: Path, no_leaks: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir(mode=0o700)
    monkeypatch.setattr(snapshots_module, "snapshot_dir", lambda: snapshots)
    spec = LaunchSpec(memory_bytes=32 << 20, boot_timeout=90)
    seen: dict[str, list[str]] = {"random": []}
    for round_ in range(3):
        keep = KvmBackend(snapshots=True).launch(spec)
        try:
            assert PARK_PARAM in keep.command[keep.command.index("-append") + 1]
            assert keep.restored == (round_ > 0) and keep.snapshot_saved == (round_ == 0)
            assert ("-incoming" in keep.command) == keep.restored
            now = time.time_ns()
            status, output = _run(keep, "clock_random")
            assert status == 0, output
            fields = dict(line.split("=", 1) for line in output.split())
            # A restored guest's clock would be the snapshot's: the resume record sets it.
            assert abs(int(fields["realtime"]) - now) < 15 * 10**9, (fields["realtime"], now)
            seen["random"].append(fields["random"])
        finally:
            keep.close()
    assert len(set(seen["random"])) == 3, "each copy reseeds its RNG: no two draw the same bytes"
    [snapshot] = snapshots.glob("*.snap")
    # A snapshot that does not restore is dropped, and the keep boots (and saves a new one).
    snapshot.write_bytes(b"not a migration stream")
    keep = KvmBackend(snapshots=True).launch(spec)
    try:
        assert not keep.restored and keep.snapshot_saved
        assert _run(keep, "hello")[0] == 0
    finally:
        keep.close()
    assert snapshot.stat().st_size > 1 << 20
    keep = KvmBackend(snapshots=False).launch(spec)  # MOTTE_KVM_SNAPSHOT=0
    try:
        assert not keep.restored and PARK_PARAM not in " ".join(keep.command)
        assert _run(keep, "hello")[0] == 0
    finally:
        keep.close()


def _sleeping_initrd(path: Path) -> Path:
    """A kernel that boots into an /init that never opens the channel: a boot 'hang'."""
    archive = Archive()
    archive.add_file("bin/busybox", Path(inputs.busybox_path()).read_bytes(), 0o755)
    archive.add_file("init", b"#!/bin/busybox sh\nexec /bin/busybox sleep 600\n", 0o755)
    archive.add_chardev("dev/console", 5, 1)
    path.write_bytes(archive.to_bytes())
    return path


@pytest.mark.vm
@needs_qemu
def test_boot_hang_is_retried_once_then_reported_and_cleaned_up(
    image: build.KeepImage, tmp_path: Path, no_leaks: str
) -> None:
    initrd = _sleeping_initrd(tmp_path / "sleep.cpio")
    backend = KvmBackend(vmlinux=str(image.vmlinux), initrd=str(initrd))
    messages: list[str] = []
    started = time.monotonic()
    with pytest.raises(MotteError) as caught:
        backend.launch(LaunchSpec(memory_bytes=0, boot_timeout=8, accel="tcg"), messages.append)
    elapsed = time.monotonic() - started
    assert "did not boot: no HELLO from the guest within 4 s (tcg) (2 attempts)" in str(caught.value)
    assert any("retrying" in m for m in messages)
    assert 7 < elapsed < 20
    assert not qemu_pids(str(initrd)), "every QEMU of both attempts is gone"
    assert not rundirs(no_leaks)


_HOST_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    from motte.host.backends.base import LaunchSpec
    from motte.host.backends.kvm import KvmBackend
    keep = KvmBackend(guest_mode="selftest").launch(LaunchSpec(memory_bytes=0, boot_timeout=90))
    print(json.dumps({"pid": keep.memory_pid(), "rundir": str(keep.rundir)}), flush=True)
    if sys.argv[1] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup code runs at all
    raise RuntimeError("the host failed mid-run")  # an uncaught exception, keep never closed
    """
)


@pytest.mark.vm
@needs_qemu
@pytest.mark.parametrize("how", ["exception", "kill"])
def test_no_qemu_outlives_a_failing_host(image: build.KeepImage, how: str, no_leaks: str) -> None:
    env = {**os.environ, "MOTTE_CACHE_DIR": DEFAULT_CACHE}  # TMPDIR: the private dir of no_leaks
    result = subprocess.run([sys.executable, "-c", _HOST_SCRIPT, how], capture_output=True, env=env,
                            timeout=120, cwd=ROOT)  # fmt: skip
    info = json.loads(result.stdout.decode().splitlines()[0])
    if how == "exception":
        assert b"the host failed mid-run" in result.stderr
    else:
        assert result.returncode == -9
    deadline = time.monotonic() + 10
    while Path(f"/proc/{info['pid']}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # SIGKILL of the parent reaches QEMU via PR_SET_PDEATHSIG, asynchronously
    status = Path(f"/proc/{info['pid']}/stat")
    assert not status.exists() or status.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    if how == "kill":
        assert Path(info["rundir"]).exists(), "nothing could clean up after SIGKILL"
        sweep_stale_rundirs()  # what the next launch does first
    assert Path(info["rundir"]).parent == Path(no_leaks)
    assert not rundirs(no_leaks)
