"""``records.Records``: every read and change of a job record (the cache, the per-job locks,
``update`` as one transaction, ``mutation`` refusing sealed jobs)."""

from __future__ import annotations

import threading

import pytest

from wsfs.core import records as records_module
from wsfs.core.errors import NoSuchJobError, SealedError
from wsfs.core.model import JobState
from wsfs.core.records import is_sealed, location


def test_get_reads_through_the_cache_and_update_changes_a_fresh_copy(core):
    core.create_job("j", 0, 0)
    first = core.records.get("j")
    assert core.records.get("j") is first  # cached
    changed = core.records.update("j", lambda record, w: setattr(record, "stage", "two"))
    assert changed.stage == "two" and first.stage is None  # the record given out did not change
    assert core.records.get("j") is changed  # the commit refreshed the cache
    with core.store.read() as r:
        assert r.job("j").stage == "two"


def test_an_update_that_raises_changes_nothing(core):
    core.create_job("j", 0, 0)

    def broken(record, w):
        record.stage = "half"
        raise RuntimeError("no")
    with pytest.raises(RuntimeError):
        core.records.update("j", broken)
    assert core.records.get("j").stage is None
    with pytest.raises(NoSuchJobError):
        core.records.update("nosuch", lambda record, w: None)
    assert core.records.get("nosuch") is None
    with pytest.raises(NoSuchJobError):
        core.records.require("nosuch")


def test_the_cache_is_bounded(core, monkeypatch):
    monkeypatch.setattr(records_module, "CACHE_SIZE", 3)
    for job in "abcde":
        core.create_job(job, 0, 0)
    assert len(core.records._cache) == 3
    assert core.records.get("a").id == "a"  # evicted, read again from the store


def test_every_commit_tells_who_listens_which_records_changed(core):
    seen = []
    core.records_changed = lambda records: seen.append([r.id for r in records])
    core.create_job("j", 0, 0)
    core.records.add_event("note", "j", text="hello")  # an event alone changes no record
    assert seen == [["j"]]


def test_mutation_refuses_a_sealed_job_and_blocks_a_transition_while_held(core):
    core.create_job("j", 0, 0)
    ended = threading.Event()
    with core.records.mutation("j") as record:
        assert record.id == "j"
        thread = threading.Thread(target=lambda: (core.transition("j", JobState.FAILED), ended.set()))
        thread.start()
        assert not ended.wait(0.3)  # the transition waits for the change in flight
    thread.join(10)
    assert ended.is_set() and is_sealed(core.records.get("j"))
    with pytest.raises(SealedError), core.records.mutation("j"):
        pass


def test_location_follows_where_the_tree_is(core):
    core.create_job("j", 0, 0)
    assert location(core.records.get("j")) == ("jobs", "j")
    core.transition("j", JobState.CRASHED, "gone")
    assert location(core.records.get("j")) == ("quarantine", "j")
    assert core.records.counts() == {"crashed": 1}



def test_a_jobs_lock_is_one_object_while_held_and_while_recently_used(core, monkeypatch):
    """One RWLock per job while anyone holds it; the recently used ones are kept, not made anew at
    each request (``RECENT_LOCKS``); the others go, so a data dir of many jobs holds few."""
    import gc
    import weakref

    monkeypatch.setattr(records_module, "RECENT_LOCKS", 2)
    records = core.records
    kept = weakref.ref(records.lock("a"))
    gc.collect()
    assert kept() is not None and records.lock("a") is kept()  # nobody held it: kept all the same
    held = records.lock("held")
    with held.shared():
        for job in ("b", "c", "d"):  # "a" and "held" leave the recent ones
            records.lock(job)
        gc.collect()
        assert kept() is None  # bounded: the least recently used went
        assert records.lock("held") is held  # held meanwhile: still the one lock of its job
