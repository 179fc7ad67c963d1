;; A WASI preview 2 command component written by hand: it takes stdout from wasi:cli/stdout,
;; writes one line with wasi:io/streams' blocking-write-and-flush, and exports
;; wasi:cli/run@0.2.0's `run`, returning ok.
;;
;; Lowering blocking-write-and-flush needs a linear memory (the list<u8> argument and the
;; result<_, stream-error> are passed through memory), and the memory must exist before the
;; main module that imports the lowered function, so a tiny module provides it first.
(component
  (import "wasi:io/error@0.2.0" (instance $io-error
    (export "error" (type (sub resource)))))
  (alias export $io-error "error" (type $error))

  (import "wasi:io/streams@0.2.0" (instance $streams
    (alias outer 1 $error (type $error-outer))
    (export "error" (type $err (eq $error-outer)))
    (type $stream-error-def (variant
      (case "last-operation-failed" (own $err))
      (case "closed")))
    (export "stream-error" (type $stream-error (eq $stream-error-def)))
    (export "output-stream" (type $output-stream (sub resource)))
    (export "[method]output-stream.blocking-write-and-flush"
      (func (param "self" (borrow $output-stream)) (param "contents" (list u8))
            (result (result (error $stream-error)))))))
  (alias export $streams "output-stream" (type $output-stream))

  (import "wasi:cli/stdout@0.2.0" (instance $stdout
    (alias outer 1 $output-stream (type $os-outer))
    (export "output-stream" (type $os (eq $os-outer)))
    (export "get-stdout" (func (result (own $os))))))

  (core module $Memory (memory (export "memory") 1))
  (core instance $memory-instance (instantiate $Memory))
  (alias core export $memory-instance "memory" (core memory $memory))

  (core func $get-stdout (canon lower (func $stdout "get-stdout")))
  (core func $write-and-flush
    (canon lower (func $streams "[method]output-stream.blocking-write-and-flush")
      (memory $memory)))
  (core func $drop-stream (canon resource.drop $output-stream))

  (core module $Main
    (import "host" "memory" (memory 1))
    (import "host" "get-stdout" (func $get-stdout (result i32)))
    (import "host" "write-and-flush" (func $write (param i32 i32 i32 i32)))
    (import "host" "drop-stream" (func $drop (param i32)))
    (data (i32.const 16) "hello from a component\n")
    ;; returns the flattened result: 0 = ok, 1 = err
    (func (export "run") (result i32)
      (local $stream i32)
      (local.set $stream (call $get-stdout))
      ;; the result<_, stream-error> is written at 64; its first byte is the discriminant
      (call $write (local.get $stream) (i32.const 16) (i32.const 23) (i32.const 64))
      (call $drop (local.get $stream))
      (i32.ne (i32.load8_u (i32.const 64)) (i32.const 0))))
  (core instance $main (instantiate $Main
    (with "host" (instance
      (export "memory" (memory $memory))
      (export "get-stdout" (func $get-stdout))
      (export "write-and-flush" (func $write-and-flush))
      (export "drop-stream" (func $drop-stream))))))

  (func $run (result (result)) (canon lift (core func $main "run")))
  (instance $run-instance (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $run-instance)))
