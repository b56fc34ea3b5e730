"""What the host and a VM keep agree on about the virtio serial port, before the channel starts.

The host names the port :data:`PORT_NAME` on QEMU's command line (``-device
virtserialport,name=motte.0``); the keep finds it by that name in the guest's sysfs.

A kvm keep that the host may snapshot *parks* once its runtime is loaded: it writes
:data:`PARKED` on the raw port and waits for one :data:`RESUME` record (magic, the host's
CLOCK_REALTIME in ns, 64 bytes of entropy). Only then does the channel protocol (HELLO) begin, so
a snapshot holds no tenant data. :data:`PARK_PARAM` on the kernel command line asks for it.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

#: The virtio serial port that carries the channel.
PORT_NAME = "motte.0"
#: keep -> host, on the raw port, once the keep runtime is loaded: the host may now snapshot the VM.
PARKED = b"motte-keep-parked-1\n"
#: host -> keep, on the raw port: magic, the host's CLOCK_REALTIME in ns, entropy for the kernel RNG.
RESUME = struct.Struct("<16sQ64s")
RESUME_MAGIC = b"motte-resume-1\n\0"
RESUME_ENTROPY = 64
#: The kernel-command-line word (an environment variable of /init's children) that asks for it.
PARK_PARAM = "MOTTE_PARK=1"


class Resume(NamedTuple):
    realtime_ns: int
    entropy: bytes

    def to_bytes(self) -> bytes:
        if len(self.entropy) != RESUME_ENTROPY:
            raise ValueError(f"the resume record carries exactly {RESUME_ENTROPY} bytes of entropy")
        return RESUME.pack(RESUME_MAGIC, self.realtime_ns, self.entropy)

    @classmethod
    def from_bytes(cls, record: bytes) -> Resume:
        if len(record) != RESUME.size:
            raise ValueError(f"a resume record is {RESUME.size} bytes, not {len(record)}")
        magic, realtime_ns, entropy = RESUME.unpack(record)
        if magic != RESUME_MAGIC:
            raise ValueError("the host sent no valid resume record")
        return cls(realtime_ns, entropy)
