"""The development Steward's CA: made on first use in a state directory, reused afterwards.

It exists so that ``motte steward serve --dev`` is one command. Its key sits unprotected on disk
and its policy issues to unattested keeps, so everything it signs proves nothing; the CLI says so
every time it starts.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from motte.steward.issuer import CertificateAuthority, new_ca, write_ca

DEV_CA_NAME = "motte DEVELOPMENT Steward CA - proves nothing"
BANNER = (
    "!! DEVELOPMENT STEWARD !! Its CA key is stored unprotected in {dir}, and it issues certificates\n"
    "!! to UNATTESTED keeps (nil, kvm) and to attested keeps of ANY measurement. A certificate\n"
    "!! from it proves nothing about a keep. Never point a production keep or client at it."
)


def dev_state_dir() -> Path:
    """``$MOTTE_STATE_DIR/steward-dev``, else ``$XDG_STATE_HOME/motte/steward-dev``, else
    ``~/.local/state/motte/steward-dev``."""
    if base := os.environ.get("MOTTE_STATE_DIR"):
        return Path(base) / "steward-dev"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "motte" / "steward-dev"


def ensure_dev_ca(directory: Path, *, now: datetime) -> tuple[CertificateAuthority, Path, Path, bool]:
    """(CA, key path, certificate path, created now?)."""
    key_path, cert_path = directory / "steward-ca.key", directory / "steward-ca.pem"
    if key_path.exists() and cert_path.exists():
        ca = CertificateAuthority.load(key_path, cert_path)
        if ca.cert.not_valid_after_utc > now:
            return ca, key_path, cert_path, False
        key_path.unlink()  # an expired development CA is worth nothing: make a new one
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key, cert = new_ca(DEV_CA_NAME, now=now, days=365)
    write_ca(directory, key, cert)
    return CertificateAuthority(key, cert), key_path, cert_path, True
