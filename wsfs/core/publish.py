"""Publishing: a job's results copied or moved out atomically, and hooks on transitions.

A template's ``publish = [...]`` targets and ``on_completed`` hook run after
``completed``; ``on_failed``, ``on_crashed`` and ``on_purged`` after those
events (config.HOOK_NAMES).  The lifecycle only *queues* the work, in the
same transaction as the transition (``queue``): the record's ``publish``
says what is to do (its layout is in store.py's docstring) and the store's
``publish`` index says when.  So ``echo completed > .state`` returns at once,
and a publish that a crash interrupted resumes on the next mount.

One attempt of a job (``Publisher.attempt``):

1. each target not yet done, in order: the area is copied beside the
   destination into ``DEST.wsfs-tmp-XXXXXXXX`` (same filesystem, so the
   rename is atomic), every file and directory fsynced, then renamed into
   place with ``renameat2(RENAME_NOREPLACE)``: a reader sees nothing or the
   whole result.  An existing destination is an error unless the target
   says ``replace = true`` (then ``RENAME_EXCHANGE`` and the old one is
   deleted), or unless it already holds exactly this result (a crash after
   the rename and before the record said so: the retry finds it done);
2. then the hooks, ``on_completed`` only once every target is done;
3. when everything is done: ``move`` areas leave the workspace (trash, and
   their manifest entries), and with ``completed = "after-publish"`` the
   whole tree goes, the record and the receipt (``receipts`` sub-db) stay.

A failure schedules the next attempt after ``publish_backoff`` doubled per
attempt; after ``publish_retries`` retries the status is ``failed``, the
workspace is kept, and ``publish JOB retry`` (control, ``wsfs publish``)
starts over.  Every step is an event: ``published``, ``hook``, ``publish``.

Whose rights: sources are read by the daemon through the data dir's fds
(``Tree``: no symlink followed); everything written at a destination is
written with the job owner's filesystem identity (``setfsuid``/``setfsgid``
and no supplementary groups, on this thread only: Linux keeps credentials
per thread), and hooks run as the owner (``Popen(user=, group=,
extra_groups=[])``), never as root for a non-root job.  (A child process
for the copy would need an interpreter the owner can run; the daemon's may
live where the owner cannot reach, e.g. under /root.)

Threading: ``run`` is the ``wsfs-publisher`` thread; ``request`` runs on
the FUSE thread of a ``publish JOB`` control write and only queues.
``_lock`` makes attempts one at a time.  Deleting areas and trees holds the
job's lock exclusive, as transitions do.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import itertools
import logging
import os
import pwd
import re
import signal
import stat
import subprocess
import tempfile
import threading
import time
import typing

from . import metrics, syscalls
from .config import HOOK_NAMES, Template
from .errors import NotAllowedError, WsfsError
from .model import JobRecord
from .records import location
from .tree import ENTER, LEAVE, Step, remove_contents, split, walk
from .usage import take_area_usage

log = logging.getLogger("wsfs.publish")

TMP_MARK = ".wsfs-tmp-"
OUTPUT_LIMIT = 4096          # bytes of a hook's output kept in its event
COPY_CHUNK = 1 << 20
IDLE_WAIT = 60.0             # the thread looks again at least this often
MAX_BACKOFF = 86400.0
HOOK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_RENAME_NOREPLACE, _RENAME_EXCHANGE = syscalls.RENAME_NOREPLACE, syscalls.RENAME_EXCHANGE


class PublishError(WsfsError):
    """A target or hook that could not be done; the message says why (it goes into the record)."""

    errno = errno.EIO


class InterruptedPublishError(PublishError):
    """wsfs is stopping: the copy was abandoned (not an attempt; the next mount does it again)."""


# -- the record's publish field (pure) ---------------------------------------------


def new_round(template: Template, event: str, now: float) -> dict | None:
    """What ``event`` (completed, failed, crashed, purged) makes the publisher do; None: nothing."""
    hook = template.hooks.get(f"on_{event}")
    targets = template.publish if event == "completed" else ()
    if not targets and not hook:
        return None
    return {
        "status": "pending", "event": event, "attempts": 0, "error": None, "next_at": now, "started": now,
        "targets": [{"area": t.area, "to": t.to, "mode": t.mode, "replace": t.replace, "status": "pending",
                     "dest": None, "error": None} for t in targets],
        "hooks": {f"on_{event}": {"status": "pending", "exit": None, "error": None}} if hook else {},
        "moved": [], "deleted_at": None, "done_at": None,
    }


def queue(record: JobRecord, template: Template, event: str, now: float) -> bool:
    """Put ``event``'s work into the record (inside the caller's transaction); True if there is any.

    ``completed`` starts a fresh round; another event adds its hook to what
    is there (a failed publish stays visible as failed until retried).
    """
    fresh = new_round(template, event, now)
    if fresh is None:
        return False
    current = record.publish
    if current is None or event == "completed":
        record.publish = fresh
        return True
    current["hooks"].update(fresh["hooks"])
    current.update(status="pending", attempts=0, next_at=now, error=None, event=event)
    return True


def status_of(publish: dict | None) -> str | None:
    return None if not publish else publish.get("status")


def expand_destination(to: str, record: JobRecord) -> str:
    """``to`` with {job} {template} {date} {owner}; {date} is the job's end date (UTC), so retries agree."""
    ended = record.ended or record.state_since or record.created
    try:
        owner = pwd.getpwuid(record.uid).pw_name
    except KeyError:
        owner = str(record.uid)
    values = {"job": record.id, "template": record.template, "owner": owner,
              "date": datetime.datetime.fromtimestamp(ended, datetime.UTC).strftime("%Y-%m-%d")}
    dest = os.path.normpath(to.format(**values))
    if not dest.startswith("/") or dest == "/":
        raise PublishError(f"destination {dest!r} is not a usable absolute path")
    return dest


