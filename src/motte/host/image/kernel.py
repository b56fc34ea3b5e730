"""The keep's guest kernel: a pinned Debian cloud kernel package, unpacked without root.

Why this kernel (``linux-image-6.12.117+deb12-cloud-amd64-unsigned``, from bookworm-security):

* One kernel for every VM backend, so one image is measured for ``kvm``, ``snp`` and ``tdx``.
  6.12 has what the confidential path needs and 6.1 lacks: ``INTEL_TDX_GUEST=y``, the
  ``tdx-guest`` and ``sev-guest`` drivers and ``TSM_REPORTS`` (attestation through configfs).
* virtio, virtio-pci and virtio-console are built in; on ``-M microvm`` only ``virtio_mmio`` is
  a module. The *cloud* flavour has few drivers and boots faster than the generic one.
* Cost, measured under TCG on this machine kind: about 0.25 s slower to a marker than the 6.1
  cloud kernel (1.8-2.0 s vs 1.5-1.8 s, minimal initramfs, PVH).
* Kept for the ``kvm`` backend too (measured 2026-11, TCG, the keep image, QEMU start to Python
  running in the guest, medians of 5 interleaved boots): 6.12 2.65 s, 6.1.0-56 cloud 2.28 s with
  the same command line; but with the initcalls the keep does not need left out
  (``motte.host.backends.kvm.qemu.KVM_BOOT_PARAMS``: most of 6.12's extra time is its jitter-entropy
  self-test, a KDF self-test that waits for the initramfs, and BTF kfunc setup) 6.12 took 1.99 s
  and 6.1 2.09 s (6.1 also needs three more modules: virtio, virtio_ring, virtio_console). A
  second kernel would also mean a second initramfs (its modules) and a second pin. And a warm
  kvm keep does not boot at all (it is restored from a snapshot), so one kernel it is.

Two forms are cached under ``<cache>/kernel/<package>_<version>/``:

* ``vmlinux``: the ELF kernel, decompressed from the bzImage in Python, for PVH direct boot on
  ``-M microvm`` (QEMU jumps straight to the 64-bit entry; no decompressor: faster under TCG and
  the only form that boots at all under a paravirtual KVM);
* ``vmlinuz``: the original bzImage, which the confidential path needs (OVMF loads it through the
  EFI stub, and the SNP launch digest hashes exactly this file).

The package is checked against a pinned SHA-256 (as well as by apt's signed index), so a cached
kernel and a fresh download are the same bytes on every machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from motte.host.image.cache import cache_root, locked
from motte.shared.errors import MotteError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class KernelPin:
    package: str
    version: str
    sha256: str  # of the .deb
    release: str  # ``uname -r`` of the kernel, the directory under lib/modules
    #: modules /init loads on every boot (dependencies are added and ordered automatically)
    modules: tuple[str, ...]
    #: modules for the confidential path; /init tries them and ignores failures (they refuse to
    #: load without SEV-SNP or TDX hardware, which is how the keep learns what it runs on)
    optional_modules: tuple[str, ...]


PIN = KernelPin(
    package="linux-image-6.12.117+deb12-cloud-amd64-unsigned",
    version="6.12.117-1~deb12u1",
    sha256="670b2688bcf94c24693f7c7e1fc9776ff2e202ff15553a2614f79415d48a6607",
    release="6.12.117+deb12-cloud-amd64",
    modules=("virtio_mmio",),
    optional_modules=("sev_guest", "tdx_guest"),
)


@dataclass(frozen=True)
class Module:
    name: str  # canonical name, "-" folded to "_"
    path: Path  # the uncompressed .ko in the cache
    depends: tuple[str, ...]
    optional: bool


@dataclass(frozen=True)
class Kernel:
    pin: KernelPin
    directory: Path
    vmlinux: Path
    vmlinuz: Path
    config: Path
    modules: tuple[Module, ...]  # in load order: every module after its dependencies
    vmlinux_sha256: str


def kernel_dir(pin: KernelPin = PIN) -> Path:
    return cache_root() / "kernel" / f"{pin.package}_{pin.version}"


def cached_kernel(pin: KernelPin = PIN) -> Kernel | None:
    """The kernel if it is already unpacked in the cache, without doing any work."""
    directory = kernel_dir(pin)
    try:
        meta = json.loads((directory / "kernel.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("pin") != json.loads(json.dumps(dataclasses.asdict(pin))):
        return None
    modules = tuple(
        Module(m["name"], directory / "modules" / f"{m['name']}.ko", tuple(m["depends"]), m["optional"])
        for m in meta["modules"]
    )
    kernel = Kernel(
        pin,
        directory,
        directory / "vmlinux",
        directory / "vmlinuz",
        directory / "config",
        modules,
        meta["vmlinux_sha256"],
    )
    paths = [kernel.vmlinux, kernel.vmlinuz, *(m.path for m in modules)]
    return kernel if all(p.is_file() for p in paths) else None


def ensure_kernel(progress: Progress | None = None, pin: KernelPin = PIN) -> Kernel:
    """The pinned kernel, downloading and unpacking it on first use."""
    kernel = cached_kernel(pin)
    if kernel is not None:
        return kernel
    say = progress or (lambda _message: None)
    directory = kernel_dir(pin)
    with locked(directory.parent / f".{directory.name}.lock"):
        kernel = cached_kernel(pin)  # another process may have built it while we waited
        if kernel is not None:
            return kernel
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            deb = _obtain_deb(pin, staging, say)
            say(f"unpacking {pin.package}")
            _unpack(pin, deb, staging, say)
            deb.unlink()
            staging.chmod(0o755)  # mkdtemp made it private; the cache is not secret
            if directory.exists():
                shutil.rmtree(directory)
            staging.rename(directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    kernel = cached_kernel(pin)
    assert kernel is not None, "kernel cache written but not readable"
    return kernel


# ---- obtaining the package ------------------------------------------------------------------


def _obtain_deb(pin: KernelPin, workdir: Path, say: Progress) -> Path:
    local = os.environ.get("MOTTE_KERNEL_DEB")
    if local:
        # For machines without apt access: a .deb fetched elsewhere; the pinned digest still holds.
        deb = workdir / "kernel.deb"
        shutil.copyfile(local, deb)
    else:
        if shutil.which("apt-get") is None:
            raise MotteError(
                f"cannot download the keep kernel {pin.package}: apt-get is not available",
                hint=f"fetch {pin.package}_{pin.version}_amd64.deb and set MOTTE_KERNEL_DEB to its path",
            )
        say(f"downloading {pin.package} {pin.version}")
        result = subprocess.run(
            ["apt-get", "download", "-q", f"{pin.package}={pin.version}"],
            cwd=workdir,
            capture_output=True,
            text=True,
        )
        debs = sorted(workdir.glob("*.deb"))
        if result.returncode != 0 or len(debs) != 1:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise MotteError(
                f"cannot download the keep kernel {pin.package}={pin.version}: {tail[0]}",
                hint="run 'apt-get update' (the package is in bookworm-security), "
                "or set MOTTE_KERNEL_DEB to a downloaded copy",
            )
        deb = debs[0]
    digest = sha256_file(deb)
    if digest != pin.sha256:
        raise MotteError(
            f"the kernel package has SHA-256 {digest}, not the pinned {pin.sha256}",
            hint="the archive served a different build of the same version; refusing it, since the "
            "keep's measurement would change",
        )
    return deb


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unpack(pin: KernelPin, deb: Path, out: Path, say: Progress) -> None:
    """Take the kernel, its config and the needed modules out of the package (no root needed:
    ``dpkg-deb --fsys-tarfile`` only decompresses; the tar is read here, member by member)."""
    if shutil.which("dpkg-deb") is None:
        raise MotteError("dpkg-deb is needed to unpack the keep kernel", hint="apt-get install dpkg")
    vmlinuz_name = f"boot/vmlinuz-{pin.release}"
    config_name = f"boot/config-{pin.release}"
    module_prefix = f"lib/modules/{pin.release}/"
    blobs: dict[str, tuple[str, bytes]] = {}  # module name -> (file name, compressed bytes)
    vmlinuz = config = None
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as tar_proc:
        assert tar_proc.stdout is not None
        with tarfile.open(fileobj=tar_proc.stdout, mode="r|") as archive:
            for member in archive:
                name = member.name.removeprefix("./")
                if not member.isfile():
                    continue
                if name == vmlinuz_name:
                    vmlinuz = _read_member(archive, member)
                elif name == config_name:
                    config = _read_member(archive, member)
                elif name.startswith(module_prefix) and re.search(r"\.ko(\.xz|\.zst)?$", name):
                    file_name = name.rsplit("/", 1)[1]
                    blobs[_module_name(file_name)] = (file_name, _read_member(archive, member))
    if tar_proc.returncode != 0 or vmlinuz is None or config is None:
        raise MotteError(f"{deb.name} is not the expected kernel package (no {vmlinuz_name})")
    (out / "vmlinuz").write_bytes(vmlinuz)
    (out / "config").write_bytes(config)
    say("decompressing the kernel to a PVH-bootable vmlinux")
    vmlinux = bzimage_to_vmlinux(vmlinuz)
    (out / "vmlinux").write_bytes(vmlinux)
    modules = _resolve_modules(pin, blobs, out / "modules")
    meta = {
        "pin": dataclasses.asdict(pin),
        "vmlinux_sha256": hashlib.sha256(vmlinux).hexdigest(),
        "vmlinuz_sha256": hashlib.sha256(vmlinuz).hexdigest(),
        "modules": [{"name": m.name, "depends": list(m.depends), "optional": m.optional} for m in modules],
    }
    # Written last: its presence marks a complete cache entry.
    (out / "kernel.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    assert handle is not None
    return handle.read()


def _module_name(file_name: str) -> str:
    return re.sub(r"\.ko(\.xz|\.zst)?$", "", file_name).replace("-", "_")


def _decompress_module(file_name: str, blob: bytes) -> bytes:
    if file_name.endswith(".xz"):
        return lzma.decompress(blob)
    if file_name.endswith(".zst"):
        return _zstd_decompress(blob)
    return blob


def _resolve_modules(pin: KernelPin, blobs: dict[str, tuple[str, bytes]], out: Path) -> list[Module]:
    """Decompress the wanted modules and their dependencies; return them in load order."""
    out.mkdir()
    ordered: list[Module] = []
    done: set[str] = set()

    def visit(name: str, optional: bool, chain: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in chain:
            raise MotteError(f"kernel module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in blobs:
            raise MotteError(f"kernel module {name} is not in {pin.package}", hint="is it built in? fix the pin")
        file_name, blob = blobs[name]
        data = _decompress_module(file_name, blob)
        depends = modinfo(data).get("depends", "")
        deps = tuple(d.replace("-", "_") for d in depends.split(",") if d)
        for dep in deps:
            visit(dep, optional, (*chain, name))
        (out / f"{name}.ko").write_bytes(data)
        ordered.append(Module(name, out / f"{name}.ko", deps, optional))
        done.add(name)

    for name in pin.modules:
        visit(name, False, ())
    for name in pin.optional_modules:
        visit(name, True, ())
    return ordered


# ---- ELF helpers ----------------------------------------------------------------------------


def _elf_sections(data: bytes) -> dict[str, bytes]:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise MotteError("not a little-endian ELF64 file")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab_off, strtab_size = headers[shstrndx][4], headers[shstrndx][5]
    strtab = data[strtab_off : strtab_off + strtab_size]
    sections: dict[str, bytes] = {}
    for name_off, _type, _flags, _addr, offset, size, *_rest in headers:
        name = strtab[name_off : strtab.index(b"\0", name_off)].decode()
        sections[name] = data[offset : offset + size]
    return sections


def modinfo(ko: bytes) -> dict[str, str]:
    """The ``key=value`` strings of a module's ``.modinfo`` section (as ``modinfo`` shows)."""
    info: dict[str, str] = {}
    for item in _elf_sections(ko).get(".modinfo", b"").split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep and key not in info:
            info[key] = value
    return info


