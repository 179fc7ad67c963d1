;; A WASI preview 2 command component whose wasi:cli/run `run` returns err (exit status 1).
;; It also exports a top-level `succeed` function returning ok, to select with `#succeed`.
(component
  (core module $Main
    (func (export "run") (result i32) (i32.const 1))
    (func (export "succeed") (result i32) (i32.const 0)))
  (core instance $main (instantiate $Main))
  (func $run (result (result)) (canon lift (core func $main "run")))
  (func $succeed (result (result)) (canon lift (core func $main "succeed")))
  (instance $run-instance (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $run-instance))
  (export "succeed" (func $succeed)))
