"""Stress 6, full disk and resource limits (docs/spec.md §5, §6, §8).

- The data dir on a small filesystem the test makes (a 64 MiB tmpfs, and a
  64 MiB ext4 image on a loop device), filled through a job with ``dd`` and
  then to the last block: writes fail ``ENOSPC``; the daemon keeps serving;
  every store change either works or fails ``ENOSPC`` and changes nothing
  (no half-ended job); once space is freed everything works again, and
  ``wsfs doctor`` finds the data dir clean.
- LMDB map growth: a store opened with a 64 KiB map takes 100,000 job
  records (5,000 short) while readers read, doubling its map as it goes, and
  reopens with every record.
- File descriptors: the daemon started with ``RLIMIT_NOFILE`` 64; opening
  files through the mount until it runs out gives ``EMFILE``, never a hang
  (each call under a watchdog), and once they are closed the mount works.

Every filesystem, loop device and mount the tests make is taken down in
``finally``.
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, FakeClock, is_mounted, require_fuse, sh
from conftest import wait_until as conftest_wait_until
from stress_support import StressMount, replay, seed, size

from wsfs.core.config import default_config
from wsfs.core.lifecycle import JobService
from wsfs.core.store import Store
from wsfs.core.tree import Tree

SMALL_FS_BYTES = 64 << 20
MAP_JOBS = size(5_000, 100_000)
TINY_MAP = 64 * 1024
FD_LIMIT = 64
WATCHDOG = 60.0  # seconds a call through the mount may take before it counts as a hang
SEED = seed()
CONFIG = 'sweep_interval = "1000d"\n'


# -- a small filesystem -------------------------------------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120)


@pytest.fixture(params=["tmpfs", "ext4"])
def small_fs(request, tmp_path):
    """A 64 MiB filesystem mounted at tmp_path/small: tmpfs, or ext4 on a loop device."""
    if os.geteuid() != 0:
        pytest.skip("making a filesystem needs root")
    where = tmp_path / "small"
    where.mkdir()
    image = tmp_path / "small.img"
    if request.param == "tmpfs":
        result = run("mount", "-t", "tmpfs", "-o", f"size={SMALL_FS_BYTES},mode=0755", "tmpfs", str(where))
    else:
        run("truncate", "-s", str(SMALL_FS_BYTES), str(image))
        made = run("mkfs.ext4", "-F", "-q", str(image))
        assert made.returncode == 0, made.stderr
        result = run("mount", "-o", "loop", str(image), str(where))  # autoclear: umount frees the loop
    if result.returncode != 0:
        pytest.skip(f"cannot mount a {request.param} here: {result.stderr.strip()}")
    try:
        yield where
    finally:
        if run("umount", str(where)).returncode != 0:
            run("umount", "-l", str(where))
        if image.exists():
            leftover = run("losetup", "-j", str(image)).stdout.split(":")[0]
            if leftover:
                run("losetup", "-d", leftover)
            image.unlink()
        assert not is_mounted(where)


def free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize  # root's view: the daemon runs as root and may use the reserve


def fill_to_the_last_block(where: Path) -> None:
    """Take what is left, reserve included, from outside the data dir (same filesystem)."""
    for i in range(64):
        try:
            with open(where / f"filler-{i}", "wb") as f:
                while True:
                    f.write(b"\0" * (1 << 16))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        if free_bytes(where) < (1 << 16):
            break
    for i, size_ in enumerate((4096, 512, 1)):  # the last blocks, then the last bytes of a page
        try:
            with open(where / f"crumb-{i}", "wb") as f:
                for _ in range(1 << 14):
                    f.write(b"\0" * size_)
                    f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def wait_until(condition, what: str, timeout: float = 120.0) -> None:
    conftest_wait_until(condition, what, timeout)


def read_job(m, job: str) -> dict:
    return json.loads((m.ws / job / ".job").read_text())


def attempt(fn) -> int:
    """0 when ``fn()`` works, else its errno."""
    try:
        fn()
        return 0
    except OSError as exc:
        return exc.errno


def write_line(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@pytest.mark.mount
def test_a_full_disk_gives_enospc_changes_nothing_half_way_and_heals(small_fs, tmp_path):
    print(replay(SEED))
    require_fuse()
    data = small_fs / "data"
    m = StressMount(tmp_path / "m", data=data, config=CONFIG)
    try:
        m.start()
        for job in ("J", "F", "S"):
            os.mkdir(m.ws / job)
        (m.ws / "J" / "output" / "keep").write_bytes(b"k" * 1000)
        (m.ws / "J" / "temp" / "scratch").write_bytes(b"t" * 1000)
        # A job fills the disk: dd stops at ENOSPC, with the message a user reads.
        result = sh("dd if=/dev/zero of=workspaces/F/temp/big bs=1M", cwd=m.mnt, check=False)
        assert result.returncode == 1 and "No space left on device" in result.stderr, result.stderr
        fill_to_the_last_block(small_fs)
        # The daemon keeps serving: virtual files, listings, statfs, reads.
        os.statvfs(m.mnt)
        assert (m.ws / "J" / ".state").read_text() == "running\n"
        assert sorted(os.listdir(m.ws / "J" / "output")) == ["keep"]
        assert (m.ws / "J" / "output" / "keep").read_bytes() == b"k" * 1000
        json.loads((m.mnt / ".wsfs" / "status").read_text())
        # Whatever needs a block fails ENOSPC, or works: nothing else, nothing half done.
        outcomes = {
            "new file": attempt(lambda: (m.ws / "J" / "output" / "small").write_bytes(b"x" * 8192)),
            "mkdir job": attempt(lambda: os.mkdir(m.ws / "K")),
            "control create": attempt(lambda: write_line(m.mnt / ".wsfs" / "control", "create K2")),
        }
        assert outcomes["mkdir job"] == outcomes["control create"] == errno.ENOSPC, outcomes  # min_free
        assert outcomes["new file"] in (0, errno.ENOSPC), outcomes
        for i in range(8):
            before = read_job(m, "S")
            outcome = attempt(lambda: write_line(m.ws / "S" / ".state", f"stage s{i}"))
            assert outcome in (0, errno.ENOSPC), errno.errorcode.get(outcome)
            after = read_job(m, "S")
            assert after["stage"] == (f"s{i}" if outcome == 0 else before["stage"])
        ended = attempt(lambda: write_line(m.ws / "J" / ".state", "completed"))
        assert ended in (0, errno.ENOSPC), errno.errorcode.get(ended)
        record = read_job(m, "J")
        if ended == 0:
            assert (record["state"], record["ending"]) == ("completed", None)
        else:
            # Refused before the intent was stored (nothing changed, the job runs on), or refused
            # part way (the intent stands: the same command, or the next mount, finishes it).
            assert record["state"] == "running", record
            assert record["ending"] in (None, "completed"), record
        assert m.daemon_errors() == []
        # Space comes back: the job's big file and the fillers go.
        os.unlink(m.ws / "F" / "temp" / "big")
        for name in os.listdir(small_fs):
            if name.startswith(("filler-", "crumb-")):
                os.unlink(small_fs / name)
        # The space is back once nothing holds the file open: the daemon may still be hashing it
        # (release hands a file's sha256 to the hasher thread) for a moment.
        t0 = time.monotonic()
        wait_until(lambda: free_bytes(small_fs) > SMALL_FS_BYTES // 2, "the freed space is free")
        print(f"space back {time.monotonic() - t0:.2f}s after the unlink")
        # Everything works again.
        if read_job(m, "J")["state"] == "running":
            write_line(m.ws / "J" / ".state", "completed")
        record = read_job(m, "J")
        assert (record["state"], record["ending"]) == ("completed", None)
        receipt = json.loads((m.ws / "J" / "receipt.json").read_text())
        assert [o["path"] for o in receipt["outputs"]] == sorted(
            ["output/keep"] + (["output/small"] if (m.ws / "J" / "output" / "small").exists() else []))
        assert not (m.ws / "J" / "temp").exists()
        sh("mkdir workspaces/after && seq 1 100000 > workspaces/after/output/n && "
           "echo 'stage again' > workspaces/S/.state && echo completed > workspaces/after/.state", cwd=m.mnt)
        assert read_job(m, "after")["state"] == "completed"
        assert read_job(m, "S")["stage"] == "again"
        assert m.daemon_errors() == []
        m.stop()
        # The data dir is clean (the daemon stopped: doctor takes the data dir itself) ...
        env = dict(os.environ, PYTHONPATH=str(REPO))
        doctor = subprocess.run([sys.executable, "-m", "wsfs", "doctor", "--data", str(data)], capture_output=True,
                                text=True, env=env, timeout=300)
        assert doctor.returncode == 0 and "doctor: clean" in doctor.stdout, doctor.stdout + doctor.stderr
        # ... and mounts again with every job as it was.
        m.start()
        assert read_job(m, "J")["state"] == "completed" and read_job(m, "S")["state"] == "running"
        assert (m.ws / "after" / "output" / "n").read_text().splitlines()[-1] == "100000"
        assert m.daemon_errors() == []
    finally:
        m.stop()


# -- LMDB map growth ----------------------------------------------------------------------------


def test_the_store_grows_from_a_tiny_map_to_every_job(tmp_path):
    """64 KiB of map to start with; records go in by batches of 500 (and some by create_job) while
    two readers read; each MapFullError doubles the map and the batch runs again.  A reopen with
    the same tiny map_size finds every record."""
    print(replay(SEED))
    rng = random.Random(f"{SEED}:map")
    clock = FakeClock()
    data = tmp_path / "data"
    tree = Tree(str(data))
    store = Store(str(data / "store"), clock=clock, map_size=TINY_MAP)
    service = JobService(store, tree, default_config(), clock=clock)
    template = service.config.template("default")
    by_create = size(200, 1_000)
    stop = threading.Event()
    made: list[str] = []
    reader_errors: list[BaseException] = []

    def reader(label: str) -> None:
        r_rng = random.Random(f"{SEED}:{label}")
        try:
            while not stop.is_set():
                if made:
                    job = made[r_rng.randrange(len(made))]
                    with store.read() as r:
                        record = r.job(job)
                        totals = r.totals()
                    assert record is not None and record.id == job, job
                    assert totals["states"].get("running", 0) >= 1
                # Not a busy loop: a thread spinning in Python would hand the writer the GIL back
                # only every switch interval, after each LMDB call that released it.
                time.sleep(0.001)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            reader_errors.append(exc)

    readers = [threading.Thread(target=reader, args=(f"reader{i}",), daemon=True) for i in range(2)]
    for t in readers:
        t.start()
    try:
        plain = MAP_JOBS - by_create
        for start in range(0, plain, 500):
            records = [service.new_record(f"job-{i:06d}", template, 1000 + i % 7, 1000, clock(), None, None)
                       for i in range(start, min(start + 500, plain))]
            for record in records:  # some bulk in the records, as real ones carry
                record.stages = [{"name": f"stage-{k}", "at": clock()} for k in range(rng.randrange(4))]
            store.transact(lambda w, records=records: [w.put_job(r) for r in records] and [])
            made.extend(r.id for r in records)
        for i in range(by_create):
            made.append(service.create_job(f"made-{i:05d}", 1000, 1000).id)
    finally:
        stop.set()
        for t in readers:
            t.join(timeout=60)
    assert not reader_errors, reader_errors[:3]
    grown = store.env.info()["map_size"]
    print(f"{MAP_JOBS} jobs: map grew from {TINY_MAP} to {grown} bytes")
    assert grown >= 32 * TINY_MAP and grown >= os.path.getsize(data / "store" / "data.mdb")
    service.manifest.flush()
    store.close()
    tree.close()
    # Reopened with the same tiny map_size: LMDB takes the size the data needs, every record is there.
    store = Store(str(data / "store"), readonly=False, map_size=TINY_MAP)
    try:
        with store.read() as r:
            ids = set(r.job_ids())
            totals = r.totals()
            sample = [r.job(j) for j in rng.sample(made, 200)]
        assert ids == set(made) and len(ids) == MAP_JOBS
        assert totals["states"] == {"running": MAP_JOBS} and totals["live"] == MAP_JOBS
        assert all(rec is not None and rec.state == "running" for rec in sample)
        # ... and it still takes writes (and grows) after the reopen.
        store.transact(lambda w: [w.put_job(service.new_record("after-reopen", template, 0, 0, 1.0, None, None))]
                       and [])
        with store.read() as r:
            assert r.job("after-reopen") is not None
    finally:
        store.close()


# -- file descriptors ---------------------------------------------------------------------------


class LimitedMount(StressMount):
    """A mount whose daemon runs under ``prlimit --nofile=N:N``."""

    def __init__(self, *args, nofile: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.nofile = nofile

    def cli_args(self) -> list[str]:
        return ["prlimit", f"--nofile={self.nofile}:{self.nofile}", "--"] + super().cli_args()


def watched(fn, what: str):
    """Run ``fn`` in a thread; a call that takes longer than WATCHDOG is a hang (the fixture's
    teardown then kills the daemon, which ends the call)."""
    box: dict = {}

    def call():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back below
            box["error"] = exc

    thread = threading.Thread(target=call, name=f"watched {what}", daemon=True)
    thread.start()
    thread.join(WATCHDOG)
    if thread.is_alive():
        raise AssertionError(f"{what} did not return within {WATCHDOG:.0f}s: the daemon hangs")
    if "error" in box:
        raise box["error"]
    return box.get("result")


@pytest.mark.mount
def test_running_out_of_file_descriptors_gives_errors_not_a_hang(tmp_path):
    print(replay(SEED))
    require_fuse()
    m = LimitedMount(tmp_path / "m", config=CONFIG, nofile=FD_LIMIT)
    try:
        m.start()
        limits = Path(f"/proc/{m.proc.pid}/limits").read_text()
        assert any(line.startswith("Max open files") and f" {FD_LIMIT} " in line for line in limits.splitlines())
        os.mkdir(m.ws / "J")
        (m.ws / "J" / "input" / "in").write_bytes(b"input data\n")
        held, refused = [], {}
        for i in range(4 * FD_LIMIT):
            name = m.ws / "J" / ("input/in" if i % 3 == 0 else f"output/f{i}")
            flags = os.O_RDONLY if i % 3 == 0 else os.O_WRONLY | os.O_CREAT
            try:
                held.append(watched(lambda: os.open(name, flags, 0o644), f"open #{i}"))
            except OSError as exc:
                refused[exc.errno] = refused.get(exc.errno, 0) + 1
                if sum(refused.values()) >= 20:
                    break
        print(f"daemon limit {FD_LIMIT}: {len(held)} files open through the mount, then "
              f"{ {errno.errorcode[e]: n for e, n in refused.items()} }")
        assert held and refused, "the daemon never ran out"
        assert set(refused) <= {errno.EMFILE, errno.ENFILE}, refused
        # Out of descriptors, the daemon still answers what needs none.
        assert watched(lambda: (m.ws / "J" / ".state").read_text(), "read .state") == "running\n"
        watched(lambda: os.statvfs(m.mnt), "statfs")
        watched(lambda: os.write(held[-1], b"still writable\n"), "write to an open file")
        # What needs descriptors fails with EMFILE, and leaves nothing half done.
        listed = watched(lambda: attempt(lambda: os.listdir(m.ws / "J" / "output")), "list a dir")
        ended = watched(lambda: attempt(lambda: write_line(m.ws / "J" / ".state", "completed")), "completed")
        assert listed in (0, errno.EMFILE) and ended in (0, errno.EMFILE), (listed, ended)
        record = read_job(m, "J")
        if ended == 0:
            assert (record["state"], record["ending"]) == ("completed", None), record
        else:  # refused before its intent was stored, or part way (the intent stands, the job is read-only)
            assert record["state"] == "running", record
            assert record["ending"] in (None, "completed"), record
        print(f"out of descriptors: listing {errno.errorcode.get(listed, 'ok')}, "
              f"completed {errno.errorcode.get(ended, 'ok')} (ending {record['ending']})")
        for fd in held:
            watched(lambda fd=fd: os.close(fd), "close")
        # All closed: it works again, to the end of the job (the same command again finishes a
        # completion that ran out of descriptors part way).
        if ended:
            watched(lambda: write_line(m.ws / "J" / ".state", "completed"), "completed again")
        record = read_job(m, "J")
        assert (record["state"], record["ending"]) == ("completed", None)
        receipt = json.loads((m.ws / "J" / "receipt.json").read_text())
        assert {o["path"] for o in receipt["outputs"]} >= {"output/f1"}
        sh("mkdir workspaces/K && echo k > workspaces/K/output/k && echo completed > workspaces/K/.state",
           cwd=m.mnt)
        assert m.daemon_errors() == []
    finally:
        m.stop()


# -- regressions: what the suites above found ---------------------------------------------------


class _RefusingEnv:
    """The store's LMDB environment, with every write transaction's commit refused like a full disk."""

    def __init__(self, env):
        self._env = env

    def __getattr__(self, name):
        return getattr(self._env, name)

    def begin(self, write=False, **kwargs):
        txn = self._env.begin(write=write, **kwargs)
        return _RefusedCommit(txn) if write else txn


class _RefusedCommit:
    def __init__(self, txn):
        self._txn = txn

    def __enter__(self):
        return self._txn.__enter__()

    def __exit__(self, *exc):
        self._txn.abort()
        if exc[0] is None:
            import lmdb
            raise lmdb.Error("mdb_txn_commit: Input/output error")  # what LMDB says after a short write
        return False


def _full(monkeypatch):
    """statvfs of the store's filesystem: nothing free."""
    real = os.statvfs

    def statvfs(path):
        st = real(path)
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, 0, 0) + tuple(st)[5:])
    monkeypatch.setattr("wsfs.core.store.os.statvfs", statvfs)


