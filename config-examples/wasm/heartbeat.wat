;; The example Deployment's program: prints "heartbeat" every second until it is stopped, so
;; a Deployment (restartPolicy Always) of it stays Running. WASI preview 1: fd_write, and
;; poll_oneoff on a relative monotonic-clock subscription to sleep.
;; Built into an image by `make example-images` (packaging/node_images.py).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0: iovec {base = 16, len = 10}; 16: the text
  (data (i32.const 0) "\10\00\00\00\0a\00\00\00")
  (data (i32.const 16) "heartbeat\n")
  ;; 64: a subscription (48 bytes): userdata 0, tag 0 (clock), clock id 1 (monotonic),
  ;; timeout 1e9 ns, precision 0, flags 0 (relative). 128: the event; 160: nevents.
  (data (i32.const 80) "\01\00\00\00\00\00\00\00\00\ca\9a\3b\00\00\00\00")
  (func (export "_start")
    (loop $forever
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (drop (call $poll_oneoff (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 160)))
      (br $forever))))
