"""Where things live in the keep image (the guest's file system layout).

The interpreter is ``/usr/bin/python3.11``; ``/usr/bin/python3.11._pth`` pins ``sys.path`` to
``/usr/lib/python3.11`` (+ ``lib-dynload``, ``site-packages``), which also implies isolated mode,
so nothing in the environment can redirect imports; shared libraries live in
``/usr/lib/x86_64-linux-gnu`` (the loader's default path), ``/lib64`` holds the ELF interpreter.
The system trust store is at the default CA file of the OpenSSL that goes in.
"""

from __future__ import annotations

import sys
from pathlib import Path

from motte.shared.errors import MotteError

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
GUEST_STDLIB = f"usr/lib/python{PY}"
GUEST_DYNLOAD = f"{GUEST_STDLIB}/lib-dynload"
GUEST_SITE = f"{GUEST_STDLIB}/site-packages"
GUEST_LIBDIR = "usr/lib/x86_64-linux-gnu"
GUEST_PYTHON = f"usr/bin/python{PY}"
#: The files of the image that are not copied from the host: /init's template, the self test.
GUEST_DIR = Path(__file__).parent / "guest"


def guest_ca_file() -> str:
    """Where the keep's OpenSSL looks for its default CA file (``OPENSSLDIR/cert.pem``; on Debian
    ``/usr/lib/ssl/cert.pem``), as a path in the image. It is the host's OpenSSL that goes in
    (the ``ldd`` closure of ``_ssl``), so the host's compiled-in default is the guest's."""
    import ssl

    default = ssl.get_default_verify_paths().openssl_cafile
    if not default or not default.startswith("/"):
        raise MotteError(f"OpenSSL has no usable default CA file path: {default!r}")
    path = default.lstrip("/")
    if path.startswith(("bin/", "lib/")):
        path = f"usr/{path}"  # merged /usr: /bin and /lib are links into /usr in the image
    return path
