"""``wsfs doctor``: the store compared with the data dir, and the repairs (docs/spec.md §10).

``diagnose(service)`` returns one ``Finding`` per problem, each one line a
sysadmin can read::

    orphan-tree     a tree in DATA/jobs or DATA/quarantine that no record names
    misplaced-tree  a job's tree is in the other root than its record says
    missing-tree    a record says the job has a tree, and there is none
    manifest        a job's manifest disagrees with its files (path, size, mtime, inode)
    hidden          ``.fuse_hidden*`` names of files unlinked while open, left in a job
                    that has no file open (a crash, or an older wsfs on libfuse 3.14)
    stray           something in DATA/jobs or DATA/quarantine that is not a directory
    pending         a transition a crash interrupted (no daemon runs to finish it)
    trash           an entry of DATA/trash not deleted yet
    stale-readers   LMDB reader slots held by processes that are gone

``repair(service, findings)`` acts on each and returns what it did, one
line per action::

    orphan-tree     adopted: moved to quarantine/ as a ``crashed`` job, with a
                    record, a manifest and a receipt (a fresh id when its name
                    is taken or is not a job id)
    misplaced-tree  moved back to where its record says
    missing-tree    the record is marked purged (``where`` None, ``purged_at``);
                    a job that was still running also ends ``crashed``
    manifest        rebuilt from the files (``JobService.rebuild_manifest``)
    hidden          removed (``JobService.remove_hidden_leftovers``)
    stray           removed (a symlink itself, never what it points to)
    pending         finished (``JobService.recover``), as the next mount would
    trash           deleted
    stale-readers   the slots freed (``Store.stale_readers``)

``run`` does both and gives the ``Report`` that the daemon records as a
``doctor`` event and the CLI prints.

Threading: these run either on a FUSE thread of the live daemon (``doctor``
on ``.wsfs/control``, ``live=True``) or in a ``wsfs doctor --data`` process
that holds the data-dir lock, so that no daemon runs (``live=False``).  Live,
every job is checked again under its own lock (orphans under the creation
lock) before it is reported or repaired, so a transition or a creation in
flight is never taken for damage; jobs in the middle of a transition
(``pending``) are left to it, and jobs with files open through the mount
(``busy``) are not compared with their manifests, since an open file's entry
is written when it is closed (docs/spec.md §8).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import stat
import time

import psutil

from .config import Template
from .lifecycle import JobService
from .model import DEFAULT_TEMPLATE, JOB_ID_RE, AreaKind, JobRecord, JobState
from .records import location

log = logging.getLogger("wsfs.doctor")

TREE_ROOTS = ("jobs", "quarantine")
VIEW_NAMES = {"jobs": "workspaces", "quarantine": "quarantine"}
REPAIR_ORDER = ("pending", "misplaced-tree", "missing-tree", "stray", "orphan-tree", "manifest", "hidden",
                "trash", "stale-readers")
ADOPTED_TEMPLATE = "adopted"
EXAMPLES = 3  # paths named per kind of manifest difference


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem: ``kind`` (see the module docstring), the job it concerns, one line of detail."""

    kind: str
    job: str | None
    detail: str
    root: str | None = None   # for trees and trash entries: where in the data dir
    name: str | None = None   # ... and under which name

    @property
    def job_id(self) -> str:
        """The job of a finding about one (every kind a repair works on by job has it)."""
        if self.job is None:
            raise ValueError(f"a {self.kind} finding names no job")
        return self.job

    @property
    def at(self) -> tuple[str, str]:
        """``(root, name)`` of a finding about a place in the data dir."""
        if self.root is None or self.name is None:
            raise ValueError(f"a {self.kind} finding names no place")
        return self.root, self.name

    def line(self) -> str:
        return f"{self.kind}: {self.job}: {self.detail}" if self.job else f"{self.kind}: {self.detail}"

    def as_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass
class Report:
    """What ``run`` found and did; ``as_dict`` is the ``doctor`` event's body."""

    repair: bool
    findings: list[Finding]
    actions: list[str]
    remaining: list[Finding]
    duration_ms: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.findings

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.findings:
            out[f.kind] = out.get(f.kind, 0) + 1
        return out

    def as_dict(self, limit: int = 500) -> dict:
        return {"repair": self.repair, "problems": len(self.findings), "counts": self.counts(),
                "findings": [f.as_dict() for f in self.findings[:limit]],
                "actions": self.actions[:limit], "remaining": len(self.remaining),
                "duration_ms": round(self.duration_ms, 3)}


