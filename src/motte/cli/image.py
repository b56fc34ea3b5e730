"""``motte image build|measure|path``: the micro-VM keep image (kernel + initramfs)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click


@click.group()
def image() -> None:
    """Build and measure the micro-VM keep image."""


@image.command("build")
@click.option("--force", is_flag=True, help="Rebuild even if the cache holds an image for these inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def build(force: bool, as_json: bool) -> None:
    """Build the keep image reproducibly (cached by a key over its inputs)."""
    from rich.console import Console

    from motte.host.image.build import ensure_image

    console = Console(stderr=True)
    started = time.monotonic()
    steps = _Steps(console)
    with console.status("checking the cache...") as status:
        result = ensure_image(lambda message: steps.next(message, status), force=force)
    steps.finish()
    if as_json:
        click.echo(json.dumps(result.manifest, indent=2, sort_keys=True))
        return
    initrd = result.manifest["initrd"]
    built = "built" if steps.count else "cached"
    console.print(
        f"keep image {built} in {time.monotonic() - started:.1f} s: {result.directory}\n"
        f"  kernel  {result.vmlinux} ({result.kernel.pin.package} {result.kernel.pin.version})\n"
        f"  initrd  {result.initrd} ({initrd['size'] / 1e6:.1f} MB lz4, {initrd['cpio_size'] / 1e6:.1f} MB cpio, "
        f"{initrd['entries']} files)\n"
        f"  sha256  {initrd['sha256']}",
        soft_wrap=True,  # paths stay on one line, copyable
    )


class _Steps:
    """Prints each finished build step with the time it took; the spinner shows the current one."""

    def __init__(self, console: Any):
        self.console = console
        self.current = ""
        self.since = time.monotonic()
        self.count = 0

    def next(self, message: str, status: Any) -> None:
        self.finish()
        self.current, self.since = message, time.monotonic()
        self.count += 1
        status.update(f"{message}...")

    def finish(self) -> None:
        if self.current:
            elapsed = time.monotonic() - self.since
            self.console.print(f"  [green]✓[/green] {self.current} [dim]({elapsed:.1f} s)[/dim]")
            self.current = ""


@image.command("path")
@click.option("--kernel", "what", flag_value="kernel", help="Print the PVH kernel (vmlinux) path.")
@click.option("--bzimage", "what", flag_value="bzimage", help="Print the bzImage (vmlinuz) path.")
@click.option("--initrd", "what", flag_value="initrd", help="Print the initramfs path.")
def path(what: str | None) -> None:
    """Print where the cached image is (its directory, or one file). Fails if it is not built."""
    from motte.host.image.build import cached_image
    from motte.shared.errors import MotteError

    found = cached_image()
    if found is None:
        raise MotteError("no keep image is built for the current sources", hint="run 'motte image build'")
    paths = {"kernel": found.vmlinux, "bzimage": found.kernel.vmlinuz, "initrd": found.initrd}
    click.echo(str(paths[what]) if what else str(found.directory))


@image.command("measure")
@click.option("--snp", is_flag=True, help="Also compute the SEV-SNP launch digest (needs --ovmf).")
@click.option("--ovmf", type=click.Path(path_type=Path, dir_okay=False), help="OVMF built for SEV (AmdSev).")
@click.option("--vcpus", type=click.IntRange(min=1), default=1, show_default=True, help="vCPUs of the keep.")
@click.option("--vcpu-type", default="EPYC-v4", show_default=True, help="QEMU CPU model of the SNP keep.")
@click.option("--mode", default=None, help="MOTTE_MODE on the command line (default: the keep runtime).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def measure(snp: bool, ovmf: Path | None, vcpus: int, vcpu_type: str, mode: str | None, as_json: bool) -> None:
    """Print the digests of the kernel, initrd and command line (and the SNP launch digest)."""
    from rich.console import Console

    from motte.host.image.build import ensure_image, kernel_cmdline
    from motte.host.image.measure import cmdline_digest, digest_file, snp_launch_digest
    from motte.shared.errors import MotteError

    if snp and ovmf is None:
        raise MotteError("--snp needs --ovmf FILE", hint="an OVMF built with OvmfPkg/AmdSev")
    with Console(stderr=True).status("preparing the keep image...") as status:
        result = ensure_image(lambda message: status.update(f"{message}..."))
    cmdline = kernel_cmdline(mode)
    digests = [
        digest_file("kernel (PVH vmlinux, kvm)", result.vmlinux),
        digest_file("kernel (bzImage, snp/tdx)", result.kernel.vmlinuz),
        digest_file("initrd", result.initrd),
        cmdline_digest(cmdline),
    ]
    out: dict[str, Any] = {
        "cmdline": cmdline,
        "digests": [{"name": d.name, "source": d.source, "size": d.size, "sha256": d.sha256, "sha384": d.sha384}
                    for d in digests],
    }  # fmt: skip
    if snp:
        assert ovmf is not None
        launch = snp_launch_digest(
            ovmf=ovmf, kernel=result.kernel.vmlinuz, initrd=result.initrd, cmdline=cmdline, vcpus=vcpus,
            vcpu_type=vcpu_type,
        )  # fmt: skip
        out["snp"] = {"launch_digest": launch.hex(), "ovmf": str(ovmf), "vcpus": vcpus, "vcpu_type": vcpu_type}
    if as_json:
        click.echo(json.dumps(out, indent=2, sort_keys=True))
        return
    click.echo(f"cmdline: {cmdline}")
    for d in digests:
        click.echo(f"{d.name}: {d.size} bytes\n  sha256 {d.sha256}\n  sha384 {d.sha384}")
    if snp:
        click.echo(f"SEV-SNP launch digest ({vcpus} x {vcpu_type}, {ovmf}):\n  {out['snp']['launch_digest']}")
