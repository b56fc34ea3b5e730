"""Run a workload under wasmtime-py's own WASI: the reference motte is measured and checked against.

    python tests/workloads/wasmtime_wasi.py MODULE STDOUT PREOPEN [ARG...]

STDOUT is a file to write stdout to, or "-" for this process's stdout; PREOPEN is "HOST::GUEST"
or "" for none. Stdin and stderr are this process's, and so is the exit status. Kept to the bare
minimum (no argparse): benchmarks time this process's start-up.
"""

import sys

import wasmtime

engine = wasmtime.Engine()
store = wasmtime.Store(engine)
linker = wasmtime.Linker(engine)
linker.define_wasi()
config = wasmtime.WasiConfig()
config.argv = ["main.wasm", *sys.argv[4:]]
config.inherit_stdin()
if sys.argv[2] == "-":
    config.inherit_stdout()
else:
    config.stdout_file = sys.argv[2]
config.inherit_stderr()
if sys.argv[3]:
    host, guest = sys.argv[3].split("::")
    config.preopen_dir(host, guest)
store.set_wasi(config)
module = wasmtime.Module.from_file(engine, sys.argv[1])
try:
    linker.instantiate(store, module).exports(store)["_start"](store)
except wasmtime.ExitTrap as exit:
    sys.exit(exit.code)
