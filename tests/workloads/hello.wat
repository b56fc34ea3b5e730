;; hello_wat: a hand-written WASI module (no libc). Prints "hello from wat\n"
;; with fd_write and returns from _start, which WASI treats as exit status 0.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; the text lives at offset 16; the iovec {ptr, len} at 0; nwritten at 8
  (data (i32.const 16) "hello from wat\n")
  (func $start (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 15))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
