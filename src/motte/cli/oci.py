"""``motte-oci``: the OCI runtime command line containerd's runc shim drives (runc's, for wasm keeps).

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.motte.options]
      BinaryName = "/usr/local/bin/motte-oci"

See docs/kubernetes.md. Errors go to stderr and, as runc's do, to the ``--log`` file (one JSON
object a line with ``--log-format json``), where the shim looks for them.
"""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import click

from motte import __version__
from motte.host.oci.bundle import BACKEND_ANNOTATION, VARIANT_ANNOTATION
from motte.host.oci.state import OCI_VERSION
from motte.shared.errors import MotteError

DEFAULT_ROOT = "/run/motte-oci"
#: Under --root, where runc keeps the containers motte-oci hands it (no container id starts with ".").
RUNC_ROOT = ".runc"
#: The runc that runs containers without a wasm entry point (default: runc on PATH).
RUNC_ENV = "MOTTE_OCI_RUNC"
#: What a keep cannot do that runc can: refused with one line rather than half done.
UNSUPPORTED = {
    "exec": "a keep runs one workload; there is no shell to exec into",
    "pause": "a keep cannot be frozen",
    "resume": "a keep cannot be frozen",
    "checkpoint": "a keep's memory is not the host's to save",
    "restore": "a keep's memory is not the host's to save",
    "update": "a keep's memory is fixed when it starts",
    "events": "no cgroup statistics for a keep",
    "run": "use create, then start",
}


@dataclass
class Globals:
    root: Path
    log: Path | None
    log_format: str
    argv: list[str]

    def delegate_if_runcs(self, container_id: str) -> None:
        """Hand a container runc created back to runc."""
        if not (self.root / container_id).exists() and (self.root / RUNC_ROOT / container_id).exists():
            self.delegate()

    def delegate(self) -> None:
        """Run this same command with runc instead (its own state under --root): never returns."""
        import os
        import shutil

        runc = os.environ.get(RUNC_ENV) or shutil.which("runc")
        if runc is None:
            raise MotteError("this container has no wasm entry point, and there is no runc to run it",
                             hint=f"install runc, or name it in {RUNC_ENV}")
        arguments = list(self.argv)
        for index, arg in enumerate(arguments):  # runc's own --root, in place of motte-oci's
            if arg == "--root":
                del arguments[index : index + 2]
                break
            if arg.startswith("--root="):
                del arguments[index]
                break
        os.execv(runc, [runc, "--root", str(self.root / RUNC_ROOT), *arguments])


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.option("--root", type=click.Path(path_type=Path), default=DEFAULT_ROOT, show_default=True,
              help="Where containers' state is kept.")
@click.option("--log", type=click.Path(path_type=Path), help="Append errors to this file.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--debug", is_flag=True, hidden=True)
@click.option("--systemd-cgroup", is_flag=True, hidden=True)  # a keep has no cgroup of its own to place
@click.option("--rootless", hidden=True)
@click.option("--criu", hidden=True)
@click.option("--version", "-v", "version", is_flag=True, help="Print the version.")
@click.pass_context
def oci(ctx: click.Context, root: Path, log: Path | None, log_format: str, debug: bool, systemd_cgroup: bool,
        rootless: str | None, criu: str | None, version: bool) -> None:
    """Run wasm containers in motte keeps: the runc command line, for containerd's runc shim."""
    if version:
        # runc's three lines, which the shim's client parses.
        click.echo(f"motte-oci version {__version__}\ncommit: motte\nspec: {OCI_VERSION}")
        ctx.exit(0)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        ctx.exit(0)
    ctx.obj = Globals(root.absolute(), log, log_format, list(ctx.meta.get("argv", [])))


@oci.command()
@click.option("--bundle", "-b", type=click.Path(path_type=Path, file_okay=False), default=".")
@click.option("--pid-file", type=click.Path(path_type=Path))
@click.option("--console-socket")
@click.option("--no-pivot", is_flag=True, hidden=True)
@click.option("--no-new-keyring", is_flag=True, hidden=True)
@click.option("--preserve-fds", type=int, default=0, hidden=True)
@click.argument("container_id")
@click.pass_obj
def create(g: Globals, bundle: Path, pid_file: Path | None, console_socket: str | None, no_pivot: bool,
           no_new_keyring: bool, preserve_fds: int, container_id: str) -> None:
    """Start the keep for the bundle's wasm entry point; the workload runs at 'start'."""
    from motte.cli.run import check_launch_fits, read_workload
    from motte.host.oci.bundle import is_wasm_bundle, load_bundle
    from motte.host.oci.lifecycle import create as create_container
    from motte.host.paths import module_cache_dir
    from motte.host.session import RunRequest
    from motte.shared.enarx_config import default_config

    if not is_wasm_bundle(bundle):
        g.delegate()
    if preserve_fds:
        raise MotteError("--preserve-fds: a keep takes no file descriptors beyond stdio")
    spec = load_bundle(bundle)
    config = default_config().with_extra(args=spec.args, env=spec.env)
    request = RunRequest(read_workload(spec.entry), config, spec.dirs, spec.memory_limit,
                         cache_dir=str(module_cache_dir()), read_only_dirs=spec.read_only_dirs)
    check_launch_fits(request, None)
    create_container(g.root, container_id, spec, request, pid_file=pid_file.absolute() if pid_file else None,
                     console_socket=console_socket)


