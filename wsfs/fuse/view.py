"""The view: what every path of the mount shows (docs/spec.md §3), as borg's ``vfs.py`` does
for its archives.  ``View.resolve`` turns a path into a ``Node``; the rest says what a node
holds: the bytes of the virtual files, the attributes of virtual entries, a directory's
listing, and who may see which job.

::

    /                            VDIR   workspaces/ quarantine/ shared/ .wsfs/
    /workspaces/, /quarantine/   VDIR   the jobs whose tree is there (not hidden)
    /workspaces/JOB/             JOBROOT  DATA/jobs/JOB (quarantine/: read-only)
      AREA/...                   REAL   DATA/jobs/JOB/AREA/...
      .state .job .manifest      VFILE  the state word, the job document, the manifest
      receipt.json               REAL   read-only, once the job ended
      anything else              ABSENT nothing there, nothing may be made
    /shared/...                  REAL   DATA/shared/...
    /.wsfs/                      VDIR   status control events jobs metrics receipts/
    /.wsfs/receipts/JOB          VFILE  the receipt the store kept (looked up by name only)

A job is seen by whoever may read its root directory (its mode, owner and group, or a share):
in listings, ``.wsfs/jobs`` and ``.wsfs/events`` alike.

Threading: any FUSE thread; a ``View`` holds no state of its own but the clock of the mount.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import functools
import hashlib
import json
import os
import stat
import time
from collections.abc import Callable

from ..core import metrics
from ..core.errors import WsfsError
from ..core.lifecycle import RECEIPT_FILE, JobService
from ..core.manifest import manifest_bytes
from ..core.model import JOB_ID_RE, JobRecord, is_hidden_name
from ..core.records import location
from ..core.tree import Tree
from .binding import FuseOSError, fuse_get_context

STATE_FILE, JOB_FILE, MANIFEST_FILE = ".state", ".job", ".manifest"
JOB_CONTROL_FILES = (STATE_FILE, JOB_FILE, MANIFEST_FILE)
WSFS_DIR = ".wsfs"
WSFS_FILES = {"status": 0o444, "control": 0o222, "events": 0o444, "jobs": 0o444, "metrics": 0o400}
TOP_DIRS = ("workspaces", "quarantine", "shared", WSFS_DIR)
#: ``.wsfs/receipts/JOB``: the receipt the store keeps of a job whose tree is gone (archived,
#: purged, deleted after publishing); looked up by name, never listed; its owner's (and root's).
RECEIPTS_DIR, KEPT_RECEIPT = "receipts", "kept-receipt"
EVENTS_SHOWN = 1000
# Inode numbers of virtual entries: far above anything a real filesystem hands out.
_VIRTUAL_INO_BASE = 1 << 60


class NodeKind(str, enum.Enum):
    """What kind of thing a view path names."""

    VDIR = "vdir"        # a virtual directory: /, workspaces/, quarantine/, .wsfs/, .wsfs/receipts/
    VFILE = "vfile"      # a virtual file: .state, .job, .manifest, .wsfs/* and a kept receipt
    JOBROOT = "jobroot"  # a job's top directory (backing: DATA/jobs/JOB or DATA/quarantine/JOB)
    REAL = "real"        # a backing file or directory: an area's content, receipt.json, shared/
    ABSENT = "absent"    # a name at a job's root that is no area: nothing there, nothing may be made


@dataclasses.dataclass(slots=True)
class Node:
    """What a view path names (``_resolve``)."""

    kind: NodeKind
    name: str = ""                  # vdir/vfile name
    job: str | None = None          # the job, for everything under one
    root: str = ""                  # tree root for backing paths (JOBROOT, REAL; "" for the others)
    rel: str = ""                   # path below the root
    area_path: str | None = None    # AREA/rel, for manifest entries
    readonly: bool = False          # quarantine, receipt

    # For a caller that knows the node is under a job (a JOBROOT, an area's file), or in an area:
    # the value, typed as there; an EIO, not a None passed on, if it is not.
    @property
    def job_id(self) -> str:
        return self._known(self.job, "belongs to no job")

    @property
    def area_rel(self) -> str:
        return self._known(self.area_path, "is in no area")

    def _known(self, value: str | None, what: str) -> str:
        if value is None:
            raise WsfsError(f"{self.kind.value} {self.rel or self.name!r} {what}")
        return value


VIEW_TOPS = {"jobs": "/workspaces", "quarantine": "/quarantine", "shared": "/shared"}


def view_path(node: Node) -> str:
    """The path in the mount of a backing node."""
    return f"{VIEW_TOPS[node.root]}/{node.rel}" if node.rel else VIEW_TOPS[node.root]


class View:
    """What the paths of one mount show, over a ``JobService``.  See the module docstring."""

    def __init__(self, service: JobService, tree: Tree, *, status: Callable[[], dict] | None = None,
                 context: Callable[[], tuple[int, int, int]] | None = None):
        self.service = service
        self.tree = tree
        self._status: Callable[[], dict] = status or (lambda: {})
        self._context = context or fuse_get_context
        self._mounted_ns = time.time_ns()
        self._uid, self._gid = os.getuid(), os.getgid()

    _SHARED_EVENT_FIELDS = frozenset({"seq", "t", "kind", "job", "dry_run", "counts", "duration_ms", "pid",
                                      "repair", "problems", "remaining"})

    def resolve(self, path: str) -> Node:
        parts = [p for p in path.split("/") if p]
        if not parts:
            return Node(NodeKind.VDIR, name="/")
        top = parts[0]
        if top == "shared":
            return Node(NodeKind.REAL, root="shared", rel="/".join(parts[1:]))
        if top == WSFS_DIR:
            if len(parts) == 1:
                return Node(NodeKind.VDIR, name=WSFS_DIR)
            if len(parts) == 2 and parts[1] in WSFS_FILES:
                return Node(NodeKind.VFILE, name=parts[1])
            if parts[1] == RECEIPTS_DIR and len(parts) <= 3:
                if len(parts) == 2:
                    return Node(NodeKind.VDIR, name=RECEIPTS_DIR)
                if JOB_ID_RE.fullmatch(parts[2]) and self.service.records.get(parts[2]) is not None:
                    with self.service.store.read() as r:
                        if r.receipt(parts[2]) is not None:
                            return Node(NodeKind.VFILE, name=KEPT_RECEIPT, job=parts[2])
            raise FuseOSError(errno.ENOENT)
        if top not in ("workspaces", "quarantine"):
            raise FuseOSError(errno.ENOENT)
        if len(parts) == 1:
            return Node(NodeKind.VDIR, name=top)
        job = parts[1]
        # A name that is no job id names no job: answered here, before it reaches the store's keys
        # (a name that is not UTF-8 arrives with surrogates, which no key can hold).
        record = self.service.records.get(job) if JOB_ID_RE.fullmatch(job) else None
        root = "jobs" if top == "workspaces" else "quarantine"
        if record is None or record.where != root or record.hidden:
            raise FuseOSError(errno.ENOENT)
        readonly = root == "quarantine"
        if len(parts) == 2:
            return Node(NodeKind.JOBROOT, job=job, root=root, rel=job, readonly=readonly)
        first = parts[2]
        if first in JOB_CONTROL_FILES and len(parts) == 3:
            return Node(NodeKind.VFILE, name=first, job=job)
        if first == RECEIPT_FILE and len(parts) == 3:
            return Node(NodeKind.REAL, job=job, root=root, rel=f"{job}/{RECEIPT_FILE}", readonly=True)
        if first not in record.areas:
            # Not an area: nothing lives here, and nothing may be made here.
            return Node(NodeKind.ABSENT, job=job, name=first)
        area_path = "/".join(parts[2:])
        return Node(NodeKind.REAL, job=job, root=root, rel=f"{job}/{area_path}", area_path=area_path, readonly=readonly)

    def job_root(self, job: str) -> os.stat_result:
        record = self.service.records.require(job)
        where = location(record)
        if where is None:
            raise FuseOSError(errno.ENOENT)
        return self.tree.lstat(*where)

    def receipt_attrs(self, node: Node, attrs: dict) -> dict:
        """receipt.json is read by whoever may read its job's root (see _vfile_attrs)."""
        root = self.job_root(node.job_id)
        attrs["st_mode"] = stat.S_IFREG | (stat.S_IMODE(root.st_mode) & 0o444)
        attrs["st_uid"], attrs["st_gid"] = root.st_uid, root.st_gid
        return attrs

    def vdir_attrs(self, name: str) -> dict:
        mode = 0o1777 if name == "workspaces" else 0o755
        return {"st_mode": stat.S_IFDIR | mode, "st_nlink": 2, "st_uid": self._uid, "st_gid": self._gid,
                "st_ino": self.vdir_ino(name),
                "st_atime": self._mounted_ns, "st_mtime": self._mounted_ns, "st_ctime": self._mounted_ns}

    def vfile_attrs(self, node: Node, size: int) -> dict:
        if node.name == KEPT_RECEIPT:
            record = self.service.records.require(node.job_id)
            mode, uid, gid = 0o400, record.uid, record.gid
        elif node.job is None:
            mode, uid, gid = WSFS_FILES[node.name], self._uid, self._gid
        else:
            # .state, .job and .manifest may be read by whoever may read the job's root (its mode
            # and group), as receipt.json: a job made with mkdir -m 0700 shows nothing to others.
            root = self.job_root(node.job)
            readable = stat.S_IMODE(root.st_mode) & 0o444
            mode = readable | 0o200 if node.name == STATE_FILE else readable
            uid, gid = root.st_uid, root.st_gid
        now = time.time_ns()
        return {"st_mode": stat.S_IFREG | mode, "st_nlink": 1, "st_uid": uid, "st_gid": gid, "st_size": size,
                "st_ino": self.vfile_ino(node.job, node.name),
                "st_atime": now, "st_mtime": now, "st_ctime": now, "st_blksize": 4096}

    def content(self, node: Node) -> bytes:
        name, job = node.name, node.job
        if name == KEPT_RECEIPT:
            with self.service.store.read() as r:
                return bytes(r.receipt(node.job_id) or b"")
        if job is not None:
            if name == STATE_FILE:
                return (self.service.records.require(job).state.value + "\n").encode()
            if name == JOB_FILE:
                return (json.dumps(self.service.job_document(job), indent=2, sort_keys=True, default=str)
                        + "\n").encode()
            if name == MANIFEST_FILE:
                return manifest_bytes(self.service.manifest_entries(job))
        if name == "status":
            status, caller = self._status(), self.caller()
            if caller is not None and "users" in status:  # per-user usage: a user sees its own
                status["users"] = {uid: v for uid, v in status["users"].items() if uid == str(caller[0])}
            return (json.dumps(status, indent=2, sort_keys=True) + "\n").encode()
        if name == "events":
            caller = self.caller()
            with self.service.store.read() as r:
                events = r.events(limit=None if caller else EVENTS_SHOWN)
            if caller is not None:
                events = [e for e in map(functools.partial(self.event_for, caller), events) if e][-EVENTS_SHOWN:]
            return b"".join(json.dumps(e, sort_keys=True).encode() + b"\n" for e in events)
        if name == "jobs":
            return self.jobs_listing(self.caller())
        if name == "metrics":
            return metrics.render()
        return b""

    def caller(self) -> tuple[int, frozenset[int]] | None:
        """The calling uid and its groups, or None for root (who sees every job)."""
        uid, gid, pid = self._context()
        if uid == 0:
            return None
        groups = {gid}
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("Groups:"):
                        groups.update(int(g) for g in line.split()[1:])
                        break
        except (OSError, ValueError):
            pass  # the caller is gone: its primary group alone
        return uid, frozenset(groups)

    def may_read(self, caller: tuple[int, frozenset[int]] | None, record: JobRecord) -> bool:
        """May ``caller`` read the job's root directory (by its mode, owner and group)?  A job
        without a tree any more is its owner's alone."""
        if caller is None:
            return True
        uid, groups = caller
        shares = record.shares
        if shares and (f"u:{uid}" in shares or any(f"g:{g}" in shares for g in groups)):
            return True  # shared with the caller (wsfs.sharing): its root reads for them
        where = location(record)
        if where is None:
            return record.uid == uid
        try:
            st = self.tree.lstat(*where)
        except OSError:
            return record.uid == uid
        if st.st_uid == uid:
            return bool(st.st_mode & 0o400)
        if st.st_gid in groups:
            return bool(st.st_mode & 0o040)
        return bool(st.st_mode & 0o004)

    def event_for(self, caller, event: dict) -> dict | None:
        """An event as a non-root caller sees it: a job's if it may read the job; a rejected
        command of its own; of the rest (sweeps, doctor, recovery) the figures, not the jobs."""
        job = event.get("job")
        if job is not None:
            record = self.service.records.get(job)
            return event if record is not None and self.may_read(caller, record) else None
        if event.get("kind") == "rejected":
            return event if event.get("uid") == caller[0] else None
        return {k: v for k, v in event.items() if k in self._SHARED_EVENT_FIELDS}

    def jobs_listing(self, caller=None) -> bytes:
        self.service.manifest.flush()
        lines = []
        with self.service.store.read() as r:
            for record in r.jobs():
                if caller is not None and not self.may_read(caller, record):
                    continue
                line = {k: getattr(record, k) for k in ("id", "state", "stage", "template", "created", "ended",
                                                   "state_since", "expires_at", "hidden", "where", "purged_at",
                                                   "usage", "uid", "reason", "quota", "max_files", "publish",
                                                   "git", "origin", "labels", "max_running", "extensions")}
                line["hide_at"], line["purge_at"] = self.retention_dates(record)
                lines.append(json.dumps(line, sort_keys=True).encode() + b"\n")
        return b"".join(lines)

    def retention_dates(self, record: JobRecord) -> tuple[float | None, float | None]:
        """When an ended job will be hidden and purged (None: not, or not any more)."""
        expires = record.expires_at
        if expires is None or record.state == "running" or not record.where:
            return None, None
        if record.hidden:
            return None, expires
        try:
            grace = self.service.template(record).grace
        except KeyError:  # a template gone from the config
            return expires, None
        return expires, expires + grace

    def dir_ino(self, node: Node) -> int:
        if node.kind == "vdir":
            return self.vdir_ino(node.name)
        return self.tree.lstat(node.root, node.rel).st_ino

    @staticmethod
    def vdir_ino(name: str) -> int:
        if name == RECEIPTS_DIR:
            return _VIRTUAL_INO_BASE + len(TOP_DIRS) + 2
        return 1 if name == "/" else _VIRTUAL_INO_BASE + TOP_DIRS.index(name) + 2

    @staticmethod
    def vfile_ino(job: str | None, name: str) -> int:
        digest = hashlib.blake2b(f"{job}/{name}".encode(), digest_size=6).digest()
        return _VIRTUAL_INO_BASE + (1 << 20) + int.from_bytes(digest, "big")

    @staticmethod
    def path_of(node: Node) -> str:
        """The path in the mount of a directory's node (the inverse of ``resolve``)."""
        if node.kind == NodeKind.VDIR:
            return {"/": "/", RECEIPTS_DIR: f"/{WSFS_DIR}/{RECEIPTS_DIR}"}.get(node.name, f"/{node.name}")
        return view_path(node)

    def cheap_attrs(self, directory: Node, name: str) -> bool:
        """Are the attributes of ``name`` in ``directory`` cheap to give with a listing?  Not those
        of the virtual files whose size is their whole content (all but ``.state``)."""
        if directory.kind == NodeKind.JOBROOT:
            return name not in (JOB_FILE, MANIFEST_FILE)
        return not (directory.kind == NodeKind.VDIR and directory.name in (WSFS_DIR, RECEIPTS_DIR))

    def entries(self, node: Node) -> list[tuple[str, int, int]]:
        """What a directory of the view lists: (name, inode, type), ``.`` and ``..`` first.  Every
        entry carries its inode: with use_ino an entry of inode 0 would be skipped by readdir(3)."""
        entries = [(".", self.dir_ino(node), stat.S_IFDIR), ("..", 1, stat.S_IFDIR)]
        if node.kind == "vdir":
            if node.name == RECEIPTS_DIR:
                pass  # looked up by name only: listing every kept receipt would show every job
            elif node.name == "/":
                entries += [(name, self.vdir_ino(name), stat.S_IFDIR) for name in TOP_DIRS if name != "shared"]
                entries.append(("shared", self.tree.lstat("shared", "").st_ino, stat.S_IFDIR))
            elif node.name == WSFS_DIR:
                entries += [(name, self.vfile_ino(None, name), stat.S_IFREG) for name in WSFS_FILES]
                entries.append((RECEIPTS_DIR, self.vdir_ino(RECEIPTS_DIR), stat.S_IFDIR))
            else:
                where = "jobs" if node.name == "workspaces" else "quarantine"
                inodes = {name: ino for name, ino, _kind in self.tree.scandir(where, "")}
                with self.service.store.read() as r:
                    for record in r.jobs():
                        if record.where == where and not record.hidden and record.id in inodes:
                            entries.append((record.id, inodes[record.id], stat.S_IFDIR))
        elif node.kind == "jobroot":
            record = self.service.records.require(node.job_id)
            present = {name: (ino, kind) for name, ino, kind in self.tree.scandir(node.root, node.rel)}
            entries += [(a, *present[a]) for a in record.areas if a in present]
            entries += [(name, self.vfile_ino(node.job, name), stat.S_IFREG) for name in JOB_CONTROL_FILES]
            if RECEIPT_FILE in present:
                entries.append((RECEIPT_FILE, *present[RECEIPT_FILE]))
        elif node.kind == "real":
            entries += [e for e in self.tree.scandir(node.root, node.rel) if not is_hidden_name(e[0])]
        else:
            raise FuseOSError(errno.ENOTDIR)
        return entries
