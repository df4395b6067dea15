"""The data dir's trees, reached only through directory fds (docs/spec.md §2, §12).

Layout of a data dir::

    DATA/store/          the LMDB environment (store.py)
    DATA/jobs/ID/        a job's tree: its areas and receipt.json
    DATA/quarantine/ID/  the tree of a crashed job
    DATA/shared/         the shared area
    DATA/trash/          trees waiting for background deletion

Every operation names a *root* (one of ``ROOTS``) and a relative path.  The
parent directory is opened with ``openat2(RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`` from the root's fd, or, where
the kernel has no ``openat2``, walked one component at a time with
``O_PATH | O_NOFOLLOW | O_DIRECTORY``.  The last component is then used with
an ``*at`` call that does not follow it.  So a symlink planted anywhere in the
data dir, even swapped in during the call, is never followed out of it: the
call fails (``ELOOP``/``ENOTDIR``) instead.

Threading: a ``Tree`` holds only the root fds, opened once; every method is
safe from any thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import typing
import uuid
from collections.abc import Callable, Iterator

from . import syscalls
from .errors import UnsafePathError

ROOTS = ("jobs", "quarantine", "shared", "trash")
NAME_MAX = 255

_PATH_CHUNK = 3072  # bytes of path one openat2 call resolves (PATH_MAX is 4096)
_RESOLVE = syscalls.RESOLVE_NO_MAGICLINKS | syscalls.RESOLVE_NO_SYMLINKS | syscalls.RESOLVE_BENEATH


def _process_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` would, for every thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def check_name(name: str) -> str:
    """Refuse a path component that must never reach the backing store."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UnsafePathError(f"bad file name {name[:64]!r}", errno=errno.EINVAL)
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        # What the backing filesystem would say (the kernel lets FUSE names up to 1024 bytes through).
        raise UnsafePathError(f"file name longer than {NAME_MAX} bytes: {name[:64]!r}...", errno=errno.ENAMETOOLONG)
    return name


def names_in(dir_fd: int) -> list[str]:
    """The names in a directory given by fd (an ``O_PATH`` one too), sorted: what ``walk`` lists
    at each level."""
    rfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return sorted(os.listdir(rfd))
    finally:
        os.close(rfd)


#: The kinds of ``Step``: a directory before what it holds, the same directory after, anything else.
ENTER, LEAVE, ENTRY = "enter", "leave", "entry"


class Step(typing.NamedTuple):
    """One step of ``walk``.  ``path`` is below the walked directory; ``name`` is its last part,
    in the directory open at ``dir_fd``; a directory's own ``O_PATH`` fd is ``fd`` (-1 for an
    entry).  The fds are the walk's: valid until the next step is asked for."""

    kind: str
    path: str
    name: str
    st: os.stat_result
    dir_fd: int
    fd: int


def walk(dir_fd: int, prefix: str = "", *, skip: Callable[[str], bool] | None = None,
         on_error: Callable[[str, OSError], None] | None = None) -> Iterator[Step]:
    """Every entry below the directory open at ``dir_fd`` (an ``O_PATH`` fd too), depth first,
    by name, through directory fds only, never following a symlink: the one walk of a tree in
    wsfs (file lists, manifests and ACLs of a job, removal, cloning's and publishing's copies).

    An entry gone between the listing and its ``lstat`` is passed over; so are the names
    ``skip(name)`` is true of, and what they hold.  A directory that cannot be opened raises,
    or, given ``on_error(path, exc)``, is reported there and passed over, contents and all.
    """
    for name in names_in(dir_fd):
        if skip is not None and skip(name):
            continue
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        path = prefix + name
        if not stat.S_ISDIR(st.st_mode):
            yield Step(ENTRY, path, name, st, dir_fd, -1)
            continue
        try:
            sub = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if on_error is None:
                raise
            on_error(path, exc)
            continue
        try:
            yield Step(ENTER, path, name, st, dir_fd, sub)
            yield from walk(sub, path + "/", skip=skip, on_error=on_error)
            yield Step(LEAVE, path, name, st, dir_fd, sub)
        finally:
            os.close(sub)


def remove_contents(dir_fd: int, prefix: str = "", on_error: Callable[[str, OSError], None] | None = None) -> int:
    """Delete everything below the directory open at ``dir_fd`` (never following a symlink);
    return how many entries could not be removed, each also given to ``on_error(path, exc)``."""
    failures = 0

    def failed(path: str, exc: OSError) -> None:
        nonlocal failures
        failures += 1
        if on_error:
            on_error(path, exc)
    for step in walk(dir_fd, prefix, on_error=failed):
        if step.kind == ENTER:
            continue
        try:
            if step.kind == LEAVE:
                os.rmdir(step.name, dir_fd=step.dir_fd)
            else:
                _unlink(step.name, step.dir_fd)
        except FileNotFoundError:
            continue
        except OSError as exc:
            failed(step.path, exc)
    return failures


