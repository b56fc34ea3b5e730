"""``motte-oci``: the OCI runtime command line containerd's runc shim drives (runc's, for wasm keeps).

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.motte.options]
      BinaryName = "/usr/local/bin/motte-oci"

See docs/kubernetes.md. Errors go to stderr and, as runc's do, to the ``--log`` file (one JSON
object a line with ``--log-format json``), where the shim looks for them.

The shim starts a fresh process for every command (create, start, state, kill, delete), so this
module parses runc's arguments itself, as runc's own parser does (options before arguments, ``-x``
and ``--x`` alike, ``--x=value``), rather than load a command-line library for each; and each
command imports only what it uses.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from motte import __version__
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
Options = dict[str, str]


class Globals:
    """runc's global options, and the command line as it came (for a command handed to runc)."""

    def __init__(self, root: Path, argv: Sequence[str]):
        self.root = root
        self.argv = list(argv)

    def delegate_if_runcs(self, container_id: str) -> None:
        """Hand a container runc created back to runc."""
        if not (self.root / container_id).exists() and (self.root / RUNC_ROOT / container_id).exists():
            self.delegate()

    def delegate(self) -> None:
        """Run this same command with runc instead (its own state under --root): never returns."""
        import shutil

        runc = os.environ.get(RUNC_ENV) or shutil.which("runc")
        if runc is None:
            raise MotteError("this container has no wasm entry point, and there is no runc to run it",
                             hint=f"install runc, or name it in {RUNC_ENV}")
        arguments = list(self.argv)
        for index, arg in enumerate(arguments):  # runc's own --root, in place of motte-oci's
            if arg in ("--root", "-root"):
                del arguments[index : index + 2]
                break
            if arg.startswith(("--root=", "-root=")):
                del arguments[index]
                break
        os.execv(runc, [runc, "--root", str(self.root / RUNC_ROOT), *arguments])


class Command:
    """One of runc's commands: its options (``valued`` take a value, ``switches`` do not) and its
    arguments, at least ``required`` of the names in ``usage``, at most ``most`` (None: any number)."""

    def __init__(self, run: Callable[[Globals, Options, list[str]], None], summary: str, usage: str = "CONTAINER_ID",
                 *, valued: Sequence[str] = (), switches: Sequence[str] = (), aliases: Options | None = None,
                 required: int = 1, most: int | None = 1):
        self.run = run
        self.summary = summary
        self.usage = usage
        self.valued = frozenset(valued)
        self.switches = frozenset((*switches, "help"))
        self.aliases = {"h": "help", **(aliases or {})}
        self.required = required
        self.most = most

    def help(self, name: str) -> str:
        options = sorted([f"[--{o} VALUE]" for o in self.valued] + [f"[--{o}]" for o in self.switches - {"help"}])
        return f"Usage: {' '.join(['motte-oci', name, *options, self.usage]).strip()}\n\n{self.summary}"

    def arguments(self, name: str, given: list[str]) -> list[str]:
        if len(given) < self.required or (self.most is not None and len(given) > self.most):
            raise MotteError(f"{name}: expected {self.usage}, got {len(given)} argument(s)",
                             hint=f"see 'motte-oci {name} --help'")
        return given


def parse_options(args: Sequence[str], valued: frozenset[str], switches: frozenset[str], aliases: Options,
                  where: str) -> tuple[Options, list[str]]:
    """The options at the head of ``args`` (up to the first argument, or ``--``), and what follows."""
    options: Options = {}
    rest = list(args)
    while rest and rest[0].startswith("-") and rest[0] != "-":
        arg = rest.pop(0)
        if arg == "--":
            break
        name, has_value, value = arg.lstrip("-").partition("=")
        name = aliases.get(name, name)
        if name in switches:
            options[name] = value if has_value else "true"
        elif name in valued:
            if not has_value:
                if not rest:
                    raise MotteError(f"{where}: option {arg} needs a value")
                value = rest.pop(0)
            options[name] = value
        else:
            raise MotteError(f"{where}: unknown option {arg}", hint=f"see '{where} --help'")
    return options, rest


def is_set(options: Options, name: str) -> bool:
    """Whether a switch is on (``--x``, or ``--x=true`` as Go's flags take it; not ``--x=false``)."""
    return options.get(name, "false") not in ("false", "0", "")


