;; The example Pod's program: prints one line and exits 0 (WASI preview 1).
;; Built into an image by `make example-images` (packaging/node_images.py).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; iovec {base = 16, len = 33} at 0; the text at 16
  (data (i32.const 0) "\10\00\00\00\21\00\00\00")
  (data (i32.const 16) "hello from wasm on wasmtime-shim\n")
  (func (export "_start")
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
