"""Engines that run a container's program. The shim talks only to `runtimes.base`."""