def test_a_commit_the_disk_refuses_is_enospc_and_the_manifest_keeps_its_changes(core, monkeypatch):
    """A full disk made LMDB's commit fail (lmdb.Error): FUSE calls got EIO with a logged
    traceback, the manifest thread died and took the mount with it, and the batch it held was
    lost.  Now it is StoreError(ENOSPC), the batch stays queued, and it is stored once commits work."""
    import lmdb

    from wsfs.core.errors import StoreError

    core.create_job("J", 0, 0)
    fd = core.tree.open("jobs", "J/output/f", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"12345")
    st = os.fstat(fd)
    os.close(fd)
    env = core.store.env
    monkeypatch.setattr(core.store, "env", _RefusingEnv(env))
    _full(monkeypatch)
    core.manifest.put("J", "output/f", st)
    with pytest.raises(StoreError) as info:
        core.manifest.flush()
    assert info.value.errno == errno.ENOSPC and "full" in str(info.value)
    with pytest.raises(StoreError):
        core.set_stage("J", "converting")  # any change: ENOSPC, nothing stored
    # The manifest thread waits instead of dying; the changes go in once the disk takes them.
    stop = threading.Event()
    thread = threading.Thread(target=core.manifest.run, args=(stop,), daemon=True)
    thread.start()
    try:
        time.sleep(0.3)
        assert thread.is_alive()
        monkeypatch.setattr(core.store, "env", env)
        wait_until(lambda: core.manifest_entries("J") != [], "the queued change is stored")
    finally:
        stop.set()
        thread.join(10)
    assert [(p, e[0]) for p, e in core.manifest_entries("J")] == [("output/f", 5)]
    assert core.records.get("J").usage == {"bytes": 5, "files": 1} and core.records.get("J").stage is None
    assert not isinstance(info.value, lmdb.Error)