# -- diagnosis ------------------------------------------------------------------------


def _summary(service: JobService, root: str, rel: str) -> str:
    """``3 files, 1.2K`` for a tree (or one file) in the data dir."""
    from .units import format_size

    try:
        st = service.tree.lstat(root, rel)
    except OSError as exc:
        return exc.strerror or str(exc)
    if not stat.S_ISDIR(st.st_mode):
        return format_size(st.st_size)
    files = total = 0
    try:
        for _path, fst in service.tree.walk_files(root, rel):
            files += 1
            total += fst.st_size
    except OSError as exc:
        return f"cannot walk it: {exc.strerror}"
    return f"{files} file{'s' if files != 1 else ''}, {format_size(total)}"


def _tree_state(service: JobService, record: JobRecord) -> tuple[bool, str | None]:
    """(tree where the record says?, the other root holding a tree of that id, or None)."""
    where = record.where
    here = where is not None and _is_dir(service, where, record.id)
    others = [r for r in TREE_ROOTS if r != where and _is_dir(service, r, record.id)]
    return here, (others[0] if others else None)


def _is_dir(service: JobService, root: str, name: str) -> bool:
    try:
        return stat.S_ISDIR(service.tree.lstat(root, name).st_mode)
    except OSError:
        return False


def manifest_differences(service: JobService, record: JobRecord, hidden: list[str] | None = None) -> str | None:
    """One line on how the job's manifest and usage disagree with its files, or None.

    ``hidden``, when given, gets the job's hidden names (found in the same walk)."""
    job = record.id
    where = location(record)
    if where is None:
        return None
    files = service.recovery.tree_files(record, hidden)
    with service.store.read() as r:
        entries = dict(r.manifest(job))
        usage = (r.job(job) or record).usage
    unlisted = sorted(files.keys() - entries.keys())
    gone = sorted(entries.keys() - files.keys())
    changed = sorted(p for p in files.keys() & entries.keys()
                     if list(entries[p][:3]) != [files[p].st_size, files[p].st_mtime_ns, files[p].st_ino])
    parts = []
    for paths, what in ((unlisted, "not in the manifest"), (gone, "in the manifest but gone"),
                        (changed, "changed since the manifest saw them")):
        if paths:
            shown = ", ".join(paths[:EXAMPLES]) + (", ..." if len(paths) > EXAMPLES else "")
            parts.append(f"{len(paths)} {'file' if len(paths) == 1 else 'files'} {what} ({shown})")
    listed = [sum(e[0] for e in entries.values()), len(entries)]
    if not parts and [usage["bytes"], usage["files"]] != listed:
        parts.append(f"usage says {usage['bytes']} bytes in {usage['files']} files, "
                     f"the manifest {listed[0]} bytes in {listed[1]} files")
    return "; ".join(parts) or None


def _dead_readers(service: JobService) -> list[int]:
    """Pids in the LMDB reader table that are no longer running (py-lmdb ``Environment.readers``)."""
    pids = set()
    for line in service.store.env.readers().splitlines()[1:]:
        fields = line.split()
        if fields and fields[0].isdigit():
            pids.add(int(fields[0]))
    return sorted(pid for pid in pids if not psutil.pid_exists(pid))


