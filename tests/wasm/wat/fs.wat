;; Exercises preopened directories. Expects fd 4 to be a read-only preopen holding data.txt
;; and fd 5 a read-write preopen (the test preopens the rootfs at 3, then these two).
;; Prints one line per operation, "<name>: <errno as 2 digits>", and the bytes it read:
;;   ro-read        open data.txt for reading in the read-only dir (expect 00) + its content
;;   ro-create      create new.txt in the read-only dir (expect an error)
;;   ro-write       open the existing data.txt for writing in the read-only dir (expect an error)
;;   rw-create      create out.txt in the read-write dir and write "written\n" (expect 00)
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0..15: iovec + scratch; 16..: strings; 200: opened fd; 204: byte count; 1024..: read buffer
  (data (i32.const 16) "data.txt")         ;; 8 bytes
  (data (i32.const 32) "new.txt")          ;; 7 bytes
  (data (i32.const 48) "out.txt")          ;; 7 bytes
  (data (i32.const 64) "ro-read: ")        ;; 9 bytes
  (data (i32.const 80) "ro-create: ")      ;; 11 bytes
  (data (i32.const 96) "ro-write: ")       ;; 10 bytes
  (data (i32.const 112) "rw-create: ")     ;; 11 bytes
  (data (i32.const 128) "written\n")       ;; 8 bytes
  (data (i32.const 144) "\n")              ;; 1 byte

  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))

  ;; prints `label`, then n as two decimal digits and a newline
  (func $report (param $label i32) (param $len i32) (param $n i32)
    (call $write (i32.const 1) (local.get $label) (local.get $len))
    (i32.store8 (i32.const 12) (i32.add (i32.const 48) (i32.div_u (local.get $n) (i32.const 10))))
    (i32.store8 (i32.const 13) (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
    (i32.store8 (i32.const 14) (i32.const 10))
    (call $write (i32.const 1) (i32.const 12) (i32.const 3)))

  (func (export "_start")
    (local $err i32)
    ;; ro-read: open fd4/data.txt with FD_READ (1<<1), read up to 256 bytes, echo them
    (local.set $err (call $path_open (i32.const 4) (i32.const 0) (i32.const 16) (i32.const 8)
      (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 200)))
    (call $report (i32.const 64) (i32.const 9) (local.get $err))
    (if (i32.eqz (local.get $err))
      (then
        (i32.store (i32.const 0) (i32.const 1024))
        (i32.store (i32.const 4) (i32.const 256))
        (drop (call $fd_read (i32.load (i32.const 200)) (i32.const 0) (i32.const 1) (i32.const 204)))
        (call $write (i32.const 1) (i32.const 1024) (i32.load (i32.const 204)))
        (drop (call $fd_close (i32.load (i32.const 200))))))
    ;; ro-create: O_CREAT (1) with FD_WRITE (1<<6)
    (local.set $err (call $path_open (i32.const 4) (i32.const 0) (i32.const 32) (i32.const 7)
      (i32.const 1) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 200)))
    (call $report (i32.const 80) (i32.const 11) (local.get $err))
    ;; ro-write: existing file, FD_WRITE
    (local.set $err (call $path_open (i32.const 4) (i32.const 0) (i32.const 16) (i32.const 8)
      (i32.const 0) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 200)))
    (call $report (i32.const 96) (i32.const 10) (local.get $err))
    ;; rw-create: O_CREAT|O_TRUNC (9) with FD_WRITE, then write "written\n"
    (local.set $err (call $path_open (i32.const 5) (i32.const 0) (i32.const 48) (i32.const 7)
      (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 200)))
    (call $report (i32.const 112) (i32.const 11) (local.get $err))
    (if (i32.eqz (local.get $err))
      (then
        (call $write (i32.load (i32.const 200)) (i32.const 128) (i32.const 8))
        (drop (call $fd_close (i32.load (i32.const 200))))))))
