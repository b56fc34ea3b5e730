"""Build the keep image: a reproducible initramfs holding Python, wasmtime, cryptography and
motte's in-keep code, next to the pinned kernel (see :mod:`motte.host.image.kernel`).

Reproducible means: the same inputs give the same bytes, so the launch measurement of a keep can
be computed in advance and written into a verifier policy. Their SHA-256 is the image *key*
(:mod:`motte.host.image.inputs`), and the cache holds one image per key. Everything else is
fixed: file order, timestamps, owners and inode numbers in the cpio (:mod:`motte.host.image.cpio`),
sourceless ``.pyc`` files with unchecked hashes and guest paths as their file names, ``strip
--strip-unneeded`` output, and the LZ4 block settings.

What goes in (and only that, since it is the keep's trusted computing base), laid out as
:mod:`motte.host.image.layout` says:

* motte's keep and shared code, the standard-library modules it imports, and ``wasmtime`` and
  ``cryptography`` whole (:mod:`motte.host.image.python_files`);
* the interpreter, ``libpython`` and every shared library they need (``ldd`` closure), stripped
  (:mod:`motte.host.image.binaries`);
* busybox (static), ``/init``, the kernel modules /init loads, the self-test script and the system
  trust store, at the default CA file of the OpenSSL that goes in, so ``ssl.create_default_context``
  in the keep verifies against it (:mod:`motte.host.image.archive`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from motte.host.image import kernel as kernel_mod
from motte.host.image.archive import build_archive
from motte.host.image.cache import images_root, locked
from motte.host.image.inputs import image_inputs, image_key
from motte.host.image.kernel import Kernel, Progress, ensure_kernel, lz4_legacy_compress

LZ4_LEVEL = 9  # lz4 HC: 2-3x smaller than the fast mode and decompressed just as fast


@dataclass(frozen=True)
class KeepImage:
    key: str
    directory: Path
    kernel: Kernel
    initrd: Path
    manifest: dict[str, Any] = field(repr=False)

    @property
    def vmlinux(self) -> Path:
        return self.kernel.vmlinux


def kernel_cmdline(mode: str | None = None, console: bool = False) -> str:
    """The guest kernel command line; part of the launch measurement, so fixed and explicit.

    ``panic=-1`` turns a guest panic into a reset (QEMU exits at once instead of hanging until the
    watchdog); ``printk.devkmsg=on`` keeps the keep's diagnostics that /init sends to /dev/kmsg.
    """
    words = ["console=ttyS0" if console else "quiet", "panic=-1", "printk.devkmsg=on"]
    if mode:
        words.append(f"MOTTE_MODE={mode}")
    return " ".join(words)


def cached_image(key: str | None = None) -> KeepImage | None:
    """The cached image for the current inputs (or ``key``), if it exists; no building."""
    key = key or image_key(image_inputs())
    return _load_image(images_root() / key[:24], key)


def _load_image(directory: Path, key: str) -> KeepImage | None:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("key") != key:
        return None
    kernel = kernel_mod.cached_kernel()
    initrd = directory / "keep.cpio.lz4"
    if kernel is None or not initrd.is_file():
        return None
    return KeepImage(key, directory, kernel, initrd, manifest)


def ensure_image(progress: Progress | None = None, *, force: bool = False) -> KeepImage:
    """The keep image for the current inputs, building it if the cache has none."""
    say = progress or (lambda _message: None)
    inputs = image_inputs()
    key = image_key(inputs)
    directory = images_root() / key[:24]
    if not force:
        image = _load_image(directory, key)
        if image is not None:
            return image
    kernel = ensure_kernel(say)
    with locked(images_root() / ".build.lock"):
        if not force:
            image = _load_image(directory, key)
            if image is not None:
                return image
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=images_root()))
        try:
            build_into(staging, kernel, inputs, say)
            staging.chmod(0o755)
            if directory.exists():
                shutil.rmtree(directory)
            staging.rename(directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _prune(keep=directory)
    image = _load_image(directory, key)
    assert image is not None
    return image


def _prune(keep: Path, retain: int = 3) -> None:
    """Drop old images (other keys) beyond the newest ``retain``: each is 25-30 MB."""
    others = [p for p in images_root().iterdir() if p.is_dir() and p != keep and not p.name.startswith(".")]
    others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[retain - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def build_into(out: Path, kernel: Kernel, inputs: dict[str, Any], say: Progress) -> dict[str, Any]:
    """Build ``keep.cpio.lz4`` and ``manifest.json`` into the directory ``out``."""
    started = time.monotonic()
    archive = build_archive(kernel, say)
    say(f"writing the cpio archive ({len(archive)} entries)")
    cpio = archive.to_bytes()
    say(f"compressing {len(cpio) / 1e6:.1f} MB with lz4 (legacy format, level {LZ4_LEVEL})")
    compressed = lz4_legacy_compress(cpio, LZ4_LEVEL)
    (out / "keep.cpio.lz4").write_bytes(compressed)
    key = image_key(inputs)
    manifest = {
        "key": key,
        "inputs": inputs,
        "kernel": {"release": kernel.pin.release, "vmlinux_sha256": kernel.vmlinux_sha256,
                   "modules": [m.name for m in kernel.modules]},
        "initrd": {"file": "keep.cpio.lz4", "size": len(compressed), "cpio_size": len(cpio),
                   "entries": len(archive), "sha256": hashlib.sha256(compressed).hexdigest(),
                   "sha384": hashlib.sha384(compressed).hexdigest()},
        "cmdline": kernel_cmdline(),
        "build_seconds": round(time.monotonic() - started, 2),
    }  # fmt: skip
    # Written last: its presence (with the right key) marks a complete image.
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
