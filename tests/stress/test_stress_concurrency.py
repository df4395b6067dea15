"""Concurrency: 16 processes on 64 jobs at once against one mount (docs/spec.md §5, §6, §8).

Writers write self-checking files (a sha256 header, then the payload) to
``NAME.part`` and rename them into place, readers read and verify whatever
they find, renamers move results between names and from ``temp/`` to
``output/``, four ``.state`` writers race to end the same job at the same
moment (exactly one wins, the others get ``EPERM``), two readers ``cat``
``.job``, ``.state`` and ``receipt.json`` of the jobs being ended (always
valid), and one process sweeps, with retention short enough that the
sweeper hides and purges cancelled jobs meanwhile.  Each race ends one job;
the winner makes the next, so 64 jobs are live all the time.

A watchdog fails the run when a process makes no progress for
``STALL_S`` seconds (a deadlock), after a ``py-spy dump`` of the daemon
(when py-spy is installed) and the kernel stacks of the stuck processes.
At the end: every completed job has a valid receipt, ``wsfs doctor`` is
clean, and the daemon logged no error.

``WSFS_STRESS=full``: 150 s; default 20 s.  ``WSFS_SEED`` replays the
choices (the interleaving varies with timing).
"""

from __future__ import annotations

import collections
import errno
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import time
import traceback

import pytest
from stress_support import FULL, doctor, read_jobs, receipt_problems, replay, seed, size, start_mount, write_control

DURATION_S = size(20, 150)
LIVE_JOBS = 64
STALL_S = 60.0
ROLES = ["writer"] * 4 + ["reader"] * 3 + ["renamer"] * 2 + ["racer"] * 4 + ["catter"] * 2 + ["sweeper"]
RACE_WORDS = ("completed", "failed lost the race", "cancelled lost the race", "completed")
# What a process may meet when the job it picked ended, went, or is not made yet.
EXPECTED = {errno.ENOENT, errno.EROFS}
CONFIG = """
sweep_interval = "1s"
[retention]
cancelled = "2s"
grace = "2s"
"""
STATE_WORDS = {"running", "completed", "failed", "cancelled", "crashed", "archived"}


def job_name(n: int) -> str:
    return f"c{n:05d}"


