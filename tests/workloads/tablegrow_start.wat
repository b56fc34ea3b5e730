;; tablegrow_start: grows a funcref table by 16M entries in the module's start function, which runs
;; while the module is instantiated (before there is an instance), trapping if the grow is refused.
(module $tablegrow_start
  (table $table 1 funcref)
  (memory (export "memory") 1)
  (func $grow
    (if (i32.eq (table.grow $table (ref.null func) (i32.const 0x1000000)) (i32.const -1))
      (then unreachable)))
  (start $grow)
  (func $_start (export "_start")))
