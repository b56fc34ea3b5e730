"""``motte platform info``: what this host can run, per backend, with every check."""

from __future__ import annotations

import json

import click


@click.group()
def platform() -> None:
    """What this host can run: backends and their checks."""


@platform.command("info")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--probe", is_flag=True, help="Boot a micro-VM under KVM to find out whether KVM works (cached).")
def info(as_json: bool, probe: bool) -> None:
    """Show, per backend (nil, kvm, snp, tdx, sgx), whether this host can run it and why."""
    from motte.host.platform import platform_report

    if probe and not as_json:
        from rich.console import Console

        with Console(stderr=True).status("probing KVM with a micro-VM boot..."):
            report = platform_report(probe=True)
    else:
        report = platform_report(probe=probe)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, sort_keys=True))
        return
    _print_table(report)


def _print_table(report: object) -> None:
    from rich.console import Console
    from rich.table import Table

    from motte.host.platform import PlatformReport

    assert isinstance(report, PlatformReport)
    console = Console()
    host = report.host
    console.print(f"[bold]host[/bold]: Linux {host['kernel']} on {host['cpu']} ({host['machine']})")
    table = Table(show_lines=False, header_style="bold")
    table.add_column("backend")
    table.add_column("check")
    table.add_column("", justify="center")
    table.add_column("detail", overflow="fold")
    for backend in report.backends:
        mark = "[green]yes[/green]" if backend.supported else "[red]no[/red]"
        table.add_row(f"[bold]{backend.name}[/bold]", "", mark, backend.summary, end_section=False)
        for check in backend.checks:
            # A failed check that does not decide support is informational: a dot, not a cross.
            symbol = "[green]✓[/green]" if check.ok else "[red]✗[/red]" if check.required else "[yellow]·[/yellow]"
            table.add_row("", check.name, symbol, check.detail)
        table.add_section()
    console.print(table)
    console.print(f"default backend for 'motte run': [bold]{report.strongest}[/bold]")
    for note in report.notes:
        console.print(f"note: {note}")
