"""The ``motte`` command's entry point, kept light: see :mod:`motte.cli.app` for the commands."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if _is_nil_run(args):
        # Start the keep process before loading the CLI machinery: their start-ups overlap.
        from motte.host.nil_process import prespawn

        prespawn()
    import signal

    import click

    from motte.cli.app import cli
    from motte.shared.errors import EXIT_MOTTE_ERROR, MotteError
    from motte.shared.printable import printable

    debug = "--debug" in args
    # SIGTERM ends motte like Ctrl-C does: through the cleanup paths (the keep is stopped).
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli.main(args=args, prog_name="motte", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("motte: aborted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()  # the help: what a bare command is asked for
        sys.exit(EXIT_MOTTE_ERROR)
    except click.ClickException as exc:
        # A bad flag is motte's failure like any other: one line and 125, never the 2 a workload may use.
        command = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx else "motte"
        click.echo(printable(f"motte: error: {exc.format_message()} (see '{command} --help')"), err=True)
        sys.exit(EXIT_MOTTE_ERROR)
    except MotteError as exc:
        if debug:
            raise
        click.echo(printable(f"motte: error: {exc}"), err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("motte: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        click.echo(printable(f"motte: internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)"),
                   err=True)
        sys.exit(EXIT_MOTTE_ERROR)



def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _is_nil_run(args: list[str]) -> bool:
    words = [a for a in args if a != "--debug"]
    if not words or words[0] != "run" or "--help" in args or "-h" in args:
        return False
    following = [*args[1:], ""]
    return any(a == "--backend=nil" or (a == "--backend" and b == "nil") for a, b in zip(args, following, strict=True))
