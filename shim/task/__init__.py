"""The task service: per-container state, the task logic, and its ttrpc adapter."""
