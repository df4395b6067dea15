"""Publishing and hooks in the core (wsfs.publish): no mount, a fake clock, a tmp data dir.

The publisher is driven by hand (``process_due(now)``), so retries and
backoff are tested by moving the clock, never by sleeping.
"""

from __future__ import annotations

import errno
import json
import os
import threading

import pytest
from conftest import FakeClock, events, make_core, parse_toml_config
from test_lifecycle import write_file

from wsfs.core.config import ConfigError
from wsfs.core.control import parse_control_command
from wsfs.core.doctor import diagnose
from wsfs.core.errors import BadCommandError, BadJobIdError, NotAllowedError
from wsfs.core.model import JobRecord, JobState
from wsfs.core.publish import Publisher, expand_destination


def config_for(tmp_path, body: str, retention: str = ""):
    """A config with a ``pub`` template: backoff 10s, 3 retries, hooks time out after 20s unless ``body`` says."""
    settings = ('publish_backoff = "10s"', "publish_retries = 3", 'hook_timeout = "20s"')
    defaults = "".join(line + "\n" for line in settings if line.split(" =")[0] not in body)
    return parse_toml_config(f"""
[templates.pub]
areas = {{ input = "input", output = "keep", temp = "scratch" }}
{defaults}{body}
{retention}
""")


@pytest.fixture
def pub(tmp_path):
    """make(body) -> (service, publisher, clock) for a ``pub`` template with ``body``."""
    made = []

    def make(body: str, retention: str = ""):
        clock = FakeClock()
        service = make_core(tmp_path / "data", clock, config_for(tmp_path, body, retention))
        made.append(service)
        return service, Publisher(service, clock), clock
    yield make
    for service in made:
        service.manifest.flush()
        service.store.close()
        service.tree.close()


def job_with_outputs(service, job="j1", files=None):
    service.create_job(job, 0, 0, template="pub")
    for path, data in (files or {"output/a.txt": b"alpha\n", "output/sub/b.bin": b"\0" * 5000,
                                 "input/src.wav": b"RIFF", "temp/scratch": b"x"}).items():
        write_file(service, job, path, data)
    return job


def tree_of(path) -> dict[str, bytes]:
    out = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = f.read()
    return out


# -- config ----------------------------------------------------------------------------


def test_config_reads_targets_hooks_and_settings(tmp_path):
    config = config_for(tmp_path, """
publish = [{ area = "output", to = "/srv/lib/{job}", mode = "move" },
           { area = "input", to = "/srv/archive/{date}/{owner}/{template}/{job}/", replace = true }]
on_completed = "rclone copy $WSFS_OUTPUT remote:"
on_failed = "echo failed"
""", '[templates.pub.retention]\ncompleted = "after-publish"')
    t = config.template("pub")
    assert [(p.area, p.to, p.mode, p.replace) for p in t.publish] == [
        ("output", "/srv/lib/{job}", "move", False), ("input", "/srv/archive/{date}/{owner}/{template}/{job}", "copy",
                                                      True)]
    assert t.hooks == {"on_completed": "rclone copy $WSFS_OUTPUT remote:", "on_failed": "echo failed"}
    assert (t.publish_retries, t.publish_backoff, t.hook_timeout) == (3, 10.0, 20.0)
    assert t.after_publish and t.expiry_after(JobState.COMPLETED) is None
    default = config.template("default")
    assert default.publish == () and default.hooks == {} and not default.after_publish
    assert (default.publish_retries, default.publish_backoff, default.hook_timeout) == (5, 30.0, 600.0)


