"""Jobs' lifecycle: create, command, transition, end, seal (docs/spec.md §4-§8).

The only place where the state machine acts.  ``JobService`` owns the store,
the tree and the clock, and the services it is composed of: ``records`` (every
record read and change, ``wsfs.core.records``), ``recovery`` (what a crash left,
``wsfs.core.recovery``), ``manifest`` and ``usage``; the FUSE adapter, the
sweeper and tests call it.

Ending a job is a sequence of steps, each recorded in the job record's
``pending`` before the next starts, so that recovery (``Recovery.recover``) can finish
a transition that a crash interrupted::

    intent   pending = {target, reason, at, step}; writes refused from here
    scratch  (completed) every scratch area renamed into the trash
    sealed   record.sealed = True
    receipt  outputs hashed, receipt.json written (tmp + fsync + rename)
    done     state = target, ended, expiry; pending cleared

Every step is idempotent: recovery simply runs the steps after the recorded
one again.  ``WSFS_FAULT=after:STEP`` (tests only) kills the daemon with
SIGKILL right after STEP is committed.

Threading: FUSE threads call in concurrently.  A per-job ``RWLock`` orders
them: calls that change a workspace's files hold it shared
(``mutation``), transitions hold it exclusive, so a transition sees no write
in flight and no write lands after the seal.  Record updates are
read-modify-write inside one store transaction (``Records.update``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

import psutil

from . import control, metrics, publish, receipts, sharing
from .config import Config, Template, default_config
from .errors import (
    BadCommandError,
    JobExistsError,
    NoSpaceError,
    NotAllowedError,
    QuotaError,
    SealedError,
    StoreError,
    WsfsError,
)
from .limits import UsageMeter
from .manifest import ManifestWriter
from .model import (
    ENDED_STATES,
    AreaKind,
    JobRecord,
    JobState,
    check_transition,
    validate_job_id,
)
from .receipts import RECEIPT_FILE, iso
from .records import Records, is_sealed, location
from .recovery import Recovery
from .store import Store
from .tree import Tree
from .usage import add_area_usage, take_area_usage

log = logging.getLogger("wsfs.lifecycle")

RECORD_VERSION = 1
ENDING_STEPS = ("intent", "scratch", "sealed", "receipt", "done")
CRASH_STEPS = ("intent", "quarantine", "sealed", "receipt", "done")
ARCHIVE_STEPS = ("intent", "tree", "done")


def steps_for(target: JobState) -> tuple[str, ...]:
    if target == JobState.ARCHIVED:
        return ARCHIVE_STEPS
    return CRASH_STEPS if target == JobState.CRASHED else ENDING_STEPS


def _due(record: JobRecord, now: float) -> bool:
    """Has the record's deadline passed, at the expiry index's millisecond grain?"""
    deadline = record.expires_at
    return deadline is not None and int(deadline * 1000) <= int(now * 1000)


def open_data_dir(data_dir: str, config: Config | None = None, *, clock=time.time) -> JobService:
    """The composition root: the tree, the store and the service of a data dir, wired together
    (the daemon, the CLI's offline commands, the tests and the benchmarks all open one this way).
    ``JobService.close`` closes them again.  Raises ``StoreError`` for a store it cannot use."""
    tree = Tree(data_dir)
    try:
        store = Store(os.path.join(data_dir, "store"), clock=clock)
    except BaseException:
        tree.close()
        raise
    return JobService(store, tree, config, clock=clock)


class JobService:
    """Everything that creates jobs or changes their state."""

    def __init__(self, store: Store, tree: Tree, config: Config | None = None, clock=time.time):
        self.store = store
        self.tree = tree
        self._closed = False
        self.config = config or default_config()
        self.clock = clock
        self.manifest = ManifestWriter(self)
        self.usage = UsageMeter(self)
        self.records = Records(store, lambda records: self.records_changed(records))
        self.recovery = Recovery(self)
        self.create_lock = threading.Lock()
        self.trash_wake = threading.Event()
        # Set when a record's publishing was queued (wsfs.publish: the wsfs-publisher thread waits on it).
        self.publish_wake = threading.Event()
        # Called with a job id whenever its tree appears, moves or goes (the FUSE layer
        # drops the kernel's cached entries for it); set by fs.WsfsOperations.
        self.view_changed = lambda job_id: None
        # Called with the records every commit changed (the FUSE layer drops the kernel's
        # cached sizes of their .state, .job and .manifest); set by fs.WsfsOperations.
        self.records_changed = lambda records: None
        # (inode, size) -> sha256 of a file the FUSE layer is still hashing, or None;
        # set by fs.WsfsOperations (its hasher thread).
        self.pending_digest: Callable[[int, int], bytes | None] = lambda ino, size: None
        # Called with a job id before its tree is sealed, quarantined or leaves (the FUSE layer
        # removes the hidden names of its files unlinked while open, see fs.HiddenNames).
        self.tree_closing = lambda job_id: None
        # Called when a new job finds less than min_free: the sweeper's cleanup under disk pressure
        # runs now (set by the daemon), and the job is refused only if it found no room.
        self.space_short = lambda: None
        # Does the kernel enforce the POSIX ACLs of the tree (set by the FUSE layer at init)?
        # Sharing (wsfs.sharing) relies on it.
        self.acls_enforced = False
        # Called with a job id and the paths below its root whose ACLs changed (wsfs.sharing): the
        # FUSE layer drops what the kernel cached of them.
        self.acl_changed = lambda job_id, paths: None
        # Called with a job id and an area just before the area is emptied (drop_areas): the FUSE
        # layer lets go of the files open there, which now belong to the trash.
        self.area_dropping = lambda job_id, area: None
        fault = os.environ.get("WSFS_FAULT", "")
        self._fault = fault.partition("after:")[2] or None

    def close(self) -> None:
        """Store what the manifest writer still holds, then close the store and the tree (once)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.manifest.flush()
        finally:
            self.store.close()
            self.tree.close()

    def template(self, record: JobRecord) -> Template:
        try:
            return self.config.template(record.template)
        except KeyError:
            # A template removed from the config: the record's own areas still hold.
            default = self.config.template("default")
            return Template(record.template, {a: AreaKind(k) for a, k in record.areas.items()},
                            dict(default.retention), default.grace, 0, 0)

    # -- creation -------------------------------------------------------------

    def new_record(self, job_id: str, template: Template, uid: int, gid: int, now: float,
                   quota: int | None, max_files: int | None) -> JobRecord:
        return JobRecord(
            id=job_id, template=template.name, areas={a: k.value for a, k in template.areas.items()},
            created=now, uid=uid, gid=gid, state=JobState.RUNNING, state_since=now,
            history=[{"state": "running", "at": now}],
            quota=template.quota if quota is None else quota,
            max_files=template.max_files if max_files is None else max_files,
        )

    def create_job(self, job_id: str, uid: int, gid: int, *, mode: int = 0o755, template: str = "default",
                   quota: int | None = None, max_files: int | None = None, owner_pid: int | None = None,
                   extra: dict | None = None, labels: dict[str, str] | None = None,
                   max_running: float | None = None) -> JobRecord:
        """Make the record and the tree; durable before it returns.

        ``extra``: more record fields (``git``, ``origin``: see store.py), set in the same commit.
        ``labels``: free KEY -> text (a scheduler's job id, partition ...).  ``max_running``: the
        lease (else the template's): a running job past it is crashed by the sweeper.
        """
        validate_job_id(job_id)
        try:
            tmpl = self.config.template(template)
        except KeyError:
            raise BadCommandError(f"no template {template!r} (known: {', '.join(self.config.templates)})") from None
        owner = self._owner_of(owner_pid) if owner_pid else None
        with self.create_lock:
            if self.records.get(job_id) is not None:
                raise JobExistsError(f"job id {job_id} was used before")
            self._check_create_limits()
            self._check_user_jobs(job_id, uid)
            self._check_template_jobs(tmpl)
            if self.tree.exists("jobs", job_id):
                # A tree without a record: a creation that crashed before its commit.
                self.tree.move_to_trash("jobs", job_id, f"{job_id}.orphan")
                self.trash_wake.set()
            self.tree.mkdir("jobs", job_id, mode & 0o7777)
            try:
                self.tree.chmod("jobs", job_id, mode & 0o7777)
                for area in tmpl.areas:
                    self.tree.mkdir("jobs", f"{job_id}/{area}", 0o755)
                if os.geteuid() == 0:
                    for rel in [job_id] + [f"{job_id}/{a}" for a in tmpl.areas]:
                        self.tree.chown("jobs", rel, uid, gid)
                now = self.clock()
                record = self.new_record(job_id, tmpl, uid, gid, now, quota, max_files)
                record.owner = owner
                lease = tmpl.max_running if max_running is None else max_running
                record.labels = dict(labels or {})
                record.max_running, record.extensions = lease, 0
                record.expires_at = None if lease is None else now + lease  # a running job's: its lease
                if tmpl.setup:
                    record.setup = tmpl.setup  # for `wsfs create`, which runs it as the user
                for name, value in (extra or {}).items():  # git, origin: see store.py
                    setattr(record, name, value)

                def fn(w):
                    if w.job(job_id) is not None:
                        raise JobExistsError(f"job id {job_id} was used before")
                    w.put_job(record)
                    w.add_event("created", job_id, template=tmpl.name, uid=uid, **(
                        {"labels": record.labels} if record.labels else {}))
                    return [record]
                self.records.commit(fn)
            except BaseException:
                # Refused half way (a full disk: an area's mkdir, or the commit): no job, and no
                # tree left without a record either.
                if self.tree.move_to_trash("jobs", job_id, f"{job_id}.unmade"):
                    self.trash_wake.set()
                raise
        return record

    def _check_template_jobs(self, tmpl: Template) -> None:
        """A template's own ``max_jobs`` (e.g. 50 dev workspaces): counts its records that have a tree.

        A scan of the records, O(jobs), paid only by templates that set a cap.
        """
        if not tmpl.max_jobs:
            return
        with self.store.read() as r:
            live = sum(1 for j in r.jobs() if j.template == tmpl.name and j.where)
        if live >= tmpl.max_jobs:
            raise QuotaError(f"template {tmpl.name}: max_jobs ({tmpl.max_jobs}) live workspaces reached")

    def free_space(self) -> tuple[int, int]:
        """(bytes free on the data dir's filesystem, ``min_free`` in bytes)."""
        st = self.tree.statvfs()
        need = max(self.config.min_free_bytes, int(self.config.min_free_fraction * st.f_blocks * st.f_frsize))
        return st.f_bavail * st.f_frsize, need

    def _check_create_limits(self) -> None:
        free, need = self.free_space()
        if free < need:
            self.space_short()  # the sweeper's cleanup under disk pressure, now
            free, need = self.free_space()
        if free < need:
            raise NoSpaceError(f"only {free} bytes free on the data dir; min_free is {need}")
        if self.config.max_jobs:
            with self.store.read() as r:
                live = r.totals()["live"]
            if live >= self.config.max_jobs:
                raise QuotaError(f"max_jobs ({self.config.max_jobs}) live workspaces reached")

    def metered(self, record: JobRecord) -> bool:
        """Does a change to this job go through the usage meter (a quota or max_files of its own,
        or its owner's quota_per_user)?  Most jobs have none: no cost then."""
        return bool(record.quota or record.max_files or self.config.limits_for(record.uid)[1])

    def _check_user_jobs(self, job_id: str, uid: int) -> None:
        """``max_jobs_per_user`` (or the user's or group's own): EDQUOT, recorded as a rejected event."""
        max_jobs, _quota = self.config.limits_for(uid)
        if not max_jobs:
            return
        live = self.usage.user_jobs(uid)
        if live >= max_jobs:
            exc = QuotaError(f"uid {uid} has {live} live workspaces; its limit is {max_jobs} (max_jobs_per_user)")
            self._reject(job_id, "create", f"create {job_id}".encode(), exc, uid)
            raise exc

    def _owner_of(self, pid: int) -> dict:
        try:
            proc = psutil.Process(pid)
            return {"pid": pid, "create_time": proc.create_time()}
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            raise BadCommandError(f"no process with PID {pid}") from None

    # -- commands -------------------------------------------------------------

    def _reject(self, job_id: str | None, where: str, data: bytes, exc: WsfsError, uid: int = 0) -> None:
        text = bytes(data[:200]).decode("utf-8", "replace").strip()
        metrics.REJECTED.labels(via=where, errno=metrics.errno_name(exc.errno)).inc()

        def fn(w):
            w.add_event("rejected", job_id, via=where, command=text, errno=errno.errorcode.get(exc.errno, exc.errno),
                        reason=str(exc), uid=uid)
            w.bump_counter("rejected_writes")
            return []
        try:
            self.records.commit(fn)
        except StoreError as store_exc:  # a full disk: the caller still gets its errno
            log.warning("could not record a rejected write: %s", store_exc)
        except Exception:
            log.exception("could not record a rejected write")
        log.info("rejected %s write %r for %s: %s", where, text, job_id or "-", exc)

    def write_state(self, job_id: str, data: bytes, uid: int = 0) -> None:
        """Apply one ``.state`` write (docs/spec.md §5); durable when it returns."""
        try:
            command = control.parse_state_command(data)
            # The grammar gives each verb its arguments (control.parse_state_command).
            if command.verb == "transition" and command.target is not None:
                self.transition(job_id, command.target, command.reason)
            elif command.verb == "stage" and command.stage is not None:
                self.set_stage(job_id, command.stage, command.areas)
            elif command.verb == "drop":
                self.drop_areas(job_id, list(command.areas))
            elif command.verb == "owner" and command.pid is not None:
                self.set_owner(job_id, command.pid)
            elif command.verb == "extend" and command.seconds is not None:
                self.extend(job_id, command.seconds)
            elif command.verb == "label":
                self.set_labels(job_id, command.labels())
        except WsfsError as exc:
            self._reject(job_id, ".state", data, exc, uid)
            raise

    def set_labels(self, job_id: str, labels: dict[str, str]) -> JobRecord:
        """Set (or replace) labels of a running job (``label KEY=VALUE`` on ``.state``)."""
        with self.records.mutation(job_id):
            def change(record: JobRecord, w) -> None:
                record.labels = {**(record.labels or {}), **labels}
            return self.records.update(job_id, change, ("labelled", {"labels": labels}))

    def extend(self, job_id: str, seconds: float) -> JobRecord:
        """Push a job's deadline ``seconds`` further, at most ``max_extensions`` times: a running
        job's lease end, or an ended job's retention (when it is hidden; README "Notices
        before data goes").  A hidden job is restored first; a job with no deadline has
        nothing to extend."""
        with self.records.lock(job_id).exclusive():
            record = self.records.require(job_id)
            if record.pending or record.hidden or record.state == JobState.ARCHIVED.value:
                raise NotAllowedError(f"job {job_id} is {record.state}"
                                      f"{' and hidden: restore it first' if record.hidden else ''}: "
                                      "nothing to extend")
            if record.expires_at is None:
                raise NotAllowedError(f"job {job_id} has no deadline to extend (no lease, or kept forever)")
            cap = self.template(record).max_extensions
            if (record.extensions or 0) >= cap:
                raise NotAllowedError(f"job {job_id} was extended {cap} times already, the most its template allows")
            now = self.clock()

            def change(record: JobRecord, w) -> None:
                record.expires_at = max(record.expires_at or now, now) + seconds
                record.extensions = (record.extensions or 0) + 1
            return self.records.update(job_id, change, ("extended", {"by_s": seconds}))

    def write_control(self, data: bytes, uid: int = 0, gid: int = 0, sweep=None, doctor=None,
                      reload=None) -> str | None:
        """Apply one ``.wsfs/control`` write (docs/spec.md §10).

        ``sweep(dry_run=)`` and ``doctor(repair=)`` are the daemon's: they
        record their report as an event, which is how the CLI reads it.
        """
        try:
            command = control.parse_control_command(data)
            if command.verb == "create":
                from .cloning import git_fields  # cloning imports this module
                on_behalf = command.option("uid"), command.option("gid")
                if on_behalf != (None, None):
                    if uid != 0:
                        raise NotAllowedError("only root creates a job on behalf of a user (uid=, gid=)")
                    if None in on_behalf:
                        raise BadCommandError("uid= and gid= go together")
                    uid, gid = on_behalf
                self.create_job(command.job_id, uid, gid, template=command.option("template", "default"),
                                quota=command.option("quota"), max_files=command.option("max_files"),
                                owner_pid=command.option("owner"), extra=git_fields(command),
                                labels=command.labels(), max_running=command.option("max_running"))
            elif command.verb == "clone":
                from .cloning import clone_job, git_fields
                clone_job(self, command.source or "", command.job_id, uid, gid, extra=git_fields(command))
            elif command.verb in ("resume", "restore"):
                record = self.records.require(command.job_id)
                if uid != 0 and uid != record.uid:
                    raise NotAllowedError(f"job {command.job} belongs to uid {record.uid}")
                if command.verb == "resume":
                    self.resume(command.job_id)
                else:
                    self.restore(command.job_id)
            elif command.verb in ("share", "unshare"):
                sharing.share(self, command.job_id, command.who or "", command.access, uid)
            elif command.verb == "sweep":
                if sweep is None:
                    raise WsfsError("no sweeper runs here", errno=errno.ENOSYS)
                return sweep(dry_run=command.dry_run)
            elif command.verb == "publish":
                record = self.records.require(command.job_id)
                if uid != 0 and uid != record.uid:
                    raise NotAllowedError(f"job {command.job} belongs to uid {record.uid}")
                publish.request(self, command.job_id, command.retry, self.clock())
            elif command.verb == "reload":
                if reload is None:
                    raise WsfsError("no daemon runs here to reload", errno=errno.ENOSYS)
                if uid not in (0, os.getuid()):
                    raise NotAllowedError("reload is for root (or the user the daemon runs as)")
                return reload()
            elif command.verb == "note":  # a reason's whole text, kept in the events (wsfs.client.fold_reason)
                record = self.records.require(command.job_id)
                if uid != 0 and uid != record.uid:
                    raise NotAllowedError(f"job {command.job} belongs to uid {record.uid}")
                self.records.add_event("note", command.job, text=command.reason, uid=uid)
            elif command.verb == "doctor":
                if doctor is None:
                    raise WsfsError("no doctor runs here", errno=errno.ENOSYS)
                if command.repair and uid not in (0, os.getuid()):
                    raise NotAllowedError("doctor repair is for root (or the user the daemon runs as)")
                return doctor(repair=command.repair)
        except WsfsError as exc:
            self._reject(getattr(locals().get("command"), "job", None), "control", data, exc, uid)
            raise
        return None

    def set_stage(self, job_id: str, stage: str, drop: tuple[str, ...] = ()) -> JobRecord:
        """Record a stage; the scratch areas it names (``drop=AREA``) or its template drops at
        it (``drop_on_stage``) are emptied in the same step."""
        areas = list(dict.fromkeys([*drop, *self.template(self.records.require(job_id)).drops_at(stage)]))
        if areas:
            return self.drop_areas(job_id, areas, stage)
        with self.records.lock(job_id).shared():
            now = self.clock()

            def change(record: JobRecord, w) -> None:
                if record.state != JobState.RUNNING.value or is_sealed(record):
                    raise SealedError(f"job {job_id} is {record.state}: stages are for running jobs",
                                      errno=errno.EPERM)
                record.stage = stage
                record.stages.append({"name": stage, "at": now})
            return self.records.update(job_id, change, ("stage", {"stage": stage}))

    def drop_areas(self, job_id: str, areas: list[str], stage: str | None = None) -> JobRecord:
        """Empty scratch areas of a running job now (``drop AREA``, README "Dropping scratch
        during a run"), as completion does: each area is swapped with an empty twin and its
        old contents wait in the trash, O(1) whatever they hold.  Their usage leaves the
        record in the same commit, which records the drop in the stages (and the stage, if
        one is given); their manifest entries go in the background batch, after which
        anything written there anew is counted afresh.  Keep and input areas: EPERM."""
        with self.records.lock(job_id).exclusive():  # no write is half-way in the job while it happens
            record = self.records.require(job_id)
            if record.state != JobState.RUNNING.value or is_sealed(record) or record.where != "jobs":
                raise SealedError(f"job {job_id} is {record.state}: only a running job's scratch is dropped",
                                  errno=errno.EPERM)
            kinds = self.template(record).areas
            for area in areas:
                if area not in record.areas:
                    raise BadCommandError(f"job {job_id} has no area {area!r}")
                if kinds.get(area) != AreaKind.SCRATCH:
                    raise NotAllowedError(f"{area}/ is a{'n' if kinds.get(area) == AreaKind.INPUT else ''} "
                                          f"{kinds[area].value} area: only scratch areas are dropped")
            self.manifest.flush()
            now = self.clock()
            for area in areas:
                self.area_dropping(job_id, area)
                self.tree.empty_into_trash("jobs", f"{job_id}/{area}", f"{job_id}.{area}")
            self.trash_wake.set()
            self._fault_point("drop-swapped")  # a crash here: the tree is emptied, the record not yet
            freed = {}

            def change(record: JobRecord, w) -> None:
                freed.update(take_area_usage(record, w, areas))
                for area in areas:  # the area is still there, empty
                    record.area_usage[area] = [0, 0]
                if stage is not None:
                    record.stage = stage
                record.stages.append({"name": stage or "drop", "at": now, "dropped": list(areas)})
                if stage is not None:
                    w.add_event("stage", job_id, stage=stage)
                w.add_event("dropped", job_id, stage=stage, areas=freed)
            record = self.records.update(job_id, change)
            for area in areas:
                self.manifest.drop(job_id, area)  # queued under the lock: before any entry written anew
            self.usage.forget(job_id)
        self.view_changed(job_id)
        return record

    def set_owner(self, job_id: str, pid: int) -> JobRecord:
        owner = self._owner_of(pid)
        with self.records.lock(job_id).shared():
            def change(record: JobRecord, w) -> None:
                if record.state != JobState.RUNNING.value or is_sealed(record):
                    raise SealedError(f"job {job_id} is {record.state}: owners are for running jobs",
                                      errno=errno.EPERM)
                record.owner = owner
            return self.records.update(job_id, change, ("owner", {"pid": pid}))

    # -- transitions ------------------------------------------------------------

    def transition(self, job_id: str, target: JobState, reason: str | None = None) -> JobRecord:
        """Move a job to ``target`` (docs/spec.md §4, §6); returns the final record."""
        with self.records.lock(job_id).exclusive():
            record = self.records.require(job_id)
            if record.pending:
                if record.pending["target"] != target.value:
                    raise SealedError(f"job {job_id} is already ending", errno=errno.EPERM)
                # The same command again, after one that failed part way (a step's commit or the
                # receipt refused by a full disk; a transition in flight holds this lock, so this
                # is never one): finish what it started, as the next mount would (recover).
                log.warning("finishing the interrupted %s of job %s (after step %s)",
                            target.value, job_id, record.pending["step"])
                return self.finish_pending(record)
            current = record.state
            check_transition(current, target)
            if target == JobState.RUNNING:
                raise NotAllowedError("use resume to run a job again")
            if record.hidden:
                raise NotAllowedError(f"job {job_id} is hidden: restore it first")
            self.manifest.flush()
            now = self.clock()
            pending = {"target": target.value, "reason": reason, "at": now, "step": "intent", "from": current.value}

            def begin(record: JobRecord, w) -> None:
                if record.pending or record.state != current.value:
                    raise SealedError(f"job {job_id} changed meanwhile", errno=errno.EPERM)
                record.pending = pending
            record = self.records.update(job_id, begin)
            self._fault_point("intent")
            return self.finish_pending(record)

    def finish_pending(self, record: JobRecord) -> JobRecord:
        """Run the remaining steps of a recorded transition (idempotent)."""
        pending = record.pending
        target = JobState(pending["target"])
        steps = steps_for(target)
        for step in steps[steps.index(pending["step"]) + 1:]:
            record = getattr(self, f"_step_{step}")(record, target)
            self._fault_point(step)
        return record

    def _set_step(self, job_id: str, step: str, extra=None) -> JobRecord:
        def change(record: JobRecord, w) -> None:
            record.pending["step"] = step
            if extra:
                extra(record, w)
        return self.records.update(job_id, change)

    def _step_scratch(self, record: JobRecord, target: JobState) -> JobRecord:
        job_id = record.id
        areas = self.template(record).scratch_areas() if target == JobState.COMPLETED else []
        areas = [a for a in areas if a in record.areas]
        for area in areas:
            if self.tree.move_to_trash("jobs", f"{job_id}/{area}", f"{job_id}.{area}"):
                self.trash_wake.set()


        def drop_usage(record: JobRecord, w) -> None:
            # The areas' entries go in the background batch (100,000 of them cost ~0.25 s):
            # the .state write returns in milliseconds, the receipt reads only the areas that
            # stay, and recover() drops any entries a crash left behind.  Their usage leaves
            # the record now, from the per-area sums.
            take_area_usage(record, w, areas)
        record = self._set_step(job_id, "scratch", drop_usage)
        for area in areas:
            self.manifest.drop(job_id, area)
        return record

    def _step_quarantine(self, record: JobRecord, target: JobState) -> JobRecord:
        """A crashed job's tree moves to quarantine/ (docs/spec.md §7); idempotent."""
        job_id = record.id
        self.tree_closing(job_id)
        if record.where == "jobs" and self.tree.exists("jobs", job_id):
            self.tree.rename("jobs", job_id, "quarantine", job_id)
        log.warning("job %s crashed (%s): its tree is in quarantine/", job_id, record.pending["reason"])

        def moved(record: JobRecord, w) -> None:
            if record.where:
                record.where = "quarantine"
        return self._set_step(job_id, "quarantine", moved)

    def _step_sealed(self, record: JobRecord, target: JobState) -> JobRecord:
        self.tree_closing(record.id)

        def seal(record: JobRecord, w) -> None:
            record.sealed = True
        return self._set_step(record.id, "sealed", seal)

    def _step_receipt(self, record: JobRecord, target: JobState) -> JobRecord:
        """Write ``receipt.json`` (wsfs.core.receipts) from the areas that stay, every kept file
        hashed as it is now, and store what it found in the manifest (docs/spec.md §6)."""
        job_id = record.id
        where = location(record)
        assert where is not None  # a job being ended has its tree
        root, rel = where
        keep = set(self.template(record).keep_areas())
        with self.store.read() as r:
            entries = {path: entry for area in self._surviving_areas(record, target)
                       for path, entry in r.manifest(job_id, area)}
        hashed, restated, gone = {}, {}, []
        for path, entry in entries.items():
            if path.split("/", 1)[0] in keep:
                verified = receipts.verified_entry(self.tree, root, f"{rel}/{path}", entry, self.pending_digest)
            else:  # kept, not hashed (docs/spec.md §6); but a file still open when the job ended was last
                verified = receipts.current_entry(self.tree, root, f"{rel}/{path}", entry)  # recorded at creation
            if verified is None:  # listed, but removed behind the daemon's back: no output, no entry
                gone.append(path)
            elif path.split("/", 1)[0] in keep:
                hashed[path] = verified
            elif verified != entry:
                restated[path] = verified
        for path in gone:
            del entries[path]
        entries.update(hashed)
        entries.update(restated)
        data = receipts.receipt_bytes(record, target, sorted(entries.items()), hashed)
        receipts.write_atomically(self.tree, root, f"{rel}/{RECEIPT_FILE}", data)

        def store_hashes(record: JobRecord, w) -> None:
            deltas: dict[str, list[int]] = {}

            def count(path, dbytes, dfiles):  # usage is the manifest's sum, in all and by area (usage.py)
                mine = deltas.setdefault(path.split("/", 1)[0], [0, 0])
                mine[0] += dbytes
                mine[1] += dfiles
            for path in gone:
                old = w.delete_manifest(job_id, path)
                if old is not None:
                    count(path, -old[0], -1)
            for path, entry in {**hashed, **restated}.items():
                old = w.put_manifest(job_id, path, entry)  # a file still open at the end grew since its entry
                count(path, entry[0] - (old[0] if old else 0), 0 if old else 1)
            add_area_usage(record, deltas)
            record.receipt_sha256 = hashlib.sha256(data).hexdigest()
        return self._set_step(job_id, "receipt", store_hashes)

    def _surviving_areas(self, record: JobRecord, target: JobState) -> list[str]:
        """The areas a job keeps in its ended state: all but the scratch ones at completion."""
        dropped = set(self.template(record).scratch_areas()) if target == JobState.COMPLETED else set()
        return [a for a in record.areas if a not in dropped]

    def drop_scratch_entries(self) -> int:
        """Queue the removal of manifest entries of completed jobs' scratch areas; return how many.

        Normally ``_step_scratch`` queued them; a crash can lose that queue.
        """
        found = 0
        with self.store.read() as r:
            for record in r.jobs():
                if record.state != JobState.COMPLETED.value or record.pending:
                    continue
                for area in self.template(record).scratch_areas():
                    if next(r.manifest(record.id, area), None) is not None:
                        self.manifest.drop(record.id, area)
                        found += 1
        return found

    def read_receipt(self, record: JobRecord) -> bytes | None:
        """The bytes of the job's ``receipt.json``, while its tree is there."""
        where = location(record)
        if where is None:
            return None
        try:
            return self.tree.read(where[0], f"{where[1]}/{RECEIPT_FILE}", os.O_NONBLOCK)
        except OSError:
            return None

    def _step_tree(self, record: JobRecord, target: JobState) -> JobRecord:
        job_id = record.id
        self.tree_closing(job_id)
        where = location(record)
        receipt = self.read_receipt(record)  # kept in the store: `wsfs show --receipt` after the tree
        if where and self.tree.move_to_trash(where[0], where[1], f"{job_id}.archived"):
            self.trash_wake.set()

        def drop(record: JobRecord, w) -> None:
            if receipt is not None:
                w.put_receipt(job_id, receipt)
            w.delete_manifest_prefix(job_id)
            record.where = None
        return self._set_step(job_id, "tree", drop)

    def _step_done(self, record: JobRecord, target: JobState) -> JobRecord:
        pending = record.pending
        self.usage.forget(record.id)

        def finish(record: JobRecord, w) -> None:
            now = pending["at"]
            record.state = target
            record.state_since = now
            record.reason = pending["reason"]
            record.history.append({"state": target.value, "at": now, "reason": pending["reason"]})
            if target in ENDED_STATES:
                record.ended = now
                record.sealed = True
                record.extensions = 0  # the lease's extensions were the running job's
                after = self.template(record).expiry_after(target)
                record.expires_at = None if after is None else now + after
            else:  # archived
                record.expires_at = None
            record.pending = None
            if target in (JobState.COMPLETED, JobState.FAILED, JobState.CRASHED):
                # Publishing and hooks run later, in the publisher: queued in this same commit.
                publish.queue(record, self.template(record), target.value, now)
        record = self.records.update(record.id, finish, ("transition", {
            "from": pending.get("from"), "to": target.value, "reason": pending["reason"]}))
        metrics.TRANSITIONS.labels(from_state=pending.get("from") or "", to_state=target.value).inc()
        log.info("job %s: %s -> %s%s", record.id, pending.get("from"), target.value,
                 f" ({pending['reason']})" if pending["reason"] else "")  # one journal line per transition
        if publish.status_of(record.publish) == "pending":
            self.publish_wake.set()
        self.view_changed(record.id)
        return record

    def _fault_point(self, step: str) -> None:
        if self._fault == step:
            log.critical("WSFS_FAULT: dying after step %s", step)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)

    # -- resume and restore (retention and crashes build on these) --------------

    def resume(self, job_id: str) -> JobRecord:
        with self.records.lock(job_id).exclusive():
            record = self.records.require(job_id)
            check_transition(record.state, JobState.RUNNING)
            if record.hidden:
                raise NotAllowedError(f"job {job_id} is hidden: restore it first")
            # A crash after this rename and before the commit below leaves the tree in jobs/ and the
            # record crashed: recovery moves the tree back (_return_misplaced_trees), receipt and all.
            if record.where == "quarantine":
                self.tree.rename("quarantine", job_id, "jobs", job_id)
            now = self.clock()
            self.usage.forget(job_id)
            from .retention import owner_alive  # retention imports this module
            owner = record.owner
            owner = owner if owner and owner_alive(owner) else None  # a gone owner would crash it again

            def change(record: JobRecord, w) -> None:
                record.state = JobState.RUNNING
                record.state_since = now
                record.history.append({"state": "running", "at": now, "reason": "resumed"})
                lease = record.max_running
                record.sealed, record.where, record.owner = False, "jobs", owner
                record.ended = record.reason = record.receipt_sha256 = None
                record.expires_at = None if lease is None else now + lease
                record.extensions = 0
            was = record.state
            record = self.records.update(job_id, change, ("transition", {"from": was, "to": "running",
                                                                   "reason": "resumed"}))
            metrics.TRANSITIONS.labels(from_state=was, to_state="running").inc()
            log.info("job %s: %s -> running (resumed)", job_id, was)
            self.trash_stale_receipt(job_id)  # after the commit: until then the receipt is the record's
        self.view_changed(job_id)
        return record

    def trash_stale_receipt(self, job_id: str) -> None:
        """A running job has no receipt: the one of its last end goes (resume, or recovery after a
        crash between resume's commit and this)."""
        if self.tree.exists("jobs", f"{job_id}/{RECEIPT_FILE}"):
            if self.tree.move_to_trash("jobs", f"{job_id}/{RECEIPT_FILE}", f"{job_id}.receipt"):
                self.trash_wake.set()

    def restore(self, job_id: str) -> JobRecord:
        with self.records.lock(job_id).exclusive():
            record = self.records.require(job_id)
            if not record.hidden or not record.where:
                raise NotAllowedError(f"job {job_id} is not hidden" if record.where
                                      else f"job {job_id} has no tree left to restore")
            now = self.clock()
            after = self.template(record).expiry_after(record.state)

            def change(record: JobRecord, w) -> None:
                record.hidden = False
                record.expires_at = None if after is None else now + after  # a fresh retention period
            record = self.records.update(job_id, change, ("restored", {}))
        self.view_changed(job_id)
        return record

    # -- retention: hide and purge (the sweeper decides when) ---------------------

    def hide(self, job_id: str, now: float) -> JobRecord:
        """Expired: gone from the view, data kept until the grace ends (docs/spec.md §4)."""
        return self._one(self.hide_many([job_id], now), job_id)

    def purge(self, job_id: str, now: float) -> JobRecord:
        """Grace over: the tree goes to the trash, the record stays with its purge time."""
        return self._one(self.purge_many([job_id], now), job_id)

    @staticmethod
    def _one(outcome: dict, job_id: str) -> JobRecord:
        result = outcome[job_id]
        if isinstance(result, WsfsError):
            raise result
        return result

    def hide_many(self, job_ids: list[str], now: float) -> dict[str, JobRecord | WsfsError]:
        """Hide each due job; one store commit for all.  Returns job -> record or the refusal."""
        def change(record: JobRecord, w) -> tuple[str, dict]:
            if record.hidden or not _due(record, now):
                raise NotAllowedError(f"job {record.id} is no longer due to be hidden")  # resumed meanwhile
            grace = self.template(record).grace
            record.hidden = True
            record.expires_at = now + grace
            return "hidden", {"purge_at": now + grace}
        return self._retire(job_ids, change)

    def purge_many(self, job_ids: list[str], now: float, early: str | None = None) -> dict[str, JobRecord | WsfsError]:
        """Purge each hidden, due job: trees to the trash, then one commit for all records.

        ``early`` (the sweeper under disk pressure) gives the reason to purge a job before its
        time: any ended job with a tree and nothing left to publish, hidden or not, ended at
        least ``pressure_min_age`` ago.  A crash between a rename and the commit leaves a
        record whose tree is gone: the next sweep purges it again and finds nothing to move.
        """
        receipts: dict[str, bytes] = {}

        def check(record: JobRecord):
            if early is not None:
                refused = self.early_purge_refusal(record, now)
                if refused:
                    raise NotAllowedError(f"job {record.id} {refused}")
            elif not record.hidden or not _due(record, now):
                raise NotAllowedError(f"job {record.id} is no longer due to be purged")  # restored meanwhile
            where = location(record)
            receipt = self.read_receipt(record)  # kept in the store: `wsfs show --receipt` after the tree
            if receipt is not None:
                receipts[record.id] = receipt
            if where and self.tree.move_to_trash(where[0], where[1], f"{record.id}.purged"):
                self.trash_wake.set()

        def change(record: JobRecord, w) -> tuple[str, dict]:
            if record.id in receipts:
                w.put_receipt(record.id, receipts[record.id])
            w.delete_manifest_prefix(record.id)
            record.where, record.purged_at, record.expires_at, record.hidden = None, now, None, True
            if early is not None:
                record.purge_reason = early
            if publish.queue(record, self.template(record), "purged", now):
                self.publish_wake.set()
            return "purged", {"state": record.state, **({"reason": early} if early is not None else {})}
        return self._retire(job_ids, change, check)

    def early_purge_refusal(self, record: JobRecord, now: float) -> str | None:
        """Why a job may not be purged before its time (under disk pressure), or None if it may:
        only an ended job with a tree, not ending or publishing, ended ``pressure_min_age`` ago."""
        if record.state not in {s.value for s in ENDED_STATES} or record.pending:
            return f"is {record.state}: only ended jobs are purged early"
        if not record.where:
            return "has no tree left"
        if publish.status_of(record.publish) in ("pending", "retry", "requested", "failed"):
            return "still has results to publish"
        if now - record.state_since < self.config.pressure_min_age:
            return "ended less than pressure_min_age ago"
        return None

    def _retire(self, job_ids: list[str], change, check=None) -> dict[str, JobRecord | WsfsError]:
        """Apply ``change(record, writer) -> (event, fields)`` to many jobs under their locks, in one commit.

        ``check(record)`` runs first for each, outside the transaction (it may move
        trees); a job it or ``change`` refuses is left as it was.
        """
        outcome: dict[str, JobRecord | WsfsError] = {}
        with contextlib.ExitStack() as locks:
            for job_id in sorted(set(job_ids)):  # one order everywhere: no deadlock between sweeps
                locks.enter_context(self.records.lock(job_id).exclusive())
            ready = []
            for job_id in job_ids:
                try:
                    record = self.records.require(job_id)
                    if check is not None:
                        check(record)
                    ready.append(job_id)
                except WsfsError as exc:
                    outcome[job_id] = exc

            def fn(w):
                changed = []
                for job_id in ready:
                    record = w.job(job_id)
                    try:
                        kind, fields = change(record, w)
                    except WsfsError as exc:
                        outcome[job_id] = exc
                        continue
                    w.put_job(record)
                    w.add_event(kind, job_id, **fields)
                    outcome[job_id] = record
                    changed.append(record)
                return changed
            if ready:
                self.records.commit(fn)
        for job_id, result in outcome.items():
            if not isinstance(result, WsfsError):
                self.view_changed(job_id)
        return outcome

    def tree_lost(self, job_id: str, now: float, reason: str, by: str) -> JobRecord:
        """A job whose tree is gone from the data dir (found by ``doctor``): the record says so,
        as a purge does, and a running job ends ``crashed`` by the state table (docs/spec.md §4),
        its record alone (no tree to quarantine or seal).  The caller holds the job's lock."""
        record = self.records.require(job_id)
        was_running = record.state == JobState.RUNNING.value
        if was_running:
            check_transition(JobState.RUNNING, JobState.CRASHED)

        def change(rec: JobRecord, w) -> None:
            w.delete_manifest_prefix(job_id)
            rec.where, rec.purged_at, rec.expires_at = None, now, None
            if was_running:
                rec.state, rec.state_since, rec.ended, rec.reason = JobState.CRASHED, now, now, reason
                rec.sealed, rec.owner = True, None
                rec.history.append({"state": JobState.CRASHED.value, "at": now, "reason": reason})
        record = self.records.update(job_id, change, ("purged", {"state": record.state, "by": by, "reason": reason}))
        if was_running:
            metrics.TRANSITIONS.labels(from_state=JobState.RUNNING.value, to_state=JobState.CRASHED.value).inc()
        self.usage.forget(job_id)
        return record

    # -- views --------------------------------------------------------------------

    def manifest_entries(self, job_id: str) -> list[tuple[str, list]]:
        self.manifest.flush()
        with self.store.read() as r:
            return list(r.manifest(job_id))

    def job_document(self, job_id: str) -> dict:
        """The ``.job`` file: the documented fields of the record (``job_document``)."""
        self.manifest.flush()
        return job_document(self.records.require(job_id))


