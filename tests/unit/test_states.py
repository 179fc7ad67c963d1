"""The container state table: every (state, event) pair is either a listed transition or
fails with the error containerd expects, and a failure changes nothing."""

from __future__ import annotations

import itertools

import pytest

from shim.errors import FailedPrecondition, NotFound
from shim.task.states import LIVE, TRANSITIONS, Event, State, next_state


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


def test_pause_and_resume_round_trip() -> None:
    s = State.RUNNING
    for event, expected in (
        (Event.PAUSE, State.PAUSING),
        (Event.PAUSED, State.PAUSED),
        (Event.RESUME, State.RESUMING),
        (Event.RESUMED, State.RUNNING),
    ):
        s = next_state(s, event)
        assert s is expected


def test_a_failed_freeze_or_thaw_goes_back() -> None:
    assert next_state(State.PAUSING, Event.PAUSE_FAILED) is State.RUNNING
    assert next_state(State.RESUMING, Event.RESUME_FAILED) is State.PAUSED


def test_a_paused_process_can_be_killed_exit_and_be_deleted() -> None:
    for state in (State.PAUSING, State.PAUSED, State.RESUMING):
        assert next_state(state, Event.KILL) is state
        assert next_state(state, Event.EXIT) is State.STOPPED
    with pytest.raises(FailedPrecondition, match="cannot delete a paused process"):
        next_state(State.PAUSED, Event.DELETE)
    assert {State.RUNNING, State.PAUSING, State.PAUSED, State.RESUMING} == LIVE


def test_pause_and_resume_only_from_where_they_make_sense() -> None:
    for state in (State.CREATED, State.STARTING, State.PAUSING, State.PAUSED, State.STOPPED):
        with pytest.raises(FailedPrecondition, match=f"cannot pause a {state.value} process"):
            next_state(state, Event.PAUSE)
    for state in (State.CREATED, State.RUNNING, State.RESUMING, State.STOPPED):
        with pytest.raises(FailedPrecondition, match="only a paused one"):
            next_state(state, Event.RESUME)
    for event in (Event.PAUSE, Event.RESUME, Event.UPDATE):
        with pytest.raises(NotFound):
            next_state(State.DELETED, event)


def test_update_keeps_the_state_and_needs_a_settled_process() -> None:
    for state in (State.CREATED, State.RUNNING, State.PAUSED):
        assert next_state(state, Event.UPDATE) is state
    for state in (State.STARTING, State.PAUSING, State.RESUMING, State.STOPPED):
        with pytest.raises(FailedPrecondition, match="cannot update the resources"):
            next_state(state, Event.UPDATE)
