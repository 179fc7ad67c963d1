;; Prints a greeting, dumps its argv buffer (NUL-separated) to stdout and its environ buffer
;; (NUL-separated) to stderr, then exits through proc_exit(42).
;; Used to check that args and env reach the guest exactly, and that proc_exit's code is kept.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get"
    (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get"
    (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "hello from wasm\n")

  ;; write(fd, ptr, len) through one iovec at address 0
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))

  (func (export "_start")
    (call $write (i32.const 1) (i32.const 16) (i32.const 16))
    ;; argv: count at 32, buffer size at 36, pointers at 1024.., bytes at 8192..
    (drop (call $args_sizes_get (i32.const 32) (i32.const 36)))
    (drop (call $args_get (i32.const 1024) (i32.const 8192)))
    (call $write (i32.const 1) (i32.const 8192) (i32.load (i32.const 36)))
    ;; environ: same layout in the second page
    (drop (call $environ_sizes_get (i32.const 40) (i32.const 44)))
    (drop (call $environ_get (i32.const 4096) (i32.const 65536)))
    (call $write (i32.const 2) (i32.const 65536) (i32.load (i32.const 44)))
    (call $proc_exit (i32.const 42))
    unreachable))
