;; Declares 64 MiB of initial linear memory: instantiation must fail under a smaller limit.
(module
  (memory 1024)
  (func (export "_start")))
