;; A memory bomb: grows linear memory one 64 KiB page at a time until memory.grow fails,
;; then exits with the number of pages it ended up with (modulo 256, as exit codes are).
;; Under a memory limit L the exit code is L / 65536; with no limit it would run to 4 GiB.
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (block $done
      (loop $grow
        (br_if $done (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
        (br $grow)))
    (call $proc_exit (i32.and (memory.size) (i32.const 255)))))
