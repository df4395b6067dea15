"""The LMDB store (store.py): schema, records, indexes, manifest, events, counters, growth, read-only."""

from __future__ import annotations

import os

import lmdb
import pytest

from wsfs.core import store as store_module
from wsfs.core.errors import StoreError
from wsfs.core.model import JobRecord, JobState
from wsfs.core.store import SCHEMA_VERSION, Store, expiry_key, manifest_key


class Clock:
    def __init__(self, now=1_700_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "store")


@pytest.fixture
def store(path):
    s = Store(path, clock=Clock())
    yield s
    s.close()


def rec(job_id: str, state="running", **fields) -> JobRecord:
    base: dict = {"template": "default", "areas": {}, "created": 0.0, "uid": 0, "gid": 0}
    return JobRecord(id=job_id, state=JobState(state), **(base | fields))


def put(store, record):
    with store.write() as w:
        w.put_job(record)


def raw_keys(store, db: bytes) -> list[bytes]:
    with store.read() as r:
        with r.txn.cursor(db=store.dbs[db]) as cursor:
            return [k for k in cursor.iternext(keys=True, values=False)]


# -- schema ----------------------------------------------------------------------------------


def test_a_new_store_records_its_schema_version(store, path):
    with store.read() as r:
        assert r.meta("schema") == SCHEMA_VERSION
    store.close()
    again = Store(path)
    with again.read() as r:
        assert r.meta("schema") == SCHEMA_VERSION
    again.close()


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 0, "1", 99])
def test_an_unknown_schema_version_is_refused(store, path, version):
    with store.write() as w:
        w.put_meta("schema", version)
    store.close()
    with pytest.raises(StoreError) as info:
        Store(path)
    assert str(version) in str(info.value) and path in str(info.value)
    with pytest.raises(StoreError):
        Store(path, readonly=True)


def test_a_directory_that_is_no_store_is_refused(tmp_path):
    with pytest.raises(StoreError):
        Store(str(tmp_path / "absent"), readonly=True)
    env = lmdb.open(str(tmp_path / "other"), max_dbs=4)  # an LMDB env without our tables
    env.close()
    with pytest.raises(StoreError) as info:
        Store(str(tmp_path / "other"), readonly=True)
    assert "not a wsfs store" in str(info.value)


# -- records, totals ------------------------------------------------------------------------


def test_put_and_get_job(store):
    record = rec("j1", reason="x", history=[{"state": "running", "at": 1.5}], extra={"blob": b"\x00\xff"})
    put(store, record)
    with store.read() as r:
        assert r.job("j1") == record
        assert r.job("absent") is None
        assert list(r.job_ids()) == ["j1"]
        assert list(r.jobs()) == [record]


def test_put_job_replaces(store):
    put(store, rec("j1"))
    put(store, rec("j1", state="failed"))
    with store.read() as r:
        assert r.job("j1").state == "failed"
        assert list(r.job_ids()) == ["j1"]


def test_totals_follow_every_put(store):
    put(store, rec("a", uid=7, usage={"bytes": 10, "files": 1}))
    put(store, rec("b", uid=8, usage={"bytes": 5, "files": 2}))
    put(store, rec("c", uid=7, state="completed", usage={"bytes": 7, "files": 1}, where=None))
    with store.read() as r:
        assert r.totals() == {"states": {"running": 2, "completed": 1}, "live": 2, "bytes": 15, "files": 3,
                              "users": {"7": [1, 10, 1], "8": [1, 5, 2]}}
    put(store, rec("a", uid=7, state="failed", usage={"bytes": 100, "files": 4}))
    put(store, rec("b", uid=8, state="archived", where=None, usage={"bytes": 5, "files": 2}))
    with store.read() as r:
        assert r.totals() == {"states": {"failed": 1, "completed": 1, "archived": 1}, "live": 1, "bytes": 100,
                              "files": 4, "users": {"7": [1, 100, 4]}}


def test_empty_store_totals(store):
    with store.read() as r:
        assert r.totals() == {"states": {}, "live": 0, "bytes": 0, "files": 0, "users": {}}


def test_an_exception_in_a_write_commits_nothing(store):
    with pytest.raises(RuntimeError):
        with store.write() as w:
            w.put_job(rec("j1"))
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        store.transact(lambda w: (w.put_job(rec("j2")), w.add_event("x"), (_ for _ in ()).throw(RuntimeError())))
    with store.read() as r:
        assert r.job("j1") is None and r.job("j2") is None and r.events() == []