@pytest.mark.parametrize("body, key, words", [
    ('publish = [{ area = "temp", to = "/x" }]', "publish[0].area", "scratch"),
    ('publish = [{ area = "nope", to = "/x" }]', "publish[0].area", "areas"),
    ('publish = [{ area = "output", to = "relative/{job}" }]', "publish[0].to", "absolute"),
    ('publish = [{ area = "output", to = "/x/{user}" }]', "publish[0].to", "placeholder"),
    ('publish = [{ area = "output", to = "/x/../{job}" }]', "publish[0].to", ".."),
    ('publish = [{ area = "output", to = "/x", mode = "rsync" }]', "publish[0].mode", "copy"),
    ('publish = [{ area = "output", to = "/x", replace = "yes" }]', "publish[0].replace", "true"),
    ('publish = [{ area = "output", to = "/x", colour = 1 }]', "publish[0].colour", "unknown key"),
    ('publish = [{ area = "output", to = "/x", mode = "move" }, { area = "output", to = "/y", mode = "move" }]',
     "publish[1].mode", "twice"),
    ('publish = { area = "output" }', "publish", "list"),
    ('on_completed = ""', "on_completed", "shell command"),
    ('on_done = "x"', "on_done", "unknown key"),
    ('publish_backoff = "0s"', "publish_backoff", "positive"),
    ('publish_retries = -1', "publish_retries", "whole number"),
])
def test_config_errors_name_the_key(tmp_path, body, key, words):
    with pytest.raises(ConfigError) as info:
        config_for(tmp_path, body)
    assert f"templates.pub.{key}" in str(info.value) and words in str(info.value)


def test_after_publish_needs_something_to_publish(tmp_path):
    with pytest.raises(ConfigError, match=r"templates\.pub\.retention\.completed: 'after-publish' needs"):
        config_for(tmp_path, "", '[templates.pub.retention]\ncompleted = "after-publish"')
    with pytest.raises(ConfigError, match=r"<test>: retention\.completed: 'after-publish' needs"):
        parse_toml_config('[retention]\ncompleted = "after-publish"')


def test_control_grammar():
    assert parse_control_command(b"publish j1\n").verb == "publish"
    assert parse_control_command(b"publish j1 retry").retry
    assert not parse_control_command(b"publish j1").retry
    for bad in (b"publish", b"publish j1 now", b"publish ../x", b"publish j1 retry x"):
        with pytest.raises((BadCommandError, BadJobIdError)) as info:
            parse_control_command(bad)
        assert info.value.errno == errno.EINVAL


# -- completing queues, the publisher publishes ---------------------------------------------


def test_completion_queues_and_returns_before_publishing(pub, tmp_path):
    service, publisher, clock = pub(f'publish = [{{ area = "output", to = "{tmp_path}/lib/{{job}}" }}]')
    job = job_with_outputs(service)
    record = service.transition(job, JobState.COMPLETED)
    assert record.state == "completed"
    assert record.publish["status"] == "pending" and record.publish["attempts"] == 0
    assert not (tmp_path / "lib").exists()  # nothing happened inside the transition
    with service.store.read() as r:
        assert r.publish_queue() == [(job, clock.now)]
    assert service.publish_wake.is_set()
    assert publisher.process_due() == [job]
    record = service.records.require(job)
    assert record.publish["status"] == "done"
    assert record.publish["targets"][0] == {"area": "output", "to": f"{tmp_path}/lib/{{job}}", "mode": "copy",
                                               "replace": False, "status": "done", "dest": f"{tmp_path}/lib/j1",
                                               "error": None}
    assert tree_of(tmp_path / "lib" / "j1") == {"a.txt": b"alpha\n", "sub/b.bin": b"\0" * 5000}
    with service.store.read() as r:
        assert r.publish_queue() == []
    assert service.tree.exists("jobs", "j1/output/a.txt")  # copy keeps the workspace
    assert [e["outcome"] for e in events(service, "published")] == ["published"]
    assert os.listdir(tmp_path / "lib") == ["j1"]  # no temporary left beside it