def _unlink(name: str, dir_fd: int) -> None:
    """Unlink, and a file left immutable by a seal (a passthrough writer's, see
    Recovery.thaw_frozen) loses the flag first: only wsfs sets it in the data dir."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except PermissionError:
        if not thaw(dir_fd, name):
            raise
        os.unlink(name, dir_fd=dir_fd)


def thaw(dir_fd: int, name: str, ino: int | None = None) -> bool:
    """Clear FS_IMMUTABLE_FL of the file ``name`` in ``dir_fd`` (never through a symlink), if it is
    inode ``ino`` when one is given; returns whether the flag was set."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        return (ino is None or os.fstat(fd).st_ino == ino) and syscalls.set_immutable(fd, False)
    finally:
        os.close(fd)


def split(rel: str) -> list[str]:
    """``"a/b/c"`` -> ``["a", "b", "c"]``, each component checked."""
    if not rel:
        return []
    parts = rel.split("/")
    for part in parts:
        # check_name, its common case inline (this runs on every FUSE request): a name of at most
        # 63 characters is at most 252 bytes, so only longer ones need encoding to be measured.
        if not part or part == "." or part == ".." or "\0" in part or len(part) > 63:
            check_name(part)
    return parts


class Tree:
    """The data dir, opened once; every access goes through ``openat``-family calls."""

    def __init__(self, data_dir: str):
        self.data_dir = os.path.abspath(data_dir)
        self.umask = _process_umask()
        os.makedirs(self.data_dir, mode=0o755, exist_ok=True)
        self.data_fd = os.open(self.data_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.root_fds: dict[str, int] = {}
        for root in ROOTS:
            try:
                os.mkdir(root, 0o1777 if root == "shared" else 0o700, dir_fd=self.data_fd)
                if root == "shared":
                    os.chmod(root, 0o1777, dir_fd=self.data_fd)  # mkdir applies the umask
            except FileExistsError:
                pass
            self.root_fds[root] = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                          dir_fd=self.data_fd)
        # WSFS_NO_OPENAT2=1 (tests only): the component-by-component walker that kernels before 5.6 get.
        self._has_openat2 = self._probe_openat2() and os.environ.get("WSFS_NO_OPENAT2") != "1"

    def can_freeze(self) -> bool:
        """Can the data dir's filesystem make a file immutable, and may this process (root)?"""
        try:
            fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=self.data_fd)
        except OSError:
            return False
        try:
            syscalls.set_immutable(fd, True)
            syscalls.set_immutable(fd, False)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def thaw(self, root: str, rel: str, ino: int | None = None) -> bool:
        """``thaw`` of the file at ``rel`` below ``root`` (False when it is not there)."""
        try:
            fd, name, owned = self._parent_fd(root, rel)
        except OSError:
            return False
        try:
            return thaw(fd, name, ino)
        finally:
            if owned:
                os.close(fd)

    def close(self) -> None:
        for fd in self.root_fds.values():
            os.close(fd)
        os.close(self.data_fd)
        self.root_fds.clear()

    # -- the walker ---------------------------------------------------------

    def _probe_openat2(self) -> bool:
        try:
            os.close(self._openat2(self.data_fd, ".", os.O_PATH | os.O_DIRECTORY))
            return True
        except OSError as exc:
            return exc.errno not in (errno.ENOSYS, errno.EPERM)  # EPERM: seccomp filters

    @staticmethod
    def _openat2(dir_fd: int, path: str, flags: int, mode: int = 0) -> int:
        return syscalls.openat2(dir_fd, path, flags | os.O_CLOEXEC, mode, _RESOLVE)

    def open_dir(self, root: str, parts: list[str], *, use_openat2: bool | None = None) -> int:
        """An ``O_PATH`` fd of the directory ``parts`` below ``root``; caller closes it."""
        base = self.root_fds[root]
        if not parts:
            return os.dup(base)
        if self._has_openat2 if use_openat2 is None else use_openat2:
            path = "/".join(parts)
            try:
                if len(path) < _PATH_CHUNK // 4:  # at most 4 bytes a character: always fits
                    return self._openat2(base, path, os.O_PATH | os.O_DIRECTORY)
                return self._openat2_chunked(base, parts)
            except OSError as exc:
                if exc.errno == errno.EXDEV:  # RESOLVE_BENEATH saw an escape attempt
                    raise UnsafePathError(f"path leaves the data dir: {path[:200]}") from None
                raise
        fd = os.dup(base)
        try:
            for part in parts:
                nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _openat2_chunked(self, base: int, parts: list[str]) -> int:
        """openat2 of a path longer than one call takes (PATH_MAX): a job holds every path the
        disk does, at any depth.  Each piece is resolved beneath the directory the last one gave."""
        fd, owned, size = base, False, 0
        chunk: list[str] = []
        try:
            for part in [*parts, None]:
                length = 0 if part is None else len(part.encode("utf-8", "surrogateescape")) + 1
                if chunk and (part is None or size + length > _PATH_CHUNK):
                    nxt = self._openat2(fd, "/".join(chunk), os.O_PATH | os.O_DIRECTORY)
                    if owned:
                        os.close(fd)
                    fd, owned, chunk, size = nxt, True, [], 0
                if part is not None:
                    chunk.append(part)
                    size += length
        except BaseException:
            if owned:
                os.close(fd)
            raise
        return fd

    def _parent_fd(self, root: str, rel: str) -> tuple[int, str, bool]:
        """``(dir_fd, name, owned)`` for the last component of ``rel``: the caller closes
        ``dir_fd`` when ``owned`` (a name right below the root uses the root's own fd)."""
        parts = split(rel)
        if not parts:
            raise UnsafePathError("no file name", errno=errno.EINVAL)
        if len(parts) == 1:
            return self.root_fds[root], parts[0], False
        return self.open_dir(root, parts[:-1]), parts[-1], True

    @contextlib.contextmanager
    def parent(self, root: str, rel: str):
        """Yield ``(dir_fd, name)`` for the last component of ``rel``."""
        fd, name, owned = self._parent_fd(root, rel)
        try:
            yield fd, name
        finally:
            if owned:
                os.close(fd)

    # -- operations; each takes (root, rel) -----------------------------------
    # lstat and open, the calls of nearly every request, use _parent_fd without the context manager.

    def lstat(self, root: str, rel: str) -> os.stat_result:
        if not rel:
            return os.stat(self.root_fds[root])
        fd, name, owned = self._parent_fd(root, rel)
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        finally:
            if owned:
                os.close(fd)

    def open(self, root: str, rel: str, flags: int, mode: int = 0o666) -> int:
        fd, name, owned = self._parent_fd(root, rel)
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
        finally:
            if owned:
                os.close(fd)

    def read(self, root: str, rel: str, flags: int = 0) -> bytes:
        """The whole content of a file (``flags`` added to ``O_RDONLY``, e.g. ``O_NONBLOCK``)."""
        fd = self.open(root, rel, os.O_RDONLY | flags)
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def listdir(self, root: str, rel: str) -> list[str]:
        dfd = self.open_dir(root, split(rel))
        try:
            # O_PATH fds cannot be read; reopen "." for reading, still beneath.
            rfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
        finally:
            os.close(dfd)
        try:
            return os.listdir(rfd)
        finally:
            os.close(rfd)

    def scandir(self, root: str, rel: str) -> list[tuple[str, int, int]]:
        """(name, inode, file type bits) of a directory's entries, from getdents alone."""
        dfd = self.open_dir(root, split(rel))
        try:
            rfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
        finally:
            os.close(dfd)
        out = []
        try:
            with os.scandir(rfd) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        kind = stat.S_IFDIR
                    elif entry.is_symlink():
                        kind = stat.S_IFLNK
                    elif entry.is_file(follow_symlinks=False):
                        kind = stat.S_IFREG
                    else:
                        kind = 0
                    out.append((entry.name, entry.inode(), kind))
        finally:
            os.close(rfd)
        return out

    def mkdir(self, root: str, rel: str, mode: int = 0o755) -> None:
        with self.parent(root, rel) as (fd, name):
            os.mkdir(name, mode, dir_fd=fd)

    def rmdir(self, root: str, rel: str) -> None:
        with self.parent(root, rel) as (fd, name):
            os.rmdir(name, dir_fd=fd)

    def unlink(self, root: str, rel: str) -> None:
        with self.parent(root, rel) as (fd, name):
            os.unlink(name, dir_fd=fd)

    def symlink(self, root: str, rel: str, target: str) -> None:
        # The target is stored as text; the daemon itself never resolves it.
        with self.parent(root, rel) as (fd, name):
            os.symlink(target, name, dir_fd=fd)

    def readlink(self, root: str, rel: str) -> str:
        with self.parent(root, rel) as (fd, name):
            return os.readlink(name, dir_fd=fd)

    def mknod(self, root: str, rel: str, mode: int, device: int = 0) -> None:
        """Any type the disk makes.  A device node comes only from a caller the kernel let make
        one (CAP_MKNOD, or the whiteout ``c 0 0``); it is inert through the ``nodev`` mount, and
        the data dir is for root alone."""
        with self.parent(root, rel) as (fd, name):
            os.mknod(name, mode, device, dir_fd=fd)

    def create(self, root: str, rel: str, flags: int, mode: int) -> tuple[int, bool]:
        """``open(O_CREAT)``; returns ``(fd, made)``: False when the file existed already."""
        if flags & os.O_EXCL:
            return self.open(root, rel, flags, mode), True
        while True:
            try:
                return self.open(root, rel, flags | os.O_EXCL, mode), True
            except FileExistsError:
                pass
            try:
                return self.open(root, rel, flags & ~os.O_CREAT), False
            except FileNotFoundError:
                continue  # removed in between: make it after all

    def exact_mode(self, made: int | tuple[str, str], mode: int) -> None:
        """Give a new entry exactly the mode the caller asked for.  The kernel applied the
        caller's umask before the request; the daemon's own umask must not narrow it again.
        ``made`` is an fd or (root, rel); a directory keeps the setgid bit it inherited."""
        if not mode & self.umask:
            return  # nothing was narrowed: no syscall
        if isinstance(made, int):
            os.fchmod(made, mode & 0o7777)
            return
        st = self.lstat(*made)
        if stat.S_ISDIR(st.st_mode):
            mode |= st.st_mode & stat.S_ISGID
        self.chmod(*made, mode & 0o7777)

    def link(self, root: str, src: str, dst: str) -> None:
        with self.parent(root, src) as (sfd, sname), self.parent(root, dst) as (dfd, dname):
            os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)

    def rename(self, src_root: str, src: str, dst_root: str, dst: str, flags: int = 0) -> None:
        with self.parent(src_root, src) as (sfd, sname), self.parent(dst_root, dst) as (dfd, dname):
            if not flags:
                os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
                return
            syscalls.renameat2(sfd, sname, dfd, dname, flags)

    def chmod(self, root: str, rel: str, mode: int) -> None:
        if not rel:
            raise OSError(errno.EPERM, "cannot change a root")
        with self.parent(root, rel) as (fd, name):
            pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        try:
            if stat.S_ISLNK(os.fstat(pfd).st_mode):
                raise OSError(errno.EOPNOTSUPP, "symlinks have no mode")
            # The magic link names exactly the inode we checked: no race.
            os.chmod(f"/proc/self/fd/{pfd}", mode)
        finally:
            os.close(pfd)

    def chown(self, root: str, rel: str, uid: int, gid: int) -> None:
        with self.parent(root, rel) as (fd, name):
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)

    def utime(self, root: str, rel: str, ns: tuple[int, int] | None) -> None:
        with self.parent(root, rel) as (fd, name):
            if ns is None:
                os.utime(name, dir_fd=fd, follow_symlinks=False)
            else:
                os.utime(name, ns=ns, dir_fd=fd, follow_symlinks=False)

    def truncate(self, root: str, rel: str, length: int) -> None:
        fd = self.open(root, rel, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.ftruncate(fd, length)
        finally:
            os.close(fd)

    def _on_entry(self, root: str, rel: str, call, *args):
        """``call(path, *args, follow_symlinks=...)`` (an ``os`` xattr call) on the entry itself, of
        any type (a symlink, a socket, a FIFO are not opened): its checked parent's fd through
        /proc, and its name, not followed.  Linux itself then answers as on the disk (a symlink:
        ENODATA for ``user.*`` reads, an empty list, EPERM for setting ``user.*``).  No context
        manager: with POSIX ACLs the kernel asks ``getxattr`` of every inode it checks."""
        if not rel:
            return call(f"/proc/self/fd/{self.root_fds[root]}", *args, follow_symlinks=True)
        fd, name, owned = self._parent_fd(root, rel)
        try:
            return call(f"/proc/self/fd/{fd}/{name}", *args, follow_symlinks=False)
        finally:
            if owned:
                os.close(fd)

    def inherits_acl(self, root: str, rel: str) -> bool:
        """Does a new entry at ``rel`` get its directory's default ACL (and so not the umask)?"""
        try:
            self._on_entry(root, rel.rpartition("/")[0], os.getxattr, "system.posix_acl_default")
            return True
        except OSError:
            return False

    def getxattr(self, root: str, rel: str, attr: str) -> bytes:
        return self._on_entry(root, rel, os.getxattr, attr)

    def setxattr(self, root: str, rel: str, attr: str, value: bytes, flags: int) -> None:
        self._on_entry(root, rel, os.setxattr, attr, value, flags)

    def listxattr(self, root: str, rel: str) -> list[str]:
        return self._on_entry(root, rel, os.listxattr)

    def removexattr(self, root: str, rel: str, attr: str) -> None:
        self._on_entry(root, rel, os.removexattr, attr)

    def statvfs(self) -> os.statvfs_result:
        return os.statvfs(self.data_dir)

    # -- whole trees -----------------------------------------------------------

    def exists(self, root: str, rel: str) -> bool:
        try:
            self.lstat(root, rel)
            return True
        except FileNotFoundError:
            return False

    def move_to_trash(self, root: str, rel: str, label: str) -> str | None:
        """Rename a tree into the trash (a rename: instant, whatever its size).

        Returns the trash name, or None when there was nothing to move.
        """
        trash_name = f"{label}.{uuid.uuid4().hex[:12]}"
        try:
            self.rename(root, rel, "trash", trash_name)
        except FileNotFoundError:
            return None
        return trash_name

    def empty_into_trash(self, root: str, rel: str, label: str) -> str:
        """Empty a directory in one step, whatever it holds: an empty twin (same mode, owner and
        group) is made in the trash and swapped with it (``RENAME_EXCHANGE``), so the name never
        goes missing, even for a crash between two syscalls.  Returns the trash name, which
        now holds the old contents."""
        st = self.lstat(root, rel)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", rel)
        trash_name = f"{label}.{uuid.uuid4().hex[:12]}"
        self.mkdir("trash", trash_name, 0o700)
        try:
            with self.parent("trash", trash_name) as (fd, name):
                os.chown(name, st.st_uid, st.st_gid, dir_fd=fd, follow_symlinks=False)
                os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=fd)
            for attr in ("system.posix_acl_access", "system.posix_acl_default"):  # a shared area stays shared
                try:
                    value = self.getxattr(root, rel, attr)
                except OSError:
                    continue
                self.setxattr("trash", trash_name, attr, value, 0)
            self.rename(root, rel, "trash", trash_name, syscalls.RENAME_EXCHANGE)
        except BaseException:
            self.rmdir("trash", trash_name)
            raise
        return trash_name

    def remove_tree(self, root: str, rel: str, on_error=None) -> int:
        """Delete a tree without following any symlink; return files not removed.

        ``on_error(path, exc)`` is called for each entry that could not be removed.
        """
        failures = 0
        try:
            dfd = self.open_dir(root, split(rel))
        except FileNotFoundError:
            return 0
        except OSError as exc:
            if exc.errno != errno.ENOTDIR:
                raise
            # A file (or symlink) rather than a directory.
            try:
                self.unlink(root, rel)
            except OSError as err:
                failures += 1
                if on_error:
                    on_error(rel, err)
            return failures
        try:
            failures += remove_contents(dfd, f"{rel}/" if rel else "", on_error)
        finally:
            os.close(dfd)
        if rel:
            try:
                self.rmdir(root, rel)
            except FileNotFoundError:
                pass
            except OSError as err:
                failures += 1
                if on_error:
                    on_error(rel, err)
        return failures

    def walk_files(self, root: str, rel: str):
        """Yield (path below rel, stat_result) of every regular file, depth first, sorted."""
        for path, st, _at in self.walk_entries(root, rel, dirs=False):
            yield path, st

    def walk_entries(self, root: str, rel: str, *, dirs: bool = True):
        """Yield ``(path below rel, stat_result, at)`` of every regular file below ``rel``, and with
        ``dirs`` of ``rel`` itself (path ``""``) and every directory (before what it holds),
        depth first, sorted, never following a symlink.  ``at`` is ``(path, follow)`` naming the
        entry for the xattr calls (through /proc, as ``_on_entry``), valid until the next item
        is asked for."""
        try:
            dfd = self.open_dir(root, split(rel))
        except FileNotFoundError:
            return
        try:
            if dirs:
                yield "", os.stat(dfd), (f"/proc/self/fd/{dfd}", True)
            for step in walk(dfd):
                if step.kind == ENTER:
                    if dirs:
                        yield step.path, step.st, (f"/proc/self/fd/{step.fd}", True)
                elif step.kind == ENTRY and stat.S_ISREG(step.st.st_mode):
                    yield step.path, step.st, (f"/proc/self/fd/{step.dir_fd}/{step.name}", False)
        finally:
            os.close(dfd)