def test_transact_returns_and_calls_on_commit_after_the_commit(store):
    seen = []

    def on_commit(result):
        with store.read() as r:
            seen.append((result, r.job("j1") is not None))
    assert store.transact(lambda w: (w.put_job(rec("j1")), "done")[1], on_commit=on_commit) == "done"
    assert seen == [("done", True)]


# -- the expiry index -------------------------------------------------------------------------


def expiry_entries(store):
    return [(int.from_bytes(k[:8], "big"), k[8:].decode()) for k in raw_keys(store, b"expiry")]


def test_expiry_index_added_moved_removed(store):
    put(store, rec("j1"))
    assert expiry_entries(store) == []
    put(store, rec("j1", state="failed", expires_at=1000.5))
    assert expiry_entries(store) == [(1000500, "j1")]
    put(store, rec("j1", state="failed", expires_at=1000.5, reason="same deadline"))
    assert expiry_entries(store) == [(1000500, "j1")]
    put(store, rec("j1", state="failed", expires_at=2000.0))
    assert expiry_entries(store) == [(2000000, "j1")]
    put(store, rec("j1", state="archived", expires_at=None))
    assert expiry_entries(store) == []


def test_expiry_index_keeps_one_key_per_job(store):
    for i, when in enumerate([50.0, 10.0, 30.0, 10.0]):
        put(store, rec(f"j{i}", expires_at=when))
    put(store, rec("j0", expires_at=5.0))
    assert expiry_entries(store) == [(5000, "j0"), (10000, "j1"), (10000, "j3"), (30000, "j2")]


def test_due_returns_only_due_jobs_in_time_order(store):
    deadlines = {"late": 300.0, "first": 100.0, "second": 200.0, "same-a": 200.0, "never": None,
                 "edge": 250.0}
    for job, when in deadlines.items():
        put(store, rec(job, expires_at=when))
    with store.read() as r:
        assert list(r.due(99.999)) == []
        assert list(r.due(100.0)) == [(100.0, "first")]
        assert list(r.due(249.9)) == [(100.0, "first"), (200.0, "same-a"), (200.0, "second")]
        assert list(r.due(250.0))[-1] == (250.0, "edge")
        assert [j for _t, j in r.due(10 ** 6)] == ["first", "same-a", "second", "edge", "late"]
    put(store, rec("first", expires_at=None))
    put(store, rec("late", expires_at=50.0))
    with store.read() as r:
        assert [j for _t, j in r.due(10 ** 6)] == ["late", "same-a", "second", "edge"]


def test_expiry_key_layout():
    assert expiry_key(1.5, "j") == (1500).to_bytes(8, "big") + b"j"
    assert expiry_key(-3, "j") == bytes(8) + b"j"
    assert expiry_key(1.0, "a") < expiry_key(1.5, "a") < expiry_key(2.0, "a") < expiry_key(2.0, "b")


# -- pending and owners ----------------------------------------------------------------------


def test_pending_index(store):
    put(store, rec("a"))
    put(store, rec("b", pending={"target": "completed", "step": "intent"}))
    with store.read() as r:
        assert r.pending_ids() == ["b"]
    put(store, rec("a", pending={"target": "failed", "step": "intent"}))
    put(store, rec("b", pending={"target": "completed", "step": "sealed"}))
    with store.read() as r:
        assert r.pending_ids() == ["a", "b"]
    put(store, rec("b", state="completed", pending=None))
    with store.read() as r:
        assert r.pending_ids() == ["a"]
    put(store, rec("a", state="failed"))
    with store.read() as r:
        assert r.pending_ids() == []


def test_owners_index_holds_running_jobs_with_an_owner(store):
    owner = {"pid": 42, "create_time": 12.5}
    put(store, rec("a", owner=owner))
    put(store, rec("b"))
    with store.read() as r:
        assert r.owners() == [("a", owner)]
    put(store, rec("a", owner=owner, pending={"target": "completed", "step": "intent"}))
    with store.read() as r:
        assert r.owners() == []   # ending: the sweeper must not crash it meanwhile
    put(store, rec("a", owner=owner))
    put(store, rec("a", state="completed", owner=owner))
    with store.read() as r:
        assert r.owners() == []