def framed(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest() + payload


def intact(data: bytes) -> bool:
    return len(data) >= 32 and hashlib.sha256(data[32:]).digest() == data[:32]


class Worker:
    """One process: ``run`` loops on its role until the deadline; the summary goes to ``results``."""

    def __init__(self, wid, role, mnt, seed_value, shared):
        self.wid, self.role, self.mnt = wid, role, mnt
        self.ws = os.path.join(mnt, "workspaces")
        self.rng = random.Random(seed_value * 1000 + wid)
        self.shared = shared
        self.counts: collections.Counter = collections.Counter()
        self.problems: list[str] = []
        self.races: list[tuple] = []
        self.n = 0

    # -- plumbing -----------------------------------------------------------------

    def progress(self) -> None:
        self.shared["ops"][self.wid] += 1
        self.shared["last"][self.wid] = time.monotonic()

    def attempt(self, what: str, fn, *args):
        """Run one operation; expected errnos are counted, others are problems."""
        try:
            result = fn(*args)
            self.counts[what] += 1
            return result
        except OSError as exc:
            if exc.errno in EXPECTED:
                self.counts[f"{what}:{errno.errorcode[exc.errno]}"] += 1
            else:
                self.problems.append(f"{self.role}{self.wid} {what} {args!r}: {exc!r}")
            return None
        finally:
            self.progress()

    def window_job(self) -> str:
        base = self.shared["round"].value
        return job_name(self.rng.randrange(base, base + LIVE_JOBS))

    def run(self, results) -> None:
        try:
            deadline = self.shared["deadline"]
            if self.role == "racer":
                self.race_loop(deadline)
            else:
                step = getattr(self, f"step_{self.role}")
                while time.monotonic() < deadline:
                    step()
        except BaseException:  # noqa: BLE001 - reported by the parent
            self.problems.append(f"{self.role}{self.wid} crashed:\n{traceback.format_exc()}")
        finally:
            self.shared["last"][self.wid] = float("inf")  # done: the watchdog stops looking
            results.put({"wid": self.wid, "role": self.role, "counts": dict(self.counts),
                         "problems": self.problems, "races": self.races})

    # -- roles ------------------------------------------------------------------------

    def step_writer(self) -> None:
        job = self.window_job()
        area = self.rng.choice(("output", "output", "temp"))
        self.n += 1
        final = os.path.join(self.ws, job, area, f"w{self.wid}-{self.n}")
        data = framed(self.rng.randbytes(self.rng.choice((100, 4096, 70000, 300000))))

        def write():
            fd = os.open(final + ".part", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                for start in range(0, len(data), 65536):
                    os.write(fd, data[start:start + 65536])
                    self.progress()
            finally:
                os.close(fd)
            os.rename(final + ".part", final)
            return True
        if self.attempt("write", write):
            back = self.attempt("read-back", lambda: open(final, "rb").read())
            if back is not None and back != data:
                if intact(back):  # a renamer moved another result over it meanwhile
                    self.counts["read-back:replaced"] += 1
                else:
                    self.problems.append(f"writer{self.wid}: {final} reads back {len(back)} bytes that no "
                                         f"writer wrote (it wrote {len(data)})")

    def _files(self, job: str) -> list[str]:
        found = []
        for area in ("output", "temp"):
            names = self.attempt("listdir", os.listdir, os.path.join(self.ws, job, area)) or []
            found += [os.path.join(self.ws, job, area, n) for n in names if not n.endswith(".part")]
        return found

    def step_reader(self) -> None:
        job = self.window_job()
        files = self._files(job)
        for path in self.rng.sample(files, min(3, len(files))):
            data = self.attempt("read", lambda p=path: open(p, "rb").read())
            if data is not None and not intact(data):
                self.problems.append(f"reader{self.wid}: {path} is not what a writer wrote ({len(data)} bytes)")
        text = self.attempt("manifest", lambda: open(os.path.join(self.ws, job, ".manifest")).read())
        if text is not None:
            try:
                [json.loads(line) for line in text.splitlines()]
            except ValueError as exc:
                self.problems.append(f"reader{self.wid}: {job}/.manifest is not JSON lines: {exc}")

    def step_renamer(self) -> None:
        job = self.window_job()
        files = [f for f in self._files(job) if os.path.basename(os.path.dirname(f)) in ("output", "temp")]
        if not files:
            time.sleep(0.005)
            return
        src = self.rng.choice(files)
        self.n += 1
        dst = os.path.join(self.ws, job, "output", f"m{self.wid}-{self.n}")
        if self.rng.random() < 0.3:  # over an existing result
            outputs = [f for f in files if "/output/" in f and f != src]
            dst = self.rng.choice(outputs) if outputs else dst
        self.attempt("rename", os.rename, src, dst)

    def step_catter(self) -> None:
        frontier = self.shared["round"].value
        job = job_name(frontier + self.rng.randrange(-2, 3))
        for name in (".job", ".state", "receipt.json"):
            text = self.attempt(f"cat {name}", lambda n=name: open(os.path.join(self.ws, job, n)).read())
            if text is None:
                continue
            try:
                if name == ".state":
                    if text.strip() not in STATE_WORDS or not text.endswith("\n"):
                        raise ValueError(f"not a state word: {text!r}")
                else:
                    json.loads(text)
            except ValueError as exc:
                self.problems.append(f"catter{self.wid}: {job}/{name} during a transition: {exc}")

    def step_sweeper(self) -> None:
        self.attempt("sweep", write_control, self.mnt, "sweep")
        status = self.attempt("status", lambda: open(os.path.join(self.mnt, ".wsfs", "status")).read())
        if status is not None:
            json.loads(status)
        self.attempt("ls", os.listdir, self.ws)
        time.sleep(0.05)

    def race_loop(self, deadline: float) -> None:
        """Four racers end the same job at once; racer 0 keeps time and makes the next job."""
        index = self.shared["racers"].index(self.wid)
        barrier = self.shared["barrier"]
        while True:
            if index == 0:
                time.sleep(self.rng.uniform(0.02, 0.3))  # let the others work on the job first
                if time.monotonic() >= deadline:
                    self.shared["stop"].value = 1
            self.progress()
            barrier.wait(STALL_S)
            if self.shared["stop"].value:
                return
            round_no = self.shared["round"].value
            job = job_name(round_no)
            word = RACE_WORDS[index]

            def end():
                fd = os.open(os.path.join(self.ws, job, ".state"), os.O_WRONLY | os.O_TRUNC)
                try:
                    os.write(fd, (word + "\n").encode())
                finally:
                    os.close(fd)
            try:
                end()
                outcome = "ok"
            except OSError as exc:
                outcome = errno.errorcode.get(exc.errno, str(exc.errno))
            self.races.append((round_no, index, word.split()[0], outcome))
            self.progress()
            barrier.wait(STALL_S)
            if index == 0:
                self.shared["round"].value = round_no + 1
                self.attempt("mkdir", os.mkdir, os.path.join(self.ws, job_name(round_no + LIVE_JOBS)))
            barrier.wait(STALL_S)


def _child(worker: Worker, results) -> None:
    worker.run(results)


def dump_stuck(m, procs, stuck: list[int]) -> str:
    """What a deadlock looks like: the daemon's Python stacks and the kernel stacks of the stuck."""
    lines = []
    spy = shutil.which("py-spy", path=os.path.dirname(sys.executable))
    if spy and m.proc is not None:
        try:  # --nonblocking: never stop a daemon that may be waiting on a page lock
            out = subprocess.run([spy, "dump", "--nonblocking", "--pid", str(m.proc.pid)], capture_output=True,
                                 text=True, timeout=30)
            lines.append(f"py-spy dump of the daemon (pid {m.proc.pid}):\n{out.stdout}{out.stderr}")
        except subprocess.TimeoutExpired:
            lines.append("py-spy dump timed out")
    pids = [m.proc.pid] if m.proc is not None else []
    pids += [procs[w].pid for w in stuck]
    for pid in pids:
        for task in sorted(os.listdir(f"/proc/{pid}/task")) if os.path.isdir(f"/proc/{pid}/task") else []:
            try:
                with open(f"/proc/{pid}/task/{task}/wchan") as f:
                    wchan = f.read()
                stack = ""
                if wchan not in ("0", "fuse_dev_do_read", "do_epoll_wait", "futex_wait_queue", "hrtimer_nanosleep"):
                    with open(f"/proc/{pid}/task/{task}/stack") as f:
                        stack = f.read()
                lines.append(f"pid {pid} task {task}: {wchan}\n{stack}")
            except OSError:
                pass
    return "\n".join(lines)


@pytest.mark.mount
@pytest.mark.slow
def test_sixteen_processes_on_sixty_four_jobs(tmp_path):
    seed_value = seed()
    label = replay(seed_value)
    print(f"concurrency: {len(ROLES)} processes, {LIVE_JOBS} live jobs, {DURATION_S}s "
          f"({'full' if FULL else 'short'} run)")
    m = start_mount(tmp_path, config=CONFIG)
    ctx = multiprocessing.get_context("fork")
    procs: list = []
    try:
        for n in range(LIVE_JOBS):
            os.mkdir(m.ws / job_name(n))
        racers = [w for w, role in enumerate(ROLES) if role == "racer"]
        shared = {
            "ops": ctx.Array("q", len(ROLES), lock=False), "last": ctx.Array("d", len(ROLES), lock=False),
            "round": ctx.Value("i", 0, lock=False), "stop": ctx.Value("i", 0, lock=False),
            "barrier": ctx.Barrier(len(racers)), "racers": racers,
            "deadline": time.monotonic() + DURATION_S,
        }
        for w in range(len(ROLES)):
            shared["last"][w] = time.monotonic()
        results = ctx.Queue()
        started = time.monotonic()
        for w, role in enumerate(ROLES):
            proc = ctx.Process(target=_child, args=(Worker(w, role, str(m.mnt), seed_value, shared), results),
                               name=f"{role}{w}", daemon=True)
            proc.start()
            procs.append(proc)

        # The watchdog: every process must make progress; none may outlive the run by much.
        summaries, stalled = {}, None
        while len(summaries) < len(procs):
            try:
                summary = results.get(timeout=1.0)
                summaries[summary["wid"]] = summary
                continue
            except Exception:  # noqa: BLE001 - queue.Empty
                pass
            now = time.monotonic()
            stuck = [w for w in range(len(procs)) if w not in summaries and now - shared["last"][w] > STALL_S]
            dead = [w for w in range(len(procs)) if w not in summaries and not procs[w].is_alive()]
            if stuck or dead or now - started > DURATION_S + 10 * STALL_S:
                stalled = (f"no progress for {STALL_S:.0f}s from {[procs[w].name for w in stuck]}, "
                           f"died without a summary: {[procs[w].name for w in dead]}\n" + dump_stuck(m, procs, stuck))
                break
        took = time.monotonic() - started
        assert stalled is None, f"{label} deadlock or crash: {stalled}"
        for proc in procs:
            proc.join(30)

        problems = [p for s in summaries.values() for p in s["problems"]]
        assert not problems, f"{label} {len(problems)} problem(s):\n  " + "\n  ".join(problems[:40])

        races = collections.defaultdict(list)
        for s in summaries.values():
            for round_no, index, word, outcome in s["races"]:
                races[round_no].append((index, word, outcome))
        bad = {r: o for r, o in races.items() if sorted(x[2] for x in o) != ["EPERM", "EPERM", "EPERM", "ok"]}
        assert not bad, (f"{label} races without exactly one winner and EPERM for the others: "
                         f"{dict(list(bad.items())[:10])}")

        # The winners' states are the jobs' states; completed jobs have valid receipts.
        records = read_jobs(m.mnt)
        receipts = 0
        for round_no, outcomes in sorted(races.items()):
            winner = next(word for _i, word, outcome in outcomes if outcome == "ok")
            record = records[job_name(round_no)]
            assert record["state"] == winner, f"{label} {job_name(round_no)}: won by {winner}, is {record['state']}"
            if winner == "completed":
                problems += receipt_problems(str(m.ws / job_name(round_no)))
                receipts += 1
        assert not problems, f"{label} receipts:\n  " + "\n  ".join(problems[:20])
        report = doctor(m)
        assert report["problems"] == 0, f"{label} wsfs doctor: {json.dumps(report['findings'])[:3000]}"
        errors = m.daemon_errors()
        assert errors == [], f"{label} daemon errors:\n" + "\n".join(errors[-60:])

        totals: collections.Counter = collections.Counter()
        for s in summaries.values():
            totals.update(s["counts"])
        ops = sum(shared["ops"])
        print(f"concurrency: {ops} operations by {len(procs)} processes in {took:.1f}s, {len(races)} races "
              f"(one winner each), {receipts} receipts checked; {dict(sorted(totals.items()))}")
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        for proc in procs:
            proc.join(10)
        m.stop()


# -- regressions: what this suite found, each pinned by a short test -----------------------------------------


@pytest.mark.parametrize("end", ["completed", "failed"])
def test_the_manifest_and_usage_of_an_ended_job_follow_files_still_open_at_its_end(core, end):
    """A file is recorded at its creation and again at close; ended while it was still being written,
    the job kept its creation entry (doctor: changed since the manifest saw it) or, for outputs, a
    re-hashed entry whose growth the usage never counted (doctor: usage says ..., the manifest ...)."""
    from wsfs.core import doctor as doctor_mod
    from wsfs.core.model import JobState

    core.create_job("j", 0, 0)
    for path in ("output/o", "temp/t", "input/i"):
        fd = core.tree.open("jobs", f"j/{path}", os.O_WRONLY | os.O_CREAT)
        core.manifest.put("j", path, os.fstat(fd))  # what create() records
        core.manifest.flush()
        os.write(fd, b"x" * 1000)  # the writer is still at it when the job ends: no close yet
        os.close(fd)
    core.transition("j", JobState(end), None if end == "completed" else "boom")
    assert [f.line() for f in doctor_mod.diagnose(core) if f.kind != "trash"] == []
    record = core.records.get("j")
    kept = ["output", "input"] if end == "completed" else ["output", "temp", "input"]
    assert record.usage == {"bytes": 1000 * len(kept), "files": len(kept)}
    assert {a: u for a, u in record.area_usage.items() if u != [0, 0]} == {a: [1000, 1] for a in kept}