def test_move_takes_the_area_out_of_the_workspace_and_keeps_the_receipt(pub, tmp_path):
    service, publisher, _clock = pub(f"""
publish = [{{ area = "input", to = "{tmp_path}/archive/{{job}}" }},
           {{ area = "output", to = "{tmp_path}/library/{{template}}-{{job}}", mode = "move" }}]""")
    job = job_with_outputs(service)
    service.transition(job, JobState.COMPLETED)
    receipt = service.tree.lstat("jobs", "j1/receipt.json")
    publisher.process_due()
    record = service.records.require(job)
    assert record.publish["status"] == "done" and record.publish["moved"] == ["output"]
    assert tree_of(tmp_path / "archive" / "j1") == {"src.wav": b"RIFF"}
    assert tree_of(tmp_path / "library" / "pub-j1") == {"a.txt": b"alpha\n", "sub/b.bin": b"\0" * 5000}
    assert not service.tree.exists("jobs", "j1/output")
    assert service.tree.exists("jobs", "j1/input/src.wav")
    assert [p for p, _e in service.manifest_entries(job)] == ["input/src.wav"]
    assert record.usage == {"bytes": 4, "files": 1}
    assert record.area_usage == {"input": [4, 1]}  # the moved area's sums left with it
    after = service.tree.lstat("jobs", "j1/receipt.json")
    assert (after.st_ino, after.st_mtime_ns) == (receipt.st_ino, receipt.st_mtime_ns)  # the receipt is unchanged
    assert [e["areas"] for e in events(service, "moved")] == [["output"]]
    assert [f for f in diagnose(service) if f.kind != "trash"] == []  # doctor finds the store and tree agree


def completed_over(pub, dest, old: str, publish: str):
    """A job completed with ``publish`` (a config line) whose destination ``dest`` holds ``old``
    already: (service, publisher, clock, job)."""
    dest.mkdir(parents=True)
    (dest / "old").write_text(old)
    service, publisher, clock = pub(publish)
    job = job_with_outputs(service)
    service.transition(job, JobState.COMPLETED)
    return service, publisher, clock, job


def test_an_existing_destination_is_never_overwritten_silently(pub, tmp_path):
    dest = tmp_path / "lib" / "j1"
    service, publisher, clock, job = completed_over(
        pub, dest, "someone else's", f'publish = [{{ area = "output", to = "{tmp_path}/lib/{{job}}" }}]')
    for attempt in range(1, 5):  # the first try and publish_retries = 3 retries
        assert publisher.process_due() == [job]
        assert publisher.process_due() == []  # not due again before its backoff
        record = service.records.require(job)
        assert record.publish["attempts"] == attempt
        assert "exists" in record.publish["error"] and "replace = true" in record.publish["error"]
        if attempt < 4:
            assert record.publish["status"] == "pending"
            assert record.publish["next_at"] == clock.now + 10 * 2 ** (attempt - 1)
            clock.advance(10 * 2 ** (attempt - 1))
    assert record.publish["status"] == "failed" and record.publish["targets"][0]["status"] == "failed"
    assert tree_of(dest) == {"old": b"someone else's"}
    assert sorted(os.listdir(dest.parent)) == ["j1"]
    assert service.tree.exists("jobs", "j1/output/a.txt")
    with service.store.read() as r:
        assert r.publish_queue() == []
    with pytest.raises(NotAllowedError, match="retry"):
        service.write_control(b"publish j1")


def test_replace_swaps_the_destination_atomically(pub, tmp_path):
    dest = tmp_path / "lib" / "j1"
    service, publisher, _clock, job = completed_over(
        pub, dest, "previous version", f'publish = [{{ area = "output", to = "{dest}", replace = true }}]')
    publisher.process_due()
    assert service.records.require(job).publish["status"] == "done"
    assert tree_of(dest) == {"a.txt": b"alpha\n", "sub/b.bin": b"\0" * 5000}
    assert os.listdir(dest.parent) == ["j1"]
    assert [e["outcome"] for e in events(service, "published")] == ["replaced"]


