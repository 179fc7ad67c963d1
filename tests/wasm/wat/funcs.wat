;; Several entry points, to select with `module.wat#name`:
;; `_start` exits 3, `other` prints "other" and returns normally (exit 0),
;; `takes_arg` has a parameter and so cannot be an entrypoint.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "other\n")
  (func (export "_start")
    (call $proc_exit (i32.const 3)))
  (func (export "other")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "takes_arg") (param i32)))