# -- the manifest -----------------------------------------------------------------------------


def test_manifest_put_get_delete(store):
    e1, e2 = [10, 111, 5, None], [20, 222, 6, b"\x01" * 32]
    with store.write() as w:
        assert w.put_manifest("j", "output/a", e1) is None
        assert w.put_manifest("j", "output/a", e2) == e1
        assert w.manifest_entry("j", "output/a") == e2
        assert w.delete_manifest("j", "output/a") == e2
        assert w.delete_manifest("j", "output/a") is None
        assert w.manifest_entry("j", "output/a") is None


def test_manifest_iteration_is_sorted_and_per_job(store):
    paths = ["output/b", "input/z", "output/a/x", "output/a", "temp/\udcff-raw", "output/a.b", "output/a/y"]
    with store.write() as w:
        for i, p in enumerate(paths):
            w.put_manifest("j", p, [i, 0, i, None])
        w.put_manifest("j0", "output/other", [1, 0, 1, None])   # "j0" sorts right after "j\0..."
        w.put_manifest("i", "output/before", [1, 0, 1, None])
    with store.read() as r:
        listed = list(r.manifest("j"))
        assert [p for p, _ in listed] == sorted(paths, key=lambda p: p.encode("utf-8", "surrogateescape"))
        assert dict(listed)["temp/\udcff-raw"] == [4, 0, 4, None]
        assert [p for p, _ in r.manifest("j0")] == ["output/other"]
        assert list(r.manifest("absent")) == []
        assert list(r.manifest("")) == []


def test_manifest_prefix_delete(store):
    paths = ["output/a", "output/a/x", "output/a/y/z", "output/ab", "output/a.b", "output/b", "temp/a"]
    with store.write() as w:
        for i, p in enumerate(paths):
            w.put_manifest("j", p, [i, 0, i, None])
            w.put_manifest("k", p, [i, 0, i, None])
        removed = w.delete_manifest_prefix("j", "output/a")
        assert [p for p, _ in removed] == ["output/a", "output/a/x", "output/a/y/z"]
        assert removed[1][1] == [1, 0, 1, None]
    with store.read() as r:
        assert [p for p, _ in r.manifest("j")] == ["output/a.b", "output/ab", "output/b", "temp/a"]
    with store.write() as w:
        assert len(w.delete_manifest_prefix("j")) == 4
        assert w.delete_manifest_prefix("j", "nothing") == []
    with store.read() as r:
        assert list(r.manifest("j")) == []
        assert len(list(r.manifest("k"))) == len(paths)


def test_manifest_key_layout():
    assert manifest_key("j", "output/a") == b"j\0output/a"
    assert manifest_key("j", "o/\udcff") == b"j\0o/\xff"
    long_path = "output/" + "d" * 300 + "/" + "é" * 200
    key = manifest_key("j" * 128, long_path)
    assert len(key) <= 511 and key.startswith(b"j" * 128 + b"\0output/ddd")
    assert key != manifest_key("j" * 128, long_path + "x")


def deep(n: int, leaf: str = "f") -> str:
    """A path of n 200-byte directories below output/ (n = 21: 4,230 bytes, past PATH_MAX)."""
    return "/".join(["output"] + [f"{i:03d}" + "x" * 197 for i in range(n)] + [leaf])


def test_manifest_holds_paths_of_any_length_sorted_and_by_prefix(store):
    paths = [deep(1), deep(2, "a"), deep(2, "b"), deep(21, "a"), deep(21, "b"), "output/z", "output/" + "y" * 255]
    with store.write() as w:
        for i, p in enumerate(paths):
            assert w.put_manifest("j" * 128, p, [i, 0, i, None]) is None
        assert w.put_manifest("j" * 128, deep(21, "a"), [99, 0, 3, None]) == [3, 0, 3, None]
    with store.read() as r:
        listed = list(r.manifest("j" * 128))
        assert [p for p, _ in listed] == sorted(paths, key=lambda p: p.encode())
        assert dict(listed)[deep(21, "a")] == [99, 0, 3, None]  # entries are four fields, whatever the path
        assert r.manifest_entry("j" * 128, deep(2, "b")) == [2, 0, 2, None]
        under = deep(20, "")[:-1]
        assert [p for p, _ in r.manifest("j" * 128, under)] == [deep(21, "a"), deep(21, "b")]
        below_two = [deep(2, "a"), deep(2, "b"), deep(21, "a"), deep(21, "b")]
        assert [p for p, _ in r.manifest("j" * 128, deep(2, "")[:-1])] == sorted(below_two, key=str.encode)
    with store.write() as w:
        removed = w.delete_manifest_prefix("j" * 128, deep(1, "")[:-1])
        assert sorted(p for p, _ in removed) == sorted([deep(1), *below_two])
        assert w.delete_manifest("j" * 128, deep(1)) is None
    with store.read() as r:
        assert [p for p, _ in r.manifest("j" * 128)] == ["output/" + "y" * 255, "output/z"]


