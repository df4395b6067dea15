"""The state machine's table and the job id rule (model.py, docs/spec.md §3, §4): pure, no I/O."""

from __future__ import annotations

import errno
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsfs.core.errors import BadJobIdError, InvalidTransitionError, WsfsError
from wsfs.core.model import (
    DEFAULT_TEMPLATE,
    ENDED_STATES,
    QUARANTINED_STATES,
    TRANSITIONS,
    AreaKind,
    JobState,
    check_transition,
    validate_job_id,
)

# docs/spec.md §4, copied by hand from the diagram, independent of model.TRANSITIONS:
#   running --completed/failed/cancelled/crashed--> those states
#   failed, crashed --resume--> running
#   completed, failed, cancelled, crashed --archived--> archived
SPEC_EDGES = {
    ("running", "completed"), ("running", "failed"), ("running", "cancelled"), ("running", "crashed"),
    ("failed", "running"), ("crashed", "running"),
    ("completed", "archived"), ("failed", "archived"), ("cancelled", "archived"), ("crashed", "archived"),
}
SPEC_STATES = ["running", "completed", "failed", "cancelled", "crashed", "archived"]


def test_the_states_are_exactly_the_spec_words():
    assert sorted(s.value for s in JobState) == sorted(SPEC_STATES)
    assert str(JobState.COMPLETED) == "completed"
    assert f"{JobState.FAILED}" == "failed"
    assert JobState("crashed") is JobState.CRASHED
    assert JobState.RUNNING == "running"  # a str Enum: msgpack and JSON store the word


def test_table_is_the_spec_diagram():
    edges = {(a.value, b.value) for a, targets in TRANSITIONS.items() for b in targets}
    assert edges == SPEC_EDGES
    assert set(TRANSITIONS) == set(JobState)


@pytest.mark.parametrize("current, target", list(itertools.product(SPEC_STATES, SPEC_STATES)))
def test_check_transition_every_pair(current, target):
    if (current, target) in SPEC_EDGES:
        check_transition(JobState(current), JobState(target))
    else:
        with pytest.raises(InvalidTransitionError) as info:
            check_transition(JobState(current), JobState(target))
        assert info.value.errno == errno.EPERM
        assert current in str(info.value) and target in str(info.value)


def test_archived_is_final_and_nothing_returns_to_itself():
    assert TRANSITIONS[JobState.ARCHIVED] == frozenset()
    for state, targets in TRANSITIONS.items():
        assert state not in targets


def test_ended_and_quarantined_states():
    assert {s.value for s in ENDED_STATES} == {"completed", "failed", "cancelled", "crashed"}
    assert {s.value for s in QUARANTINED_STATES} == {"crashed"}
    # Every ended state may be archived; only ended states may be (docs/spec.md §4).
    assert {a for a, b in SPEC_EDGES if b == "archived"} == {s.value for s in ENDED_STATES}


def test_default_template():
    assert DEFAULT_TEMPLATE == {"input": AreaKind.INPUT, "output": AreaKind.KEEP, "temp": AreaKind.SCRATCH}
    assert {k.value for k in AreaKind} == {"input", "keep", "scratch"}


# -- job ids ------------------------------------------------------------------------------


@pytest.mark.parametrize("job_id", [
    "a", "Z", "7", "j" * 128, "job.1", "job-1", "job_1", "a.b-c_d.e", "A1b2C3", "a..b", "a-", "a.", "1.0.0",
    "job_20240115_143000_a3f8",
])
def test_valid_job_ids(job_id):
    assert validate_job_id(job_id) == job_id


@pytest.mark.parametrize("job_id", [
    "", "j" * 129, ".a", "-a", "_a", ".", "..", "a/b", "/a", "a/", "caf\u00e9", "\u00e9", "\uff11",
    "\u0661", "a\n", "\na", "a b", " a", "a ", "a\tb", "a\0b", "a*b", "a:b", "a~", "a@b", "a+b",
])
def test_invalid_job_ids(job_id):
    with pytest.raises(BadJobIdError) as info:
        validate_job_id(job_id)
    assert info.value.errno == errno.EINVAL
    assert isinstance(info.value, WsfsError)


@pytest.mark.parametrize("job_id", [None, b"job", 5, ["a"]])
def test_non_string_job_ids(job_id):
    with pytest.raises(BadJobIdError):
        validate_job_id(job_id)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=140))
def test_job_id_rule_matches_the_spec_regex_by_hand(text):
    allowed_first = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
    allowed_rest = allowed_first | set("._-")
    expected = 1 <= len(text) <= 128 and text[0] in allowed_first and all(c in allowed_rest for c in text[1:])
    try:
        validate_job_id(text)
        ok = True
    except BadJobIdError:
        ok = False
    assert ok == expected
