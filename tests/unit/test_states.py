"""The container state table: every (state, event) pair is either a listed transition or
fails with the error containerd expects, and a failure changes nothing."""

from __future__ import annotations

import itertools

import pytest

from shim.errors import FailedPrecondition, NotFound
from shim.task.states import TRANSITIONS, Event, State, next_state


@pytest.mark.parametrize(("state", "event"), list(itertools.product(State, Event)))
def test_every_pair_is_decided(state: State, event: Event) -> None:
    if (state, event) in TRANSITIONS:
        assert next_state(state, event) is TRANSITIONS[(state, event)]
    else:
        with pytest.raises((FailedPrecondition, NotFound)):
            next_state(state, event)


def test_lifecycle_of_a_run() -> None:
    s = State.CREATED
    for event in (Event.START, Event.STARTED, Event.EXIT, Event.DELETE, Event.DELETED):
        s = next_state(s, event)
    assert s is State.DELETED


def test_kill_after_exit_is_not_found() -> None:
    with pytest.raises(NotFound, match="process already finished"):
        next_state(State.STOPPED, Event.KILL)


def test_running_cannot_be_deleted_or_started_again() -> None:
    with pytest.raises(FailedPrecondition, match="cannot delete a running process"):
        next_state(State.RUNNING, Event.DELETE)
    with pytest.raises(FailedPrecondition, match="cannot start a running process"):
        next_state(State.RUNNING, Event.START)
    with pytest.raises(FailedPrecondition):
        next_state(State.STARTING, Event.START)


def test_created_task_can_be_killed_and_deleted() -> None:
    assert next_state(State.CREATED, Event.KILL) is State.CREATED
    assert next_state(State.CREATED, Event.EXIT) is State.STOPPED
    assert next_state(State.CREATED, Event.DELETE) is State.DELETING


def test_deleted_is_not_found_everywhere() -> None:
    for event in (Event.START, Event.KILL, Event.DELETE):
        with pytest.raises(NotFound):
            next_state(State.DELETED, event)