def diagnose(service: JobService, *, live: bool = False, busy=frozenset(), trash_stuck=None) -> list[Finding]:
    """Every problem found, in a stable order (see the module docstring).

    ``trash_stuck``: live, the trash entries the daemon just failed to delete; others are
    trees a purge or an ending moved there since (in flight, not damage).
    """
    findings: list[Finding] = []
    service.manifest.flush()
    with service.store.read() as r:
        job_ids = list(r.job_ids())
    on_disk: dict[str, list[tuple[str, int]]] = {root: [] for root in TREE_ROOTS}
    for root in TREE_ROOTS:
        for name, _ino, kind in sorted(service.tree.scandir(root, "")):
            on_disk[root].append((name, kind))

    # Trees (and other things) in jobs/ and quarantine/ that no record explains.
    for root in TREE_ROOTS:
        for name, kind in on_disk[root]:
            where_view = f"{VIEW_NAMES[root]}/{name}"
            if kind != stat.S_IFDIR:
                findings.append(Finding("stray", None, f"{root}/{name}: not a job tree "
                                        f"({'a symlink' if kind == stat.S_IFLNK else 'not a directory'})",
                                        root, name))
                continue
            with service.create_lock if live else _NO_LOCK:
                record = service.records.get(name) if JOB_ID_RE.fullmatch(name) else None
                if record is None:
                    if _is_dir(service, root, name):
                        findings.append(Finding("orphan-tree", name, f"{root}/{name}: a tree without a record "
                                                f"({_summary(service, root, name)})", root, name))
                    continue
            with service.records.lock(name).shared() if live else _NO_LOCK:
                record = service.records.get(name)
                if record is None or record.pending or record.where == root:
                    continue
                where = record.where
                if where is None:
                    gone = "purged" if record.purged_at else record.state
                    findings.append(Finding("orphan-tree", name, f"{root}/{name}: a tree, but its record "
                                            f"({gone}) has none ({_summary(service, root, name)})", root, name))
                elif not _is_dir(service, where, name):
                    findings.append(Finding("misplaced-tree", name, f"its tree is in {where_view}, its record "
                                            f"({record.state}) says {VIEW_NAMES[where]}/", root, name))
                else:  # a second tree of the same id: the one the record names wins
                    findings.append(Finding("orphan-tree", name, f"{root}/{name}: a second tree of the job "
                                            f"({_summary(service, root, name)})", root, name))

    # Records whose tree is gone, or whose manifest is off.
    for job in job_ids:
        with service.records.lock(job).shared() if live else _NO_LOCK:
            record = service.records.get(job)
            if record is None:
                continue
            if record.pending:
                if not live:
                    p = record.pending
                    findings.append(Finding("pending", job, f"its transition to {p['target']} stopped after step "
                                            f"{p['step']} (the next mount finishes it)"))
                continue
            if record.where is None:
                continue
            here, elsewhere = _tree_state(service, record)
            if not here:
                if elsewhere is None:
                    findings.append(Finding("missing-tree", job, f"its record ({record.state}) says "
                                            f"{VIEW_NAMES[record.where or '']}/{job}, and there is no tree"))
                continue
            if live and job in busy:
                continue
            hidden: list[str] = []
            detail = manifest_differences(service, record, hidden)
            if detail and live:
                service.manifest.flush()  # a change queued meanwhile is not damage
                detail = manifest_differences(service, record)
            if detail:
                findings.append(Finding("manifest", job, detail))
            if hidden:
                shown = ", ".join(hidden[:EXAMPLES]) + (", ..." if len(hidden) > EXAMPLES else "")
                findings.append(Finding("hidden", job, f"{len(hidden)} hidden name(s) of files unlinked while "
                                        f"open, and no file of the job is open ({shown})"))

    for name in sorted(service.tree.listdir("trash", "")):
        if trash_stuck is not None and name not in trash_stuck:
            continue
        findings.append(Finding("trash", None, f"trash/{name}: not deleted yet ({_summary(service, 'trash', name)})",
                                "trash", name))

    dead = _dead_readers(service)
    freed = 0 if live else getattr(service.store, "freed_readers", 0)
    if dead:
        findings.append(Finding("stale-readers", None, f"{len(dead)} LMDB reader slot(s) held by processes that are "
                                f"gone (pid {', '.join(map(str, dead[:5]))})"))
    elif freed:
        findings.append(Finding("stale-readers", None, f"{freed} LMDB reader slot(s) of processes that are gone "
                                "(freed when doctor opened the store)"))
    return findings


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NO_LOCK = _NoLock()


# -- repair -------------------------------------------------------------------------------


def repair(service: JobService, findings: list[Finding], *, live: bool = False, busy=frozenset()) -> list[str]:
    """Act on each finding (see the module docstring); return one line per thing done or not done."""
    done: list[str] = []
    now = service.clock()
    pending = [f for f in findings if f.kind == "pending"]
    if pending:
        done += _finish_pending(service, pending)
    for finding in sorted((f for f in findings if f.kind != "pending"), key=lambda f: REPAIR_ORDER.index(f.kind)):
        try:
            line = _REPAIRS[finding.kind](service, finding, now, live, busy)
        except Exception as exc:
            log.exception("doctor: could not repair %s", finding.line())
            line = f"could not repair {finding.line()}: {exc}"
        if line:
            done.append(line)
    return done


