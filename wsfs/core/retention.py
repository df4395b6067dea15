"""The sweeper: retention (hide, then purge) and owner liveness (docs/spec.md §4, §7).

One pass (``sweep``) does, at time ``now``:

1. Due jobs, from the store's expiry index (a range scan up to ``now``, so
   the cost grows with the number due, not the number of jobs).  A visible
   job whose deadline passed is *hidden* (its new deadline is the end of the
   grace); a hidden one is *purged*, unless a process still has its tree
   open, in which case it is *skipped* and tried again next pass.
2. Owners, from the store's owners index: a running job whose owner process
   is gone, or is another process that reused the pid (create times
   differ), is *crashed*: its tree goes to quarantine/.
3. Disk pressure (``_relieve``): when the data disk has less free space than
   ``min_free``, the trash is emptied first; if that is not enough, jobs are
   purged early, class by class in the order of ``pressure`` (hidden jobs past
   half their grace, then ended jobs by state), oldest first in each class,
   until what they hold covers the shortfall.  Never a running job, one that
   ended within ``pressure_min_age``, one with results still to publish, or
   one a process holds open.  The sweeper thread checks the free space every
   ``PRESSURE_CHECK_S`` between its passes.

``dry_run`` computes the same plan and changes nothing.  Each planned action
carries why (state, age, policy), so ``wsfs sweep --dry-run`` can say it.

Threading: ``run`` is the ``wsfs-sweeper`` thread; ``sweep`` may also be
called from a FUSE thread (``sweep`` on ``.wsfs/control``).  ``_lock``
makes passes one at a time.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pwd
import threading
import time
from collections.abc import Callable

import psutil

from . import metrics
from .errors import WsfsError
from .lifecycle import JobService
from .model import JobRecord, JobState
from .publish import HOOK_PATH, run_hook
from .units import format_duration, format_size

log = logging.getLogger("wsfs.retention")

OWNER_TIME_SLACK = 0.05  # psutil's create_time is rounded to the clock tick
PRESSURE_CHECK_S = 2.0  # how often the sweeper thread looks at the free space between passes
PRESSURE_REASON = "disk pressure"
RELIEF_WAIT_S = 10.0  # how long a mkdir short of space waits for the sweeper's cleanup


@dataclasses.dataclass
class Action:
    job: str | None      # None: the trash
    action: str          # hide | purge | skip | crash | notice | empty-trash
    why: str
    done: bool = False
    error: str | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass
class SweepReport:
    at: float
    dry_run: bool
    actions: list[Action]
    duration_ms: float = 0.0
    pressure: dict | None = None  # free bytes before and after, and min_free, when below it

    def as_dict(self) -> dict:
        counts: dict[str, int] = {}
        for a in self.actions:
            counts[a.action] = counts.get(a.action, 0) + 1
        out = {"at": self.at, "dry_run": self.dry_run, "duration_ms": round(self.duration_ms, 3),
               "counts": counts, "actions": [a.as_dict() for a in self.actions]}
        if self.pressure is not None:
            out["pressure"] = self.pressure
        return out


def open_paths(pid: int) -> list[str]:
    """The paths of a process's open fds, read from /proc alone.

    Not psutil's ``open_files()``: it stat()s every path, and a thread of the
    daemon waiting on its own mount makes a SIGKILLed daemon unkillable (the
    kernel waits uninterruptibly for an answer no thread is left to give).
    """
    fd_dir = f"/proc/{pid}/fd"
    paths = []
    for fd in os.listdir(fd_dir):
        try:
            paths.append(os.readlink(f"{fd_dir}/{fd}"))
        except OSError:
            continue  # closed meanwhile
    return paths


def owner_alive(owner: dict) -> bool:
    """Is the process that registered as owner still the same, living process?"""
    try:
        proc = psutil.Process(owner["pid"])
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(proc.create_time() - owner["create_time"]) <= OWNER_TIME_SLACK
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True  # exists, and we cannot tell more: never crash a job on a guess


class Sweeper:
    def __init__(self, service: JobService, *, mountpoint: str | None = None, open_jobs=None, empty_trash=None):
        self.service = service
        self.mountpoint = mountpoint
        # jobs with files open through the mount
        self.open_jobs: Callable[[], set[str]] = open_jobs or (lambda: set())
        self._empty_trash = empty_trash or self._remove_trash  # the daemon's, which the trash thread shares
        self._futile = False  # the last pass below min_free could free nothing more
        self._futile_at = 0.0
        self._passes = threading.Condition()  # counts passes, for relieve_now
        self._started = self._finished = 0
        self._lock = threading.Lock()
        self.last: dict | None = None
        self.wake = threading.Event()
        self.stopping = threading.Event()  # set by the daemon at shutdown: no new action starts

    def _busy_jobs(self) -> set[str]:
        """Jobs whose tree a process holds: open through the mount, or cwd/open files inside."""
        busy = set(self.open_jobs())
        prefixes = [os.path.join(self.service.tree.data_dir, d) + os.sep for d in ("jobs", "quarantine")]
        if self.mountpoint:
            prefixes += [os.path.join(self.mountpoint, d) + os.sep for d in ("workspaces", "quarantine")]
        for proc in psutil.process_iter():
            try:
                paths = [proc.cwd()] + open_paths(proc.pid)
            except (psutil.Error, OSError):
                continue
            for path in paths:
                for prefix in prefixes:
                    if path.startswith(prefix):
                        busy.add(path[len(prefix):].split(os.sep, 1)[0])
        return busy

    def plan(self, now: float) -> list[Action]:
        service = self.service
        actions: list[Action] = []
        with service.store.read() as r:
            due = list(r.due(now))
            owners = r.owners()
        busy: set[str] | None = None
        for deadline, job_id in due:
            record = service.records.get(job_id)
            if record is None or record.pending:
                continue
            state = record.state
            age = format_duration(now - record.state_since)
            template = service.template(record)
            if state == JobState.RUNNING.value:  # a running job's deadline is its lease
                actions.append(Action(job_id, "crash", "lease expired"))
                continue
            if not record.hidden:
                policy = format_duration(template.expiry_after(JobState(state)))
                grace = format_duration(template.grace)
                actions.append(Action(job_id, "hide", f"{state} for {age}, policy {state}={policy}, grace {grace}"))
                if template.grace == 0:
                    actions.append(Action(job_id, "purge", "grace is 0: purged at expiry"))
            else:
                actions.append(Action(job_id, "purge",
                                      f"{state} for {age}, hidden for "
                                      f"{format_duration(now - deadline + template.grace)}"
                                      f" (grace {format_duration(template.grace)})"))
        for action in actions:
            if action.action == "purge":
                busy = self._busy_jobs() if busy is None else busy
                if action.job in busy:
                    action.action, action.why = "skip", "a process still has files open in its tree; retried next sweep"
        for job_id, owner in owners:
            if not owner_alive(owner):
                actions.append(Action(job_id, "crash", f"owner pid {owner['pid']} is gone"))
        actions += self._notices(now)
        return actions

    def _notices(self, now: float) -> list[Action]:
        """Jobs whose template has ``on_expiring`` and that are hidden or purged within its
        ``expiring_notice``: the hook runs once per deadline and step (hide, purge)."""
        service = self.service
        leads = [t.expiring_notice for t in service.config.templates.values() if t.on_expiring]
        if not leads:
            return []
        out = []
        with service.store.read() as r:
            soon = [(d, j) for d, j in r.due(now + max(leads)) if d > now]
        for deadline, job_id in soon:
            record = service.records.get(job_id)
            if record is None or record.pending or record.state == JobState.RUNNING.value:
                continue
            template = service.template(record)
            step = "purge" if record.hidden else "hide"
            if not template.on_expiring or deadline - now > template.expiring_notice:
                continue
            if (record.notified or {}).get(step) == record.expires_at:
                continue  # told already, for this deadline (the record's own: the index keeps milliseconds)
            out.append(Action(job_id, "notice", f"{step} at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(deadline))}"
                                                f" UTC (notice {format_duration(template.expiring_notice)})"))
        return out

    def _notify(self, action: Action) -> None:
        """Run the template's ``on_expiring`` as the owner; record that it ran (it runs once)."""
        service = self.service
        assert action.job is not None  # a notice is about a job
        record = service.records.require(action.job)
        deadline = record.expires_at
        if deadline is None:
            return  # extended or restored since the plan: no deadline to tell of
        step = "purge" if record.hidden else "hide"
        template = service.template(record)
        env = {"PATH": HOOK_PATH, "LANG": "C.UTF-8", "WSFS_JOB": record.id, "WSFS_ACTION": step,
               "WSFS_EXPIRES": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(deadline)),
               "WSFS_EXPIRES_EPOCH": str(int(deadline)), "WSFS_STATE": record.state,
               "WSFS_TEMPLATE": record.template, "HOME": "/"}
        try:
            pw = pwd.getpwuid(record.uid)
            env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name, WSFS_OWNER=pw.pw_name)
        except KeyError:
            env["WSFS_OWNER"] = str(record.uid)
        assert template.on_expiring is not None  # _notices plans notices only for templates with a hook
        code, output, error = run_hook(template.on_expiring, env=env, uid=record.uid, gid=record.gid, cwd="/",
                                       timeout=template.hook_timeout, stop=self.stopping)
        if error:
            action.error = error

        def change(record: JobRecord, w) -> None:
            record.notified = {**(record.notified or {}), step: deadline}
        service.records.update(action.job, change, ("notice", {"action": step, "expires_at": deadline, "exit": code,
                                                        "error": error, "output": output[-2000:]}))

    def _remove_trash(self) -> None:
        for name in self.service.tree.listdir("trash", ""):
            self.service.tree.remove_tree("trash", name)

    def _pressure_candidates(self, now: float) -> list[tuple[JobRecord, str]]:
        """Jobs that may go early, in the order they would: ``pressure``'s classes in turn,
        oldest first in each (hidden: by when they were hidden; a state: by when it ended)."""
        service = self.service
        with service.store.read() as r:
            records = [rec for rec in r.jobs() if rec.where and rec.usage["bytes"] > 0
                       and service.early_purge_refusal(rec, now) is None]
        out, seen = [], set()
        for cls in service.config.pressure:
            pool = []
            for rec in records:
                if cls == "hidden":
                    grace = service.template(rec).grace
                    hidden_at = (rec.expires_at or now) - grace
                    if rec.hidden and now - hidden_at >= grace / 2:
                        pool.append((hidden_at, rec, f"hidden for {format_duration(now - hidden_at)}, "
                                                     f"past half its grace ({format_duration(grace)})"))
                elif rec.state == cls:
                    pool.append((rec.state_since, rec, f"{cls} for {format_duration(now - rec.state_since)}"))
            for _since, rec, why in sorted(pool, key=lambda p: (p[0], p[1].id)):
                if rec.id not in seen:
                    seen.add(rec.id)
                    out.append((rec, why))
        return out

    def _relieve(self, now: float, dry_run: bool) -> tuple[list[Action], dict | None]:
        """Below ``min_free``: the trash first, then early purges until the shortfall is covered."""
        service = self.service
        free, need = service.free_space()
        if free >= need:
            self._futile = False
            return [], None
        info = {"free_before": free, "min_free": need}
        actions = []
        trash = service.tree.listdir("trash", "")
        if trash:
            actions.append(Action(None, "empty-trash", f"{PRESSURE_REASON}: {len(trash)} trash entries go first"))
            if not dry_run:
                self._empty_trash()
                actions[-1].done = True
                free, need = service.free_space()
        if free < need and service.config.pressure:
            short = need - free
            busy: set[str] | None = None  # the scan of every process's files, once, if anything may go
            batch = []
            for record, why in self._pressure_candidates(now):
                if short <= 0:
                    break
                busy = self._busy_jobs() if busy is None else busy
                if record.id in busy:
                    actions.append(Action(record.id, "skip", f"{PRESSURE_REASON}, but a process has files open"))
                    continue
                batch.append(Action(record.id, "purge",
                                    f"{PRESSURE_REASON}: {format_size(free)} free, min_free {format_size(need)}; "
                                    f"{why}; {format_size(record.usage['bytes'])}"))
                short -= record.usage["bytes"]
            actions += batch
            if batch and not dry_run:
                self._apply_batch(batch, lambda jobs, at: service.purge_many(jobs, at, early=PRESSURE_REASON), now)
                for action in batch:
                    if action.done:
                        metrics.PRESSURE_PURGES.inc()
                        log.warning("job %s purged early: %s", action.job, action.why)
                self._empty_trash()
                free, need = service.free_space()
        info["free_after"] = free
        futile = free < need and not any(a.done for a in actions if a.action == "purge")
        if futile and not dry_run and not self._futile:
            log.warning("%s: %s free on the data dir, min_free is %s, and nothing more may go (pressure = %s)",
                        PRESSURE_REASON, format_size(free), format_size(need), list(service.config.pressure) or "off")
        if not dry_run:
            self._futile = futile
            self._futile_at = time.monotonic()
        return actions, info

    def relieve_now(self, timeout: float | None = None) -> None:
        """A new job found less than min_free: wake the sweeper thread and wait (at most
        ``timeout``) for a pass that started after this call, so that the job may find room.

        The pass runs on the sweeper's own thread, never the caller's: the caller may hold
        locks (``create_lock``, a clone's job locks) that the pass needs, and then the wait
        ends at the timeout and the job is refused rather than deadlocked.  Not again within
        ``PRESSURE_CHECK_S`` of a pass that could free nothing."""
        if self._futile and time.monotonic() - self._futile_at < PRESSURE_CHECK_S:
            return
        with self._passes:
            target = self._started + 1
            self.wake.set()
            self._passes.wait_for(lambda: self._finished >= target, RELIEF_WAIT_S if timeout is None else timeout)

    def sweep(self, now: float | None = None, dry_run: bool = False, announce: bool = True) -> SweepReport:
        """One pass; ``announce`` records a ``sweep`` event even when nothing was due."""
        with self._lock:
            with self._passes:
                self._started += 1
                number = self._started
            try:
                return self._sweep(now, dry_run, announce)
            finally:
                with self._passes:
                    self._finished = max(self._finished, number)
                    self._passes.notify_all()

    def _sweep(self, now: float | None, dry_run: bool, announce: bool) -> SweepReport:
        started = time.perf_counter()
        now = self.service.clock() if now is None else now
        actions = self.plan(now)
        if not dry_run:
            # Hides, then purges, each batch in one store commit; then the rest one by one.
            for kind, apply_many in (("hide", self.service.hide_many), ("purge", self.service.purge_many)):
                batch = [a for a in actions if a.action == kind]
                if batch and not self.stopping.is_set():
                    self._apply_batch(batch, apply_many, now)
            for action in actions:
                if action.action in ("hide", "purge"):
                    continue
                if self.stopping.is_set():  # the one in flight finished; the rest waits for the next mount
                    action.error = "not done: wsfs is stopping"
                    continue
                self._apply(action, now)
            for action in actions:
                if action.action in ("hide", "purge") and not action.done and action.error is None:
                    action.error = "not done: wsfs is stopping"
        relief, pressure = self._relieve(now, dry_run)
        actions += relief
        report = SweepReport(now, dry_run, actions, (time.perf_counter() - started) * 1000, pressure)
        if not dry_run:
            metrics.SWEEPS.observe(report.duration_ms / 1000)
        summary = report.as_dict()
        if announce or actions:
            self._record(summary)
        if not dry_run:
            self.last = {k: v for k, v in summary.items() if k != "actions"}
        return report

    def _apply_batch(self, batch: list[Action], apply_many, now: float) -> None:
        try:
            outcome = apply_many([a.job for a in batch], now)
        except Exception as exc:
            log.exception("sweep: could not %s %d job(s)", batch[0].action, len(batch))
            for action in batch:
                action.error = str(exc)
            return
        for action in batch:
            result = outcome.get(action.job)
            if isinstance(result, Exception):  # the job changed since the plan (restored, resumed)
                action.error = str(result)
                log.warning("sweep: did not %s job %s: %s", action.action, action.job, result)
            else:
                action.done = True

    def _apply(self, action: Action, now: float) -> None:
        service, job = self.service, action.job
        if job is None:
            return  # the trash: _relieve empties it itself
        try:
            if action.action == "hide":
                service.hide(job, now)
            elif action.action == "purge":
                service.purge(job, now)
            elif action.action == "crash":
                service.transition(job, JobState.CRASHED, action.why)
            elif action.action == "notice":
                self._notify(action)
            elif action.action == "skip":
                self.service.records.add_event("skipped", action.job, why=action.why)
            action.done = action.action != "skip"
        except WsfsError as exc:  # the job changed since the plan (restored, resumed): not an error
            action.error = str(exc)
            log.warning("sweep: did not %s job %s: %s", action.action, action.job, exc)
        except Exception as exc:
            action.error = str(exc)
            log.exception("sweep: could not %s job %s", action.action, action.job)

    def _record(self, summary: dict) -> None:
        def fn(w):
            w.add_event("sweep", None, dry_run=summary["dry_run"], counts=summary["counts"],
                        duration_ms=summary["duration_ms"], actions=summary["actions"][:200],
                        **({"pressure": summary["pressure"]} if "pressure" in summary else {}))
            return []
        self.service.records.commit(fn)

    def run(self, stop: threading.Event, interval: float) -> None:
        """Sweep every ``interval``, when woken, and as soon as the free space falls below min_free."""
        next_at = time.monotonic() + interval
        while not stop.is_set():
            woken = self.wake.wait(min(PRESSURE_CHECK_S, max(next_at - time.monotonic(), 0)))
            self.wake.clear()
            if stop.is_set():
                break
            # Short of space: a pass now, unless the last one could free nothing (then at the next
            # interval, or when woken: a job refused for want of space wakes it).
            if woken or time.monotonic() >= next_at or (not self._futile and self._short_of_space()):
                self.sweep(announce=False)
                next_at = time.monotonic() + interval

    def _short_of_space(self) -> bool:
        try:
            free, need = self.service.free_space()
        except OSError:
            return False
        return free < need