def create(g: Globals, options: Options, arguments: list[str]) -> None:
    from motte.host.oci.bundle import is_wasm_bundle, load_bundle, workload_config
    from motte.host.oci.lifecycle import create as create_container
    from motte.host.paths import module_cache_dir
    from motte.host.session import RunRequest
    from motte.host.workload_files import plaintext_warnings, read_workload

    bundle = Path(options.get("bundle", "."))
    if not is_wasm_bundle(bundle):
        g.delegate()
    if options.get("preserve-fds", "0") != "0":
        raise MotteError("--preserve-fds: a keep takes no file descriptors beyond stdio")
    spec = load_bundle(bundle)
    config = workload_config(spec)
    for warning in plaintext_warnings(config):
        print(f"motte-oci: warning: {warning}", file=sys.stderr)  # the container's stderr: its log
    request = RunRequest(read_workload(spec.entry), config, spec.dirs, spec.memory_limit,
                         cache_dir=str(module_cache_dir()), read_only_dirs=spec.read_only_dirs,
                         config_dir=str(spec.config_file.parent) if spec.config_file is not None else None)
    pid_file = options.get("pid-file")
    create_container(g.root, arguments[0], spec, request, pid_file=Path(pid_file).absolute() if pid_file else None,
                     console_socket=options.get("console-socket"))


def start(g: Globals, options: Options, arguments: list[str]) -> None:
    from motte.host.oci.lifecycle import start as start_container

    g.delegate_if_runcs(arguments[0])
    start_container(g.root, arguments[0])


def state(g: Globals, options: Options, arguments: list[str]) -> None:
    from motte.host.oci.state import load, oci_state

    g.delegate_if_runcs(arguments[0])
    print(json.dumps(oci_state(g.root, load(g.root, arguments[0])), indent=2))


def kill(g: Globals, options: Options, arguments: list[str]) -> None:
    from motte.host.oci.lifecycle import kill as kill_container

    g.delegate_if_runcs(arguments[0])
    kill_container(g.root, arguments[0], parse_signal(arguments[1] if len(arguments) > 1 else "SIGTERM"))


def delete(g: Globals, options: Options, arguments: list[str]) -> None:
    from motte.host.oci.lifecycle import delete as delete_container

    g.delegate_if_runcs(arguments[0])
    delete_container(g.root, arguments[0], force=is_set(options, "force"))


def ps(g: Globals, options: Options, arguments: list[str]) -> None:
    from motte.host.oci.state import is_alive, load

    g.delegate_if_runcs(arguments[0])
    record = load(g.root, arguments[0])
    pids = [record.pid] if is_alive(record) else []
    print(json.dumps(pids) if _format(options) == "json" else "\n".join(["PID", *map(str, pids)]))


def list_containers(g: Globals, options: Options, arguments: list[str]) -> None:
    from motte.host.oci.state import STATE_FILE, load, oci_state

    states = [oci_state(g.root, load(g.root, d.name)) for d in sorted(g.root.glob("*")) if (d / STATE_FILE).exists()]
    if _format(options) == "json":
        print(json.dumps(states))
    else:
        for item in states:
            print(item["id"] if is_set(options, "quiet") else f"{item['id']}\t{item['pid']}\t{item['status']}"
                  f"\t{item['bundle']}")


def features(g: Globals, options: Options, arguments: list[str]) -> None:
    from motte.host.oci.bundle import BACKEND_ANNOTATION, CONFIG_ANNOTATION, VARIANT_ANNOTATION

    print(json.dumps({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": [],
        "mountOptions": ["bind", "rbind", "ro", "rw"],
        "linux": {"namespaces": ["network"]},
        "annotations": {VARIANT_ANNOTATION: "compat", BACKEND_ANNOTATION: "auto|nil|kvm",
                        CONFIG_ANNOTATION: "a path in the rootfs"},
    }, indent=2))


def _format(options: Options) -> str:
    output = options.get("format", "table")
    if output not in ("table", "json"):
        raise MotteError(f"--format {output!r}: use table or json")
    return output


