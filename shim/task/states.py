"""The state machine of one container's init process, as a table.

Every transition the task service may make is listed in TRANSITIONS; anything missing is
illegal and answered with the error containerd expects for it (see ILLEGAL). The table has no
IO, so it is tested exhaustively (tests/unit/test_states.py) and a newcomer can read the whole
lifecycle here. STARTING, PAUSING, RESUMING and DELETING are in-between states: they make a
second Start, Pause, Resume or Delete that arrives while the first is still working fail
instead of racing it.

Pause and Resume (the cgroup freezer) move a running process between RUNNING and PAUSED. A
paused process can be killed and can exit (a SIGKILL is followed by a thaw, see
shim/task/supervisor.py), so Kill and EXIT are legal in all four of those states, and the
exit leads to STOPPED as from RUNNING. UPDATE (new resource limits) keeps the state; it is
legal wherever the process has a cgroup to change and no other call is changing it.
"""

from __future__ import annotations

import enum

from shim.errors import FailedPrecondition, NotFound, ShimError


class State(enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    STOPPED = "stopped"
    DELETING = "deleting"
    DELETED = "deleted"


class Event(enum.Enum):
    START = "start"  # Start RPC begins
    STARTED = "started"  # the process is running
    START_FAILED = "start_failed"  # the process never ran
    KILL = "kill"  # Kill RPC
    PAUSE = "pause"  # Pause RPC begins
    PAUSED = "paused"  # the freezer reports the cgroup frozen
    PAUSE_FAILED = "pause_failed"  # it could not be frozen: running as before
    RESUME = "resume"  # Resume RPC begins
    RESUMED = "resumed"  # the cgroup is thawed
    RESUME_FAILED = "resume_failed"  # it could not be thawed: still paused
    UPDATE = "update"  # Update RPC (resource limits): the state stays
    EXIT = "exit"  # the process exited (or a created task was killed)
    DELETE = "delete"  # Delete RPC begins
    DELETED = "deleted"  # resources released


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.CREATED, Event.START): State.STARTING,
    (State.CREATED, Event.KILL): State.CREATED,
    (State.CREATED, Event.EXIT): State.STOPPED,
    (State.CREATED, Event.DELETE): State.DELETING,
    (State.STARTING, Event.STARTED): State.RUNNING,
    (State.STARTING, Event.START_FAILED): State.STOPPED,
    (State.STARTING, Event.KILL): State.STARTING,
    (State.RUNNING, Event.KILL): State.RUNNING,
    (State.RUNNING, Event.EXIT): State.STOPPED,
    (State.RUNNING, Event.PAUSE): State.PAUSING,
    (State.RUNNING, Event.UPDATE): State.RUNNING,
    (State.CREATED, Event.UPDATE): State.CREATED,
    (State.PAUSING, Event.PAUSED): State.PAUSED,
    (State.PAUSING, Event.PAUSE_FAILED): State.RUNNING,
    (State.PAUSING, Event.KILL): State.PAUSING,
    (State.PAUSING, Event.EXIT): State.STOPPED,
    (State.PAUSED, Event.RESUME): State.RESUMING,
    (State.PAUSED, Event.KILL): State.PAUSED,
    (State.PAUSED, Event.EXIT): State.STOPPED,
    (State.PAUSED, Event.UPDATE): State.PAUSED,
    (State.RESUMING, Event.RESUMED): State.RUNNING,
    (State.RESUMING, Event.RESUME_FAILED): State.PAUSED,
    (State.RESUMING, Event.KILL): State.RESUMING,
    (State.RESUMING, Event.EXIT): State.STOPPED,
    (State.STOPPED, Event.DELETE): State.DELETING,
    (State.DELETING, Event.DELETED): State.DELETED,
}

# Why an illegal event fails, per state: containerd matches on the codes.
ILLEGAL: dict[tuple[State, Event], type[ShimError]] = {
    (State.STOPPED, Event.KILL): NotFound,  # "process already finished"
    (State.DELETING, Event.KILL): NotFound,
    (State.DELETED, Event.KILL): NotFound,
    (State.DELETED, Event.DELETE): NotFound,
    (State.DELETING, Event.DELETE): NotFound,
    (State.DELETED, Event.START): NotFound,
    (State.DELETED, Event.PAUSE): NotFound,
    (State.DELETED, Event.RESUME): NotFound,
    (State.DELETED, Event.UPDATE): NotFound,
}

# The states in which the container's process exists and has not exited: it has members in
# its cgroup, a pid to report and signals reach it.
LIVE = frozenset({State.RUNNING, State.PAUSING, State.PAUSED, State.RESUMING})

_MESSAGES: dict[Event, str] = {
    Event.START: "cannot start a {state} process",
    Event.KILL: "process already finished",
    Event.DELETE: "cannot delete a {state} process",
    Event.PAUSE: "cannot pause a {state} process",
    Event.RESUME: "cannot resume a {state} process (only a paused one)",
    Event.UPDATE: "cannot update the resources of a {state} process",
}


def next_state(state: State, event: Event) -> State:
    """The state after `event`, or the error the caller must return. Never mutates anything."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        cls = ILLEGAL.get((state, event), FailedPrecondition)
        template = _MESSAGES.get(event, "cannot {event} a {state} process")
        raise cls(template.format(state=state.value, event=event.value)) from None
