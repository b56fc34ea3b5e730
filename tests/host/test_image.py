"""The keep image: kernel extraction, reproducible builds, what goes in, and the measurements."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import shutil
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from motte.host.image import archive, build, inputs, kernel, layout, python_files
from motte.host.image.cpio import read_newc
from motte.host.image.kernel import bzimage_to_vmlinux, has_pvh_note, lz4_legacy_compress, lz4_legacy_decompress
from motte.host.image.measure import cmdline_digest, snp_launch_digest
from motte.shared.errors import MotteError

# ---- bzImage -> vmlinux, on synthetic kernels ---------------------------------------------


def fake_elf(with_pvh: bool = True) -> bytes:
    """A minimal ELF64 with one PT_NOTE holding the Xen PVH entry note (type 18)."""
    note = struct.pack("<III", 4, 4, 18 if with_pvh else 5) + b"Xen\0" + struct.pack("<I", 0x1000000)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)  # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, 1)  # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", 4, 4, 64 + 56, 0, 0, len(note), len(note), 4)
    return bytes(header) + phdr + note + b"\0" * 4096


def fake_bzimage(payload: bytes, size: int, setup_sects: int = 1, offset: int = 16) -> bytes:
    image = bytearray((setup_sects + 1) * 512 + offset)
    image[0x1F1] = setup_sects
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x20F)
    body = payload + struct.pack("<I", size)  # Debian's kernels append the decompressed size
    struct.pack_into("<II", image, 0x248, offset, len(body))
    return bytes(image) + body


@pytest.mark.parametrize("method", ["gzip", "xz", "lz4", "zstd"])
def test_bzimage_payloads_decompress_to_the_elf(method: str) -> None:
    elf = fake_elf()
    if method == "gzip":
        payload = gzip.compress(elf, mtime=0)
    elif method == "xz":
        payload = lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    elif method == "lz4":
        payload = lz4_legacy_compress(elf)
    else:
        if shutil.which("zstd") is None:
            pytest.skip("the zstd CLI is not installed")
        payload = subprocess.run(["zstd", "-q", "-c"], input=elf, capture_output=True, check=True).stdout
    assert bzimage_to_vmlinux(fake_bzimage(payload, len(elf))) == elf


def test_bzimage_errors_are_specific() -> None:
    elf = fake_elf()
    with pytest.raises(MotteError, match="not a bzImage"):
        bzimage_to_vmlinux(b"\0" * 4096)
    with pytest.raises(MotteError, match="unknown kernel compression"):
        bzimage_to_vmlinux(fake_bzimage(b"BZh91AY&SY" + b"\0" * 64, len(elf)))
    with pytest.raises(MotteError, match="header says"):
        bzimage_to_vmlinux(fake_bzimage(gzip.compress(elf), len(elf) + 1))
    no_pvh = fake_elf(with_pvh=False)
    with pytest.raises(MotteError, match="PVH"):
        bzimage_to_vmlinux(fake_bzimage(gzip.compress(no_pvh), len(no_pvh)))


# ---- the pinned kernel (downloaded once into the shared cache) ---------------------------


@pytest.fixture
def pinned_kernel(shared_cache: str) -> kernel.Kernel:
    try:
        return kernel.ensure_kernel()
    except MotteError as exc:  # no apt access and nothing cached: nothing to test against
        pytest.skip(f"the pinned kernel cannot be had here: {exc}")


def test_pinned_kernel_is_unpacked_for_pvh_boot(pinned_kernel: kernel.Kernel) -> None:
    vmlinux = pinned_kernel.vmlinux.read_bytes()
    assert vmlinux[:4] == b"\x7fELF" and has_pvh_note(vmlinux)
    assert hashlib.sha256(vmlinux).hexdigest() == pinned_kernel.vmlinux_sha256
    assert bzimage_to_vmlinux(pinned_kernel.vmlinuz.read_bytes()) == vmlinux
    config = pinned_kernel.config.read_text()
    for option in ("CONFIG_PVH=y", "CONFIG_VIRTIO_CONSOLE=y", "CONFIG_RD_LZ4=y", "CONFIG_INTEL_TDX_GUEST=y"):
        assert option in config
    names = [m.name for m in pinned_kernel.modules]
    assert names[0] == "virtio_mmio"
    # Dependencies come first: tsm needs configfs, the guest drivers need tsm.
    assert names.index("configfs") < names.index("tsm") < names.index("sev_guest")
    for module in pinned_kernel.modules:
        info = kernel.modinfo(module.path.read_bytes())
        assert info["vermagic"].startswith(kernel.PIN.release)
        assert info["name"] == module.name


def test_init_loads_required_modules_and_tries_optional_ones(pinned_kernel: kernel.Kernel) -> None:
    init = archive.render_init(pinned_kernel)
    assert "for module in virtio_mmio; do" in init
    assert "for module in configfs tsm sev_guest tdx_guest; do" in init
    assert "@" not in init
    assert "-m motte.keep --channel-device motte.0" in init
    assert "reboot -f" in init


# ---- the image: reproducible, and only the keep's code in it -----------------------------


@pytest.fixture
def image(shared_cache: str) -> build.KeepImage:
    try:
        return build.ensure_image()
    except MotteError as exc:
        if "kernel" in exc.message:
            pytest.skip(f"the pinned kernel cannot be had here: {exc}")
        raise


def test_two_builds_are_byte_identical(image: build.KeepImage, tmp_path: Path) -> None:
    current = inputs.image_inputs()
    if inputs.image_key(current) != image.key:
        pytest.skip("the keep sources changed during the test run")
    manifest = build.build_into(tmp_path, image.kernel, current, lambda _m: None)
    assert (tmp_path / "keep.cpio.lz4").read_bytes() == image.initrd.read_bytes()
    assert manifest["initrd"]["sha256"] == image.manifest["initrd"]["sha256"]


def test_image_holds_the_keep_runtime_and_nothing_of_the_host(image: build.KeepImage) -> None:
    entries = {
        name: (mode, data) for name, mode, data, _ in read_newc(lz4_legacy_decompress(image.initrd.read_bytes()))
    }
    site = f"usr/lib/python{layout.PY}/site-packages"
    for needed in ("motte/__init__.pyc", "motte/keep/vm_channel.pyc", "motte/shared/endpoint.pyc",
                   "motte/shared/channel.pyc", "wasmtime/linux-x86_64/_libwasmtime.so",
                   "cryptography/hazmat/bindings/_rust.abi3.so"):  # fmt: skip
        assert f"{site}/{needed}" in entries, needed
    motte_files = [n for n in entries if n.startswith(f"{site}/motte/")]
    assert not [n for n in motte_files if n.startswith((f"{site}/motte/host", f"{site}/motte/tenant",
                                                        f"{site}/motte/cli"))]  # fmt: skip
    assert not [n for n in entries if n.endswith(".py")], "sources are compiled to sourceless .pyc"
    for stdlib in ("os", "ssl", "hashlib", "json/__init__", "secrets", "selectors", "socket", "struct",
                   "encodings/utf_8"):  # fmt: skip
        assert f"usr/lib/python{layout.PY}/{stdlib}.pyc" in entries, stdlib
    assert f"usr/lib/python{layout.PY}/tomllib/__init__.pyc" not in entries, "the keep reads no TOML"
    pyc = entries[f"{site}/motte/keep/vm_channel.pyc"][1]
    assert struct.unpack("<I", pyc[4:8])[0] == 1, "hash-based, unchecked .pyc"
    init_mode, init = entries["init"]
    assert init_mode == 0o100755 and init.startswith(b"#!/bin/sh\n")
    pth = entries[f"usr/bin/python{layout.PY}._pth"][1].decode().split()
    assert pth == [f"/usr/lib/python{layout.PY}", f"/usr/lib/python{layout.PY}/lib-dynload", f"/{site}"]
    assert entries["lib64/ld-linux-x86-64.so.2"][0] & 0o170000 == 0o120000
    assert "usr/lib/modules/virtio_mmio.ko" in entries
    assert "usr/lib/motte/selftest.pyc" in entries
    assert all(entries[f"usr/bin/{a}"][1] == b"busybox" for a in ("sh", "mount", "insmod", "reboot"))
    # The system trust store, where the keep's OpenSSL looks by default: Mozilla's bundle (certifi).
    import ssl

    assert layout.guest_ca_file() == ssl.get_default_verify_paths().openssl_cafile.lstrip("/")
    ca_mode, ca_bundle = entries[layout.guest_ca_file()]
    assert ca_mode == 0o100644 and ca_bundle == inputs.ca_bundle_path().read_bytes()
    assert ca_bundle.count(b"-----BEGIN CERTIFICATE-----") > 100


def test_image_key_follows_the_keep_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = inputs.image_key(inputs.image_inputs())
    extra = tmp_path / "extra.py"
    extra.write_text("X = 1\n")
    original = inputs.keep_source_files
    monkeypatch.setattr(inputs, "keep_source_files", lambda: [*original(), ("keep/extra.py", extra)])
    changed = inputs.image_key(inputs.image_inputs())
    extra.write_text("X = 2\n")
    assert len({before, changed, inputs.image_key(inputs.image_inputs())}) == 3


def test_image_key_follows_the_ca_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = inputs.image_key(inputs.image_inputs())
    assert inputs.image_inputs()["ca_bundle"]["version"] == inputs._dist_version("certifi")
    other = tmp_path / "cacert.pem"
    other.write_bytes(inputs.ca_bundle_path().read_bytes() + b"\n")
    monkeypatch.setattr(inputs, "ca_bundle_path", lambda: other)
    assert inputs.image_key(inputs.image_inputs()) != before


def test_a_missing_ca_bundle_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inputs, "CA_BUNDLE_PACKAGE", "no_such_ca_package")
    with pytest.raises(MotteError, match="needs the CA bundle of the no_such_ca_package package"):
        inputs.ca_bundle_path()
    assert inputs.image_inputs()["ca_bundle"] == "missing"


def test_keep_code_importing_host_code_fails_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    evil = tmp_path / "evil.py"
    evil.write_text("def f():\n    from motte.host import platform\n")
    original = inputs.keep_source_files
    monkeypatch.setattr(python_files, "keep_source_files", lambda: [*original(), ("keep/evil.py", evil)])
    with pytest.raises(MotteError, match=r"imports host-side modules: motte\.host"):
        python_files.trace_python_files()


def test_compiled_modules_are_deterministic(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("FLAGS = {'a', 'b', 'c', 'd'}\ndef f(x):\n    return x in {'p', 'q', 'r'}\n")
    first = python_files.compile_sources({"usr/lib/m.py": source})
    assert first == python_files.compile_sources({"usr/lib/m.py": source})
    assert list(first) == ["usr/lib/m.pyc"]


def test_cmdline_is_fixed() -> None:
    assert build.kernel_cmdline() == "quiet panic=-1 printk.devkmsg=on"
    assert build.kernel_cmdline("selftest").endswith(" MOTTE_MODE=selftest")
    assert cmdline_digest("quiet").sha256 == hashlib.sha256(b"quiet\0").hexdigest()


# ---- SEV-SNP launch digest with a synthetic OVMF ------------------------------------------

FOOTER_GUID = "96b582de-1fb2-45f7-baea-a366c55a082d"
HASH_TABLE_GUID = "7255371f-3a3b-4b04-927b-1da6efa8d454"
RESET_BLOCK_GUID = "00f771de-1a7e-4fcb-890e-68c77e2fb44e"
METADATA_GUID = "dc886566-984a-4798-a75e-5585a7bf67cc"


def fake_ovmf(path: Path, *, kernel_hashes: bool = True) -> Path:
    """A 64 KiB firmware image with just what sev-snp-measure reads: the GUIDed footer table (reset
    vector, hash-table location, metadata offset) and an SEV metadata block of SNP sections."""
    size = 64 << 10
    data = bytearray(size)
    sections = [(0x800000, 0x1000, 1), (0x801000, 0x1000, 2), (0x802000, 0x1000, 3)]
    if kernel_hashes:
        sections.append((0x803000, 0x1000, 0x10))
    metadata = b"ASEV" + struct.pack("<III", 16 + 12 * len(sections), 1, len(sections))
    metadata += b"".join(struct.pack("<III", *s) for s in sections)
    meta_at = 0x1000
    data[meta_at : meta_at + len(metadata)] = metadata

    def entry(guid: str, payload: bytes) -> bytes:
        return payload + struct.pack("<H", len(payload) + 18) + uuid.UUID(guid).bytes_le

    table = (
        entry(RESET_BLOCK_GUID, struct.pack("<I", 0xFFFFF000))
        + entry(HASH_TABLE_GUID, struct.pack("<II", 0x803C00, 0x400))
        + entry(METADATA_GUID, struct.pack("<I", size - meta_at))
    )
    footer = struct.pack("<H", len(table) + 18) + uuid.UUID(FOOTER_GUID).bytes_le
    end = size - 32
    data[end - len(footer) - len(table) : end] = table + footer
    path.write_bytes(bytes(data))
    return path


def test_snp_launch_digest_covers_kernel_initrd_cmdline_and_vcpus(tmp_path: Path) -> None:
    ovmf = fake_ovmf(tmp_path / "OVMF.fd")
    kernel_file, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    kernel_file.write_bytes(b"kernel" * 1000)
    initrd.write_bytes(b"initrd" * 1000)

    def digest(**changes: object) -> bytes:
        args: dict[str, object] = dict(ovmf=ovmf, kernel=kernel_file, initrd=initrd, cmdline="quiet", vcpus=1)
        return snp_launch_digest(**{**args, **changes})  # type: ignore[arg-type]

    base = digest()
    assert len(base) == 48 and base == digest()
    assert digest(cmdline="quiet panic=-1") != base
    assert digest(vcpus=2) != base
    assert digest(vcpu_type="EPYC-Milan") != base
    initrd.write_bytes(b"other")
    assert digest() != base
    with pytest.raises(MotteError, match="unknown vCPU type"):
        digest(vcpu_type="Pentium")
    with pytest.raises(MotteError, match="kernel-hashes"):
        digest(ovmf=fake_ovmf(tmp_path / "plain.fd", kernel_hashes=False))


@pytest.mark.parametrize("kind", ["/dev/zero", "fifo"])
def test_the_ovmf_file_must_be_a_regular_file(tmp_path: Path, kind: str) -> None:
    ovmf = Path(kind)
    if kind == "fifo":
        ovmf = tmp_path / "fifo"
        os.mkfifo(ovmf)  # no writer: reading it would wait for ever
    (tmp_path / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "initrd").write_bytes(b"initrd")
    shown = "a character device" if kind == "/dev/zero" else "a FIFO"
    with pytest.raises(MotteError, match=f"OVMF {ovmf}: is {shown}, not a regular file"):
        snp_launch_digest(ovmf=ovmf, kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd", cmdline="", vcpus=1)


def test_image_measure_cli_prints_all_digests(image: build.KeepImage, tmp_path: Path, shared_cache: str) -> None:
    ovmf = fake_ovmf(tmp_path / "OVMF.fd")
    env = {"MOTTE_CACHE_DIR": shared_cache}
    from tests.conftest import motte

    result = motte("image", "measure", "--snp", "--ovmf", str(ovmf), "--vcpus", "2", "--json", env=env)
    assert result.returncode == 0, result.stderr.decode()
    out = json.loads(result.stdout)
    names = [d["name"] for d in out["digests"]]
    assert names == ["kernel (PVH vmlinux, kvm)", "kernel (bzImage, snp/tdx)", "initrd", "cmdline"]
    initrd = next(d for d in out["digests"] if d["name"] == "initrd")
    assert initrd["sha256"] == image.manifest["initrd"]["sha256"]
    assert len(bytes.fromhex(out["snp"]["launch_digest"])) == 48 and out["snp"]["vcpus"] == 2
    path = motte("image", "path", "--initrd", env=env)
    printed = Path(path.stdout.decode().strip())
    assert printed.name == "keep.cpio.lz4" and printed.is_file() and printed.parent.parent == image.directory.parent
    missing = motte("image", "measure", "--snp", env=env)
    assert missing.returncode == 125 and b"--snp needs --ovmf" in missing.stderr


def test_image_path_without_an_image_fails_clearly(tmp_path: Path) -> None:
    from tests.conftest import motte

    result = motte("image", "path", env={"MOTTE_CACHE_DIR": str(tmp_path)})  # an empty cache
    assert result.returncode == 125
    assert b"motte image build" in result.stderr


def test_large_inputs_are_hashed_once_per_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inputs, "images_root", lambda: tmp_path / "image")
    big = tmp_path / "libbig.so"
    big.write_bytes(b"a" * 1000)
    os.utime(big, ns=(0, 0))  # old enough to be remembered: not written within the last 2 s
    time.sleep(2.1)  # the ctime, which cannot be set, must be old too
    hashed: list[Path] = []
    real = kernel.sha256_file
    monkeypatch.setattr(kernel, "sha256_file", lambda path: hashed.append(path) or real(path))
    first = inputs._known_sha256(big)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest() and inputs._known_sha256(big) == first
    assert hashed == [big], "the second call uses the remembered digest"
    big.write_bytes(b"b" * 1000)  # same size; new mtime and ctime
    assert inputs._known_sha256(big) == hashlib.sha256(b"b" * 1000).hexdigest() and len(hashed) == 2
    assert inputs._known_sha256(big) and len(hashed) == 3, "a file changed moments ago is not remembered"


def test_package_versions_come_from_dist_info_names() -> None:
    import importlib.metadata

    for name in ("wasmtime", "cryptography", "cffi"):
        assert inputs._dist_version(name) == importlib.metadata.version(name)
    assert inputs._dist_version("no-such-distribution-here") is None


def test_python_is_the_one_running_the_build() -> None:
    # The image embeds this interpreter; its version is part of the key.
    assert inputs.image_inputs()["python"]["version"] == sys.version
