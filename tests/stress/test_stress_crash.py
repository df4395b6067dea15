"""The crash matrix: SIGKILL the daemon at random moments; nothing acknowledged may be lost (docs/spec.md §6, §7).

Like SQLite's crash tests: a workload runs against the mount (create jobs,
write files and fsync them, rename temp -> output, unlink, stages, end jobs,
archive them, resume crashed ones, sweeps) while the harness SIGKILLs the
daemon after a seeded random delay, so kills land inside operations.  Some
rounds also kill the next daemon while it starts and recovers.  Then the
mount comes back and every acknowledged fact must hold:

- a ``mkdir`` of a job that returned: the job exists; running at the kill,
  it is ``crashed`` with its tree in ``quarantine/`` (docs/spec.md §7);
- a write followed by an fsync that returned: the file is byte-exact where
  the job's tree now is (``completed`` deletes ``temp/``, ``archived`` all);
  a rename or unlink that returned: the names say so;
- a ``.state`` write that returned: the job is in that state, and an ended
  job has a valid receipt (every output file with its true size and sha256,
  the record's ``receipt_sha256``, the ``.manifest`` digest);
- an operation the kill interrupted is not acknowledged and may go either
  way, but never half: a ``.state`` write leaves the job crashed (it was
  running) or fully ended with a valid receipt; a rename leaves the file at
  exactly one of its two names;
- ``wsfs doctor`` finds nothing, and the daemon logged no error.

``WSFS_STRESS=full``: at least 200 kill points; default 8.  ``WSFS_SEED``
replays the operations and delays (kill moments still vary with timing).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
import signal
import subprocess
import threading
import time

import pytest
from stress_support import (
    FULL,
    doctor,
    read_jobs,
    receipt_problems,
    replay,
    seed,
    sha256,
    size,
    start_mount,
    write_control,
    write_state,
)

ROUNDS = size(8, 200)
RECOVERY_KILL_RATE = 0.12     # rounds whose restart is itself killed while the daemon starts/recovers
SAMPLE_OLD_JOBS = 6           # besides the jobs of the round, this many older jobs are checked each round
FULL_CHECK_EVERY = 25         # and every job, every this many rounds and at the end
GONE = {errno.ENOTCONN, errno.ECONNABORTED}  # what a call through a dead mount gets
ENDED = ("completed", "failed", "cancelled", "crashed")
CONFIG = """
sweep_interval = "1s"
[retention]
cancelled = "2s"
grace = "2s"
"""


class DaemonGone(Exception):
    """The mount died under the workload (the kill): the operation in flight is not acknowledged."""


@dataclasses.dataclass
class Job:
    id: str
    state: str = "running"
    files: dict = dataclasses.field(default_factory=dict)    # area path -> (size, sha256): acknowledged
    absent: set = dataclasses.field(default_factory=set)     # area paths acknowledged gone
    uncertain: set = dataclasses.field(default_factory=set)  # touched by an operation a kill interrupted
    subdirs: set = dataclasses.field(default_factory=set)


class Model:
    def __init__(self):
        self.jobs: dict[str, Job] = {}
        self.inflight: tuple | None = None
        self.counter = 0
        self.facts = 0
        self.ops = 0
        self.touched: set[str] = set()

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def running(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.state == "running"]


class Workload:
    """One round's operations, run in a thread until the daemon dies (or the round's budget ends)."""

    def __init__(self, m, model: Model, rng: random.Random, round_no: int):
        self.m, self.model, self.rng, self.round = m, model, rng, round_no
        self.error: BaseException | None = None
        self.done = threading.Event()

    def dir_of(self, job: Job) -> str:
        top = "quarantine" if job.state == "crashed" else "workspaces"
        return os.path.join(self.m.mnt, top, job.id)

    def run(self) -> None:
        try:
            for _ in range(400):
                self.step()
        except DaemonGone:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc
        finally:
            self.done.set()

    def call(self, fn, *args, tolerate=()):
        try:
            return fn(*args)
        except OSError as exc:
            if exc.errno in GONE:
                raise DaemonGone() from None
            if exc.errno in tolerate:
                return exc
            raise

    def step(self) -> None:
        rng, model = self.rng, self.model
        running = model.running()
        choices = {"mkdir": 6 if len(running) < 4 else 1, "write": 10 * bool(running), "append": 3 * bool(running),
                   "overwrite": 2 * bool(running), "rename": 4 * bool(running), "unlink": 2 * bool(running),
                   "stage": 2 * bool(running), "end": 3 * bool(running), "archive": 1, "resume": 1, "sweep": 1}
        kind = rng.choices(list(choices), weights=list(choices.values()))[0]
        getattr(self, f"op_{kind}")(rng.choice(running) if running else None)
        model.ops += 1

    def _stable_files(self, job: Job, areas=("input", "output", "temp")) -> list[str]:
        return sorted(p for p in job.files if p.split("/", 1)[0] in areas and p not in job.uncertain)

    # -- operations: each sets model.inflight before the call and records the fact after it returns --

    def op_mkdir(self, _job):
        job_id = self.model.fresh(f"r{self.round}-")
        self.model.inflight = ("mkdir", job_id)
        if self.rng.random() < 0.2:
            self.call(write_control, self.m.mnt, f"create {job_id}")
        else:
            self.call(os.mkdir, os.path.join(self.m.ws, job_id))
        self.model.jobs[job_id] = Job(job_id)
        self.model.touched.add(job_id)
        self.model.inflight = None

    def _data(self) -> bytes:
        big = self.rng.random() < 0.04
        return self.rng.randbytes(self.rng.randrange(1 << 20) if big else self.rng.randrange(0, 49152))

    def _write(self, job: Job, path: str, data: bytes, flags: int, before: bytes = b"") -> None:
        """Write ``data`` (after ``before``, the content an O_APPEND write keeps) and fsync it."""
        self.model.inflight = ("write", job.id, path)
        full = os.path.join(self.dir_of(job), path)
        fd = self.call(os.open, full, flags | os.O_WRONLY | os.O_CLOEXEC, 0o644)
        try:
            chunk = self.rng.choice((4096, 65536, 1 << 20))
            for start in range(0, len(data), chunk):
                self.call(os.write, fd, data[start:start + chunk])
            self.call(os.fsync, fd)
            # Acknowledged: the write returned and the fsync that followed it returned.
            job.files[path] = (len(before) + len(data), sha256(before + data))
            job.absent.discard(path)
            self.model.inflight = None
        finally:
            try:
                os.close(fd)
            except OSError as exc:
                if exc.errno not in GONE:
                    raise

    def op_write(self, job: Job):
        area = self.rng.choices(("output", "temp", "input"), weights=(6, 3, 1))[0]
        if area == "output" and self.rng.random() < 0.2:
            sub = f"output/d{self.rng.randrange(3)}"
            if sub not in job.subdirs:
                self.model.inflight = ("mkdir-sub", job.id, sub)
                self.call(os.makedirs, os.path.join(self.dir_of(job), sub), 0o755, True)
                job.subdirs.add(sub)
                self.model.inflight = None
            area = sub
        path = f"{area}/{self.model.fresh('f')}"
        self._write(job, path, self._data(), os.O_CREAT | os.O_EXCL)
        self.model.touched.add(job.id)

    def op_append(self, job: Job):
        files = self._stable_files(job)
        if not files:
            return self.op_write(job)
        path = self.rng.choice(files)
        current = self._content(job, path)
        self._write(job, path, self.rng.randbytes(self.rng.randrange(1, 20000)), os.O_APPEND, current)
        self.model.touched.add(job.id)

    def op_overwrite(self, job: Job):
        files = self._stable_files(job)
        if not files:
            return self.op_write(job)
        self._write(job, self.rng.choice(files), self._data(), os.O_TRUNC)
        self.model.touched.add(job.id)

    def _content(self, job: Job, path: str) -> bytes:
        def read():
            with open(os.path.join(self.dir_of(job), path), "rb") as f:
                return f.read()
        return self.call(read)

    def op_rename(self, job: Job):
        files = self._stable_files(job, ("temp", "output"))
        if not files:
            return self.op_write(job)
        src = self.rng.choice(files)
        dst = f"output/{self.model.fresh('r')}" if src.startswith("temp/") or self.rng.random() < 0.5 else \
            self.rng.choice(self._stable_files(job, ("output",)) or [f"output/{self.model.fresh('r')}"])
        if dst == src:
            return
        self.model.inflight = ("rename", job.id, src, dst)
        self.call(os.rename, os.path.join(self.dir_of(job), src), os.path.join(self.dir_of(job), dst))
        job.files[dst] = job.files.pop(src)
        job.absent.add(src)
        job.absent.discard(dst)
        self.model.inflight = None
        self.model.touched.add(job.id)

    def op_unlink(self, job: Job):
        files = self._stable_files(job)
        if not files:
            return self.op_write(job)
        path = self.rng.choice(files)
        self.model.inflight = ("unlink", job.id, path)
        self.call(os.unlink, os.path.join(self.dir_of(job), path))
        del job.files[path]
        job.absent.add(path)
        self.model.inflight = None
        self.model.touched.add(job.id)

    def op_stage(self, job: Job):
        self.model.inflight = ("stage", job.id)
        self.call(write_state, self.dir_of(job), f"stage step{self.rng.randrange(100)}")
        self.model.inflight = None

    def op_end(self, job: Job):
        word = self.rng.choices(("completed", "failed", "cancelled"), weights=(5, 3, 1))[0]
        line = word if word == "completed" else f"{word} chosen by the crash matrix"
        self.model.inflight = ("state", job.id, word)
        self.call(write_state, self.dir_of(job), line)
        job.state = word
        self.model.inflight = None
        self.model.touched.add(job.id)

    def op_archive(self, _job):
        ended = [j for j in self.model.jobs.values() if j.state in ("completed", "failed", "crashed")]
        if not ended:
            return
        job = self.rng.choice(ended)
        self.model.inflight = ("state", job.id, "archived")
        self.call(write_state, self.dir_of(job), "archived")
        job.state = "archived"
        self.model.inflight = None
        self.model.touched.add(job.id)

    def op_resume(self, _job):
        crashed = [j for j in self.model.jobs.values() if j.state == "crashed"]
        if not crashed or len(self.model.running()) >= 6:
            return
        job = self.rng.choice(crashed)
        self.model.inflight = ("resume", job.id)
        self.call(write_control, self.m.mnt, f"resume {job.id}")
        job.state = "running"
        self.model.inflight = None
        self.model.touched.add(job.id)

    def op_sweep(self, _job):
        self.model.inflight = ("sweep",)
        self.call(write_control, self.m.mnt, "sweep")
        self.model.inflight = None


class Checker:
    """Everything acknowledged still holds after a recovery; counts the facts it checked."""

    def __init__(self, m, model: Model, label: str):
        self.m, self.model, self.label = m, model, label
        self.problems: list[str] = []

    def fact(self, ok: bool, message: str) -> None:
        self.model.facts += 1
        if not ok:
            self.problems.append(message)

    def where(self, record: dict) -> str | None:
        if record.get("hidden") or not record.get("where"):
            return None
        top = "quarantine" if record["where"] == "quarantine" else "workspaces"
        return os.path.join(self.m.mnt, top, record["id"])

    def settle_inflight(self, records: dict) -> None:
        """The operation the kill interrupted: it may go either way, never half."""
        op = self.model.inflight
        self.model.inflight = None
        if op is None:
            return
        kind = op[0]
        if kind == "mkdir":
            if op[1] in records:
                self.model.jobs[op[1]] = Job(op[1])
        elif kind == "state":
            job, target = self.model.jobs[op[1]], op[2]
            actual = records[job.id]["state"]
            before = job.state
            allowed = {"crashed", target} if before == "running" else {before, target}
            self.fact(actual in allowed, f"{job.id}: an interrupted `{target}` left it {actual} "
                                         f"(it was {before}; allowed {sorted(allowed)})")
            job.state = "crashed" if actual == "crashed" and before == "running" else actual
            if job.state == "archived":
                job.files.clear()
        elif kind == "resume":
            job = self.model.jobs[op[1]]
            self.fact(records[job.id]["state"] == "crashed",
                      f"{job.id}: an interrupted resume left it {records[job.id]['state']}, not crashed")
        elif kind in ("write", "mkdir-sub"):
            job = self.model.jobs[op[1]]
            if kind == "write":
                job.uncertain.add(op[2])
                job.files.pop(op[2], None)
                job.absent.discard(op[2])
        elif kind == "rename":
            job, src, dst = self.model.jobs[op[1]], op[2], op[3]
            base = self.where(records[job.id])
            if base is None:
                return
            here = [p for p in (src, dst) if os.path.lexists(os.path.join(base, p))]
            self.fact(len(here) >= 1, f"{job.id}: an interrupted rename {src} -> {dst} lost the file")
            if here == [dst]:  # it happened (atomically: the facts below check dst's content)
                job.files[dst] = job.files.pop(src)
                job.absent.add(src)
                job.absent.discard(dst)
        elif kind == "unlink":
            job, path = self.model.jobs[op[1]], op[2]
            base = self.where(records[job.id])
            if base is not None and not os.path.lexists(os.path.join(base, path)):
                job.files.pop(path, None)
                job.absent.add(path)

    def crash_running(self) -> None:
        for job in self.model.running():
            job.state = "crashed"
            self.model.touched.add(job.id)

    def check(self, records: dict, jobs: list[str]) -> None:
        for job_id in jobs:
            job = self.model.jobs[job_id]
            record = records.get(job_id)
            self.fact(record is not None, f"{job_id}: its mkdir returned, and there is no record")
            if record is None:
                continue
            self.fact(record["state"] == job.state,
                      f"{job_id}: acknowledged {job.state}, the record says {record['state']}")
            if job.state == "crashed":
                self.fact(record.get("where") == "quarantine" or record.get("where") is None,
                          f"{job_id}: crashed, its tree is in {record.get('where')}, not quarantine")
            if job.state == "archived":
                self.fact(record.get("where") is None, f"{job_id}: archived, and its tree is still there")
                continue
            base = self.where(record)
            if base is None:
                continue
            try:
                self.check_tree(job, base)
            except FileNotFoundError:
                # a cancelled job the sweeper hid between the listing and now
                again = read_jobs(self.m.mnt).get(job_id, {})
                if not (job.state == "cancelled" and (again.get("hidden") or not again.get("where"))):
                    raise

    def check_tree(self, job: Job, base: str) -> None:
        state_word = open(os.path.join(base, ".state")).read()
        self.fact(state_word == job.state + "\n", f"{job.id}: .state reads {state_word!r}, not {job.state}")
        for path, (length, digest) in sorted(job.files.items()):
            if job.state == "completed" and path.startswith("temp/"):
                continue
            full = os.path.join(base, path)
            try:
                with open(full, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                if not os.path.isdir(base):
                    raise
                self.fact(False, f"{job.id}: fsynced {path} ({length} bytes) is gone")
                continue
            self.fact(len(data) == length and sha256(data) == digest,
                      f"{job.id}: fsynced {path} differs ({len(data)} bytes, acknowledged {length})")
        for path in sorted(job.absent - set(job.files)):
            self.fact(not os.path.lexists(os.path.join(base, path)),
                      f"{job.id}: {path} was removed or renamed away, and it is there")
        if job.state == "completed":
            self.fact(not os.path.lexists(os.path.join(base, "temp")), f"{job.id}: completed, temp/ is still there")
            for path in [p for p in job.files if p.startswith("temp/")]:
                del job.files[path]
        if job.state in ENDED:
            problems = receipt_problems(base)
            self.fact(not problems, "; ".join(problems))


def kill_during_recovery(m, rng: random.Random) -> bool:
    """Start the daemon and SIGKILL it while it starts, recovers or has just mounted."""
    env = dict(os.environ, **m.env)
    from conftest import REPO
    env.setdefault("PYTHONPATH", str(REPO))
    with open(m.log, "ab") as log:
        proc = subprocess.Popen(m.cli_args(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    time.sleep(rng.uniform(0.3, 2.5))
    alive = proc.poll() is None
    if alive:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return alive


@pytest.mark.mount
@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path):
    seed_value = seed()
    rng = random.Random(seed_value)
    label = replay(seed_value)
    print(f"crash matrix: {ROUNDS} rounds ({'full' if FULL else 'short'} run)")
    m = start_mount(tmp_path, config=CONFIG)
    model = Model()
    kills = recovery_kills = 0
    started = time.monotonic()
    try:
        for round_no in range(ROUNDS):
            model.touched = set()
            work = Workload(m, model, random.Random(rng.random()), round_no)
            thread = threading.Thread(target=work.run, name=f"workload-{round_no}", daemon=True)
            delay = rng.uniform(0.02, 1.5)
            thread.start()
            work.done.wait(delay)
            m.kill9()
            kills += 1
            thread.join(60)
            assert not thread.is_alive(), f"round {round_no}: the workload hangs on the dead mount {label}"
            if work.error is not None:
                raise AssertionError(f"round {round_no}: the workload failed {label}: {work.error!r}") from work.error
            if rng.random() < RECOVERY_KILL_RATE:
                m.stop()  # clear the stale mount as a restart would
                recovery_kills += kill_during_recovery(m, rng)
            m.restart()

            checker = Checker(m, model, label)
            records = read_jobs(m.mnt)
            checker.settle_inflight(records)
            checker.crash_running()
            old = sorted(set(model.jobs) - model.touched)
            if (round_no + 1) % FULL_CHECK_EVERY == 0 or round_no == ROUNDS - 1:
                chosen = sorted(model.jobs)
            else:
                chosen = sorted(model.touched & set(model.jobs)) + rng.sample(old, min(SAMPLE_OLD_JOBS, len(old)))
            checker.check(records, chosen)
            report = doctor(m)
            checker.fact(report["problems"] == 0, f"wsfs doctor after round {round_no}: "
                         + json.dumps(report["findings"])[:2000])
            errors = m.daemon_errors()
            checker.fact(errors == [], "daemon errors:\n" + "\n".join(errors[-40:]))
            assert not checker.problems, (f"round {round_no} (kill after {delay:.3f}s, "
                                          f"{model.ops} operations so far) {label}:\n  "
                                          + "\n  ".join(checker.problems[:30]))
        took = time.monotonic() - started
        states: dict[str, int] = {}
        for job in model.jobs.values():
            states[job.state] = states.get(job.state, 0) + 1
        print(f"crash matrix: {kills + recovery_kills} kill points ({kills} in the workload, {recovery_kills} "
              f"during recovery), {model.ops} operations, {model.facts} facts checked, {len(model.jobs)} jobs "
              f"{states}, {took:.0f}s")
    finally:
        m.stop()


# -- regressions: what this suite found, each pinned by a short test -----------------------------------------


def test_recovery_trashes_the_tree_of_a_creation_cut_before_its_record(core):
    """A kill between create_job's mkdir and its commit left a tree without a record: doctor's orphan."""
    from wsfs.core import doctor as doctor_mod

    for rel in ("cut", "cut/input", "cut/output", "cut/temp"):  # what create_job makes before it commits
        core.tree.mkdir("jobs", rel)
    for rel in ("kept", "kept/output"):  # a tree with a file in it is not an unfinished creation
        core.tree.mkdir("jobs", rel)
    fd = core.tree.open("jobs", "kept/output/data", os.O_WRONLY | os.O_CREAT)
    os.close(fd)
    core.recovery.recover(unclean=True)
    assert not core.tree.exists("jobs", "cut")
    assert [f.kind for f in doctor_mod.diagnose(core) if f.job == "kept"] == ["orphan-tree"]
    core.create_job("cut", 0, 0)  # the id is free: it was never acknowledged
    assert core.records.get("cut").state == "running"


def _crashed_job_with_output(core, job_id: str) -> dict:
    from wsfs.core.model import JobState

    core.create_job(job_id, 0, 0)
    fd = core.tree.open("jobs", f"{job_id}/output/result", os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"result")
    os.close(fd)
    core.recovery.rebuild_manifest(job_id)
    return core.transition(job_id, JobState.CRASHED, "the wsfs daemon crashed")


def _receipt_matches_record(core, record) -> bool:
    fd = core.tree.open(record.where, f"{record.id}/receipt.json", os.O_RDONLY)
    try:
        data = os.read(fd, 1 << 20)
    finally:
        os.close(fd)
    return sha256(data) == record.receipt_sha256 and json.loads(data)["state"] == record.state


class Killed(BaseException):
    """SIGKILL, as far as the code that was running can tell."""


def test_recovery_moves_back_the_tree_of_a_resume_cut_before_its_commit(core, monkeypatch):
    """resume renamed quarantine/J to jobs/J and trashed the receipt before committing: a kill between
    left a crashed record, its tree in workspaces/ (doctor: misplaced) and no receipt."""
    from wsfs.core import doctor as doctor_mod

    record = _crashed_job_with_output(core, "r")

    def killed(*_args, **_kwargs):
        raise Killed()
    monkeypatch.setattr(core.records, "update", killed)  # the kill, at resume's commit
    with pytest.raises(Killed):
        core.resume("r")
    monkeypatch.undo()
    core.recovery.recover(unclean=True)
    assert core.tree.exists("quarantine", "r/output/result") and not core.tree.exists("jobs", "r")
    assert _receipt_matches_record(core, core.records.get("r"))
    assert [f for f in doctor_mod.diagnose(core) if f.kind != "trash"] == []
    assert core.records.get("r").receipt_sha256 == record.receipt_sha256


def test_a_resume_cut_after_its_commit_ends_crashed_with_a_fresh_receipt(core, monkeypatch):
    """The receipt of the last end goes only after resume's commit; recovery re-crashes the job and writes anew."""
    from wsfs.core import doctor as doctor_mod

    _crashed_job_with_output(core, "r")
    monkeypatch.setattr(core, "trash_stale_receipt", lambda job_id: None)  # the kill, right after the commit
    core.resume("r")
    assert core.tree.exists("jobs", "r/receipt.json")
    monkeypatch.undo()
    core.recovery.recover(unclean=True)
    record = core.records.get("r")
    assert record.state == "crashed" and _receipt_matches_record(core, record)
    assert [f for f in doctor_mod.diagnose(core) if f.kind != "trash"] == []


def test_live_doctor_does_not_report_a_tree_purged_while_it_runs(tmp_path):
    """doctor empties the trash, then looks: a tree a purge moved in between was reported as not deleted."""
    from wsfs.core.config import default_config
    from wsfs.fuse.daemon import Daemon

    daemon = Daemon(str(tmp_path / "mnt"), str(tmp_path / "data"), default_config())
    daemon.open()
    try:
        daemon.tree.mkdir("trash", "old.archived.1")
        empty = daemon.empty_trash

        def empty_then_a_purge_lands(stuck=None):
            removed = empty(stuck)
            daemon.tree.mkdir("trash", "j.purged.2")  # the sweeper's purge, just after the emptying
            return removed
        daemon.empty_trash = empty_then_a_purge_lands
        summary = daemon.doctor()
        assert summary["problems"] == 0, summary["findings"]
        assert daemon.tree.listdir("trash", "") == ["j.purged.2"]  # left to the trash thread
    finally:
        daemon.close(clean=True)
