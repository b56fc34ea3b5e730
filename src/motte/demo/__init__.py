"""motte's demo workloads: small WASI programs shipped prebuilt (see README.md here)."""

from pathlib import Path

__all__ = ["DEMO_SOURCE", "DEMO_WASM", "SECRET_WASM"]

#: The prebuilt demo module, built from ``hello.c`` beside it.
DEMO_WASM = Path(__file__).with_name("hello.wasm")
#: Its C source.
DEMO_SOURCE = Path(__file__).with_name("hello.c")
#: The secret-search demo's workload, built from ``secret.c``: holds a random secret, prints its hash.
SECRET_WASM = Path(__file__).with_name("secret.wasm")
