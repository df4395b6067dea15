"""The Linux calls Python's ``os`` lacks, in one place: ``openat2``, ``renameat2``,
``fallocate`` with a mode, the thread's own ``setgroups``, ``setfsuid`` and ``setfsgid``, and a
file's immutable flag (``chattr +i``).

Each raises ``OSError`` with the call's errno, as ``os`` does.  Syscall numbers are per
architecture where they differ (x86_64 and aarch64 here); a call whose number is unknown
raises ``EINVAL``/``ENOSYS`` rather than guess.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_MACHINE = os.uname().machine
_SYS_OPENAT2 = 437  # the same number on every Linux architecture
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276}.get(_MACHINE)
_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159}.get(_MACHINE)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH = 0x02, 0x04, 0x08
HAS_THREAD_SETGROUPS = _SYS_SETGROUPS is not None


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _fail(what: str | None = None):
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err), *((what,) if what else ()))


def _name(path: str | bytes) -> bytes:
    return path if isinstance(path, bytes) else path.encode("utf-8", "surrogateescape")


def openat2(dir_fd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    how = _OpenHow(flags, mode, resolve)
    fd = _libc.syscall(_SYS_OPENAT2, dir_fd, _name(path), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        _fail(path)
    return fd


def renameat2(src_dir_fd: int, src: str | bytes, dst_dir_fd: int, dst: str | bytes, flags: int) -> None:
    if _SYS_RENAMEAT2 is None:
        raise OSError(errno.EINVAL, "renameat2 is not known on this machine")
    if _libc.syscall(_SYS_RENAMEAT2, src_dir_fd, _name(src), dst_dir_fd, _name(dst), ctypes.c_uint(flags)) < 0:
        _fail()


def fallocate(fd: int, mode: int, offset: int, size: int) -> None:
    if _libc.fallocate(fd, mode, offset, size) != 0:
        _fail()


_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS, FS_IMMUTABLE_FL = 0x80086601, 0x40086602, 0x10


def set_immutable(fd: int, on: bool) -> bool:
    """Set or clear ``FS_IMMUTABLE_FL`` of the file open at ``fd`` (needs CAP_LINUX_IMMUTABLE and
    a filesystem with the flag: ext4, xfs, btrfs, tmpfs); returns whether it was set before.
    While set, no write lands, not even through a descriptor opened before (EPERM, SIGBUS for an
    mmap store): how wsfs seals a file the kernel writes without it (kernel passthrough)."""
    buf = bytearray(8)
    fcntl.ioctl(fd, _FS_IOC_GETFLAGS, buf, True)
    flags = int.from_bytes(buf[:4], "little", signed=True)
    was = bool(flags & FS_IMMUTABLE_FL)
    if was != on:
        flags = flags | FS_IMMUTABLE_FL if on else flags & ~FS_IMMUTABLE_FL
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, bytearray(flags.to_bytes(4, "little", signed=True) + bytes(4)), True)
    return was


def thread_setgroups(groups: list[int]) -> None:
    """setgroups for this thread only (the raw syscall; glibc's changes every thread)."""
    if _SYS_SETGROUPS is None:
        raise OSError(errno.ENOSYS, "setgroups is not known on this machine")
    array = (ctypes.c_uint * max(len(groups), 1))(*groups)
    if _libc.syscall(_SYS_SETGROUPS, len(groups), array if groups else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setgroups: {os.strerror(err)}")


def setfsuid(uid: int) -> int:
    """Set this thread's filesystem uid; returns the previous one (``-1`` only asks)."""
    return _libc.setfsuid(uid & 0xFFFFFFFF)


def setfsgid(gid: int) -> int:
    return _libc.setfsgid(gid & 0xFFFFFFFF)