def test_a_schema_1_store_is_migrated_to_long_keys_on_open(path):
    import lmdb
    import msgpack

    env = lmdb.open(path, max_dbs=16, subdir=True)
    meta, manifest = env.open_db(b"meta"), env.open_db(b"manifest")
    jobs = env.open_db(b"jobs")
    for name in (b"events", b"expiry", b"pending", b"owners"):
        env.open_db(name)
    long_path = "output/" + "a" * 400  # schema 1 keyed it as it is (under LMDB's 511 bytes)
    with env.begin(write=True) as txn:
        txn.put(b"schema", msgpack.packb(1), db=meta)
        txn.put(b"j\0" + long_path.encode(), msgpack.packb([5, 1, 2, None]), db=manifest)
        txn.put(b"j\0output/short", msgpack.packb([1, 1, 3, None]), db=manifest)
        for job, uid, where in (("j", 7, "jobs"), ("k", 7, "quarantine"), ("gone", 7, None)):
            txn.put(job.encode(), msgpack.packb({"id": job, "uid": uid, "where": where, "state": "running",
                                                 "usage": {"bytes": 6, "files": 2}, "template": "default",
                                                 "areas": {}, "created": 0.0, "gid": 0}), db=jobs)
    env.close()
    old = Store(path, readonly=True)  # a read-only open reads schema 1 as it is
    with old.read() as r:
        assert [p for p, _ in r.manifest("j")] == [long_path, "output/short"]
    old.close()
    store = Store(path)
    with store.read() as r:
        assert r.meta("schema") == SCHEMA_VERSION == 2
        assert r.manifest_entry("j", long_path) == [5, 1, 2, None]
        assert [p for p, _ in r.manifest("j")] == [long_path, "output/short"]
        assert r.totals()["users"] == {"7": [2, 12, 4]}  # counted once, jobs with a tree only
    assert manifest_key("j", long_path) in raw_keys(store, b"manifest")
    store.close()


# -- events and counters -----------------------------------------------------------------------


def test_events_have_sequence_numbers_times_and_fields(store):
    store.clock.now = 123.4567891
    with store.write() as w:
        first = w.add_event("created", "j1", template="default", uid=7, skipped=None)
        second = w.add_event("swept")
    assert first == {"seq": 1, "t": 123.456789, "kind": "created", "job": "j1", "template": "default", "uid": 7}
    assert second == {"seq": 2, "t": 123.456789, "kind": "swept"}
    with store.read() as r:
        assert r.events() == [first, second]
        assert r.events(since=1) == [second]
        assert r.events(since=2) == []
        assert r.meta("event_seq") == 2


def test_events_limit_gives_the_newest_oldest_first(store):
    with store.write() as w:
        for i in range(10):
            w.add_event("e", n=i)
    with store.read() as r:
        assert [e["n"] for e in r.events(limit=3)] == [7, 8, 9]
        assert [e["n"] for e in r.events(limit=100)] == list(range(10))
        assert [e["n"] for e in r.events(since=8, limit=5)] == [8, 9]
        assert [e["n"] for e in r.events(since=5, limit=2)] == [8, 9]
        assert r.events(limit=0) == []


def test_events_limit_on_an_empty_store(store):
    with store.read() as r:
        assert r.events(limit=5) == [] and r.events() == []


def test_events_are_trimmed_at_max_events(store, monkeypatch):
    monkeypatch.setattr(store_module, "MAX_EVENTS", 5)
    for i in range(12):
        with store.write() as w:
            w.add_event("e", n=i)
    with store.read() as r:
        events = r.events()
        assert [e["seq"] for e in events] == [8, 9, 10, 11, 12]
        assert [e["n"] for e in events] == [7, 8, 9, 10, 11]
        assert [e["n"] for e in r.events(limit=2)] == [10, 11]
    assert len(raw_keys(store, b"events")) == 5