def env_name(area: str) -> str:
    return "WSFS_" + re.sub(r"[^A-Za-z0-9]", "_", area).upper()


# -- whose rights ----------------------------------------------------------------------


class OwnerCredentials:
    """``with creds:`` makes this thread's filesystem access the job owner's (a no-op unless root)."""

    def __init__(self, uid: int, gid: int):
        self.active = os.geteuid() == 0 and uid != 0 and syscalls.HAS_THREAD_SETGROUPS
        self.uid, self.gid = uid, gid
        self._groups: list[int] = []

    def __enter__(self):
        if self.active:
            self._groups = os.getgroups()
            syscalls.thread_setgroups([])
            syscalls.setfsgid(self.gid)
            syscalls.setfsuid(self.uid)
            if syscalls.setfsuid(-1) != self.uid:  # setfsuid returns the previous fsuid
                self.__exit__(None, None, None)
                raise PublishError(f"could not take the identity of uid {self.uid}")
        return self

    def __exit__(self, *exc):
        if self.active:
            syscalls.setfsuid(0)
            syscalls.setfsgid(0)
            syscalls.thread_setgroups(self._groups)
        return False


# -- atomic copy -------------------------------------------------------------------------


def _renameat2(src: str, dst: str, flags: int) -> None:
    syscalls.renameat2(syscalls.AT_FDCWD, os.fsencode(src), syscalls.AT_FDCWD, os.fsencode(dst), flags)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_dir(src_fd: int, dst: str, creds: OwnerCredentials, stop: threading.Event | None = None) -> None:
    """Copy the directory open at ``src_fd`` (an O_PATH fd) into the existing ``dst``.

    Reads go through fds with O_NOFOLLOW; writes under the owner's identity.
    Symlinks are recreated as they are (never followed); FIFOs, sockets and
    devices are skipped.
    """
    for step in walk(src_fd):
        if stop is not None and stop.is_set():
            raise InterruptedPublishError("interrupted: wsfs is stopping")
        st, target = step.st, os.path.join(dst, step.path)
        if step.kind == ENTER:
            with creds:
                os.mkdir(target, 0o700)
        elif step.kind == LEAVE:
            with creds:
                os.chmod(target, stat.S_IMODE(st.st_mode) & 0o777)
                os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        elif stat.S_ISREG(st.st_mode):
            sfd = os.open(step.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=step.dir_fd)
            try:
                with creds:
                    dfd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  stat.S_IMODE(st.st_mode) & 0o777)
                try:
                    while chunk := os.read(sfd, COPY_CHUNK):
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(dfd, view):]
                    os.fchmod(dfd, stat.S_IMODE(st.st_mode) & 0o777)  # the umask narrowed the create
                    os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            finally:
                os.close(sfd)
        elif stat.S_ISLNK(st.st_mode):
            link = os.readlink(step.name, dir_fd=step.dir_fd)
            with creds:
                os.symlink(link, target)
    with creds:
        _fsync_path(dst)


