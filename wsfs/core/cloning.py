"""Cloning a workspace inside the data dir: the core of ``wsfs clone SRC NEW`` (README
"Parallel development workspaces").

``clone_job`` makes NEW (state ``running``, a fresh record with ``origin``
= SRC, owned by the caller) and copies SRC's areas into it without a FUSE
round trip per file: each file is a reflink (``FICLONE``) where the data
dir's filesystem has them, else ``copy_file_range(2)`` (in-kernel, no user
space buffer), else ``pread``/``pwrite``.  The walk is the same as
``tree.Tree``'s: it starts from the tree's directory fds and goes on with
``openat``-family calls and ``O_NOFOLLOW``, so a symlink in SRC is copied as
a symlink (its text) and never followed.  Modes, mtimes and symlinks are kept;
set-id bits are dropped when the owner changes; FIFOs and sockets are skipped.

Limits: NEW gets SRC's template, quota and max_files; a copy that would pass
them is refused whole (``EDQUOT``) before anything is made when SRC's
manifest already says so, else at the file that crosses them.  NEW's manifest
is committed in one transaction at the end, with SRC's sha256 carried over
for every file whose (size, mtime, inode) still match SRC's entry.

Permission (the daemon may run as root for every user): the caller must be
root, SRC's owner, or allowed by the modes, as the kernel would decide a
read, of SRC's job directory and of every directory (r+x) and file (r) in
it; otherwise ``EACCES`` and nothing is made.

A copy that fails half way leaves no workspace: NEW is cancelled and
archived (its record stays, as every record does, so the id is used up).

Threading: runs on the FUSE thread that wrote the ``clone`` command.  It
holds SRC's lock shared (SRC cannot end, move or be archived during the copy,
while SRC's own writers carry on) and NEW's lock exclusive from before NEW
exists until its manifest is committed (no write into NEW races the copy).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import time

from .control import GIT_OPTIONS
from .errors import AccessDeniedError, NotAllowedError, QuotaError
from .model import JobRecord, JobState, is_hidden_name, validate_job_id
from .records import location
from .tree import ENTER, LEAVE, walk
from .usage import usage_of

log = logging.getLogger("wsfs.cloning")

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
COPY_CHUNK = 1 << 30
_NO_REFLINK = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM)
_NO_COPY_RANGE = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM)


def git_fields(command) -> dict:
    """The record's ``git`` field from a create/clone command's ``git_*`` options (none: no field)."""
    values = {name[4:]: command.option(name) for name in GIT_OPTIONS if command.option(name) is not None}
    return {"git": values} if values else {}


def may_read(st: os.stat_result, uid: int, gid: int) -> bool:
    """Would the kernel let (uid, gid) read this (and, for a directory, search it)?  Root may."""
    if uid == 0:
        return True
    need = 0o5 if stat.S_ISDIR(st.st_mode) else 0o4
    if uid == st.st_uid:
        shift = 6
    elif gid == st.st_gid:
        shift = 3
    else:
        shift = 0
    return (st.st_mode >> shift) & need == need


def copy_file_data(src_fd: int, dst_fd: int) -> str:
    """Copy a whole file's bytes; return how: ``reflink``, ``copy_file_range`` or ``read/write``."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return "reflink"
    except OSError as exc:
        if exc.errno not in _NO_REFLINK:
            raise
    offset = 0
    try:
        while True:
            n = os.copy_file_range(src_fd, dst_fd, COPY_CHUNK, offset, offset)
            if n == 0:
                return "copy_file_range"
            offset += n
    except OSError as exc:
        if exc.errno not in _NO_COPY_RANGE:
            raise
    while chunk := os.pread(src_fd, 1 << 20, offset):
        os.pwrite(dst_fd, chunk, offset)
        offset += len(chunk)
    return "read/write"


class _Copier:
    """One clone's walk: copies SRC's entries below a directory fd into NEW's, counting against limits."""

    def __init__(self, uid: int, gid: int, owner_uid: int, *, as_root: bool, check_reads: bool,
                 quota: int, max_files: int, src_entries: dict):
        self.uid, self.gid = uid, gid
        self.owner_changes = as_root and uid != owner_uid
        self.as_root = as_root
        self.check_reads = check_reads
        self.quota, self.max_files = quota, max_files
        self.src_entries = src_entries
        self.entries: dict[str, list] = {}
        self.bytes = 0
        self.methods: dict[str, int] = {}

    def _readable(self, st: os.stat_result, path: str) -> None:
        if self.check_reads and not may_read(st, self.uid, self.gid):
            raise AccessDeniedError(f"{path}: not readable by uid {self.uid}")

    def _mode(self, st: os.stat_result) -> int:
        mode = stat.S_IMODE(st.st_mode)
        return mode & ~(stat.S_ISUID | stat.S_ISGID) if self.owner_changes else mode

    def _finish(self, fd: int, st: os.stat_result) -> None:
        if self.as_root:
            os.fchown(fd, self.uid, self.gid)
        os.fchmod(fd, self._mode(st))
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))

    def copy_dir(self, sfd: int, dfd: int, prefix: str) -> None:
        """Copy what the directory open at ``sfd`` holds into the one open at ``dfd``; ``prefix``
        (the area) starts the manifest paths."""
        copies = {"": dfd}  # a directory being copied (its path) -> its copy's fd, while inside it
        try:
            for step in walk(sfd, skip=is_hidden_name):  # libfuse's unlinked-but-open files are not the workspace's
                into = copies[step.path.rpartition("/")[0]]
                path, st = f"{prefix}/{step.path}", step.st
                if step.kind == ENTER:
                    self._readable(st, path)
                    os.mkdir(step.name, 0o700, dir_fd=into)
                    copies[step.path] = os.open(step.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                                | os.O_CLOEXEC, dir_fd=into)
                elif step.kind == LEAVE:
                    fd = copies.pop(step.path)
                    try:
                        self._finish(fd, st)  # after its contents, or they would move its mtime
                    finally:
                        os.close(fd)
                elif stat.S_ISREG(st.st_mode):
                    self._readable(st, path)
                    self._copy_file(step.dir_fd, into, step.name, path, st)
                elif stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(step.name, dir_fd=step.dir_fd), step.name, dir_fd=into)
                    if self.as_root:
                        os.chown(step.name, self.uid, self.gid, dir_fd=into, follow_symlinks=False)
                    os.utime(step.name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=into, follow_symlinks=False)
                # FIFOs and sockets: nothing to copy
        finally:
            for path, fd in copies.items():
                if path:
                    os.close(fd)

    def _copy_file(self, sfd: int, dfd: int, name: str, path: str, st: os.stat_result) -> None:
        if self.max_files and len(self.entries) + 1 > self.max_files:
            raise QuotaError(f"the clone would hold more than max_files ({self.max_files}) files")
        if self.quota and self.bytes + st.st_size > self.quota:
            raise QuotaError(f"the clone would use more than its quota ({self.quota} bytes)")
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=sfd)
        try:
            dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                          dir_fd=dfd)
            try:
                src_st = os.fstat(src)
                method = copy_file_data(src, dst)
                self.methods[method] = self.methods.get(method, 0) + 1
                self._finish(dst, src_st)
                dst_st = os.fstat(dst)
            finally:
                os.close(dst)
        finally:
            os.close(src)
        old = self.src_entries.get(path)
        sha = old[3] if old and old[:3] == [src_st.st_size, src_st.st_mtime_ns, src_st.st_ino] else None
        self.entries[path] = [dst_st.st_size, dst_st.st_mtime_ns, dst_st.st_ino, sha]
        self.bytes += dst_st.st_size