def test_a_transition_refused_part_way_is_finished_by_the_same_command(core, monkeypatch):
    """A step after the intent that fails (a full disk at the receipt, no descriptors for the
    scratch move) left the job "already ending" until the next mount.  The same command again
    finishes it; another one is still refused."""
    from wsfs.core.errors import SealedError, StoreError
    from wsfs.core.model import JobState

    core.create_job("J", 0, 0)
    for rel in ("J/output/o", "J/temp/t"):
        fd = core.tree.open("jobs", rel, os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)

    def refused(record, target):
        raise StoreError("the store could not commit: its filesystem is full", errno=errno.ENOSPC)
    monkeypatch.setattr(core, "_step_receipt", refused)
    with pytest.raises(StoreError):
        core.transition("J", JobState.COMPLETED)
    record = core.records.get("J")
    assert record.state == "running" and record.pending["target"] == "completed"
    with pytest.raises(SealedError) as info:
        core.transition("J", JobState.FAILED)
    assert info.value.errno == errno.EPERM
    monkeypatch.undo()
    record = core.transition("J", JobState.COMPLETED)
    assert (record.state, record.pending) == ("completed", None)
    assert core.tree.exists("jobs", "J/receipt.json") and not core.tree.exists("jobs", "J/temp")


def test_a_worker_thread_the_store_refuses_starts_again_instead_of_stopping_the_mount(tmp_path, monkeypatch):
    from wsfs.core.errors import StoreError
    from wsfs.fuse import daemon

    d = daemon.Daemon(str(tmp_path / "mnt"), str(tmp_path / "data"), default_config())
    monkeypatch.setattr(daemon, "STORE_RETRY", 0.01)
    signals = []
    monkeypatch.setattr(daemon.os, "kill", lambda pid, sig: signals.append(sig))
    calls = []

    def refused_twice():
        calls.append(len(calls))
        if len(calls) < 3:
            raise StoreError("the store could not commit: its filesystem is full", errno=errno.ENOSPC)
    d._thread("wsfs-test", refused_twice)
    d.threads[-1].join(10)
    assert calls == [0, 1, 2] and signals == []

    def broken():
        raise ValueError("a bug")
    d._thread("wsfs-broken", broken)
    d.threads[-1].join(10)
    assert signals == [15]  # anything else still stops the mount, as before