def test_events_trimmed_within_one_transaction(store, monkeypatch):
    monkeypatch.setattr(store_module, "MAX_EVENTS", 3)
    with store.write() as w:
        for i in range(7):
            w.add_event("e", n=i)
    with store.read() as r:
        assert [e["n"] for e in r.events()] == [4, 5, 6]


def test_counters(store):
    with store.write() as w:
        w.bump_counter("rejected_writes")
        w.bump_counter("rejected_writes")
        w.bump_counter("failed_removals", 5)
    with store.write() as w:
        w.bump_counter("failed_removals", -2)
    with store.read() as r:
        assert r.meta("counters") == {"rejected_writes": 2, "failed_removals": 3}
        assert r.meta("absent", "dflt") == "dflt"


# -- map growth ------------------------------------------------------------------------------


def test_transact_grows_a_full_map_and_keeps_everything(tmp_path):
    small = Store(str(tmp_path / "small"), map_size=64 * 1024)
    assert small.env.info()["map_size"] == 64 * 1024
    blob = os.urandom(4096)
    for batch in range(8):
        def fill(w, batch=batch):
            for i in range(40):
                w.put_manifest(f"job{batch}", f"output/f{i:03d}", [i, batch, i, blob])
            w.put_job(rec(f"job{batch}", usage={"bytes": batch, "files": 1}))
            w.add_event("filled", f"job{batch}")
            return batch
        assert small.transact(fill) == batch
    grown = small.env.info()["map_size"]
    assert grown > 64 * 1024 and grown & (grown - 1) == 0   # doubled, maybe several times
    with small.read() as r:
        for batch in range(8):
            entries = list(r.manifest(f"job{batch}"))
            assert len(entries) == 40 and all(e[3] == blob and e[1] == batch for _p, e in entries)
            assert r.job(f"job{batch}").usage["bytes"] == batch
        assert len(r.events()) == 8
        assert r.totals()["live"] == 8 and r.totals()["bytes"] == sum(range(8))
    small.close()
    again = Store(str(tmp_path / "small"), map_size=64 * 1024)
    with again.read() as r:
        assert sum(1 for _ in r.job_ids()) == 8
    again.close()


def test_write_grows_the_map_for_next_time(tmp_path):
    small = Store(str(tmp_path / "small"), map_size=64 * 1024)
    blob = os.urandom(8192)
    with pytest.raises(lmdb.MapFullError):
        with small.write() as w:
            for i in range(200):
                w.put_manifest("j", f"f{i}", [0, 0, 0, blob])
    with small.read() as r:
        assert list(r.manifest("j")) == []   # nothing half-written
    assert small.env.info()["map_size"] == 128 * 1024
    with small.write() as w:
        w.put_manifest("j", "f", [0, 0, 0, blob])
    with small.read() as r:
        assert len(list(r.manifest("j"))) == 1
    small.close()


# -- read-only -------------------------------------------------------------------------------


def test_read_only_store_reads_and_refuses_writes(store, path):
    put(store, rec("j1", expires_at=10.0))
    with store.write() as w:
        w.put_manifest("j1", "output/a", [1, 2, 3, None])
        w.add_event("created", "j1")
    store.close()
    ro = Store(path, readonly=True)
    try:
        with ro.read() as r:
            assert r.job("j1").id == "j1"
            assert list(r.manifest("j1")) == [("output/a", [1, 2, 3, None])]
            assert [e["kind"] for e in r.events()] == ["created"]
            assert list(r.due(100)) == [(10.0, "j1")]
        with pytest.raises(StoreError):
            with ro.write() as w:
                w.put_job(rec("j2"))
        with pytest.raises(StoreError):
            ro.transact(lambda w: w.put_job(rec("j2")))
        with ro.read() as r:
            assert r.job("j2") is None
            with pytest.raises(lmdb.Error):      # even a raw put through a read transaction fails
                r.txn.put(b"j2", b"x", db=ro.dbs[b"jobs"])
    finally:
        ro.close()


def test_read_only_open_does_not_create_a_store(tmp_path):
    target = tmp_path / "nothing"
    with pytest.raises(StoreError):
        Store(str(target), readonly=True)
    assert not (target / "data.mdb").exists()
