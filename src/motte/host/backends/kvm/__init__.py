"""The ``kvm`` backend: the keep runs in a QEMU micro-VM.

The guest is the pinned Debian cloud kernel booted PVH-direct (``-M microvm``, no firmware, no
disk, no NIC, no serial port) with the keep image as its initramfs. The only device is one
virtio serial port, wired to a unix socket in a per-keep run directory: that is the channel.
QEMU is started with ``wait=on``, so the guest does not start until the launcher has connected,
and no byte the keep writes can be dropped for want of a reader.

Accelerator: KVM where KVM can really boot a guest, else QEMU's TCG emulator with ``-cpu max``
(wasmtime needs SSE4.1; the default ``qemu64`` CPU would SIGILL), whose boots also need the
host's TSC frequency on the kernel command line (:mod:`.accel`). Warm starts: the keep parks
before HELLO, and later keeps of the same configuration are restored from a snapshot of it
(:mod:`.snapshot`). Isolation: the workload cannot reach the host except through the channel;
the host can read the keep's memory (no encryption: that is what ``snp``/``tdx`` add) and there
is no attestation. No QEMU and no run directory outlives its keep or its host (:mod:`.rundir`).

Modules: :mod:`.qemu` (the binary and the command line), :mod:`.accel` (the KVM verdict),
:mod:`.rundir`, :mod:`.snapshot`, :mod:`.keep` (one boot, the keep handle), :mod:`.backend`.
Start-up times and what each boot step costs: docs/vm-keep.md.
"""

from __future__ import annotations

from motte.host.backends.kvm.backend import KvmBackend
from motte.host.backends.kvm.keep import KvmKeep

__all__ = ["KvmBackend", "KvmKeep"]