def _open_tree(path: str) -> int:
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _same_bytes(a: Step, b: Step) -> bool:
    fa = os.open(a.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=a.dir_fd)
    try:
        fb = os.open(b.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=b.dir_fd)
        try:
            while True:
                ca, cb = os.read(fa, COPY_CHUNK), os.read(fb, COPY_CHUNK)
                if ca != cb:
                    return False
                if not ca:
                    return True
        finally:
            os.close(fb)
    finally:
        os.close(fa)


def _same_tree(a: str, b: str) -> bool:
    """Do two destination trees hold the same names, types and bytes (symlinks: the same targets)?"""
    fa, fb = _open_tree(a), _open_tree(b)
    try:
        for sa, sb in itertools.zip_longest(walk(fa), walk(fb)):
            if sa is None or sb is None or (sa.kind, sa.path) != (sb.kind, sb.path) \
                    or stat.S_IFMT(sa.st.st_mode) != stat.S_IFMT(sb.st.st_mode):
                return False
            if stat.S_ISLNK(sa.st.st_mode):
                if os.readlink(sa.name, dir_fd=sa.dir_fd) != os.readlink(sb.name, dir_fd=sb.dir_fd):
                    return False
            elif stat.S_ISREG(sa.st.st_mode) and (sa.st.st_size != sb.st.st_size or not _same_bytes(sa, sb)):
                return False
        return True
    finally:
        os.close(fa)
        os.close(fb)