def test_a_destination_that_already_holds_this_result_counts_as_published(pub, tmp_path):
    """A crash after the rename and before the record said so: the retry finds it there."""
    service, publisher, _clock = pub(f'publish = [{{ area = "output", to = "{tmp_path}/lib/{{job}}" }}]')
    job = job_with_outputs(service)
    service.transition(job, JobState.COMPLETED)
    (tmp_path / "lib" / "j1" / "sub").mkdir(parents=True)
    (tmp_path / "lib" / "j1" / "a.txt").write_bytes(b"alpha\n")
    (tmp_path / "lib" / "j1" / "sub" / "b.bin").write_bytes(b"\0" * 5000)
    (tmp_path / "lib" / "j1.wsfs-tmp-deadbeef").mkdir()  # what the killed attempt left
    publisher.process_due()
    assert service.records.require(job).publish["status"] == "done"
    assert [e["outcome"] for e in events(service, "published")] == ["already there"]
    assert os.listdir(tmp_path / "lib") == ["j1"]


def test_a_reader_never_sees_a_partial_result(pub, tmp_path):
    files = {f"output/d{i % 7}/f{i:03d}": os.urandom(1000 + 97 * i) for i in range(150)}
    files["output/big"] = os.urandom(8 << 20)
    expected = {path.split("/", 1)[1]: data for path, data in files.items()}
    dest = tmp_path / "lib" / "j1"
    service, publisher, _clock = pub(f'publish = [{{ area = "output", to = "{dest}" }}]')
    job = job_with_outputs(service, files=files)
    service.transition(job, JobState.COMPLETED)
    seen, bad, done = [], [], threading.Event()

    def reader():
        while not done.is_set() or not seen:
            if dest.exists():
                found = tree_of(dest)
                seen.append(len(found))
                if found != expected:
                    bad.append(sorted(found)[:5])
    thread = threading.Thread(target=reader, name="test-reader", daemon=True)
    thread.start()
    try:
        publisher.process_due()
    finally:
        done.set()
        thread.join(60)
    assert seen and not bad, f"the reader saw a partial result {len(bad)} time(s): {bad[:3]}"
    assert service.records.require(job).publish["status"] == "done"


# -- hooks ---------------------------------------------------------------------------------


def test_a_hook_that_fails_twice_then_succeeds(pub, tmp_path):
    counter = tmp_path / "count"
    hook = (f'n=$(($(cat {counter} 2>/dev/null || echo 0) + 1)); echo $n > {counter}; '
            f'echo "try $n for $WSFS_JOB ($WSFS_STATE, $WSFS_TEMPLATE) in $PWD"; '
            f'test -f "$WSFS_OUTPUT/a.txt" && test -f "$WSFS_RECEIPT" && [ $n -ge 3 ]')
    service, publisher, clock = pub(f"on_completed = '{hook}'")
    job = job_with_outputs(service)
    service.transition(job, JobState.COMPLETED)
    publisher.process_due()
    assert service.records.require(job).publish["attempts"] == 1
    clock.advance(9)
    assert publisher.process_due() == []  # backoff 10s
    clock.advance(1)
    publisher.process_due()
    record = service.records.require(job)
    assert record.publish["attempts"] == 2 and record.publish["status"] == "pending"
    assert record.publish["next_at"] == clock.now + 20  # doubled
    clock.advance(20)
    publisher.process_due()
    record = service.records.require(job)
    assert record.publish["status"] == "done" and record.publish["hooks"]["on_completed"]["status"] == "done"
    assert record.publish["attempts"] == 3
    hooks = events(service, "hook", job)
    assert [(e["exit"], e.get("error")) for e in hooks] == [(1, "exit status 1"), (1, "exit status 1"), (0, None)]
    workspace = os.path.join(service.tree.data_dir, "jobs", "j1")
    assert [e["output"] for e in hooks] == [f"try {n} for j1 (completed, pub) in {workspace}\n" for n in (1, 2, 3)]
    assert [e["status"] for e in events(service, "publish", job)] == ["retry", "retry", "done"]


