"""The one error type the CLI turns into a single line and a non-zero exit status."""

from __future__ import annotations

# Exit statuses motte itself uses. A workload's own proc_exit status passes through unchanged
# (0-255); these are chosen to stay clear of the common small codes a workload uses.
EXIT_MOTTE_ERROR = 125  # bad input, config or flag, a keep that could not start (as docker/podman do)
EXIT_TIMEOUT = 124  # the --timeout deadline passed (as timeout(1) does)
EXIT_TRAP = 134  # the workload trapped (as an abort() would)
EXIT_MEMORY = 137  # the workload hit its memory limit (as an OOM kill would)


class MotteError(Exception):
    """An error with a message fit for one line of output and the exit status to use.

    ``hint`` says what to do about it; it is appended to the line.
    """

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int = EXIT_MOTTE_ERROR):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message