def _remove(path: str) -> None:
    """Remove a file or a whole tree (what an earlier attempt left), never following a symlink;
    what cannot be removed stays."""
    try:
        fd = _open_tree(path)
    except FileNotFoundError:
        return
    except OSError:  # not a directory (or a symlink to one)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    try:
        remove_contents(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(path)


def publish_tree(tree, root: str, rel: str, dest: str, *, replace: bool, creds: OwnerCredentials,
                 stop: threading.Event | None = None) -> str:
    """Copy the data dir's ``root``/``rel`` to ``dest`` atomically; return what happened.

    ``"published"``, ``"replaced"`` or ``"already there"`` (``dest`` held
    exactly this result: a retry after a crash).  Raises ``PublishError``.
    """
    parent, base = os.path.split(dest)
    try:
        src_fd = tree.open_dir(root, split(rel))
    except FileNotFoundError:
        raise PublishError(f"nothing to publish: {rel.split('/', 1)[-1]}/ is not in the workspace") from None
    try:
        with creds:
            os.makedirs(parent, exist_ok=True)
            for name in os.listdir(parent):  # what an attempt that died left behind
                if name.startswith(base + TMP_MARK):
                    _remove(os.path.join(parent, name))
            tmp = tempfile.mkdtemp(prefix=base + TMP_MARK, dir=parent)
        try:
            _copy_dir(src_fd, tmp, creds, stop)
            st = os.stat(src_fd)
            with creds:
                os.chmod(tmp, stat.S_IMODE(st.st_mode) & 0o777)
                try:
                    _renameat2(tmp, dest, _RENAME_NOREPLACE)
                    outcome = "published"
                except FileExistsError:
                    if _same_tree(tmp, dest):
                        outcome = "already there"
                    elif not replace:
                        raise PublishError(f"{dest} exists and holds something else; wsfs does not overwrite it "
                                           "(set replace = true on the target to replace it)") from None
                    else:
                        try:
                            _renameat2(tmp, dest, _RENAME_EXCHANGE)  # the old one is now at tmp
                        except OSError as exc:
                            if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                                raise
                            aside = tempfile.mktemp(prefix=base + TMP_MARK, dir=parent)
                            os.rename(dest, aside)
                            os.rename(tmp, dest)
                            tmp = aside
                        outcome = "replaced"
                _fsync_path(parent)
        finally:
            with creds:
                if os.path.lexists(tmp):
                    _remove(tmp)
    except PublishError:
        raise
    except OSError as exc:
        raise PublishError(f"publishing to {dest}: {exc.strerror or exc}"
                           + (f": {exc.filename}" if exc.filename and exc.filename != dest else "")) from None
    finally:
        os.close(src_fd)
    return outcome


# -- hooks -----------------------------------------------------------------------------


def run_hook(command: str, *, env: dict, uid: int, gid: int, cwd: str, timeout: float,
             stop: threading.Event | None = None) -> tuple[int | None, str, str | None]:
    """Run ``/bin/sh -c command`` as the owner; return (exit status, output tail, error or None)."""
    kwargs: dict[str, typing.Any] = {}
    if os.geteuid() == 0 and uid != 0:
        kwargs = {"user": uid, "group": gid, "extra_groups": []}
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True,
                                    close_fds=True, **kwargs)
        except OSError as exc:
            return None, "", f"could not start the hook: {exc.strerror or exc}"
        deadline = time.monotonic() + timeout
        error = None
        while True:
            try:
                proc.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                error = (f"timed out after {timeout:g}s" if time.monotonic() >= deadline
                         else "interrupted: wsfs is stopping")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
        size = out.seek(0, os.SEEK_END)
        out.seek(max(size - OUTPUT_LIMIT, 0))
        text = out.read().decode("utf-8", "replace")
        if size > OUTPUT_LIMIT:
            text = f"[... {size - OUTPUT_LIMIT} bytes cut]\n" + text
    code = proc.returncode
    if error is None and code != 0:
        error = f"exit status {code}" if code > 0 else f"killed by signal {-code}"
    return code, text, error


# -- the worker -------------------------------------------------------------------------


