"""The state machine of one container's init process, as a table.

Every transition the task service may make is listed in TRANSITIONS; anything missing is
illegal and answered with the error containerd expects for it (see ILLEGAL). The table has no
IO, so it is tested exhaustively (tests/unit/test_states.py) and a newcomer can read the whole
lifecycle here. STARTING and DELETING are in-between states: they make a second Start or Delete
that arrives while the first is still working fail instead of racing it.
"""

from __future__ import annotations

import enum

from shim.errors import FailedPrecondition, NotFound, ShimError


class State(enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"
    DELETING = "deleting"
    DELETED = "deleted"


class Event(enum.Enum):
    START = "start"  # Start RPC begins
    STARTED = "started"  # the process is running
    START_FAILED = "start_failed"  # the process never ran
    KILL = "kill"  # Kill RPC
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
}

_MESSAGES: dict[Event, str] = {
    Event.START: "cannot start a {state} process",
    Event.KILL: "process already finished",
    Event.DELETE: "cannot delete a {state} process",
}


def next_state(state: State, event: Event) -> State:
    """The state after `event`, or the error the caller must return. Never mutates anything."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        cls = ILLEGAL.get((state, event), FailedPrecondition)
        template = _MESSAGES.get(event, "cannot {event} a {state} process")
        raise cls(template.format(state=state.value, event=event.value)) from None