def test_the_ready_probe_survives_running_out_of_descriptors(tmp_path, monkeypatch):
    """The wsfs-ready thread stats the mount from a child process; with no descriptor left for the
    child's pipe, subprocess raised EMFILE, the thread 'crashed' and stopped the mount."""
    import types

    from wsfs.fuse import daemon

    d = daemon.Daemon(str(tmp_path / "mnt"), str(tmp_path / "data"), default_config())
    d.publisher = types.SimpleNamespace(mount_ready=threading.Event())
    monkeypatch.setattr(daemon, "is_wsfs_mount", lambda path: True)
    monkeypatch.setattr(d, "status_line", lambda: "0 jobs")
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    answers = [OSError(errno.EMFILE, "Too many open files"), subprocess.CompletedProcess([], 0)]

    def run(*args, **kwargs):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer
    monkeypatch.setattr(daemon.subprocess, "run", run)
    d._announce_ready()
    assert d.publisher.mount_ready.is_set() and answers == []


def test_a_job_the_full_disk_refuses_leaves_no_tree(tmp_path, monkeypatch):
    """With ``min_free = 0`` a full disk refuses the job's record commit (or an area's mkdir)
    after its tree was made: the tree stayed, with no record (an orphan for doctor).  Now it goes."""
    from conftest import make_core, parse_toml_config

    from wsfs.core.errors import StoreError

    core = make_core(tmp_path / "data", config=parse_toml_config('min_free = "0"'))
    env = core.store.env
    monkeypatch.setattr(core.store, "env", _RefusingEnv(env))
    _full(monkeypatch)
    with pytest.raises(StoreError) as info:
        core.create_job("J", 0, 0)
    assert info.value.errno == errno.ENOSPC
    assert core.records.get("J") is None and not core.tree.exists("jobs", "J")
    monkeypatch.setattr(core.store, "env", env)
    assert core.create_job("J", 0, 0).state == "running" and core.tree.exists("jobs", "J/output")
    core.store.close()
    core.tree.close()