XEN_ELFNOTE_PHYS32_ENTRY = 18


def has_pvh_note(vmlinux: bytes) -> bool:
    """Whether the ELF carries the Xen PVH entry note QEMU needs to boot it with ``-kernel``."""
    phoff = struct.unpack_from("<Q", vmlinux, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", vmlinux, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", vmlinux, phoff + i * phentsize
        )
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", vmlinux, pos)
            name = vmlinux[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and note_type == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


# ---- bzImage -> vmlinux ---------------------------------------------------------------------

LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"


def bzimage_to_vmlinux(bzimage: bytes) -> bytes:
    """Decompress the kernel payload of an x86 bzImage into the ELF ``vmlinux``.

    The boot protocol header says where the payload is (``payload_offset``/``payload_length``
    at 0x248, relative to the protected-mode code after the setup sectors); its first bytes say
    how it is compressed. Debian's kernels append the decompressed size (u32) after it, which is
    checked.
    """
    if bzimage[0x202:0x206] != b"HdrS" or struct.unpack_from("<H", bzimage, 0x206)[0] < 0x208:
        raise MotteError("the kernel is not a bzImage with boot protocol 2.08 or later")
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = bzimage[start : start + length]
    expected_size = struct.unpack("<I", payload[-4:])[0]
    body = payload[:-4]
    if payload.startswith(b"\x28\xb5\x2f\xfd"):
        vmlinux = _zstd_decompress(body)
    elif payload.startswith(b"\xfd7zXZ\x00"):
        vmlinux = lzma.decompress(body, format=lzma.FORMAT_XZ)
    elif payload.startswith(LZ4_LEGACY_MAGIC):
        vmlinux = lz4_legacy_decompress(body)
    elif payload.startswith(b"\x1f\x8b"):
        vmlinux = zlib.decompress(body, wbits=31)
    else:
        raise MotteError(f"unknown kernel compression (payload starts {payload[:6].hex()})")
    if len(vmlinux) != expected_size:
        raise MotteError(f"the decompressed kernel has {len(vmlinux)} bytes, the header says {expected_size}")
    if vmlinux[:4] != b"\x7fELF" or not has_pvh_note(vmlinux):
        raise MotteError("the decompressed kernel is not an ELF with a PVH entry note (CONFIG_PVH=y needed)")
    return vmlinux


def _zstd_decompress(data: bytes) -> bytes:
    # Python 3.11 has no zstd; the ``zstandard`` wheel is used when present, else the zstd CLI.
    try:
        import zstandard  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        pass
    else:
        with zstandard.ZstdDecompressor().stream_reader(data) as reader:
            return bytes(reader.read())
    if shutil.which("zstd") is None:
        raise MotteError("the zstd command is needed to unpack the keep kernel", hint="apt-get install zstd")
    result = subprocess.run(["zstd", "-d", "-c", "-q"], input=data, capture_output=True)
    if result.returncode != 0:
        raise MotteError(f"zstd failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def lz4_legacy_decompress(data: bytes) -> bytes:
    """The LZ4 "legacy" format the kernel uses (magic, then u32-length-prefixed 8 MiB blocks)."""
    import lz4.block

    if not data.startswith(LZ4_LEGACY_MAGIC):
        raise MotteError("not LZ4 legacy data")
    out = bytearray()
    pos = 4
    while pos + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, pos)
        if data[pos : pos + 4] == LZ4_LEGACY_MAGIC:  # concatenated streams repeat the magic
            pos += 4
            continue
        block = data[pos + 4 : pos + 4 + size]
        if len(block) != size:
            raise MotteError("truncated LZ4 block")
        out += lz4.block.decompress(block, uncompressed_size=LZ4_LEGACY_BLOCK)
        pos += 4 + size
    return bytes(out)


LZ4_LEGACY_BLOCK = 8 << 20


def lz4_legacy_compress(data: bytes, level: int = 9) -> bytes:
    """Compress for the kernel's initramfs unpacker, which reads only the LZ4 legacy format
    (``lz4 -l``); the ``lz4.frame`` format would not boot. Deterministic for a given input."""
    import lz4.block

    chunks: list[bytes] = [LZ4_LEGACY_MAGIC]
    for pos in range(0, len(data), LZ4_LEGACY_BLOCK):
        block = lz4.block.compress(
            data[pos : pos + LZ4_LEGACY_BLOCK], mode="high_compression", compression=level, store_size=False
        )
        chunks.append(struct.pack("<I", len(block)))
        chunks.append(block)
    return b"".join(chunks)
