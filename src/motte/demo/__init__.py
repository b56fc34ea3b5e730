"""motte's demo workload: a small WASI program shipped prebuilt (see README.md here)."""

from pathlib import Path

__all__ = ["DEMO_SOURCE", "DEMO_WASM"]

#: The prebuilt demo module, built from ``hello.c`` beside it.
DEMO_WASM = Path(__file__).with_name("hello.wasm")
#: Its C source.
DEMO_SOURCE = Path(__file__).with_name("hello.c")
