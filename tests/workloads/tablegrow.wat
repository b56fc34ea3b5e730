;; tablegrow: grows a funcref table by 16M entries (128 MiB in wasmtime) 20 times, trapping
;; (unreachable) as soon as a table.grow is refused, as a runtime without a fallback would.
;; Prints nothing. Its table is not exported: the keep must see it all the same.
(module $tablegrow
  (table $table 1 funcref)
  (memory (export "memory") 1)
  (func $_start (export "_start")
    (local $round i32)
    (loop $grow
      (if (i32.eq (table.grow $table (ref.null func) (i32.const 0x1000000)) (i32.const -1))
        (then unreachable))
      (local.set $round (i32.add (local.get $round) (i32.const 1)))
      (br_if $grow (i32.lt_u (local.get $round) (i32.const 20))))))