class Publisher:
    """Runs what the records' ``publish`` fields ask for, when the ``publish`` index says."""

    def __init__(self, service, clock=None, *, mountpoint: str | None = None):
        self.service = service
        self.clock = clock or service.clock
        self.mountpoint = mountpoint
        self.wake = service.publish_wake
        self.stopping = threading.Event()
        # Set once the mount answers (the daemon's wsfs-ready thread): hooks start in the workspace
        # through the mount, so none runs before it is there.  Without a mount point: at once.
        self.mount_ready = threading.Event()
        if mountpoint is None:
            self.mount_ready.set()
        self._lock = threading.Lock()
        fault = os.environ.get("WSFS_FAULT", "")
        self._fault = fault.partition("publish:")[2] or None

    # -- finding work

    def due(self, now: float) -> list[str]:
        with self.service.store.read() as r:
            queue_ = r.publish_queue()
        return [job for job, at in sorted(queue_, key=lambda kv: kv[1]) if at <= now]

    def next_at(self) -> float | None:
        with self.service.store.read() as r:
            queue_ = r.publish_queue()
        return min((at for _job, at in queue_), default=None)

    def process_due(self, now: float | None = None) -> list[str]:
        """One pass: an attempt for every job that is due; returns their ids."""
        now = self.clock() if now is None else now
        done = []
        for job_id in self.due(now):
            if self.stopping.is_set():
                break
            try:
                self.attempt(job_id)
            except Exception as exc:
                log.exception("publishing job %s failed unexpectedly", job_id)
                self._postpone(job_id, f"unexpected error: {exc}", now)
            done.append(job_id)
        return done

    def _postpone(self, job_id: str, error: str, now: float) -> None:
        """After a bug, not a failed target: try again after the backoff rather than at once, forever."""
        def change(record: JobRecord, w) -> None:
            if status_of(record.publish) == "pending":
                record.publish.update(error=error,
                                         next_at=now + self.service.template(record).publish_backoff)
        try:
            self.service.records.update(job_id, change)
        except Exception:
            log.exception("could not postpone publishing job %s", job_id)

    def run(self, stop: threading.Event) -> None:
        """The ``wsfs-publisher`` thread."""
        while not self.mount_ready.wait(0.1):
            if stop.is_set():
                return
        while not stop.is_set():
            self.wake.clear()
            self.process_due()
            upcoming = self.next_at()
            wait = IDLE_WAIT if upcoming is None else min(max(upcoming - self.clock(), 0.05), IDLE_WAIT)
            self.wake.wait(wait)

    # -- one attempt

    def attempt(self, job_id: str) -> JobRecord:
        with self._lock:
            record = self.service.records.require(job_id)
            publish = record.publish
            if not publish or publish["status"] != "pending":
                return record
            template = self.service.template(record)
            errors: list[str] = []
            for index, target in enumerate(publish["targets"]):
                if target["status"] != "pending":
                    continue
                record = self._publish_target(record, index, target)
                if record.publish["targets"][index]["status"] != "done":
                    errors.append(record.publish["targets"][index]["error"])
                if self.stopping.is_set():
                    return record
            targets_done = all(t["status"] == "done" for t in record.publish["targets"])
            for name in HOOK_NAMES:
                hook = record.publish["hooks"].get(name)
                if hook is None or hook["status"] != "pending":
                    continue
                if name == "on_completed" and not targets_done:
                    continue  # runs once the results are in place
                record = self._run_hook(record, name, template)
                if self.stopping.is_set():
                    return record
                if record.publish["hooks"][name]["status"] != "done":
                    errors.append(f"{name}: {record.publish['hooks'][name]['error']}")
            return self._settle(record, template, errors)

    def _fault_point(self, step: str) -> None:
        if self._fault == step:
            log.critical("WSFS_FAULT: dying after publish step %s", step)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)

    def _publish_target(self, record: JobRecord, index: int, target: dict) -> JobRecord:
        job_id = record.id
        where = location(record)
        dest: str | None = None
        try:
            dest = expand_destination(target["to"], record)
            if where is None:
                raise PublishError("the job has no tree left to publish")
            if target["area"] not in record.areas:
                raise PublishError(f"the job has no area {target['area']!r}")
            started = time.monotonic()
            outcome = publish_tree(self.service.tree, where[0], f"{where[1]}/{target['area']}", dest,
                                   replace=target["replace"], creds=OwnerCredentials(record.uid, record.gid),
                                   stop=self.stopping)
            error, event = None, ("published", {"area": target["area"], "dest": dest, "mode": target["mode"],
                                                "outcome": outcome,
                                                "duration_s": round(time.monotonic() - started, 3)})
        except InterruptedPublishError:
            return record
        except PublishError as exc:
            error, event = str(exc), ("publish-error", {"area": target["area"], "dest": dest, "error": str(exc)})
            log.warning("job %s: publishing %s/ failed: %s", job_id, target["area"], exc)
            metrics.PUBLISH_FAILURES.labels(what="target").inc()
        self._fault_point("after-copy")

        def change(record: JobRecord, w) -> None:
            item = record.publish["targets"][index]
            item.update(dest=dest, error=error, status="pending" if error else "done")
        return self.service.records.update(job_id, change, event)

    def hook_env(self, record: JobRecord, event: str) -> tuple[dict, str]:
        """The hook's environment and working directory (the workspace, through the mount when there is one)."""
        env = {"PATH": HOOK_PATH, "LANG": "C.UTF-8", "WSFS_JOB": record.id, "WSFS_STATE": record.state,
               "WSFS_TEMPLATE": record.template, "WSFS_EVENT": event, "WSFS_REASON": record.reason or ""}
        try:
            pw = pwd.getpwuid(record.uid)
            env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
        except KeyError:
            env["HOME"] = "/"
        cwd = "/"
        where = location(record)
        if where is not None and not record.hidden:
            if self.mountpoint:
                env["WSFS_MOUNT"] = self.mountpoint
                top = "workspaces" if where[0] == "jobs" else "quarantine"
                workspace = os.path.join(self.mountpoint, top, record.id)
            else:  # no mount (tests of the core): the data dir itself
                workspace = os.path.join(self.service.tree.data_dir, where[0], where[1])
            env["WSFS_WORKSPACE"] = workspace
            env["WSFS_RECEIPT"] = os.path.join(workspace, "receipt.json")
            for area in record.areas:
                env[env_name(area)] = os.path.join(workspace, area)
            cwd = workspace if self.mountpoint or os.geteuid() != 0 or record.uid == 0 else "/"
        for target in (record.publish or {}).get("targets", []):
            if target["status"] == "done":
                env.setdefault(env_name(target["area"]).replace("WSFS_", "WSFS_PUBLISHED_", 1), target["dest"])
        return env, cwd

    def _run_hook(self, record: JobRecord, name: str, template: Template) -> JobRecord:
        job_id = record.id
        command = template.hooks.get(name)
        attempt = record.publish["attempts"] + 1
        error: str | None
        if not command:
            code, output, error, took = None, "", f"the template no longer has {name}", 0.0
        else:
            env, cwd = self.hook_env(record, name[3:])
            started = time.monotonic()
            try:
                code, output, error = run_hook(command, env=env, uid=record.uid, gid=record.gid, cwd=cwd,
                                               timeout=template.hook_timeout, stop=self.stopping)
            except OSError as exc:  # cwd gone, ...
                code, output, error = None, "", f"could not run the hook: {exc.strerror or exc}"
            took = round(time.monotonic() - started, 3)
        if self.stopping.is_set() and error and error.startswith("interrupted"):
            return record  # not an attempt: the next mount runs it again
        if error:
            log.warning("job %s: hook %s failed: %s", job_id, name, error)
            metrics.PUBLISH_FAILURES.labels(what="hook").inc()

        def change(record: JobRecord, w) -> None:
            record.publish["hooks"][name].update(status="pending" if error else "done", exit=code, error=error)
        return self.service.records.update(job_id, change, ("hook", {
            "hook": name, "exit": code, "error": error, "output": output, "duration_s": took, "attempt": attempt,
            "uid": record.uid}))

    def _settle(self, record: JobRecord, template: Template, errors: list[str]) -> JobRecord:
        job_id = record.id
        now = self.clock()
        publish = record.publish
        if errors:
            attempts = publish["attempts"] + 1
            if attempts > template.publish_retries:
                def failed(record: JobRecord, w) -> None:
                    p = record.publish
                    for item in p["targets"] + list(p["hooks"].values()):
                        if item["status"] == "pending":
                            item["status"] = "failed"
                    p.update(status="failed", attempts=attempts, error="; ".join(errors), next_at=None)
                log.error("job %s: publishing failed after %d attempt(s): %s", job_id, attempts, "; ".join(errors))
                return self.service.records.update(job_id, failed, ("publish", {
                    "status": "failed", "attempts": attempts, "error": "; ".join(errors)}))
            delay = min(template.publish_backoff * 2 ** (attempts - 1), MAX_BACKOFF)

            def retry(record: JobRecord, w) -> None:
                record.publish.update(attempts=attempts, error="; ".join(errors), next_at=now + delay)
            return self.service.records.update(job_id, retry, ("publish", {
                "status": "retry", "attempts": attempts, "error": "; ".join(errors), "retry_in_s": delay}))
        items = publish["targets"] + list(publish["hooks"].values())
        if any(item["status"] == "failed" for item in items):  # an earlier round's failure stands until retried
            def still_failed(record: JobRecord, w) -> None:
                record.publish.update(status="failed", next_at=None)
            return self.service.records.update(job_id, still_failed)
        record = self._move_areas(record)
        if (publish["targets"] or "on_completed" in publish["hooks"]) and template.after_publish:
            record = self._delete_tree(record)

        def done(record: JobRecord, w) -> None:
            record.publish.update(status="done", error=None, next_at=None, done_at=now,
                                     attempts=publish["attempts"] + 1)
        return self.service.records.update(job_id, done, ("publish", {"status": "done",
                                                                "attempts": publish["attempts"] + 1}))

    def _move_areas(self, record: JobRecord) -> JobRecord:
        """``mode = "move"``: the published area leaves the workspace (its entries leave the manifest)."""
        job_id = record.id
        areas = [t["area"] for t in record.publish["targets"] if t["mode"] == "move"
                 and t["area"] not in record.publish["moved"]]
        if not areas:
            return record
        service = self.service
        with service.records.lock(job_id).exclusive():
            record = service.records.require(job_id)
            where = location(record)
            for area in areas:
                if where and service.tree.move_to_trash(where[0], f"{where[1]}/{area}", f"{job_id}.{area}"):
                    service.trash_wake.set()

            def change(record: JobRecord, w) -> None:
                take_area_usage(record, w, areas)
                for area in areas:
                    w.delete_manifest_prefix(job_id, area)
                    record.publish["moved"].append(area)
            record = service.records.update(job_id, change, ("moved", {"areas": areas}))
        service.view_changed(job_id)
        return record

    def _delete_tree(self, record: JobRecord) -> JobRecord:
        """``completed = "after-publish"``: the tree goes; the record and its receipt stay."""
        job_id = record.id
        service = self.service
        with service.records.lock(job_id).exclusive():
            record = service.records.require(job_id)
            where = location(record)
            if where is None or record.state != "completed":
                return record
            receipt = service.read_receipt(record)
            if service.tree.move_to_trash(where[0], where[1], f"{job_id}.published"):
                service.trash_wake.set()
            now = self.clock()

            def change(record: JobRecord, w) -> None:
                if receipt is not None:
                    w.put_receipt(job_id, receipt)
                w.delete_manifest_prefix(job_id)
                record.where = record.expires_at = None
                record.publish["deleted_at"] = now
            record = service.records.update(job_id, change,
                                            ("deleted", {"why": "after-publish: everything was published"}))
        service.view_changed(job_id)
        return record


