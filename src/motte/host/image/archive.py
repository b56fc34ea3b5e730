"""The keep image's cpio archive: the skeleton, the Python files, the binaries, busybox, /init,
the kernel modules and the system trust store (Mozilla's CA bundle from the pinned ``certifi``,
never the host's own store, which its administrator may have added CAs to)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from motte.host.image.binaries import elf_interpreter, is_elf, shared_libraries, strip_all
from motte.host.image.cpio import Archive
from motte.host.image.inputs import busybox_path, ca_bundle_path
from motte.host.image.kernel import Kernel, Progress
from motte.host.image.layout import (
    GUEST_DIR,
    GUEST_DYNLOAD,
    GUEST_LIBDIR,
    GUEST_PYTHON,
    GUEST_SITE,
    GUEST_STDLIB,
    PY,
    guest_ca_file,
)
from motte.host.image.python_files import compile_sources, trace_python_files
from motte.shared.errors import MotteError
from motte.shared.vm_port import PORT_NAME

BUSYBOX_APPLETS = ("sh", "mount", "insmod", "reboot", "poweroff", "sleep", "cat", "ls", "dmesg", "grep")


def build_archive(kernel: Kernel, say: Progress) -> Archive:
    archive = Archive()
    _add_skeleton(archive)
    say("tracing the modules the keep runtime imports")
    files = trace_python_files(say)
    sources: dict[str, Path] = {}  # guest .py path -> host source
    binaries: dict[str, Path] = {}  # guest path -> host ELF
    for guest, host in sorted(files.items()):
        if guest.endswith(".py"):
            sources[guest] = host
        elif is_elf(host):
            binaries[guest] = host
        else:
            archive.add_file(guest, host.read_bytes(), 0o644)
    say(f"compiling {len(sources)} modules to sourceless .pyc")
    for guest, data in compile_sources(sources).items():
        archive.add_file(guest, data, 0o644)
    python = Path(os.path.realpath(sys.executable))
    binaries[GUEST_PYTHON] = python
    say(f"stripping {len(binaries)} binaries and resolving their shared libraries")
    libraries: dict[str, Path] = {}
    for _guest, host in sorted(binaries.items()):
        libraries.update(shared_libraries(host))
    for soname, host in sorted(libraries.items()):
        if soname.startswith("ld-linux"):
            binaries[f"{GUEST_LIBDIR}/{soname}"] = host
            archive.add_symlink(f"lib64/{soname}", f"/{GUEST_LIBDIR}/{soname}")
        else:
            binaries[f"{GUEST_LIBDIR}/{soname}"] = host
    for guest, data in strip_all(binaries).items():
        archive.add_file(guest, data, 0o755)
    archive.add_symlink(f"usr/bin/python{sys.version_info.major}", f"python{PY}")
    # Pins sys.path (and implies -I -S): see motte.host.image.layout.
    pth = "\n".join([f"/{GUEST_STDLIB}", f"/{GUEST_DYNLOAD}", f"/{GUEST_SITE}"]) + "\n"
    archive.add_file(f"{GUEST_PYTHON}._pth", pth.encode(), 0o644)
    say("adding busybox, /init and the kernel modules")
    busybox = busybox_path()
    if elf_interpreter(busybox.read_bytes()) is not None:
        raise MotteError(f"{busybox} is dynamically linked", hint="apt-get install busybox-static")
    archive.add_file("usr/bin/busybox", busybox.read_bytes(), 0o755)
    for applet in BUSYBOX_APPLETS:
        archive.add_symlink(f"usr/bin/{applet}", "busybox")
    for module in kernel.modules:
        archive.add_file(f"usr/lib/modules/{module.name}.ko", module.path.read_bytes(), 0o644)
    archive.add_file("init", render_init(kernel).encode(), 0o755)
    say("adding the system trust store")
    archive.add_file(guest_ca_file(), ca_bundle_path().read_bytes(), 0o644)
    return archive


def _add_skeleton(archive: Archive) -> None:
    for directory in ("dev", "proc", "sys", "run", "usr/bin", "usr/lib", GUEST_LIBDIR, "lib64"):
        archive.add_dir(directory)
    archive.add_dir("tmp", 0o1777)
    # merged /usr, as on Debian: "#!/bin/sh" and "/lib/..." paths resolve
    archive.add_symlink("bin", "usr/bin")
    archive.add_symlink("lib", "usr/lib")
    # The kernel opens /dev/console for init before /init mounts devtmpfs over /dev.
    archive.add_chardev("dev/console", 5, 1, 0o600)
    archive.add_file("etc/hostname", b"keep\n")


def render_init(kernel: Kernel) -> str:
    template = (GUEST_DIR / "init.sh").read_text()
    required = " ".join(m.name for m in kernel.modules if not m.optional)
    optional = " ".join(m.name for m in kernel.modules if m.optional)
    return (template.replace("@MODULES@", required).replace("@OPTIONAL_MODULES@", optional)
            .replace("@PORT_NAME@", PORT_NAME))
