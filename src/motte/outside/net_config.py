"""What a workload config's networking names, read on the host before the keep starts.

The PEM CA bundles of ``connect`` files and the ``steward_ca`` (paths relative to the config's
directory, each bounded in size and checked to hold a certificate), and the host and port of the
``steward``, the one place the keep's runtime may connect to besides the ``connect`` files. The
host only reads these files and passes their text on: the keep's TLS is what uses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from motte.outside.user_files import read_user_file
from motte.shared.control import MAX_CA_BUNDLE
from motte.shared.enarx_config import WorkloadConfig
from motte.shared.errors import MotteError
from motte.shared.steward_http import parse_steward_url

PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"


class NetworkError(MotteError):
    """The host cannot provide a socket the workload config asks for."""


@dataclass(frozen=True)
class NetworkFiles:
    """The config's networking files, read."""

    ca_bundles: dict[int, str] = field(default_factory=dict)  # fd -> PEM of a TLS connect file's ca
    steward_ca: str | None = None  # the PEM of the config's steward_ca
    steward: tuple[str, int] | None = None  # where the keep may connect to reach its Steward


def read_network_files(config: WorkloadConfig, config_dir: Path | None) -> NetworkFiles:
    """Read every CA bundle the config names and check its ``steward`` URL, or fail with a clear error."""
    steward = None
    if config.steward is not None:
        try:
            url = parse_steward_url(config.steward)
        except MotteError as exc:
            raise NetworkError(f"steward: {exc}") from None
        steward = (url.host, url.port)
    steward_ca = None
    if config.steward_ca is not None:
        steward_ca = read_ca_bundle("steward_ca", config.steward_ca, config_dir)
    ca_bundles = {
        fd: read_ca_bundle(f"files[{fd}].ca", spec.ca, config_dir)
        for fd, spec in enumerate(config.files)
        if spec.kind == "connect" and spec.ca is not None
    }
    return NetworkFiles(ca_bundles, steward_ca, steward)


def read_ca_bundle(what: str, name: str, config_dir: Path | None) -> str:
    """The PEM text of the CA bundle at ``name`` (relative to ``config_dir`` unless absolute)."""
    path = Path(name)
    if not path.is_absolute() and config_dir is not None:
        path = config_dir / path
    data = read_user_file(path, what=what, limit=MAX_CA_BUNDLE, error=NetworkError,
                          hint="give a PEM file of just the CA certificates needed")
    text = data.decode("ascii", "replace")
    if PEM_CERTIFICATE not in text:
        raise NetworkError(f"{what}: {path}: no PEM certificate in it", hint="give a PEM CA bundle")
    return text
