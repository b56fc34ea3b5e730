;; nostart: a valid module with a memory export and a "main" function export,
;; but no "_start" export, so it is not a WASI command.
(module
  (memory (export "memory") 1)
  (func $main (export "main") (result i32)
    i32.const 0))