COMMANDS = {
    "create": Command(create, "Start the keep for the bundle's wasm entry point; the workload runs at 'start'.",
                      valued=("bundle", "pid-file", "console-socket", "preserve-fds"),
                      switches=("no-pivot", "no-new-keyring"), aliases={"b": "bundle"}),
    "start": Command(start, "Run the created container's workload."),
    "state": Command(state, "Print the container's OCI state (JSON)."),
    "kill": Command(kill, "Send SIGNAL (a name or number; SIGTERM by default) to the container.",
                    "CONTAINER_ID [SIGNAL]", switches=("all",), aliases={"a": "all"}, most=2),
    "delete": Command(delete, "Remove the container (stopped or created; running only with --force).",
                      switches=("force",), aliases={"f": "force"}),
    "ps": Command(ps, "The container's processes: its init process, which holds the keep.",
                  "CONTAINER_ID [PS_OPTIONS...]", valued=("format",), aliases={"f": "format"}, most=None),
    "list": Command(list_containers, "The containers under --root.", "", valued=("format",), switches=("quiet",),
                    aliases={"f": "format", "q": "quiet"}, required=0, most=0),
    "features": Command(features, "What this runtime supports (runc's 'features' JSON).", "", required=0, most=0),
}
GLOBAL_VALUED = frozenset(("root", "log", "log-format", "rootless", "criu"))
#: --systemd-cgroup is taken and ignored: a keep has no cgroup of its own to place.
GLOBAL_SWITCHES = frozenset(("debug", "systemd-cgroup", "version", "help"))
GLOBAL_ALIASES = {"v": "version", "h": "help"}


def usage() -> str:
    commands = "\n".join(f"  {name:<10}{command.summary}" for name, command in COMMANDS.items())
    return ("Usage: motte-oci [--root DIR] [--log FILE] [--log-format text|json] COMMAND [OPTIONS] [ARGUMENTS]\n\n"
            "Run wasm containers in motte keeps: the runc command line, for containerd's runc shim.\n\n"
            f"Global options:\n  --root DIR  where containers' state is kept (default: {DEFAULT_ROOT})\n"
            "  --log FILE  append errors to this file\n  --log-format text|json\n  --version, -v\n\n"
            f"Commands:\n{commands}\n\nNot supported: {', '.join(UNSUPPORTED)}.")


def run_command(args: Sequence[str]) -> None:
    options, rest = parse_options(args, GLOBAL_VALUED, GLOBAL_SWITCHES, GLOBAL_ALIASES, "motte-oci")
    if is_set(options, "version"):
        # runc's three lines, which the shim's client parses.
        print(f"motte-oci version {__version__}\ncommit: motte\nspec: {OCI_VERSION}")
        return
    if not rest or is_set(options, "help") or rest[0] == "help":
        print(usage())
        return
    if options.get("log-format", "text") not in ("text", "json"):
        raise MotteError(f"--log-format {options['log-format']!r}: use text or json")
    name = rest[0]
    if name in UNSUPPORTED:
        raise MotteError(f"{name} is not supported: {UNSUPPORTED[name]}")
    command = COMMANDS.get(name)
    if command is None:
        raise MotteError(f"unknown command {name!r}", hint="see 'motte-oci --help'")
    command_options, given = parse_options(rest[1:], command.valued, command.switches, command.aliases,
                                           f"motte-oci {name}")
    if is_set(command_options, "help"):
        print(command.help(name))
        return
    globals_ = Globals(Path(options.get("root", DEFAULT_ROOT)).absolute(), args)
    command.run(globals_, command_options, command.arguments(name, given))


def parse_signal(name: str) -> int:
    """``SIGTERM``, ``TERM``, ``term`` or ``15``."""
    import signal

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
        run_command(args)
    except MotteError as exc:
        _fail(args, str(exc))
    if argv is None:
        # Done: skip the interpreter's teardown of every module create loaded (milliseconds the
        # shim waits for). Nothing is left to run at exit; the output is flushed first.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _fail(args: list[str], message: str) -> None:
    """Report an error as runc does: on stderr and in the --log file; exit 1."""
    from motte.shared.printable import printable

    print(printable(f"motte-oci: error: {message}"), file=sys.stderr)
    log, log_format = _log_options(args)
    if log is not None:
        if log_format == "json":
            from datetime import UTC, datetime

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
    """The global --log and --log-format, read again: an error may come before they were parsed."""
    values: dict[str, str] = {}
    following = [*args[1:], ""]
    for arg, value in zip(args, following, strict=True):
        for option in ("--log", "--log-format"):
            if arg in (option, option[1:]):
                values[option] = value
            elif arg.startswith((option + "=", option[1:] + "=")):
                values[option] = arg.partition("=")[2]
    return values.get("--log"), values.get("--log-format", "text")
