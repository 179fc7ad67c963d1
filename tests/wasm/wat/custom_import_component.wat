;; A component importing an interface no WASI host provides: Start must fail naming it.
(component
  (import "acme:gadgets/widget@1.0.0" (instance $widget
    (export "frob" (func))))
  (core func $frob (canon lower (func $widget "frob")))
  (core module $Main
    (import "host" "frob" (func $frob))
    (func (export "run") (result i32) (call $frob) (i32.const 0)))
  (core instance $main (instantiate $Main (with "host" (instance (export "frob" (func $frob))))))
  (func $run (result (result)) (canon lift (core func $main "run")))
  (instance $run-instance (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $run-instance)))
