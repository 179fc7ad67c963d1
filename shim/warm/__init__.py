"""The warm runtime: one long-lived process per containerd that has loaded everything, from
which pod daemons are forked and in which compile jobs run (README "Processes").

`protocol`, `identity`, `client` and `launch` are imported by `start`, on every container
start, and use only light standard-library modules; `server` is the runtime itself.
"""