def _finish_pending(service: JobService, findings: list[Finding]) -> list[str]:
    try:
        finished = set(service.recovery.recover(False))
    except Exception as exc:
        log.exception("doctor: could not finish the interrupted transitions")
        return [f"could not finish the interrupted transitions: {exc}"]
    return [f"{f.job}: finished its interrupted transition" if f.job in finished
            else f"{f.job}: its transition was finished meanwhile" for f in findings]


def _repair_misplaced(service: JobService, f: Finding, now: float, live: bool, busy) -> str | None:
    job, (root, _name) = f.job_id, f.at
    with service.records.lock(job).exclusive():
        record = service.records.require(job)
        where = record.where
        if record.pending or where is None or _is_dir(service, where, job) \
                or not _is_dir(service, root, job):
            return f"{job}: no longer misplaced, left alone"
        service.tree.rename(root, job, where, job)
        service.records.add_event("doctor-moved", job, to=VIEW_NAMES[where], by="doctor")
    return f"{job}: moved its tree from {VIEW_NAMES[root]}/ back to {VIEW_NAMES[where]}/, where its record says"


def _repair_missing(service: JobService, f: Finding, now: float, live: bool, busy) -> str | None:
    job = f.job_id
    with service.records.lock(job).exclusive():
        record = service.records.require(job)
        if record.pending or record.where is None:
            return f"{job}: changed meanwhile, left alone"
        here, elsewhere = _tree_state(service, record)
        if here or elsewhere:
            return f"{job}: its tree is back, left alone"
        was_running = record.state == JobState.RUNNING.value
        service.tree_lost(job, now, "its tree disappeared (found by wsfs doctor)", by="doctor")
    return f"{job}: tree missing: " + ("ended crashed and marked purged" if was_running else "marked purged")


def _repair_stray(service: JobService, f: Finding, now: float, live: bool, busy) -> str | None:
    """Nothing in the view can reach it (not a directory, or a symlink): remove it, never following it."""
    root, name = f.at
    try:
        st = service.tree.lstat(root, name)
    except FileNotFoundError:
        return f"{root}/{name}: gone meanwhile"
    if stat.S_ISDIR(st.st_mode):
        return f"{root}/{name}: a directory now, left for the next check"
    service.tree.unlink(root, name)
    return f"{root}/{name}: removed"


