"""motte: run WebAssembly workloads in keeps that protect them from the host.

Package layout (the trust boundaries are the folders):

- ``motte.keep``   runs *inside* the keep: the trusted computing base. It imports only itself,
                   ``motte.shared`` and the standard library / engine packages.
- ``motte.shared`` pure, I/O-free formats both sides speak (channel frames, Enarx.toml). Also in
                   the TCB, because the keep imports it.
- ``motte.host``   runs on the untrusted host: launchers, backends, relays.
- ``motte.tenant`` runs on the tenant's side: attestation verification and policy.
- ``motte.cli``    the ``motte`` command, a thin layer over host and tenant.
"""

__version__ = "0.1.0"
