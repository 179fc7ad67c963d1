;; A module whose start function never returns: instantiating it runs for ever, before
;; `_start` could be called (the shim's "ready" never comes). Used to show such a container
;; is still killable.
(module
  (func $forever (loop $again (br $again)))
  (start $forever)
  (func (export "_start")))
