"""Container processes: how the pod daemon creates, watches and signals them.

``spawner`` (its own process) forks wasm container processes; ``child`` is what such a process
does between the fork and the guest; ``wire`` is what the daemon and the spawner say to each
other; ``client`` is the daemon's side of it; ``reaper`` watches every other child of the
daemon (native containers' init, commands, orphans); ``process`` is the handle all of them
give the task layer.
"""