def test_hooks_on_failed_crashed_and_purged(pub, tmp_path):
    log_file = tmp_path / "hooks.log"
    service, publisher, clock = pub(f"""
on_failed = 'echo "failed $WSFS_JOB: $WSFS_REASON" >> {log_file}'
on_crashed = 'echo "crashed $WSFS_JOB at $WSFS_WORKSPACE" >> {log_file}'
on_purged = 'echo "purged $WSFS_JOB ${{WSFS_WORKSPACE:-gone}}" >> {log_file}'
""", '[templates.pub.retention]\nfailed = "1h"\ngrace = "0s"')
    for job in ("f1", "c1"):
        service.create_job(job, 0, 0, template="pub")
    service.transition("f1", JobState.FAILED, "out of memory")
    service.transition("c1", JobState.CRASHED, "owner gone")
    assert service.records.require("f1").publish["hooks"] == {"on_failed": {"status": "pending", "exit": None,
                                                                      "error": None}}
    publisher.process_due()
    clock.advance(3601)
    service.hide("f1", clock.now)
    service.purge("f1", clock.now)
    publisher.process_due()
    quarantine = os.path.join(service.tree.data_dir, "quarantine", "c1")
    lines = log_file.read_text().splitlines()
    assert sorted(lines[:2]) == [f"crashed c1 at {quarantine}", "failed f1: out of memory"]
    assert lines[2:] == ["purged f1 gone"]
    record = service.records.require("f1")
    assert record.publish["status"] == "done" and set(record.publish["hooks"]) == {"on_failed", "on_purged"}


def test_a_hook_timeout_is_a_failure(pub, tmp_path):
    service, publisher, _clock = pub("on_completed = 'echo started; sleep 30'\nhook_timeout = \"0.3s\"")
    service.create_job("j1", 0, 0, template="pub")
    service.transition("j1", JobState.COMPLETED)
    publisher.process_due()
    (hook,) = events(service, "hook", "j1")
    assert hook["error"] == "timed out after 0.3s" and hook["output"] == "started\n"


# -- retention after publishing -----------------------------------------------------------


def test_after_publish_deletes_the_workspace_and_keeps_record_and_receipt(pub, tmp_path):
    service, publisher, _clock = pub(f"""
publish = [{{ area = "output", to = "{tmp_path}/lib/{{job}}" }}]
on_completed = "true"
""", '[templates.pub.retention]\ncompleted = "after-publish"')
    job = job_with_outputs(service)
    service.transition(job, JobState.COMPLETED)
    receipt = service.tree.open("jobs", "j1/receipt.json", os.O_RDONLY)
    try:
        receipt_bytes = os.read(receipt, 1 << 20)
    finally:
        os.close(receipt)
    assert service.records.require(job).expires_at is None  # no deadline: publishing decides
    publisher.process_due()
    record = service.records.require(job)
    assert record.publish["status"] == "done" and record.publish["deleted_at"] is not None
    assert record.where is None and record.state == "completed"
    assert not service.tree.exists("jobs", "j1")
    assert service.manifest_entries(job) == []
    with service.store.read() as r:
        assert r.receipt(job) == receipt_bytes
        assert r.totals()["live"] == 0
    assert json.loads(receipt_bytes)["outputs"][0]["path"] == "output/a.txt"
    assert tree_of(tmp_path / "lib" / "j1")["a.txt"] == b"alpha\n"
    assert [f for f in diagnose(service) if f.kind != "trash"] == []


def test_after_publish_keeps_the_workspace_when_publishing_failed(pub, tmp_path):
    service, publisher, clock = pub("on_completed = 'exit 3'\npublish_retries = 0",
                                    '[templates.pub.retention]\ncompleted = "after-publish"')
    job = job_with_outputs(service)
    service.transition(job, JobState.COMPLETED)
    publisher.process_due()
    record = service.records.require(job)
    assert record.publish["status"] == "failed" and record.publish["error"] == "on_completed: exit status 3"
    assert record.where == "jobs" and service.tree.exists("jobs", "j1/output/a.txt")
    # by hand: retry after the cause is fixed
    service.config.templates["pub"].hooks["on_completed"] = "true"
    service.write_control(b"publish j1 retry")
    assert service.records.require(job).publish["status"] == "pending"
    publisher.process_due()
    record = service.records.require(job)
    assert record.publish["status"] == "done" and record.where is None


