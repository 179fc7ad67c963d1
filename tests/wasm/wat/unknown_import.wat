;; Imports a function no WASI host provides. It must still instantiate; `_start` calls the
;; import (and so must trap naming it), `safe` never does (and so must exit 0).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "env" "mystery_host_call" (func $mystery (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "safe\n")
  (func (export "_start")
    (drop (call $mystery (i32.const 1))))
  (func (export "safe")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 5))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