def _free_id(service: JobService, name: str) -> str:
    """``name`` when it is a job id nobody used, else a close one that is free."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip("._-")[:100] or "orphan"
    for n in range(1000):
        candidate = base if n == 0 else f"{base}.orphan{n if n > 1 else ''}"
        if (JOB_ID_RE.fullmatch(candidate) and service.records.get(candidate) is None
                and not any(service.tree.exists(root, candidate) for root in TREE_ROOTS)):
            return candidate
    raise RuntimeError(f"no free job id near {name!r}")


def _adoption_template(service: JobService, areas: dict[str, AreaKind]) -> Template:
    for template in service.config.templates.values():
        if set(template.areas) == set(areas):
            return template
    default = service.config.template("default")
    return Template(ADOPTED_TEMPLATE, areas, dict(default.retention), default.grace, 0, 0)


def _repair_orphan(service: JobService, f: Finding, now: float, live: bool, busy) -> str | None:
    """Adopt a tree without a record: a ``crashed`` job in quarantine/, as the crash path would make it."""
    root, name = f.at
    with service.create_lock:
        if not _is_dir(service, root, name):
            return f"{root}/{name}: gone meanwhile"
        record = service.records.get(name) if JOB_ID_RE.fullmatch(name) else None
        if record is not None and record.where == root:
            return f"{root}/{name}: its job {name} names it now, left alone"
        job = name if record is None and JOB_ID_RE.fullmatch(name) and not (
            root == "jobs" and service.tree.exists("quarantine", name)) else _free_id(service, name)
        if (root, name) != ("quarantine", job):
            service.tree.rename(root, name, "quarantine", job)
        st = service.tree.lstat("quarantine", job)
        areas = {}
        for entry, _ino, kind in sorted(service.tree.scandir("quarantine", job)):
            if kind == stat.S_IFDIR and JOB_ID_RE.fullmatch(entry):
                areas[entry] = DEFAULT_TEMPLATE.get(entry, AreaKind.KEEP)
        template = _adoption_template(service, areas)
        created = min(st.st_mtime, now)
        new = service.new_record(job, template, st.st_uid, st.st_gid, created, None, None)
        # Sealed from the start: nobody writes into it between this commit and the crash below.
        new.areas, new.where, new.sealed = {a: k.value for a, k in areas.items()}, "quarantine", True

        def fn(w):
            if w.job(job) is not None:
                raise RuntimeError(f"job id {job} was taken meanwhile")
            w.put_job(new)
            w.add_event("adopted", job, tree=f"{root}/{name}", by="doctor")
            return [new]
        service.records.commit(fn)
    service.recovery.rebuild_manifest(job)
    service.transition(job, JobState.CRASHED, f"adopted by wsfs doctor: {root}/{name} had no record")
    renamed = "" if job == name else f" as {job}"
    return f"{root}/{name}: adopted{renamed} into quarantine/{job} as a crashed job, with a receipt"


@contextlib.contextmanager
def _idle_job(service: JobService, job: str, live: bool, busy):
    """The job's record under its exclusive lock; None when it changed since it was checked (ending,
    no tree left, or a file open through the mount)."""
    with service.records.lock(job).exclusive():
        record = service.records.require(job)
        yield None if record.pending or record.where is None or (live and job in busy) else record


def _repair_manifest(service: JobService, f: Finding, now: float, live: bool, busy) -> str | None:
    job = f.job_id
    with _idle_job(service, job, live, busy) as record:
        if record is None:
            return f"{job}: changed meanwhile, manifest left alone"
        if manifest_differences(service, record) is None:
            return f"{job}: manifest already agrees"
        service.recovery.rebuild_manifest(job)
        usage = service.records.require(job).usage
    return f"{job}: rebuilt the manifest from the files ({usage['files']} files, {usage['bytes']} bytes)"


def _repair_hidden(service: JobService, f: Finding, now: float, live: bool, busy) -> str | None:
    job = f.job_id
    with _idle_job(service, job, live, busy) as record:
        if record is None:
            return f"{job}: changed meanwhile, hidden names left alone"
        hidden: list[str] = []
        service.recovery.tree_files(record, hidden)
        removed = service.recovery.remove_hidden_leftovers(record, hidden)
        service.usage.forget(job)
    return f"{job}: removed {removed} hidden name(s) of files unlinked while open"


def _repair_trash(service: JobService, f: Finding, now: float, live: bool, busy) -> str | None:
    _root, name = f.at
    errors: list[str] = []

    def report(path, exc):
        errors.append(f"{path}: {exc.strerror or exc}")
        log.error("doctor: could not remove %s from the trash: %s", path, exc)
    failures = service.tree.remove_tree("trash", name, on_error=report)
    if failures:
        def count(w) -> list:
            w.bump_counter("failed_removals", failures)
            return []
        service.records.commit(count)
        return f"trash/{name}: {failures} could not be removed (first: {errors[0] if errors else '?'})"
    return f"trash/{name}: deleted"


def _repair_readers(service: JobService, f: Finding, now: float, live: bool, busy) -> str | None:
    freed = service.store.stale_readers() + getattr(service.store, "freed_readers", 0)
    service.store.freed_readers = 0
    return f"freed {freed} stale LMDB reader slot(s)"


_REPAIRS = {"misplaced-tree": _repair_misplaced, "missing-tree": _repair_missing, "stray": _repair_stray,
            "orphan-tree": _repair_orphan, "manifest": _repair_manifest, "hidden": _repair_hidden,
            "trash": _repair_trash,
            "stale-readers": _repair_readers}


def run(service: JobService, *, repair_too: bool = False, live: bool = False, busy=frozenset(),
        trash_stuck=None) -> Report:
    """Diagnose, and with ``repair_too`` repair and diagnose again (``remaining``)."""
    started = time.perf_counter()
    findings = diagnose(service, live=live, busy=busy, trash_stuck=trash_stuck)
    actions: list[str] = []
    remaining = findings
    if repair_too and findings:
        actions = repair(service, findings, live=live, busy=busy)
        remaining = diagnose(service, live=live, busy=busy, trash_stuck=trash_stuck)
    return Report(repair_too, findings, actions, remaining, (time.perf_counter() - started) * 1000)
