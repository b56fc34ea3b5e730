"""Run a Python program on motte's pinned CPython build under wasmtime-py's own WASI, no keep: the
baseline bench_python.py measures ``motte run app.py`` against.

    python bench/python_direct.py WASM CACHE STDLIB_DIR APP_DIR SCRIPT [ARG...]

WASM is the interpreter module; CACHE is ``wasmtime`` (wasmtime's own compiled-module cache,
``Config.cache``) or the path of a module precompiled with ``Module.serialize`` (loaded with
``Module.deserialize_file``). The
program's folder is preopened at /app and the standard library at /usr/local/lib, as motte does;
stdio and the exit status are this process's. Kept to the bare minimum: benchmarks time this
process's start-up.
"""

import sys

import wasmtime

wasm, cache, stdlib, app, script = sys.argv[1:6]
config = wasmtime.Config()
if cache == "wasmtime":
    config.cache = True
    engine = wasmtime.Engine(config)
    module = wasmtime.Module.from_file(engine, wasm)
else:
    engine = wasmtime.Engine(config)
    module = wasmtime.Module.deserialize_file(engine, cache)
linker = wasmtime.Linker(engine)
linker.define_wasi()
wasi = wasmtime.WasiConfig()
wasi.argv = ["main.wasm", f"/app/{script}", *sys.argv[6:]]
wasi.inherit_stdin()
wasi.inherit_stdout()
wasi.inherit_stderr()
wasi.preopen_dir(stdlib, "/usr/local/lib")
wasi.preopen_dir(app, "/app")
store = wasmtime.Store(engine)
store.set_wasi(wasi)
try:
    start = linker.instantiate(store, module).exports(store)["_start"]
    assert isinstance(start, wasmtime.Func)
    start(store)
except wasmtime.ExitTrap as exit:
    sys.exit(exit.code)
