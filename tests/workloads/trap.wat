;; trap: _start -> $outer -> $inner -> unreachable. The identifiers below end up
;; in the module's "name" section, so a wasm backtrace shows inner/outer/_start.
(module $trap
  (memory (export "memory") 1)
  (func $inner
    unreachable)
  (func $outer
    call $inner)
  (func $_start (export "_start")
    call $outer))
