;; memgrow: grows its memory one 64 KiB page at a time and traps (unreachable) as soon as a
;; memory.grow is refused, as a runtime without a fallback would. Prints nothing.
(module $memgrow
  (memory (export "memory") 1)
  (func $_start (export "_start")
    (loop $grow
      (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1))
        (then unreachable))
      (br $grow))))
