"""The FUSE operations: a protocol adapter only (paths in, errnos out).

Each call resolves its path to a ``Node`` (what the view shows there: ``wsfs.fuse.view``),
makes one call into the core (``JobService``, ``Tree``) and returns.  ``@op`` is the
one errno boundary: ``WsfsError`` -> its errno, ``OSError`` -> its own errno,
anything else -> a logged traceback and ``EIO``.

Permissions are the kernel's (``default_permissions``), and with ``FUSE_CAP_POSIX_ACL`` the
kernel also enforces the POSIX ACLs that ``getxattr`` returns from the backing files (how a
job is shared, wsfs.sharing); it then leaves the caller's umask to ``_new_mode``.

Threading: libfuse calls in from many threads.  Open files live in
``_handles`` (guarded by ``_handles_lock``); a handle's own lock orders its
writes, so the running sha256 of a file written front to back stays right.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator

from ..core import acl, metrics, syscalls
from ..core.errors import NotAllowedError, WsfsError
from ..core.hashing import INLINE_MAX, Hasher, StreamHash, small_file_digest
from ..core.lifecycle import RECEIPT_FILE, JobService
from ..core.model import is_hidden_name
from ..core.records import is_sealed, location
from ..core.recovery import FROZEN_META
from ..core.tree import Tree, split
from .binding import (
    CAP_DONT_MASK,
    CAP_HANDLE_KILLPRIV_V2,
    CAP_POSIX_ACL,
    READDIR_BUFFERED,
    FuseOSError,
    Operations,
    backing_close,
    backing_open,
    caller_umask,
    end_session,
    fuse_get_context,
    invalidate_path,
    remember_session,
    set_backing_id,
    want_passthrough,
)
from .coherence import HiddenNames, LinkedNames, PageInvalidator
from .view import (
    JOB_CONTROL_FILES,
    KEPT_RECEIPT,
    STATE_FILE,
    TOP_DIRS,
    VIEW_TOPS,
    WSFS_DIR,
    Node,
    NodeKind,
    View,
    view_path,
)

log = logging.getLogger("wsfs.fs")

# A listing of at most this many entries is given whole (binding.READDIR_BUFFERED): one call, held
# by libfuse (~200 bytes an entry) until closedir; a bigger one streams, by offsets.
WHOLE_LISTING_MAX = 10_000 if READDIR_BUFFERED else -1
CACHE_TIMEOUT_S = 10.0  # the kernel's entry and attribute timeouts (see init_with_config)
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


def op(func):
    """The errno boundary (see the module docstring), counted and timed (wsfs.metrics)."""
    name = func.__name__
    counted = metrics.FUSE_REQUESTS.add

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return func(*args, **kwargs)
        except WsfsError as exc:
            raise _refused(name, exc.errno) from None
        except FuseOSError as exc:
            raise _refused(name, exc.errno) from None
        except OSError as exc:
            raise _refused(name, exc.errno or errno.EIO) from None
        except Exception:
            log.exception("%s failed", name)
            raise _refused(name, errno.EIO) from None
        finally:
            counted(name, time.perf_counter() - started)
    return wrapper


def _refused(op_name: str, number: int) -> FuseOSError:
    if number != errno.ENOENT and number != errno.ENODATA:  # a name or an xattr not there is no refusal
        metrics.FUSE_ERRORS.labels(op=op_name, errno=metrics.errno_name(number)).inc()
    return FuseOSError(number)


@dataclasses.dataclass(eq=False)
class Handle:
    """An open directory of the view (``opendir``); the base of the two kinds of open file."""

    node: Node
    writable: bool = False
    # a directory's listing, taken when it is read from its start: later reads continue it
    listing: list[tuple[str, int, int]] | None = None


@dataclasses.dataclass(eq=False)
class VirtualHandle(Handle):
    """An open virtual file (``.state``, ``.job``, ``.wsfs/*``): its bytes, taken at open."""

    data: bytes = b""


@dataclasses.dataclass(eq=False)
class FileHandle(Handle):
    """An open backing file: the daemon's own fd on it, and what this open did to it."""

    fd: int = -1
    dirty: bool = False
    changed: bool = False  # written to (truncated, allocated) through this handle, ever
    stream: StreamHash | None = None  # the running sha256, while written front to back
    ino: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    # kernel passthrough (docs/architecture.md): the kernel reads and writes the backing file itself
    backing_id: int = 0
    # a passthrough writer's file's ctime at open, while no write can have changed it; -1: assume written
    ctime_at_open: int = -1
    # a set-id file opened for writing by an unprivileged caller: its first write drops the bits
    drops_privileges: bool = False


@dataclasses.dataclass(eq=False)
class InodeIo:
    """How a backing inode's opens are served: the kernel allows one way per inode at a time, so
    the first open decides for all the opens that overlap it (``WsfsOperations._open_io``)."""

    opens: int = 0
    backing_id: int = 0  # > 0: through kernel passthrough, with this id


def _keeps_privileges(st: os.stat_result) -> bool:
    """A set-user-ID or set-group-ID file: a write by an unprivileged caller drops the bits, which
    the daemon (``_drop_privileges``) or the kernel (through setattr) does on its write path; a
    passthrough write would not, so such a file opened for writing is served."""
    return bool(st.st_mode & (stat.S_ISUID | stat.S_ISGID))


def _stat_dict(st: os.stat_result) -> dict:
    return {
        "st_mode": st.st_mode, "st_ino": st.st_ino, "st_nlink": st.st_nlink,
        "st_uid": st.st_uid, "st_gid": st.st_gid, "st_size": st.st_size,
        "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns,
        "st_blocks": st.st_blocks, "st_blksize": st.st_blksize, "st_rdev": st.st_rdev,
    }


HIDE_FOLLOWUP_S = 1.0  # libfuse's rename follows its hide_node at once, on the same thread
def _marks_setattr(func):
    """For the getattr that libfuse's setattr calls next on this thread (see ``_visible_links``)."""
    @functools.wraps(func)
    def wrapper(self, path, *args):
        result = func(self, path, *args)
        fh = args[-1] if args and hasattr(args[-1], "fh") else None
        self._setattr_marks[threading.get_ident()] = (path, fh.fh if fh is not None else None)
        return result
    return wrapper


def _digest_at(digest: tuple[os.stat_result, bytes] | None, st: os.stat_result | None) -> bytes | None:
    """The sha256 of ``digest`` (a stat and the sha256 read at it) if nothing was written to the
    file since, as ``st`` shows it now (its manifest key, and ctime), else None."""
    if digest is None or st is None:
        return None
    was = digest[0]
    same = (was.st_ino, was.st_size, was.st_mtime_ns, was.st_ctime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns,
                                                                          st.st_ctime_ns)
    return digest[1] if same else None


def _is_hidden(node: Node) -> bool:
    return bool(node.rel) and is_hidden_name(node.rel.rsplit("/", 1)[-1])


class WsfsOperations(Operations):
    """mfusepy operations over a ``JobService``.  See the module docstring."""

    use_ns = True

    def __init__(self, service: JobService, tree: Tree, *, sweep=None, status=None, doctor=None, reload=None,
                 context=None, umask=None):
        # Who calls: (uid, gid, pid) and the caller's umask, from libfuse's request context;
        # tests that drive the operations without a mount give their own (tests/core/test_operations.py).
        self._context = context or fuse_get_context
        self._umask = umask or caller_umask
        self.service = service
        self.tree = tree
        self._sweep = sweep
        self._reload = reload
        self._doctor = doctor
        self._handles: dict[int, Handle] = {}
        self._handles_lock = threading.Lock()
        self._fh_counter = itertools.count(1)
        self._writers: dict[int, set[FileHandle]] = {}  # backing inode -> open writable handles
        self.hasher = Hasher()  # its thread is started by the daemon
        self._linked = LinkedNames()
        self._hidden = HiddenNames()
        self._invalidate = PageInvalidator()
        # thread id -> (path, fh) of a setattr step whose getattr comes next on that thread.  Not a
        # threading.local: Python forgets those between two callbacks on a libfuse thread.
        self._setattr_marks: dict[int, tuple] = {}
        # view path -> (hidden rel, inode, thread id, time) of libfuse's hide_node of that name, for
        # the rename that may follow it in the same request (see _undo_hide)
        self._hidden_now: dict[str, tuple] = {}
        # rel -> an open handle of a file whose area was dropped (_area_dropping): its fstat() comes
        # by its old path (libfuse #62), as an unlinked file's does, until its last close
        self._dropped_open: dict[str, FileHandle] = {}
        # Kernel passthrough (negotiated at init): reads always, writes when the job meters nothing
        # and the data dir can freeze a file at its job's seal (docs/spec.md §8a).
        self.passthrough = self.passthrough_writes = False
        self.kills_privileges = False  # FUSE_CAP_HANDLE_KILLPRIV_V2: set-id bits are ours to drop
        self._io: dict[int, InodeIo] = {}  # backing inode -> how its opens are served
        self._frozen: dict[int, FileHandle] = {}  # inode -> a passthrough writer frozen at its job's seal
        self._unhashed: dict[int, Handle] = {}  # files closed whose sha256 the hasher still computes
        service.view_changed = self._view_changed
        service.records_changed = self._forget_job_files
        service.pending_digest = self.hasher.digest_now
        service.tree_closing = self._tree_closing
        service.area_dropping = self._area_dropping
        service.acl_changed = self._acl_changed
        self._as_root = os.geteuid() == 0
        self.view = View(service, tree, status=status, context=self._context)

    # -- libfuse setup ------------------------------------------------------

    @property
    def posix_acl(self) -> bool:
        """Negotiated at init (``service.acls_enforced``): the kernel enforces ACLs, the umask is ours."""
        return self.service.acls_enforced

    def init_with_config(self, conn, config):
        remember_session()
        if config is not None:
            config.use_ino = 1          # hard links show one inode; tools like du, tar, cp -a rely on it
            # hard_remove stays off: the kernel sends fstat() without the file handle (libfuse #62),
            # so an unlinked open file must keep a name (libfuse's .fuse_hiddenXXX, which wsfs
            # hides from listings and manifests and libfuse unlinks at release).
            config.hard_remove = 0
            config.nullpath_ok = 1      # calls on open files come by handle, not path
            config.negative_timeout = 0  # a job made through .wsfs/control must appear at once
            # Only the daemon changes the data dir, and every change it makes behind a request's back
            # drops what the kernel cached of it (_forget_cached_job, _forget_job_files, LinkedNames):
            # so the kernel may keep names and attributes long, and a file's pages across opens
            # while its mtime and size stay the same (auto_cache).
            # WSFS_CACHE_TIMEOUT=S (tests only): the escape suite swaps trees behind the daemon's
            # back (docs/spec.md §2 forbids it), and with 0 every one of its calls reaches the daemon.
            timeout = float(os.environ.get("WSFS_CACHE_TIMEOUT", CACHE_TIMEOUT_S))
            config.entry_timeout = timeout
            config.attr_timeout = timeout
            config.auto_cache = 1
        if conn is not None:
            self._negotiate(conn)
        if config is not None and self.passthrough:
            # libfuse's auto_cache answers an open with keep_cache, which the kernel refuses (EIO) on
            # a passthrough open; the files wsfs serves itself (a metered job's) lose their pages at
            # each open instead, as with a plain FUSE mount.
            config.auto_cache = 0

    def _negotiate(self, conn) -> None:
        """The capabilities wsfs asks of the kernel at init."""
        conn.max_write = 1 << 20
        conn.max_readahead = 1 << 20
        # POSIX ACLs (README "Sharing a workspace"): the kernel enforces the ACLs that getxattr
        # returns, and leaves the umask to the daemon (_new_mode), as a default ACL replaces it.
        both = CAP_POSIX_ACL | CAP_DONT_MASK
        if conn.capable & both == both and os.environ.get("WSFS_POSIX_ACL", "1") != "0":
            conn.want |= both
            self.service.acls_enforced = True
        # The kernel asks getxattr("security.capability") before every write() to a file, to know
        # whether the write must drop privileges, unless the daemon takes that on
        # (FUSE_CAP_HANDLE_KILLPRIV_V2, _drop_privileges).  The backing filesystem drops
        # security.capability itself on any write; a set-id bit only for a caller without CAP_FSETID,
        # and the daemon writes as root: those are dropped here.  WSFS_KILLPRIV=0 leaves it to the kernel.
        if conn.capable & CAP_HANDLE_KILLPRIV_V2 and os.environ.get("WSFS_KILLPRIV", "1") != "0":
            conn.want |= CAP_HANDLE_KILLPRIV_V2
            self.kills_privileges = True
        # Kernel passthrough (libfuse >= 3.17, kernel >= 6.9, CAP_SYS_ADMIN): WSFS_PASSTHROUGH=0 turns
        # it off; writes need the data dir to take FS_IMMUTABLE_FL (the seal of an open writer).
        if os.environ.get("WSFS_PASSTHROUGH", "1") != "0" and os.geteuid() == 0 and want_passthrough(conn):
            self.passthrough = True
            self.passthrough_writes = self.tree.can_freeze()

    def passthrough_mode(self) -> str:
        """``on`` (reads and writes), ``reads`` (writes come here: the data dir cannot freeze a
        file) or ``off`` (libfuse older than 3.17, a kernel without it, not root)."""
        return "off" if not self.passthrough else "on" if self.passthrough_writes else "reads"

    def destroy(self, path):
        end_session()  # libfuse frees the session next: no thread may invalidate through it after this

    def open_jobs(self) -> set[str]:
        """Jobs with a file open through the mount (the sweeper does not purge those)."""
        with self._handles_lock:
            return {h.node.job for h in self._handles.values() if h.node.job is not None and isinstance(h, FileHandle)}

    # -- path resolution ----------------------------------------------------

    def _backing(self, path: str, *, for_change: bool = False) -> Node:
        if for_change and path.count("/") == 1 and path.strip("/") not in TOP_DIRS:
            raise NotAllowedError("only workspaces/, quarantine/, shared/ and .wsfs/ live at the top")
        node = self.view.resolve(path)
        if node.kind == "absent":
            if for_change:
                raise NotAllowedError(f"only the areas live at a job's root: {node.name}")
            raise FuseOSError(errno.ENOENT)
        if node.kind not in ("real", "jobroot"):
            raise FuseOSError(errno.EPERM if for_change else errno.EACCES)
        if for_change and node.readonly:
            raise FuseOSError(errno.EROFS)
        return node

    def _limited(self, node: Node) -> bool:
        """Does this job have a quota or max_files to meter?  (Most have neither: no cost then.)"""
        if node.job is None or node.area_path is None:
            return False
        return self.service.metered(self.service.records.require(node.job))

    def _charge(self, node: Node, dbytes: int = 0, dfiles: int = 0) -> None:
        if self._limited(node):
            self.service.usage.charge(node.job_id, dbytes, dfiles)

    def _names(self, node: Node, st: os.stat_result) -> int:
        """In how many manifest entries a file's size counts: each of its names in the job (its
        links, libfuse's hidden names aside).  A change of its size is charged that many times."""
        if st.st_nlink <= 1:
            return 1
        return max(st.st_nlink - self._hidden.links((node.root, st.st_ino)), 1)

    def _changing(self, node: Node):
        """Context for a change to a backing path: seal check and transition ordering."""
        if node.job is None:
            return _NO_LOCK
        return self.service.records.mutation(node.job)

    # -- attributes -----------------------------------------------------------

    @op
    def getattr(self, path, fh=None):
        mark = self._setattr_marks.pop(threading.get_ident(), None) if self._setattr_marks else None
        if self._hidden_now and path in self._hidden_now:
            self._hidden_now.pop(path, None)  # a lookup of a name libfuse hid: a new request (see _undo_hide)
        after_setattr = mark is not None and mark == (path, fh.fh if fh is not None else None)
        if fh is not None and fh.fh:
            handle = self._handle(fh)
            if isinstance(handle, FileHandle):
                return self._visible_links(handle.node, _stat_dict(os.fstat(handle.fd)), after_setattr)
            return self.view.vfile_attrs(handle.node, len(self.view.content(handle.node)))
        if path is None:
            raise FuseOSError(errno.ENOENT)
        return self._attrs(path, after_setattr)

    def _attrs(self, path: str, after_setattr: bool = False) -> dict:
        """What ``getattr`` answers for a path: what a lookup of it tells the kernel."""
        node = self.view.resolve(path)
        if node.kind == "vdir":
            return self.view.vdir_attrs(node.name)
        if node.kind == "vfile":
            return self.view.vfile_attrs(node, 0 if node.name == "control" else len(self.view.content(node)))
        if node.kind == "absent":
            raise FuseOSError(errno.ENOENT)
        try:
            st = self.tree.lstat(node.root, node.rel)
        except FileNotFoundError:
            # fstat() of an unlinked open file comes by path (libfuse #62), its hidden name maybe gone
            open_file = self._handle_at(node.root, node.rel) if _is_hidden(node) else \
                self._dropped_open.get(node.rel) if self._dropped_open else None
            if open_file is None:
                raise
            return _stat_dict(os.fstat(open_file.fd))
        if node.readonly and node.area_path is None and node.rel.endswith("/" + RECEIPT_FILE):
            return self.view.receipt_attrs(node, _stat_dict(st))
        return self._backing_attrs(node, path, st, after_setattr)

    def _backing_attrs(self, node: Node, path: str, st: os.stat_result, after_setattr: bool = False) -> dict:
        """A backing entry's attributes as the kernel gets them, from a lookup or a listing: the
        names of a multiply-linked file noted (``LinkedNames``), hidden names not counted."""
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            self._linked.note((node.root, st.st_ino), path)
        return self._visible_links(node, _stat_dict(st), after_setattr)

    def _visible_links(self, node: Node, attrs: dict, after_setattr: bool = False) -> dict:
        """Links without libfuse's hidden names: POSIX gives an unlinked open file 0 links.

        libfuse's getattr takes one off a hidden node's own count before it replies; its
        setattr (truncate, chmod, chown, utimens) replies with ours as it is.
        """
        if not self._hidden:
            return attrs
        hidden = self._hidden.links((node.root, attrs["st_ino"]))
        if _is_hidden(node) and not after_setattr:
            hidden -= 1
        if hidden > 0:
            attrs["st_nlink"] = max(attrs["st_nlink"] - hidden, 0)
        return attrs

    # -- virtual files ----------------------------------------------------------


    # -- who may see which job ------------------------------------------------------


    # -- directories ------------------------------------------------------------

    @op
    def opendir(self, path):
        node = self.view.resolve(path)
        if node.kind in ("vfile", "absent"):
            raise FuseOSError(errno.ENOTDIR if node.kind == "vfile" else errno.ENOENT)
        fh = next(self._fh_counter)
        with self._handles_lock:
            self._handles[fh] = Handle(node)
        return fh

    @op
    def releasedir(self, path, fh):
        with self._handles_lock:
            self._handles.pop(fh, None)
        return 0

    @op
    def readdir(self, path, fh, offset: int = 0, plus: bool = False) -> Iterator[tuple[str, dict, int]]:
        """A directory's entries from ``offset`` on, each with its inode and type (with use_ino
        an entry of inode 0 would be skipped by readdir(3)) and the offset of the next (``binding.FUSE``
        reads on until the kernel's buffer is full; the listing is taken at offset 0 and kept
        in the handle).  ``plus`` (the kernel's READDIRPLUS): each entry with all its
        attributes, as ``getattr`` answers them, made as it is read, so that the kernel asks
        no LOOKUP per entry of ``ls -l``, ``find``, ``du``, ``rm -r``; not the virtual files
        whose size costs their whole content (``.job``, ``.manifest``, ``.wsfs/*``)."""
        try:
            handle = self._handles[fh]
        except KeyError:
            raise FuseOSError(errno.EBADF) from None
        if offset == 0 or handle.listing is None:
            handle.listing = self.view.entries(handle.node)
        return self._entries(handle, path, offset, plus)

    def _entries(self, handle: Handle, path: str | None, offset: int, plus: bool):
        listing = handle.listing or []
        # Whole (offsets of 0): libfuse keeps it and serves the kernel's further READDIRs itself.
        whole = len(listing) <= WHOLE_LISTING_MAX
        if whole:
            offset = 0
        node = handle.node
        # libfuse gives no path (nullpath_ok): the directory's own, from its node
        base = self.view.path_of(node).rstrip("/") if plus else None
        dir_fd = self._listed_dir_fd(node) if plus else -1
        try:
            for index in range(offset, len(listing)):
                name, ino, kind = listing[index]
                attrs = None
                if base is not None and name not in (".", "..") and self.view.cheap_attrs(node, name):
                    with contextlib.suppress(FuseOSError, WsfsError, OSError):  # gone meanwhile: looked up later
                        attrs = self._listed_attrs(node, base, name, dir_fd)
                yield name, attrs or {"st_ino": ino, "st_mode": kind}, 0 if whole else index + 1
        finally:
            if dir_fd >= 0:
                os.close(dir_fd)

    def _listed_dir_fd(self, node: Node) -> int:
        """An fd of a backing directory being listed, for one fstatat per entry (-1: none)."""
        if node.kind not in (NodeKind.REAL, NodeKind.JOBROOT):
            return -1
        try:
            return self.tree.open_dir(node.root, split(node.rel))
        except OSError:
            return -1

    def _listed_attrs(self, directory: Node, base: str, name: str, dir_fd: int) -> dict:
        """An entry's attributes for READDIRPLUS: what ``getattr`` would answer.  A file or
        directory in an area (or an area at a job's root) costs one fstatat; the rest (.state,
        receipt.json, the jobs of workspaces/) takes ``getattr``'s own way."""
        if dir_fd < 0 or (directory.kind == NodeKind.JOBROOT and name in JOB_CONTROL_FILES + (RECEIPT_FILE,)):
            return self._attrs(f"{base}/{name}")
        return self._backing_attrs(directory, f"{base}/{name}", os.stat(name, dir_fd=dir_fd, follow_symlinks=False))

    @op
    def mkdir(self, path, mode):
        uid, gid, _pid = self._context()
        parts = [p for p in path.split("/") if p]
        if len(parts) == 2 and parts[0] == "workspaces":
            self.service.create_job(parts[1], uid, gid, mode=mode & ~self._umask() if self.posix_acl else mode)
            return 0
        if len(parts) == 2 and parts[0] == "quarantine":  # not ENOENT: the directory is there
            raise NotAllowedError("jobs are made in workspaces/; quarantine/ holds the trees of crashed jobs")
        node = self._backing(path, for_change=True)
        if node.kind == "jobroot" or (node.area_path is not None and "/" not in node.area_path):
            raise NotAllowedError("areas are made with the job")
        with self._changing(node):
            mode, inherited = self._new_mode(node, mode)
            self.tree.mkdir(node.root, node.rel, mode & 0o7777)
            self._give_to_caller(node, uid, gid)
            if not inherited:
                self.tree.exact_mode((node.root, node.rel), mode)
        return 0

    def _new_mode(self, node: Node, mode: int) -> tuple[int, bool]:
        """The mode to make a new entry with, and whether its directory's default ACL decides it.
        Without POSIX ACLs the kernel applied the caller's umask already; with them it is
        applied here, unless the directory has a default ACL (POSIX: then the ACL, not the
        umask, narrows the mode, and the disk does that itself)."""
        if not self.posix_acl:
            return mode, False
        if self.tree.inherits_acl(node.root, node.rel):
            return mode, True
        return mode & ~self._umask(), False

    @op
    def rmdir(self, path):
        node = self._backing(path, for_change=True)
        if node.kind == "jobroot":
            raise NotAllowedError("a job is removed by writing 'archived' to its .state")
        if node.root == "shared" and not node.rel:
            raise NotAllowedError("shared/ stays")
        if node.area_path is not None and "/" not in node.area_path:
            raise NotAllowedError("areas stay for the job's life")
        with self._changing(node):
            try:
                self.tree.rmdir(node.root, node.rel)
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY or not self._only_hidden_left(node):
                    raise
                self.tree.rmdir(node.root, node.rel)
        return 0

    def _only_hidden_left(self, node: Node) -> bool:
        """A directory that lists empty holds only hidden names of files unlinked while open:
        they go (their files live on through the daemon's descriptors), so it can be removed
        as on any disk.  False when a visible entry is left."""
        names = [name for name, _ino, _kind in self.tree.scandir(node.root, node.rel)]
        if not all(is_hidden_name(name) for name in names):
            return False
        for name in names:
            rel = f"{node.rel}/{name}"
            self._hidden.forget(rel)
            self._remove_hidden(node.root, rel)
        return True

    def _give_to_caller(self, node: Node, uid: int, gid: int) -> None:
        """Run as root with allow_other, a new entry belongs to the caller (docs/spec.md §12)."""
        if self._as_root and (uid, gid) != (0, 0):
            self.tree.chown(node.root, node.rel, uid, gid)

    # -- files --------------------------------------------------------------------

    def _handle(self, fi) -> Handle:
        try:
            return self._handles[fi.fh]
        except KeyError:
            raise FuseOSError(errno.EBADF) from None

    def _register(self, fi, handle: Handle, may_pass: bool = False, st: os.stat_result | None = None) -> int:
        fh = next(self._fh_counter)
        stream = None
        with self._handles_lock:
            self._handles[fh] = handle
            if isinstance(handle, FileHandle) and self.passthrough:
                self._open_io(handle, may_pass, st)
                if handle.backing_id and handle.writable:
                    stream, handle.stream = handle.stream, None  # the kernel writes it: hashed after its close
            if handle.writable and isinstance(handle, FileHandle):
                writers = self._writers.setdefault(handle.ino, set())
                if writers:  # two writers: neither can hash front to back
                    for h in [handle, *writers]:
                        if h.stream is not None:
                            h.stream.invalidate()
                writers.add(handle)
        if stream is not None:
            self.hasher.forget(stream)
            stream.close()
        if isinstance(handle, FileHandle):
            self._hidden.opened((handle.node.root, handle.ino))
            if handle.backing_id:
                set_backing_id(fi, handle.backing_id)
        fi.fh = fh
        return 0

    def _may_pass(self, node: Node, writable: bool) -> bool:
        """May an open of this file go through kernel passthrough?  Not in a job with a quota or
        max_files (its writes are metered here, and one inode has one way: its reads stay too),
        and a write only where the data dir can freeze the file at the job's seal."""
        if not self.passthrough or (writable and not self.passthrough_writes):
            return False
        return not self._limited(node)

    def _open_io(self, handle: FileHandle, may_pass: bool, st: os.stat_result | None) -> None:
        """Serve this open as the inode's other open files are served (under ``_handles_lock``):
        the kernel refuses (EIO) a daemon-served open of an inode open through passthrough, and
        the reverse.  With none open, ``may_pass`` decides.  ``st``: a writer's stat at its open."""
        io = self._io.get(handle.ino)
        if io is None:
            io = self._io[handle.ino] = InodeIo()
        if io.opens == 0:
            io.backing_id = 0
            if may_pass:
                try:
                    io.backing_id = backing_open(handle.fd)
                except OSError as exc:  # e.g. a data dir stacked too deep: served here instead
                    log.warning("kernel passthrough refused for %s: %s", view_path(handle.node), exc)
        io.opens += 1
        handle.backing_id = io.backing_id
        if handle.backing_id and handle.writable:
            st = st or os.fstat(handle.fd)
            # A write after this open sets ctime to a time after it: a ctime older than the
            # clock's granularity before the open tells, at close, whether the file was written.
            handle.ctime_at_open = st.st_ctime_ns if st.st_ctime_ns < time.time_ns() - 1_000_000_000 else -1

    def _close_io(self, handle: FileHandle) -> None:
        """The open is released: the inode's backing id goes with its last open."""
        with self._handles_lock:
            io = self._io.get(handle.ino)
            if io is None:
                return
            io.opens -= 1
            if io.opens > 0:
                return
            del self._io[handle.ino]
        if io.backing_id:
            try:
                backing_close(io.backing_id)
            except OSError as exc:
                log.warning("closing backing id %d: %s", io.backing_id, exc)

    def _dropped_bits(self, st: os.stat_result) -> int:
        """The set-id bits a change by this caller drops, as the kernel's setattr_should_drop_suidgid:
        set-user-ID always, set-group-ID when group-executable or when the caller is not in the
        file's group; none for root (CAP_FSETID, which the daemon's own writes have)."""
        caller = self.view.caller()
        if caller is None:
            return 0
        bits = st.st_mode & stat.S_ISUID
        if st.st_mode & stat.S_ISGID and (st.st_mode & stat.S_IXGRP or st.st_gid not in caller[1]):
            bits |= stat.S_ISGID
        return bits

    def _drop_privileges(self, fd: int, path: str | None, st: os.stat_result | None = None) -> None:
        """A write, truncate or allocation by a caller without CAP_FSETID: the set-id bits it drops
        go.  Only when the daemon negotiated FUSE_CAP_HANDLE_KILLPRIV_V2: else the kernel drops
        them through setattr.  ``st``: the file's stat when the caller has it."""
        if not self.kills_privileges:
            return
        st = st or os.fstat(fd)
        if not _keeps_privileges(st):
            return
        bits = self._dropped_bits(st)
        if not bits:
            return
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~bits)
        if path:
            invalidate_path(path)

    def _first_change(self, handle: FileHandle, path: str | None) -> None:
        """Before the first write (or copy) through a handle that may drop set-id bits (open)."""
        if handle.drops_privileges:
            handle.drops_privileges = False
            self._drop_privileges(handle.fd, path)

    def _written_through_kernel(self, handle: FileHandle) -> None:
        """A passthrough writer is flushed or released: its writes never came here, so its file
        counts as changed unless its ctime says otherwise (then it is recorded, and hashed)."""
        if handle.ctime_at_open >= 0 and os.fstat(handle.fd).st_ctime_ns == handle.ctime_at_open:
            return
        handle.ctime_at_open = -1
        handle.dirty = handle.changed = True

    @op
    def open(self, path, fi):
        flags = fi.flags
        node = self.view.resolve(path)
        wants_write = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC))
        if node.kind == "vfile":
            return self._open_virtual(node, fi, wants_write)
        node = self._backing(path)
        if node.kind == "jobroot":
            raise FuseOSError(errno.EISDIR)
        flags &= ~(os.O_CREAT | os.O_EXCL | os.O_DIRECT | os.O_NOCTTY)
        if not wants_write:
            fd = self.tree.open(node.root, node.rel, flags)
            try:
                ino = os.fstat(fd).st_ino
            except BaseException:
                os.close(fd)
                raise
            return self._register(fi, FileHandle(node, fd=fd, ino=ino), self._may_pass(node, False))
        if node.readonly:
            raise FuseOSError(errno.EROFS)
        with self._changing(node):
            if flags & os.O_TRUNC and self._limited(node):
                old = self.tree.lstat(node.root, node.rel)
                self._charge(node, -old.st_size * self._names(node, old))
            fd = self.tree.open(node.root, node.rel, flags)
            st = os.fstat(fd)
            handle = FileHandle(node, fd=fd, writable=True, ino=st.st_ino)
            if flags & os.O_TRUNC:
                self._drop_privileges(fd, path, st)
            else:  # its first write decides (the caller's groups are read only then)
                handle.drops_privileges = self.kills_privileges and _keeps_privileges(st)
            if node.area_path is not None and st.st_size == 0 and stat.S_ISREG(st.st_mode):
                handle.stream = self._stream(fd, st.st_ino)
            if flags & os.O_TRUNC and node.area_path is not None:
                handle.dirty = handle.changed = True
            registered = self._register(fi, handle, self._may_pass(node, True) and not _keeps_privileges(st), st)
        if flags & os.O_TRUNC:
            self._show_other_names(node, st.st_ino, path=path)
        return registered

    def _open_virtual(self, node: Node, fi, wants_write: bool) -> int:
        fi.direct_io = 1  # reads and writes reach us as the caller made them, sizes never cached
        writable_names = (STATE_FILE, "control")
        if wants_write and node.name not in writable_names:
            raise FuseOSError(errno.EACCES)
        if node.name == "control" and not wants_write:
            raise FuseOSError(errno.EACCES)
        data = b"" if wants_write else self.view.content(node)
        if node.job is None:
            # .wsfs/status, events and jobs change with every event: the fstat() that tail, less
            # or wc make after open() gets the size of what this open reads.
            invalidate_path(f"/{WSFS_DIR}/{node.name}")
        return self._register(fi, VirtualHandle(node, data=data, writable=wants_write))

    @op
    def create(self, path, mode, fi):
        uid, gid, _pid = self._context()
        node = self._backing(path, for_change=True)
        if node.kind == "jobroot" or node.area_path is None and node.job is not None:
            raise NotAllowedError("only the areas live at a job's root")
        flags = (fi.flags & ~(os.O_DIRECT | os.O_NOCTTY)) | os.O_CREAT
        with self._changing(node):
            self._charge(node, 0, 1)
            mode, inherited = self._new_mode(node, mode)
            try:
                fd, made = self.tree.create(node.root, node.rel, flags, mode & 0o7777)
            except BaseException:
                self._charge(node, 0, -1)
                raise
            if not made:  # made by someone else meanwhile: opened, not a new file
                self._charge(node, 0, -1)
            try:
                if made and self._as_root and (uid, gid) != (0, 0):
                    os.fchown(fd, uid, gid)
                if made and not inherited:
                    self.tree.exact_mode(fd, mode)
                st = os.fstat(fd)
            except BaseException:
                os.close(fd)
                raise
            handle = FileHandle(node, fd=fd, writable=True, ino=st.st_ino)
            if node.area_path is not None:
                handle.stream = self._stream(fd, st.st_ino) if st.st_size == 0 else None
                self.service.manifest.put(node.job_id, node.area_rel, st)
            return self._register(fi, handle, self._may_pass(node, True), st)

    @op
    def read(self, path, size, offset, fi):
        handle = self._handle(fi)
        if isinstance(handle, FileHandle):
            return os.pread(handle.fd, size, offset)
        if not isinstance(handle, VirtualHandle):
            raise FuseOSError(errno.EISDIR)
        return handle.data[offset:offset + size]

    @op
    def read_into(self, path, buf: memoryview, offset, fi) -> int:
        """``read`` straight into libfuse's reply buffer (big reads, see ``binding.FUSE``)."""
        handle = self._handle(fi)
        if isinstance(handle, FileHandle):
            return os.preadv(handle.fd, [buf], offset)
        if not isinstance(handle, VirtualHandle):
            raise FuseOSError(errno.EISDIR)
        chunk = handle.data[offset:offset + len(buf)]
        buf[:len(chunk)] = chunk
        return len(chunk)

    @op
    def write(self, path, data, offset, fi):
        handle = self._handle(fi)
        node = handle.node
        if not isinstance(handle, FileHandle):
            return self._write_virtual(handle, data)
        self._first_change(handle, path)
        if node.job is None:
            written = os.pwrite(handle.fd, data, offset)
            self._show_other_names(node, handle.ino)
            return written
        with self.service.records.mutation(node.job), handle.lock:
            if handle.node is not node:  # its area was dropped while this write waited (_area_dropping)
                return os.pwrite(handle.fd, data, offset)
            written = self._charged_write(node, handle.fd, offset, len(data),
                                          lambda: os.pwrite(handle.fd, data, offset))
            handle.dirty = handle.changed = True
            if handle.stream is not None and handle.stream.advance(offset, data, written):
                self.hasher.poke()
        self._show_other_names(node, handle.ino)
        return written

    def _charged_write(self, node: Node, fd: int, offset: int, length: int, do) -> int:
        """``do()``, which writes ``length`` bytes at ``offset`` of the file at ``fd`` and returns how
        many it wrote: a metered job is charged what the file grows by first (EDQUOT past its
        quota, nothing written), given it back if ``do`` fails, and charged what a short write
        grew it by.  Under the job's lock and the handle's (write, copy_file_range)."""
        if not self._limited(node):
            return do()
        st = os.fstat(fd)
        names = self._names(node, st)
        growth = max(offset + length - st.st_size, 0) * names
        self.service.usage.charge(node.job_id, growth)
        try:
            done = do()
        except BaseException:
            self.service.usage.charge(node.job_id, -growth)
            raise
        if done < length and growth:
            self.service.usage.charge(node.job_id, max(offset + done - st.st_size, 0) * names - growth)
        return done

    def _linked_key(self, node: Node) -> tuple[str, int] | None:
        """(root, inode) of a job's file whose other names the kernel may hold, else None."""
        if not self._linked or not node.rel:
            return None
        try:
            key = (node.root, self.tree.lstat(node.root, node.rel).st_ino)
        except OSError:
            return None
        return key if key in self._linked else None

    def _show_other_names(self, node: Node, ino: int | None = None, key=None, path: str | None = None) -> None:
        """A multiply-linked file changed through ``path``: the kernel drops what it cached under
        its other names (see ``LinkedNames``).

        Called after the job's lock is released: dropping a name's pages may wait for a request
        on that name, which must be able to take the lock.  Never for the name being changed,
        whose pages the kernel keeps locked while this request runs.
        """
        if not self._linked:
            return
        if key is None:
            key = (node.root, ino) if ino else self._linked_key(node)
        if key is None:
            return
        self._invalidate(self._linked.others(key, path or view_path(node)))

    def _write_virtual(self, handle: Handle, data: bytes | memoryview) -> int:
        uid, gid, _pid = self._context()
        node = handle.node
        data = bytes(data)  # a view of libfuse's buffer lives only as long as this call
        if node.name == STATE_FILE:
            self.service.write_state(node.job_id, data, uid)
        elif node.name == "control":
            self.service.write_control(data, uid, gid, sweep=self._sweep, doctor=self._doctor, reload=self._reload)
        else:
            raise FuseOSError(errno.EACCES)
        return len(data)

    def _forget_cached_job(self, job: str) -> None:
        """A job's tree appeared, moved or went (ended, archived, hidden, purged, quarantined, resumed).

        The kernel's cache (entry and attr timeouts) would otherwise keep a looked-up path
        alive, or missing, for up to a second after the change (docs/spec.md §3, §6).
        """
        record = self.service.records.get(job)
        if record is None:
            return
        for top in ("workspaces", "quarantine"):
            root = f"/{top}/{job}"
            for path in [f"{root}/{area}" for area in record.areas] + [root, f"{root}/{RECEIPT_FILE}"]:
                invalidate_path(path)

    @staticmethod
    def _forget_job_files(records) -> None:
        """Records changed: the kernel asks again for the sizes of their virtual files, where
        each job is shown (a move between views drops its old place in _forget_cached_job).

        Called after every store commit, from whichever thread made it.  A path the kernel
        never looked up costs a lookup in libfuse's table and nothing more.
        """
        for record in records:
            top = VIEW_TOPS.get(record.where or "")
            if top is not None:
                for name in JOB_CONTROL_FILES:
                    invalidate_path(f"{top}/{record.id}/{name}")

    @op
    @_marks_setattr
    def truncate(self, path, length, fh=None):
        if fh is not None and fh.fh:
            handle = self._handle(fh)
            if not isinstance(handle, FileHandle):
                return self._truncate_virtual(handle.node)
            node = handle.node
            with self._changing(node), handle.lock:
                self._truncate_fd(node, handle.fd, length, metered=handle.node is node)
                handle.dirty = handle.changed = True
                self._forget_hashes(handle.ino)
            self._show_other_names(node, handle.ino)
            return 0
        node = self.view.resolve(path)
        if node.kind == "vfile":
            return self._truncate_virtual(node)
        node = self._backing(path, for_change=True)
        with self._changing(node):
            fd = self.tree.open(node.root, node.rel, os.O_WRONLY | os.O_NONBLOCK)
            try:
                self._truncate_fd(node, fd, length)
                if node.area_path is not None:
                    st = os.fstat(fd)
                    self._forget_hashes(st.st_ino)
                    self.service.manifest.put(node.job_id, node.area_rel, st)
            finally:
                os.close(fd)
        self._show_other_names(node)
        return 0

    def _truncate_fd(self, node: Node, fd: int, length: int, *, metered: bool = True) -> None:
        """truncate(2) of the file open at ``fd``: charged to its job first (what it grows by or
        gives back, once per name), set-id bits dropped as by a write (libfuse's getattr after a
        setattr tells the kernel the new mode)."""
        st = os.fstat(fd)
        if metered and self._limited(node):
            self._charge(node, (length - st.st_size) * self._names(node, st))
        os.ftruncate(fd, length)
        self._drop_privileges(fd, None, st)

    @staticmethod
    def _truncate_virtual(node: Node) -> int:
        if node.name in (STATE_FILE, "control"):
            return 0  # `echo x > .state` truncates first; that changes nothing (docs/spec.md §5)
        raise FuseOSError(errno.EACCES)

    def _forget_hashes(self, ino: int) -> None:
        with self._handles_lock:
            for handle in self._writers.get(ino, ()):
                if handle.stream is not None:
                    handle.stream.invalidate()

    @op
    def flush(self, path, fi):
        # close() waits for FLUSH but not for RELEASE, which the kernel sends later on its own
        # (fuse_release -> fuse_file_put, async): record a written file here, so that .manifest
        # is current when close() returns (docs/spec.md §8).  The job's lock orders this against a
        # transition, as a write is.  close() never waits for sha256: if the hasher is still
        # behind, the entry has no hash yet and release (which finishes it) records again.
        handle = self._handle(fi)
        node = handle.node
        if isinstance(handle, FileHandle) and handle.backing_id and handle.writable:
            self._written_through_kernel(handle)
        if isinstance(handle, FileHandle) and handle.dirty and node.area_path is not None:
            with self.service.records.lock(node.job_id).shared(), handle.lock:
                self._record_file(handle, handle.stream)
                handle.dirty = handle.stream is not None and handle.stream.pending
        return 0

    @op
    def release(self, path, fi):
        with self._handles_lock:
            handle: Handle | None = self._handles.pop(fi.fh, None)
            if handle is not None and handle.writable and isinstance(handle, FileHandle):
                writers = self._writers.get(handle.ino)
                if writers is not None:
                    writers.discard(handle)
                    if not writers:
                        del self._writers[handle.ino]
            if self._dropped_open and isinstance(handle, FileHandle) \
                    and self._dropped_open.get(handle.node.rel) is handle:
                del self._dropped_open[handle.node.rel]
        if not isinstance(handle, FileHandle):
            return 0
        node = handle.node
        if handle.backing_id and handle.writable:
            self._written_through_kernel(handle)
            self._thaw(handle)
        hidden_names = self._hidden.closed((node.root, handle.ino))
        stream, handle.stream = handle.stream, None
        try:
            if handle.changed and node.area_path is not None:
                digest = self._small_digest(handle, stream)
                # Under the job's lock, as flush: a transition either sees this entry or seals first.
                with self.service.records.lock(node.job_id).shared():
                    if handle.dirty:  # the entry its flush made, unless a rename moved it meanwhile (refresh)
                        st = self._record_file(handle, stream, refresh=True, digest=digest)
                    else:
                        st = self._still_there(handle)
                    sha = _digest_at(digest, st)
                    if sha is not None and st is not None and not handle.dirty:
                        self.service.manifest.hashed(node.job_id, node.area_rel, st, sha)
                if st is not None and stream is not None and stream.pending:
                    # Hashed later, in the hasher thread; the entry gets its sha256 then.
                    self.hasher.finish_later(stream, st.st_size, self._hashed_later(node, st))
                    stream = None
                elif st is not None and sha is None and self._needs_whole_hash(handle, stream, st):
                    # Written out of order: hashed whole in the background now, not at the ending.
                    self.hasher.hash_whole_later(handle.fd, st.st_ino, st.st_size, self._hashed_later(node, st))
        finally:
            if stream is not None:
                self.hasher.forget(stream)
                stream.close()
            if self.passthrough:
                self._close_io(handle)
            os.close(handle.fd)
            if hidden_names:  # the file's last handle: its hidden names go (see HiddenNames)
                with self.service.records.lock(node.job).shared() if node.job is not None else _NO_LOCK:
                    for rel in hidden_names:
                        self._remove_hidden(node.root, rel)
        return 0

    def _remove_hidden(self, root: str, rel: str) -> None:
        """Unlink a hidden name and give its bytes back to the job's quota.  A file still open
        keeps its data through the daemon's descriptor, as an unlinked file does on any disk."""
        try:
            st = self.tree.lstat(root, rel)
            if not is_hidden_name(rel.rsplit("/", 1)[-1]):
                return
            self.tree.unlink(root, rel)
        except (FileNotFoundError, NotADirectoryError):
            return  # libfuse, a rmdir or the job's ending took it first
        if not stat.S_ISREG(st.st_mode):
            return
        if root != "jobs":
            return
        job = rel.split("/", 1)[0]
        record = self.service.records.get(job)
        if record is not None and self.service.metered(record):
            self.service.usage.charge(job, -st.st_size, -1)

    def _tree_closing(self, job: str) -> None:
        """A job's tree is sealed, quarantined or leaves: the hidden names of its files still
        open go now (their data lives on in the daemon's descriptors until the last close).  Its
        files open for writing through kernel passthrough are frozen (``_freeze``)."""
        for root in ("jobs", "quarantine"):
            for rel in self._hidden.take_below(root, job):
                self._remove_hidden(root, rel)
        if self.passthrough_writes:
            self._freeze(job)

    def _freeze(self, job: str) -> None:
        """No write may land in a sealed job (docs/spec.md §8a), and the kernel writes a passthrough
        file without asking: each such file open for writing gets FS_IMMUTABLE_FL until its last
        writer closes (``_thaw``) or the job runs again.  The store lists them first, so a daemon
        that dies meanwhile leaves them to the next one's recovery (Recovery.thaw_frozen); the
        file's dirty pages go to disk, so an mmap writer's next store faults (SIGBUS)."""
        with self._handles_lock:
            writers = {h.ino: h for h in self._handles.values() if isinstance(h, FileHandle) and h.backing_id
                       and h.writable and h.node.job == job and h.node.area_path is not None
                       and h.ino not in self._frozen}
        if not writers:
            return
        self._remember_frozen(add=writers.values())
        for ino, handle in writers.items():
            try:
                syscalls.set_immutable(handle.fd, True)
                os.fdatasync(handle.fd)
            except OSError as exc:
                log.error("job %s: could not freeze %s, open for writing: %s", job, handle.node.area_rel, exc)
                continue
            with self._handles_lock:
                self._frozen[ino] = handle
            log.info("job %s: %s is still open for writing: frozen until its last close", job, handle.node.area_rel)

    def _thaw(self, handle: FileHandle, *, force: bool = False) -> None:
        """A frozen file's last writer closed (or its job runs again, ``force``): the flag goes."""
        with self._handles_lock:
            frozen = self._frozen.get(handle.ino)
            if frozen is None or (not force and self._writers.get(handle.ino)):
                return
            del self._frozen[handle.ino]
        try:
            syscalls.set_immutable(frozen.fd, False)
        except OSError as exc:
            log.error("could not clear the immutable flag of %s: %s", view_path(frozen.node), exc)
            return
        self._remember_frozen(remove=frozen)

    def _remember_frozen(self, add=(), remove: FileHandle | None = None) -> None:
        with self.service.store.write() as w:
            frozen = w.meta(FROZEN_META) or []
            frozen += [[h.node.job, h.node.area_rel, h.ino] for h in add]
            if remove is not None:
                frozen = [entry for entry in frozen if entry[2] != remove.ino]
            w.put_meta(FROZEN_META, frozen)

    def _view_changed(self, job: str) -> None:
        """A job's tree appeared, moved or went: the kernel forgets it, and when the job runs again
        (resume) its frozen files thaw."""
        self._forget_cached_job(job)
        if self._frozen:
            record = self.service.records.get(job)
            if record is not None and not is_sealed(record):
                for handle in [h for h in self._frozen.values() if h.node.job == job]:
                    self._thaw(handle, force=True)

    def _acl_changed(self, job: str, paths: list[str]) -> None:
        """The ACLs of a job's files changed behind the kernel's back (wsfs.sharing): it caches
        them with the attributes, which FUSE_NOTIFY_INVAL_INODE drops."""
        record = self.service.records.get(job)
        top = VIEW_TOPS.get((record.where if record else None) or "")
        if top is None:
            return
        for path in paths:
            invalidate_path(f"{top}/{job}/{path}" if path else f"{top}/{job}")
        self._forget_job_files([record])

    def _area_dropping(self, job: str, area: str) -> None:
        """A running job's scratch area is about to be emptied into the trash (``drop AREA``).
        Its files still open keep working, as files unlinked while open do, but they leave the
        job: their writes are no longer the job's (no quota, no manifest entry), and their
        hidden names go to the trash with the rest (nothing to remove at their last close)."""
        prefix = f"{job}/{area}/"
        self._hidden.take_below("jobs", f"{job}/{area}")
        with self._handles_lock:
            for handle in self._handles.values():
                node = handle.node
                if isinstance(handle, FileHandle) and node.root == "jobs" and node.rel.startswith(prefix):
                    handle.node = Node(NodeKind.REAL, root="jobs", rel=node.rel)  # no job, no area: no manifest
                    self._dropped_open[node.rel] = handle

    def _handle_at(self, root: str, rel: str) -> FileHandle | None:
        """An open backing handle of the file at ``root``/``rel`` (a hidden name already removed)."""
        with self._handles_lock:
            for handle in self._handles.values():
                if isinstance(handle, FileHandle) and handle.node.root == root and handle.node.rel == rel:
                    return handle
        return None

    def _still_there(self, handle: FileHandle) -> os.stat_result | None:
        """The stat of a file recorded at its flush, while its job runs and its name is its own."""
        node = handle.node
        if _is_hidden(node):
            return None  # unlinked while open: it left the manifest when it was unlinked
        record = self.service.records.get(node.job_id)
        if record is None or is_sealed(record):
            return None
        st = os.fstat(handle.fd)
        try:
            return st if self.tree.lstat(node.root, node.rel).st_ino == st.st_ino else None
        except OSError:
            return None

    def _small_digest(self, handle: FileHandle, stream: StreamHash | None) -> tuple[os.stat_result, bytes] | None:
        """A small kept file that needs hashing whole, hashed now (``small_file_digest``), with
        the stat it was hashed at: its entry is then made once, with its sha256, and the
        hasher thread never sees it (most files a program makes are small)."""
        st = os.fstat(handle.fd)
        if st.st_size > INLINE_MAX or not self._needs_whole_hash(handle, stream, st):
            return None
        digest = small_file_digest(handle.fd, st.st_size)
        return (st, digest) if digest is not None else None

    def _needs_whole_hash(self, handle: FileHandle, stream: StreamHash | None, st: os.stat_result) -> bool:
        """A kept file whose closing left no sha256 (no stream covered it), with no other writer."""
        if st.st_size == 0 or (stream is not None and stream.valid and stream.written == st.st_size):
            return False
        with self._handles_lock:
            if self._writers.get(handle.ino):
                return False  # another writer still has it open: its own close decides
        record = self.service.records.get(handle.node.job_id)
        area = handle.node.area_rel.split("/", 1)[0]
        return record is not None and area in self.service.template(record).keep_areas()

    def _hashed_later(self, node: Node, st: os.stat_result):
        """The hasher's callback for a file closed before its sha256 was done.  The file may be
        renamed meanwhile (a program writes a temporary name, closes it, renames it): its name
        follows the renames as an open file's does (``_move_handles``)."""
        closed = Handle(node)
        with self._handles_lock:
            self._unhashed[id(closed)] = closed

        def done(digest: bytes | None) -> None:
            with self._handles_lock:
                node = self._unhashed.pop(id(closed)).node
            if digest is None or _is_hidden(node):
                return
            with self.service.records.lock(node.job_id).shared():
                record = self.service.records.get(node.job_id)
                if record is None or is_sealed(record):
                    return  # the receipt step hashed it itself
                # the entry as the file was at its close; the writer checks it is still so
                self.service.manifest.hashed(node.job_id, node.area_rel, st, digest)
        return done

    def _stream(self, fd: int, ino: int) -> StreamHash:
        stream = StreamHash(fd, ino)
        self.hasher.track(stream)
        return stream

    def _record_file(self, handle: FileHandle, stream: StreamHash | None, *, refresh: bool = False,
                     digest: tuple[os.stat_result, bytes] | None = None) -> os.stat_result | None:
        """Manifest entry for a file closed after writing (docs/spec.md §8: never per write).

        The entry has a sha256 only if ``stream`` already covers the whole file, or ``digest``
        (a stat and the sha256 read at it) is of the file as it is; returns the file's stat, or
        None when no entry was made.
        """
        node = handle.node
        if is_hidden_name(node.area_rel.rsplit("/", 1)[-1]):
            return None  # unlinked while open: it left the manifest when it was unlinked
        record = self.service.records.get(node.job_id)
        if record is None or is_sealed(record):
            return None  # ended meanwhile: the receipt step already recorded the file as it is
        st = os.fstat(handle.fd)
        try:
            current = self.tree.lstat(node.root, node.rel)
        except OSError:
            return None  # unlinked or its directory moved: its entry went with it
        if current.st_ino != st.st_ino:
            return None
        sha = stream.digest_so_far(st.st_size) if stream is not None else None
        sha = sha or _digest_at(digest, st)
        self.service.manifest.put(node.job_id, node.area_rel, st, sha, refresh=refresh)
        return st

    @op
    def fsync(self, path, datasync, fi):
        handle = self._handle(fi)
        if isinstance(handle, FileHandle):
            (os.fdatasync if datasync else os.fsync)(handle.fd)
        return 0

    @op
    def fallocate(self, path, mode, offset, size, fi):
        handle = self._handle(fi)
        if not isinstance(handle, FileHandle):
            raise FuseOSError(errno.EOPNOTSUPP)
        node = handle.node
        with self._changing(node), handle.lock:
            if self._limited(node) and handle.node is node and not mode & 1:  # FALLOC_FL_KEEP_SIZE grows no file
                st = os.fstat(handle.fd)
                self._charge(handle.node, max(offset + size - st.st_size, 0) * self._names(handle.node, st))
            syscalls.fallocate(handle.fd, mode, offset, size)
            self._drop_privileges(handle.fd, path)
            handle.dirty = handle.changed = True
            self._forget_hashes(handle.ino)
        self._show_other_names(handle.node, handle.ino)
        return 0

    @op
    def copy_file_range(self, path_in, fi_in, off_in, path_out, fi_out, off_out, size, flags):
        """``cp --reflink=auto`` and every copy_file_range(2) within the mount: the backing
        filesystem copies (a reflink where it has them, an in-kernel copy on ext4), and the
        destination is charged and recorded as a write of the same bytes would be."""
        src, dst = self._handle(fi_in), self._handle(fi_out)
        if not isinstance(src, FileHandle) or not isinstance(dst, FileHandle) or flags:
            raise FuseOSError(errno.EOPNOTSUPP)  # the kernel copies through read and write instead
        node = dst.node
        self._first_change(dst, path_out)
        if node.job is None:
            copied = os.copy_file_range(src.fd, dst.fd, size, off_in, off_out)
            self._show_other_names(node, dst.ino)
            return copied
        with self.service.records.mutation(node.job), dst.lock:
            if dst.node is not node:  # its area was dropped while this waited (_area_dropping)
                return os.copy_file_range(src.fd, dst.fd, size, off_in, off_out)
            copied = self._charged_write(node, dst.fd, off_out, size,
                                         lambda: os.copy_file_range(src.fd, dst.fd, size, off_in, off_out))
            dst.dirty = dst.changed = True
            self._forget_hashes(dst.ino)
        self._show_other_names(node, dst.ino)
        return copied

    # -- names --------------------------------------------------------------------

    @op
    def unlink(self, path):
        try:
            return self._unlink(path)
        except OSError as exc:
            # libfuse 3.17 unlinks the hidden name it just gave an open file when it finds the file
            # closed meanwhile; that close (release, HiddenNames) removed the name already: done.
            if exc.errno == errno.ENOENT and is_hidden_name(path.rsplit("/", 1)[-1]):
                return 0
            raise

    def _unlink(self, path: str) -> int:
        node = self._backing(path, for_change=True)
        if node.area_path is None and node.job is not None:
            raise NotAllowedError("the control files stay")
        linked = self._linked_key(node)
        with self._changing(node):
            gone = self.tree.lstat(node.root, node.rel) if self._limited(node) else None
            self.tree.unlink(node.root, node.rel)
            if gone is not None and stat.S_ISREG(gone.st_mode):
                self._charge(node, -gone.st_size, -1)
            if node.area_path is not None:
                self.service.manifest.delete(node.job_id, node.area_rel)
        if _is_hidden(node):  # libfuse removing the name it gave an unlinked file, at its last close
            self._hidden.forget(node.rel)
        if linked is not None:  # its other names have one link less
            self._linked.forget(linked, path)
            self._show_other_names(node, key=linked, path=path)
        return 0

    @op
    def rename(self, old, new, flags=0):
        src = self._backing(old, for_change=True)
        if src.kind == NodeKind.JOBROOT:  # before the destination, which names no job yet (ENOENT)
            raise NotAllowedError("a job keeps its id: job directories are not renamed")
        dst = self._backing(new, for_change=True)
        for node in (src, dst):
            if node.job is not None and (node.area_path is None or "/" not in node.area_path):
                raise NotAllowedError("areas and control files are not renamed")
        if src.root != dst.root or src.job != dst.job:
            raise FuseOSError(errno.EXDEV)
        if not flags and self._same_file(src, dst):
            # rename(2): two links of one file stay as they are, the manifest keeps both names.  libfuse
            # moves its node of src to dst all the same: the open files follow it.
            self._move_handles(src, dst)
            return 0
        hid = self._hidden_now.pop(new, None) if self._hidden_now else None
        if hid is not None and hid[2] == threading.get_ident() and time.monotonic() - hid[3] < HIDE_FOLLOWUP_S \
                and not flags and not self.tree.exists(dst.root, dst.rel):
            with contextlib.suppress(OSError):
                if self.tree.lstat(src.root, src.rel).st_ino == hid[1]:
                    return self._undo_hide(src, dst, hid[0], new)
        linked = [self._linked_key(src), None if flags & 2 else self._linked_key(dst)]
        with self._changing(src):
            replaced = None
            if self._limited(dst) and not flags & 2:
                try:
                    replaced = self.tree.lstat(dst.root, dst.rel)
                except FileNotFoundError:
                    pass
            self.tree.rename(src.root, src.rel, dst.root, dst.rel, flags)
            self._hidden.moved(src.root, src.rel, dst.rel, exchange=bool(flags & 2))
            if replaced is not None and stat.S_ISREG(replaced.st_mode):
                self._charge(dst, -replaced.st_size, -1)
            if src.job is not None:
                self._rename_in_manifest(src, dst, flags)
            else:
                self._move_handles(src, dst, exchange=bool(flags & 2))
        if _is_hidden(dst) and not flags & 2:  # libfuse's unlink of an open file: the name no longer counts
            with contextlib.suppress(OSError):
                st = self.tree.lstat(dst.root, dst.rel)
                if stat.S_ISREG(st.st_mode):
                    linked[0] = (dst.root, st.st_ino)
                    if self._hidden.hidden((dst.root, st.st_ino), dst.rel):
                        # its last release came first (the race of libfuse #746): nobody needs the name
                        with self.service.records.lock(dst.job).shared() if dst.job is not None else _NO_LOCK:
                            self._remove_hidden(dst.root, dst.rel)
                    if st.st_nlink > 1:  # another name may be the rename's source (see _undo_hide)
                        now = time.monotonic()
                        for path, mark in list(self._hidden_now.items()):
                            if now - mark[3] >= HIDE_FOLLOWUP_S:
                                self._hidden_now.pop(path, None)
                        self._hidden_now[old] = (dst.rel, st.st_ino, threading.get_ident(), now)
        if self._linked:
            if linked[1] is not None:  # the file it replaced has one link less
                self._linked.forget(linked[1], new)
            self._linked.moved(old, new, exchange=bool(flags & 2))
            for key in linked:  # (a hidden name, libfuse's unlink of an open file, counts no link)
                if key is not None:
                    self._show_other_names(src, key=key, path=new)
        return 0

    def _same_file(self, src: Node, dst: Node) -> bool:
        """Are both names one existing file (the same name, or two links of it)?  Then rename(2)
        does nothing."""
        try:
            st = self.tree.lstat(src.root, src.rel)
            return (src.root, src.rel) == (dst.root, dst.rel) or \
                (st.st_nlink > 1 and self.tree.lstat(dst.root, dst.rel).st_ino == st.st_ino)
        except OSError:
            return False

    def _undo_hide(self, src: Node, dst: Node, hidden_rel: str, new: str) -> int:
        """rename(a, b) of two links of one file must do nothing (rename(2)), but libfuse first
        renamed b, being open, to a hidden name (``hide_node``): b comes back, as a link of the
        hidden name (which libfuse removes at b's last close).  libfuse then believes a became b:
        the kernel looks a up again when it is next named.

        Told apart from an unlink of b followed by a rename onto the free name: that rename's
        lookup of b comes between the two, and ``getattr`` drops the mark.
        """
        with self._changing(dst):
            self.tree.link(dst.root, src.rel, dst.rel)  # src is the hidden file's other name
            st = self.tree.lstat(dst.root, dst.rel)
            self._charge(dst, st.st_size, 1)
            if dst.area_path is not None:
                self.service.manifest.put(dst.job_id, dst.area_rel, st)
        self._linked.note((dst.root, st.st_ino), new)
        self._move_handles(src, dst)  # libfuse's node of a is b's now
        return 0

    def _rename_in_manifest(self, src: Node, dst: Node, flags: int) -> None:
        manifest = self.service.manifest
        if is_hidden_name(dst.area_rel.rsplit("/", 1)[-1]):
            manifest.delete(src.job_id, src.area_rel)  # libfuse hiding an unlinked open file
        elif flags & 2:  # RENAME_EXCHANGE: swap through a name no file can have
            marker = "\0swap"
            manifest.rename(src.job_id, src.area_rel, marker)
            manifest.rename(src.job_id, dst.area_rel, src.area_rel)
            manifest.rename(src.job_id, marker, dst.area_rel)
        else:
            manifest.rename(src.job_id, src.area_rel, dst.area_rel)
        self._move_handles(src, dst, exchange=bool(flags & 2))

    def _move_handles(self, src: Node, dst: Node, exchange: bool = False) -> None:
        """Open files follow a rename, as libfuse's own node table does (both ways for RENAME_EXCHANGE)."""
        moves = [(src, dst), (dst, src)] if exchange else [(src, dst)]
        with self._handles_lock:
            moving = []
            for frm, to in moves:
                for handle in [*self._handles.values(), *self._unhashed.values()]:
                    node = handle.node
                    if node.root == frm.root and node.rel and frm.rel \
                            and (node.rel == frm.rel or node.rel.startswith(frm.rel + "/")):
                        moving.append((handle, to, node.rel[len(frm.rel):]))
            for handle, to, rest in moving:  # all matched first: an exchange must not move a handle twice
                area_path = None if to.area_path is None else to.area_path + rest
                handle.node = dataclasses.replace(handle.node, rel=to.rel + rest, area_path=area_path)

    @op
    def link(self, target, source):
        new = self._backing(target, for_change=True)
        old = self._backing(source)
        if new.job is not None and new.area_path is None:
            raise NotAllowedError("only the areas live at a job's root")
        if old.root != new.root or old.job != new.job:
            raise FuseOSError(errno.EXDEV)
        with self._changing(new):
            if self._limited(new):
                linked = self.tree.lstat(old.root, old.rel)
                if stat.S_ISREG(linked.st_mode):
                    self._charge(new, linked.st_size, 1)
            self.tree.link(new.root, old.rel, new.rel)
            st = self.tree.lstat(new.root, new.rel)
            if new.area_path is not None and stat.S_ISREG(st.st_mode):
                self.service.manifest.put(new.job_id, new.area_rel, st)
        if not stat.S_ISDIR(st.st_mode):
            key = (new.root, st.st_ino)
            self._linked.note(key, source)
            self._linked.note(key, target)
            self._show_other_names(new, key=key, path=target)  # the source's link count changed
        return 0

    @op
    def symlink(self, target, source):
        uid, gid, _pid = self._context()
        node = self._backing(target, for_change=True)
        if node.job is not None and node.area_path is None:
            raise NotAllowedError("only the areas live at a job's root")
        with self._changing(node):
            self.tree.symlink(node.root, node.rel, source)
            self._give_to_caller(node, uid, gid)
        return 0

    @op
    def readlink(self, path):
        node = self._backing(path)
        return self.tree.readlink(node.root, node.rel)

    @op
    def mknod(self, path, mode, dev):
        uid, gid, _pid = self._context()
        node = self._backing(path, for_change=True)
        if node.job is not None and node.area_path is None:
            raise NotAllowedError("only the areas live at a job's root")
        with self._changing(node):
            if stat.S_ISREG(mode):
                self._charge(node, 0, 1)
            mode, inherited = self._new_mode(node, mode)
            self.tree.mknod(node.root, node.rel, mode, dev)
            self._give_to_caller(node, uid, gid)
            if not inherited:
                self.tree.exact_mode((node.root, node.rel), mode)
            if node.area_path is not None and stat.S_ISREG(mode):
                self.service.manifest.put(node.job_id, node.area_rel, self.tree.lstat(node.root, node.rel))
        return 0

    # -- metadata -------------------------------------------------------------------

    def _meta_target(self, path, fh) -> Node:
        if fh is not None and fh.fh:
            node = self._handle(fh).node
        elif path is None:
            raise FuseOSError(errno.ENOENT)
        else:
            node = self.view.resolve(path)
        if node.kind in ("vdir", "vfile"):
            raise FuseOSError(errno.EPERM)
        if node.kind == "absent":
            raise FuseOSError(errno.ENOENT)
        if node.readonly:
            raise FuseOSError(errno.EROFS)
        return node

    @op
    @_marks_setattr
    def chmod(self, path, mode, fh=None):
        node = self._meta_target(path, fh)
        with self._changing(node):
            self.tree.chmod(node.root, node.rel, mode & 0o7777)
        self._show_other_names(node)
        if node.kind == "jobroot":
            self._job_root_changed(node.job_id)
        return 0

    def _job_root_changed(self, job: str) -> None:
        """A job root's mode or owner changed: the kernel asks again for its files' attributes."""
        for top in ("workspaces", "quarantine"):
            for name in (*JOB_CONTROL_FILES, RECEIPT_FILE):
                invalidate_path(f"/{top}/{job}/{name}")

    @op
    @_marks_setattr
    def chown(self, path, uid, gid, fh=None):
        node = self._meta_target(path, fh)
        with self._changing(node):
            self.tree.chown(node.root, node.rel, uid, gid)
        self._show_other_names(node)
        if node.kind == "jobroot":
            self._job_root_changed(node.job_id)
        return 0

    @op
    @_marks_setattr
    def utimens(self, path, times=None, fh=None):
        node = self._meta_target(path, fh)
        with self._changing(node):
            if times is None:
                self.tree.utime(node.root, node.rel, None)
            else:
                atime, mtime = times
                if UTIME_OMIT in (atime, mtime) or UTIME_NOW in (atime, mtime):
                    st = self.tree.lstat(node.root, node.rel)
                    now = time.time_ns()
                    atime = {UTIME_NOW: now, UTIME_OMIT: st.st_atime_ns}.get(atime, atime)
                    mtime = {UTIME_NOW: now, UTIME_OMIT: st.st_mtime_ns}.get(mtime, mtime)
                self.tree.utime(node.root, node.rel, (atime, mtime))
            if node.area_path is not None:
                # `cp -p`, `touch -d`, shutil.copystat: the manifest's mtime follows (docs/spec.md §3 .manifest).
                st = self.tree.lstat(node.root, node.rel)
                if stat.S_ISREG(st.st_mode):
                    self.service.manifest.retime(node.job_id, node.area_rel, st)
        self._show_other_names(node)
        return 0

    @op
    def statfs(self, path):
        st = self.tree.statvfs()
        return {key: getattr(st, key) for key in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                                  "f_files", "f_ffree", "f_favail", "f_namemax")}

    def _xattr_node(self, path, node: Node | None = None) -> Node:
        node = node or self.view.resolve(path)
        if node.kind in ("vdir", "vfile"):
            raise FuseOSError(errno.ENODATA)
        if node.kind == "absent":
            raise FuseOSError(errno.ENOENT)
        return node

    @op
    def getxattr(self, path, name, position=0):
        node = self.view.resolve(path)  # once: with POSIX ACLs the kernel asks this of every inode it checks
        if name == acl.ACCESS and self.posix_acl and node.kind == "vfile" and node.job is not None \
                and node.name != KEPT_RECEIPT:
            return self._control_file_acl(node)
        node = self._xattr_node(path, node)
        return self.tree.getxattr(node.root, node.rel, name)

    def _control_file_acl(self, node: Node) -> bytes:
        """A shared job's ``.state``, ``.job`` and ``.manifest`` may be read by its sharees, as its
        root directory may (wsfs.sharing): the root's named entries, read only.  Writing
        ``.state`` stays the owner's."""
        record = self.service.records.require(node.job_id)
        if not record.shares:
            raise FuseOSError(errno.ENODATA)
        where = location(record)
        if where is None:
            raise FuseOSError(errno.ENODATA)
        root_entries = acl.decode(self.tree.getxattr(where[0], where[1], acl.ACCESS))
        mode = self.view.vfile_attrs(node, 0)["st_mode"]
        entries = acl.from_mode(mode)
        for tag, perm, ident in root_entries:
            if tag in (acl.USER, acl.GROUP) and perm & acl.R:
                entries = acl.granted(entries, tag, ident, acl.R)
        return acl.encode(entries)

    @op
    def listxattr(self, path):
        node = self.view.resolve(path)
        if node.kind not in ("real", "jobroot"):
            return []
        return self.tree.listxattr(node.root, node.rel)

    @op
    def setxattr(self, path, name, value, options, position=0):
        node = self._backing(path, for_change=True)
        with self._changing(node):
            self.tree.setxattr(node.root, node.rel, name, value, options)
        return 0

    @op
    def removexattr(self, path, name):
        node = self._backing(path, for_change=True)
        with self._changing(node):
            self.tree.removexattr(node.root, node.rel, name)
        return 0


_NO_LOCK = contextlib.nullcontext()