@oci.command()
@click.argument("container_id")
@click.pass_obj
def start(g: Globals, container_id: str) -> None:
    """Run the created container's workload."""
    from motte.host.oci.lifecycle import start as start_container

    g.delegate_if_runcs(container_id)
    start_container(g.root, container_id)


@oci.command()
@click.argument("container_id")
@click.pass_obj
def state(g: Globals, container_id: str) -> None:
    """Print the container's OCI state (JSON)."""
    from motte.host.oci.state import load, oci_state

    g.delegate_if_runcs(container_id)
    click.echo(json.dumps(oci_state(g.root, load(g.root, container_id)), indent=2))


@oci.command()
@click.option("--all", "-a", "all_processes", is_flag=True, help="Every process of the container (one: its init).")
@click.argument("container_id")
@click.argument("signal_name", default="SIGTERM")
@click.pass_obj
def kill(g: Globals, all_processes: bool, container_id: str, signal_name: str) -> None:
    """Send SIGNAL (a name or number; SIGTERM by default) to the container."""
    from motte.host.oci.lifecycle import kill as kill_container

    g.delegate_if_runcs(container_id)
    kill_container(g.root, container_id, parse_signal(signal_name))


@oci.command()
@click.option("--force", "-f", is_flag=True, help="Kill the container first if it is running.")
@click.argument("container_id")
@click.pass_obj
def delete(g: Globals, force: bool, container_id: str) -> None:
    """Remove the container (stopped or created; running only with --force)."""
    from motte.host.oci.lifecycle import delete as delete_container

    g.delegate_if_runcs(container_id)
    delete_container(g.root, container_id, force=force)


@oci.command()
@click.option("--format", "-f", "output", type=click.Choice(["table", "json"]), default="table")
@click.argument("container_id")
@click.argument("ps_options", nargs=-1)
@click.pass_obj
def ps(g: Globals, output: str, container_id: str, ps_options: tuple[str, ...]) -> None:
    """The container's processes: its init process, which holds the keep."""
    from motte.host.oci.state import is_alive, load

    g.delegate_if_runcs(container_id)
    record = load(g.root, container_id)
    pids = [record.pid] if is_alive(record) else []
    click.echo(json.dumps(pids) if output == "json" else "\n".join(["PID", *map(str, pids)]))


@oci.command(name="list")
@click.option("--format", "-f", "output", type=click.Choice(["table", "json"]), default="table")
@click.option("--quiet", "-q", is_flag=True)
@click.pass_obj
def list_containers(g: Globals, output: str, quiet: bool) -> None:
    """The containers under --root."""
    from motte.host.oci.state import load, oci_state

    states = [oci_state(g.root, load(g.root, d.name)) for d in sorted(g.root.glob("*")) if (d / "state.json").exists()]
    if output == "json":
        click.echo(json.dumps(states))
    else:
        for item in states:
            click.echo(item["id"] if quiet else f"{item['id']}\t{item['pid']}\t{item['status']}\t{item['bundle']}")


@oci.command()
def features() -> None:
    """What this runtime supports (runc's 'features' JSON)."""
    click.echo(json.dumps({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": [],
        "mountOptions": ["bind", "rbind", "ro", "rw"],
        "annotations": {VARIANT_ANNOTATION: "compat", BACKEND_ANNOTATION: "auto|nil|kvm"},
    }, indent=2))


def _refusal(name: str, reason: str) -> click.Command:
    @click.command(name=name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                   help=f"Not supported: {reason}.", add_help_option=False)
    def refuse() -> None:
        raise MotteError(f"{name} is not supported: {reason}")

    return refuse


for _name, _reason in UNSUPPORTED.items():
    oci.add_command(_refusal(_name, _reason))


def parse_signal(name: str) -> int:
    """``SIGTERM``, ``TERM``, ``term`` or ``15``."""
    if name.isdigit():
        return int(name)
    upper = name.upper()
    try:
        return int(signal.Signals[upper if upper.startswith("SIG") else f"SIG{upper}"])
    except KeyError:
        raise MotteError(f"unknown signal {name!r}", hint="give a name (SIGTERM) or a number (15)") from None


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        with oci.make_context("motte-oci", list(args)) as ctx:
            ctx.meta["argv"] = args  # for a command handed to runc as it came
            oci.invoke(ctx)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        _fail(args, exc.format_message())
    except MotteError as exc:
        _fail(args, str(exc))


def _fail(args: list[str], message: str) -> None:
    """Report an error as runc does: on stderr and in the --log file; exit 1."""
    from motte.shared.printable import printable

    click.echo(printable(f"motte-oci: error: {message}"), err=True)
    log, log_format = _log_options(args)
    if log is not None:
        if log_format == "json":
            line = json.dumps({"level": "error", "msg": message, "time": datetime.now(UTC).isoformat()})
        else:
            line = f"motte-oci: error: {message}"
        try:
            with open(log, "a") as file:
                file.write(line + "\n")
        except OSError:
            pass  # stderr has it already
    sys.exit(1)


def _log_options(args: list[str]) -> tuple[str | None, str]:
    """The global --log and --log-format, read again: an error may come before click parsed them."""
    values: dict[str, str] = {}
    following = [*args[1:], ""]
    for arg, value in zip(args, following, strict=True):
        for option in ("--log", "--log-format"):
            if arg == option:
                values[option] = value
            elif arg.startswith(option + "="):
                values[option] = arg.partition("=")[2]
    return values.get("--log"), values.get("--log-format", "text")
