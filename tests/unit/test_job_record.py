"""``model.JobRecord``: the job record as a class, and its one translation to and from the
stored map (``store.py``'s docstring is the format)."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from wsfs.core.model import JobRecord, JobState


def record(**fields) -> JobRecord:
    base = {"id": "j", "template": "default", "areas": {"output": "keep"}, "created": 1.5, "uid": 7, "gid": 8}
    return JobRecord(**(base | fields))


def test_a_new_record_has_every_stored_field_and_no_optional_one():
    stored = record().to_stored()
    assert stored["state"] == "running" and type(stored["state"]) is str  # msgpack gets the word
    assert stored["usage"] == {"bytes": 0, "files": 0} and stored["where"] == "jobs"
    for optional in ("git", "origin", "setup", "labels", "max_running", "extensions", "notified", "publish",
                     "shares", "purge_reason"):
        assert optional not in stored
    assert JobRecord.from_stored(stored) == record()


def test_optional_fields_are_stored_once_set_and_read_back():
    full = record(labels={"k": "v"}, extensions=2, shares={"u:5": "r"}, origin="src", publish={"status": "done"})
    back = JobRecord.from_stored(msgpack.unpackb(msgpack.packb(full.to_stored())))
    assert back == full and back.state is JobState.RUNNING


def test_a_field_a_newer_wsfs_wrote_survives_a_read_and_a_write():
    stored = record().to_stored() | {"colour": "blue", "future": [1, 2]}
    back = JobRecord.from_stored(stored)
    assert back.extra == {"colour": "blue", "future": [1, 2]}
    assert back.to_stored() == stored


def test_a_record_read_from_before_the_optional_fields_reads_them_as_unset():
    old = {"id": "j", "template": "default", "areas": {}, "created": 0.0, "uid": 0, "gid": 0,
           "state": "failed", "usage": {"bytes": 3, "files": 1}}
    back = JobRecord.from_stored(old)
    assert back.state is JobState.FAILED and back.area_usage == {} and back.labels is None
    assert back.extensions is None and back.where == "jobs"


def test_a_stored_state_that_is_no_state_is_refused():
    with pytest.raises(ValueError):
        JobRecord.from_stored(record().to_stored() | {"state": "exploded"})


def test_copy_is_deep_and_records_have_no_dict_access():
    one = record(labels={"a": "1"})
    two = one.copy()
    two.labels["a"] = "2"
    two.usage["bytes"] = 99
    assert one.labels == {"a": "1"} and one.usage["bytes"] == 0
    with pytest.raises(TypeError):
        one["state"]
    with pytest.raises(AttributeError):
        one.not_a_field = 1  # slots: a typo is an error, not a new key
    assert dataclasses.replace(one, shares={"g:4": "rw"}).shares == {"g:4": "rw"}