# -- by hand (control: publish JOB [retry]) -------------------------------------------------


def request(service, job_id: str, retry: bool, now: float) -> JobRecord:
    """Queue publishing by hand: start it, run a pending one now, or (``retry``) start a failed one over."""
    record = service.records.require(job_id)
    template = service.template(record)

    def change(record: JobRecord, w) -> None:
        publish = record.publish
        status = status_of(publish)
        if status is None or (retry and status == "done"):
            if record.state != "completed":
                raise NotAllowedError(f"job {job_id} is {record.state}: only a completed job publishes")
            if record.where is None:
                raise NotAllowedError(f"job {job_id} has no tree left to publish")
            if not queue(record, template, "completed", now):
                raise NotAllowedError(f"template {template.name!r} has no publish targets and no on_completed hook")
        elif status == "failed":
            if not retry:
                raise NotAllowedError(f"publishing job {job_id} failed ({publish.get('error')}); "
                                      "`publish JOB retry` starts it over")
            for item in publish["targets"] + list(publish["hooks"].values()):
                if item["status"] == "failed":
                    item["status"] = "pending"
            publish.update(status="pending", attempts=0, next_at=now, error=None)
        elif status == "pending":
            publish["next_at"] = now
        else:
            raise NotAllowedError(f"job {job_id} is published already; `publish JOB retry` publishes it again")
    record = service.records.update(job_id, change, ("publish", {"status": "requested", "retry": retry}))
    service.publish_wake.set()
    return record