def clone_job(service, src_id: str, new_id: str, uid: int, gid: int, *, extra: dict | None = None) -> JobRecord:
    """Make ``new_id`` a copy of ``src_id``'s areas for the caller (uid, gid); return NEW's record."""
    validate_job_id(src_id)
    validate_job_id(new_id)
    started = time.monotonic()
    with service.records.lock(src_id).shared():
        src = service.records.require(src_id)
        where = location(src)
        if where is None or src.hidden or src.pending:
            raise NotAllowedError(f"job {src_id} has no workspace to clone ({src.state}"
                                  f"{', hidden' if src.hidden else ''})")
        root, rel = where
        st_root = service.tree.lstat(root, rel)
        is_owner = uid == 0 or uid == src.uid
        if not is_owner and not may_read(st_root, uid, gid):
            raise AccessDeniedError(f"job {src_id} belongs to uid {src.uid} and its modes do not let uid "
                                    f"{uid} read it")
        service.manifest.flush()
        with service.store.read() as r:
            src_entries = dict(r.manifest(src_id))
        quota, max_files = src.quota or 0, src.max_files or 0
        usage = src.usage
        if (quota and usage["bytes"] > quota) or (max_files and usage["files"] > max_files):
            raise QuotaError(f"job {src_id} holds more than its quota or max_files: a clone could not")
        fields = {"origin": src_id, **(extra or {})}
        failure = None
        with service.records.lock(new_id).exclusive():
            record = service.create_job(new_id, uid, gid, mode=stat.S_IMODE(st_root.st_mode),
                                        template=src.template, quota=src.quota,
                                        max_files=src.max_files, extra=fields)
            copier = _Copier(uid, gid, src.uid, as_root=os.geteuid() == 0, check_reads=not is_owner,
                             quota=quota, max_files=max_files, src_entries=src_entries)
            try:
                for area in sorted(set(src.areas) & set(record.areas)):
                    try:
                        sfd = service.tree.open_dir(root, [rel, area])
                    except FileNotFoundError:
                        continue  # a scratch area of a completed job: deleted at completion
                    try:
                        dfd = service.tree.open_dir("jobs", [new_id, area])
                        try:
                            copier.copy_dir(sfd, dfd, area)
                        finally:
                            os.close(dfd)
                    finally:
                        os.close(sfd)
                record = _commit_manifest(service, new_id, src_id, copier, time.monotonic() - started)
            except Exception as exc:  # noqa: BLE001 - undone below, then raised as it was
                failure = exc
        if failure is not None:
            _abandon(service, new_id, failure)
            raise failure
    log.info("cloned %s into %s: %d files, %d bytes (%s) in %.2f s", src_id, new_id, len(copier.entries),
             copier.bytes, copier.methods, time.monotonic() - started)
    return record


def _commit_manifest(service, new_id: str, src_id: str, copier: _Copier, seconds: float) -> JobRecord:
    def fn(w):
        record = w.job(new_id)
        for path, entry in copier.entries.items():
            w.put_manifest(new_id, path, entry)
        record.usage, record.area_usage = usage_of(copier.entries.items())
        w.put_job(record)
        w.add_event("cloned", new_id, source=src_id, files=len(copier.entries), bytes=copier.bytes,
                    seconds=round(seconds, 3), methods=copier.methods)
        return [record]
    record = service.records.commit(fn)[0]
    service.usage.forget(new_id)
    return record


def _abandon(service, new_id: str, exc: BaseException) -> None:
    """A failed copy: NEW is cancelled and archived, so no half-made workspace stays in view."""
    reason = f"clone failed: {exc}"[:1000]
    try:
        service.transition(new_id, JobState.CANCELLED, " ".join(reason.split()))
        service.transition(new_id, JobState.ARCHIVED)
    except Exception:
        log.exception("could not remove the failed clone %s", new_id)