#: ``.job``'s document (README "What is in the mount"): these fields, with this meaning, for as
#: long as ``version`` stays.  The store's record may change; this document does not.
JOB_DOCUMENT_VERSION = 1
JOB_DOCUMENT_FIELDS = (
    "id", "state", "reason", "stage", "stages", "history", "template", "areas", "uid", "gid", "owner",
    "created", "state_since", "ended", "expires_at", "usage", "quota", "max_files", "sealed", "publish",
    "git", "origin", "setup", "receipt_sha256", "labels", "max_running", "extensions", "shares",
)
_DOCUMENT_TIMES = ("created", "state_since", "ended", "expires_at")


def job_document(record: JobRecord) -> dict:
    """``version``, the ``JOB_DOCUMENT_FIELDS`` (absent optional ones as null), each time also as
    ``*_iso``, ``location`` (``workspaces`` or ``quarantine``) and ``ending`` (the state a
    transition in flight goes to, else null)."""
    document = {"version": JOB_DOCUMENT_VERSION, **{key: getattr(record, key) for key in JOB_DOCUMENT_FIELDS}}
    document["state"] = record.state.value
    for key in _DOCUMENT_TIMES:
        document[key + "_iso"] = iso(getattr(record, key))
    document["location"] = {"jobs": "workspaces", "quarantine": "quarantine"}.get(record.where or "")
    document["ending"] = (record.pending or {}).get("target")
    document["sealed"] = bool(record.sealed or record.pending)
    return document
