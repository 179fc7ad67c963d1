;; Loads from far beyond its one page of memory. wasmtime turns the resulting SIGSEGV into a
;; trap only if its signal handlers are installed in the process that runs the guest, so this
;; checks that the Engine is created after the zygote's fork and signal reset, not before.
(module
  (memory 1)
  (func (export "_start")
    (drop (i32.load (i32.const 0x7ffffff0)))))
