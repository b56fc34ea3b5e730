"""Where a container's state lives (``ROOT/ID/``) and what ``state`` reports of it.

``state.json`` records the init process (its pid and start time, so a reused pid is not taken for
it), the bundle and the annotations. ``exec.fifo`` exists from ``create`` until ``start``: the
init process waits on it, as runc's does.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from motte.shared.errors import MotteError

# Not typing.TYPE_CHECKING: importing typing costs every command the shim runs milliseconds
# (mypy takes any TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

OCI_VERSION = "1.0.2"
STATE_FILE = "state.json"
EXEC_FIFO = "exec.fifo"
#: runc's rule for container ids: no path separators, nothing a shell or a path would misread.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,1023}")


class ContainerRecord:
    """What ``state.json`` records. (A plain class, not a dataclass: every ``motte-oci`` command
    reads it, and the dataclasses module costs each of them milliseconds to import.)"""

    __slots__ = ("annotations", "bundle", "created", "id", "pid", "pid_start")

    def __init__(self, id: str, pid: int, pid_start: str, bundle: str, created: str,
                 annotations: dict[str, str] | None = None):
        self.id = id
        self.pid = pid
        self.pid_start = pid_start  # the init process's start time (field 22 of /proc/PID/stat)
        self.bundle = bundle
        self.created = created  # RFC 3339
        self.annotations = annotations or {}

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def container_dir(root: Path, container_id: str) -> Path:
    if not ID_PATTERN.fullmatch(container_id):
        raise MotteError(f"invalid container id {container_id!r}",
                         hint="use letters, digits and _ . + - only")
    return root / container_id


def save(directory: Path, record: ContainerRecord) -> None:
    temporary = directory / (STATE_FILE + ".tmp")
    temporary.write_text(json.dumps(record.to_json()))
    temporary.replace(directory / STATE_FILE)


def load(root: Path, container_id: str) -> ContainerRecord:
    path = container_dir(root, container_id) / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MotteError(f"container {container_id} does not exist") from None
    except ValueError as exc:
        raise MotteError(f"container {container_id}: unreadable state {path}: {exc}",
                         hint="delete it with --force") from None
    return ContainerRecord(**data)


def process_start(pid: int) -> str | None:
    """The start time of process ``pid``, or None if it is gone (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def is_alive(record: ContainerRecord) -> bool:
    return process_start(record.pid) == record.pid_start


def status(root: Path, record: ContainerRecord) -> str:
    """created, running or stopped, as the OCI runtime spec names them."""
    if not is_alive(record):
        return "stopped"
    if (container_dir(root, record.id) / EXEC_FIFO).exists():
        return "created"
    return "running"


def oci_state(root: Path, record: ContainerRecord) -> dict[str, Any]:
    """The state ``runc state`` prints: the OCI runtime spec's, with runc's rootfs and created."""
    current = status(root, record)
    state: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "id": record.id,
        "pid": record.pid if current != "stopped" else 0,
        "status": current,
        "bundle": record.bundle,
        "rootfs": str(Path(record.bundle) / "rootfs"),
        "created": record.created,
        "owner": "",
    }
    if record.annotations:
        state["annotations"] = record.annotations
    return state


def remove(directory: Path) -> None:
    for name in (STATE_FILE, STATE_FILE + ".tmp", EXEC_FIFO):
        try:
            (directory / name).unlink()
        except FileNotFoundError:
            pass
    try:
        os.rmdir(directory)
    except FileNotFoundError:
        pass
