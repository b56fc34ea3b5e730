"""The ``motte`` command group.

Subcommands live in their own modules and are imported only when used, so that ``motte run``
starts quickly (no TLS, HTTP or attestation libraries loaded for it).
"""

from __future__ import annotations

import importlib
import importlib.util

import click

from motte import __version__

# name -> (module, attribute, one-line help). Modules are imported on first use.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("motte.cli.run", "run", "Run a WebAssembly workload in a keep."),
    "deploy": ("motte.cli.deploy", "deploy", "Deploy a workload to a keep verified first, over TLS that ends in it."),
    "platform": ("motte.cli.platform", "platform", "What this host can run: backends and their checks."),
    "image": ("motte.cli.image", "image", "Build and measure the micro-VM keep image."),
    "attest": ("motte.cli.attest", "attest", "Verify attestation evidence and keep certificates."),
    "steward": ("motte.cli.steward", "steward", "Run the Steward, the attestation certificate authority."),
    "host": ("motte.cli.host", "host", "The host agent that launches keeps for tenants, and the keeps it runs."),
    "registry": ("motte.cli.registry", "registry", "Run the package registry (Drawbridge's API)."),
    "package": ("motte.cli.package", "package", "Publish packages to a registry and fetch them, signatures checked."),
    "repo": ("motte.cli.package", "repo", "Register repositories on a registry, list their tags."),
    "user": ("motte.cli.package", "user", "Register users on a registry."),
    "demo": ("motte.cli.demo", "demo", "Demonstrations of what each backend protects."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (module, _, _) in SUBCOMMANDS.items() if _module_exists(module)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = SUBCOMMANDS.get(cmd_name)
        if entry is None or not _module_exists(entry[0]):
            return None
        command = getattr(importlib.import_module(entry[0]), entry[1])
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help lists commands without importing them.
        rows = [(name, SUBCOMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _module_exists(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="motte")
# --debug is acted on by motte.cli.main, around click (errors surface after click returns).
@click.option("--debug", is_flag=True, expose_value=False, help="Show tracebacks and protocol details on errors.")
def cli() -> None:
    """motte runs WebAssembly (WASI) workloads inside keeps.

    A keep isolates a workload; on SEV-SNP or TDX hardware it also protects the workload from the
    host and proves by remote attestation what it runs. The nil and kvm backends run the same
    workload with weaker isolation, and say so.
    """