def test_publish_by_hand(pub, tmp_path):
    service, publisher, _clock = pub(f'publish = [{{ area = "output", to = "{tmp_path}/lib/{{job}}" }}]')
    job = job_with_outputs(service)
    with pytest.raises(NotAllowedError, match="only a completed job"):
        service.write_control(b"publish j1")
    service.transition(job, JobState.COMPLETED)
    service.write_control(b"publish j1")  # already pending: runs now
    publisher.process_due()
    with pytest.raises(NotAllowedError, match="published already"):
        service.write_control(b"publish j1")
    with pytest.raises(NotAllowedError, match="belongs to uid 0"):
        service.write_control(b"publish j1 retry", uid=1000)
    service.write_control(b"publish j1 retry")  # again: the same result is there already
    publisher.process_due()
    assert service.records.require(job).publish["status"] == "done"
    assert [e["outcome"] for e in events(service, "published")] == ["published", "already there"]
    assert [e["errno"] for e in events(service, "rejected")] == ["EPERM", "EPERM", "EPERM"]


def test_a_pending_publish_survives_reopening_the_store(tmp_path):
    config = config_for(tmp_path, f'publish = [{{ area = "output", to = "{tmp_path}/lib/{{job}}" }}]')
    clock = FakeClock()
    service = make_core(tmp_path / "data", clock, config)
    job_with_outputs(service)
    service.transition("j1", JobState.COMPLETED)
    service.store.close()
    service.tree.close()
    service = make_core(tmp_path / "data", clock, config)
    try:
        assert Publisher(service, clock).process_due() == ["j1"]
        assert service.records.require("j1").publish["status"] == "done"
    finally:
        service.store.close()
        service.tree.close()


def test_placeholders():
    record = JobRecord(id="j1", template="media", areas={}, uid=0, gid=0, created=0.0, ended=86400.0 * 365)
    assert expand_destination("/srv/{template}/{date}/{owner}/{job}", record) == "/srv/media/1971-01-01/root/j1"


def test_stopping_abandons_a_copy_without_counting_an_attempt(pub, tmp_path):
    service, publisher, _clock = pub(f'publish = [{{ area = "output", to = "{tmp_path}/lib/{{job}}" }}]')
    job = job_with_outputs(service)
    service.transition(job, JobState.COMPLETED)
    publisher.stopping.set()
    assert publisher.process_due() == []
    publisher._fault = None
    record = publisher.attempt(job)  # as if the stop came in the middle of the copy
    assert record.publish["status"] == "pending" and record.publish["attempts"] == 0
    assert not (tmp_path / "lib" / "j1").exists() and os.listdir(tmp_path / "lib") == []  # no temporary left
    publisher.stopping.clear()
    publisher.process_due()
    assert service.records.require(job).publish["status"] == "done"


def test_an_unexpected_error_postpones_instead_of_spinning(pub, tmp_path, monkeypatch):
    service, publisher, clock = pub(f'publish = [{{ area = "output", to = "{tmp_path}/lib/{{job}}" }}]')
    job = job_with_outputs(service)
    service.transition(job, JobState.COMPLETED)
    monkeypatch.setattr(publisher, "attempt", lambda job_id: 1 / 0)
    assert publisher.process_due() == [job]
    assert publisher.process_due() == []
    record = service.records.require(job)
    assert record.publish["next_at"] == clock.now + 10 and "division by zero" in record.publish["error"]


def test_an_older_store_without_the_publish_tables_opens_read_only(tmp_path):
    import lmdb

    from wsfs.core import store as store_mod

    env = lmdb.open(str(tmp_path / "old"), max_dbs=20, subdir=True)
    with env.begin(write=True) as txn:
        for name in store_mod._DBS:
            if name not in store_mod._LATER_DBS:
                db = env.open_db(name, txn=txn)
                if name == b"meta":
                    txn.put(b"schema", store_mod.pack(store_mod.SCHEMA_VERSION), db=db)
    env.close()
    old = store_mod.Store(str(tmp_path / "old"), readonly=True)
    try:
        with old.read() as r:
            assert r.publish_queue() == [] and r.receipt("j1") is None
    finally:
        old.close()
