"""The one import of the FUSE binding (mfusepy), pinned to libfuse 3.

mfusepy prefers libfuse 2 when both are installed (SPEC §1), so the path of
libfuse 3 is handed to it through ``FUSE_LIBRARY_PATH`` before the import.

``FUSE`` here fixes what mfusepy's libfuse-3 wrappers drop: they call
``truncate``, ``chmod``, ``chown`` and ``utimens`` without the open file,
which with ``nullpath_ok`` leaves ``ftruncate(fd)`` on an unlinked file
nothing to act on, and they drop ``rename``'s flags, which would turn
``RENAME_NOREPLACE`` into a silent overwrite.  It also moves file data
without mfusepy's intermediate copies: a big ``write`` hands the operations a
``memoryview`` of libfuse's request buffer instead of a ``bytes`` copy, and
``read`` fills libfuse's reply buffer in place (``read_into``).
"""

from __future__ import annotations

import ctypes.util
import os
import struct
import threading

_LIBFUSE3 = os.environ.get("WSFS_LIBFUSE3") or ctypes.util.find_library("fuse3")
if not _LIBFUSE3:
    raise ImportError("libfuse 3 is not installed: apt-get install fuse3 libfuse3-3 (or run `make run`)")
os.environ["FUSE_LIBRARY_PATH"] = _LIBFUSE3

import mfusepy  # noqa: E402  (must follow the library selection above)

if mfusepy.fuse_version_major != 3:
    raise ImportError(f"mfusepy loaded libfuse {mfusepy.fuse_version_major}, wsfs needs libfuse 3")

FuseOSError = mfusepy.FuseOSError
Operations = mfusepy.Operations
fuse_get_context = mfusepy.fuse_get_context
fuse_exit = mfusepy.fuse_exit
LIBFUSE_VERSION = (mfusepy.fuse_version_major, mfusepy.fuse_version_minor)


def _decode(fuse, path):
    return None if path is None else path.decode(fuse.encoding, fuse.errors)


def _fh(fip):
    return fip.contents if fip else None


def _stat_layout() -> tuple[struct.Struct, list]:
    """``struct stat`` as mfusepy declares it, as one ``struct.Struct``: getattr fills the whole
    reply in one ``pack`` and one ``memmove`` (mfusepy's ``memset`` plus a ``setattr`` per field
    cost more than the rest of a getattr).  Returns the struct and, in its order, what each
    packed value is: ``(key, None)`` or ``(time key, 0 for seconds | 1 for nanoseconds)``."""
    fields = dict(mfusepy.c_stat._fields_)
    slots = []  # (offset, ctypes type, what)
    for key in ("st_ino", "st_nlink", "st_mode", "st_uid", "st_gid", "st_rdev", "st_size", "st_blksize",
                "st_blocks"):
        if key in fields:
            slots.append((getattr(mfusepy.c_stat, key).offset, fields[key], (key, None)))
    timespec = dict(mfusepy.c_timespec._fields_)
    for key in ("st_atime", "st_mtime", "st_ctime"):
        base = getattr(mfusepy.c_stat, key + "spec").offset
        for part, name in enumerate(("tv_sec", "tv_nsec")):
            slots.append((base + getattr(mfusepy.c_timespec, name).offset, timespec[name], (key, part)))
    slots.sort(key=lambda slot: slot[0])
    fmt, pos = "=", 0
    for offset, ctype, _what in slots:
        size = ctypes.sizeof(ctype)
        code = {8: "q", 4: "i", 2: "h"}[size]
        fmt += f"{offset - pos}x" + (code if ctype._type_.islower() else code.upper())
        pos = offset + size
    fmt += f"{ctypes.sizeof(mfusepy.c_stat) - pos}x"
    return struct.Struct(fmt), [what for _offset, _ctype, what in slots]


_STAT, _STAT_ORDER = _stat_layout()
_NS = 10 ** 9


def stat_bytes(attrs: dict) -> bytes:
    """``attrs`` (getattr's dict, times in ns) as the bytes of a ``struct stat``."""
    values = []
    for key, part in _STAT_ORDER:
        value = attrs.get(key, 0)
        if part is not None:
            value = divmod(value, _NS)[part]
        values.append(value)
    return _STAT.pack(*values)


ZERO_COPY_MIN = 32 << 10  # below this a bytes copy costs less than building a view


def _view(ptr, size: int) -> memoryview:
    """The ``size`` bytes at a ctypes pointer, as a writable memoryview (no copy): valid only
    until the callback returns."""
    address = ctypes.cast(ptr, ctypes.c_void_p).value
    return memoryview((ctypes.c_char * size).from_address(address)).cast("B")


_PyGILState_Ensure = ctypes.pythonapi.PyGILState_Ensure
_kept_threads: set[int] = set()


def _keep_thread_state() -> None:
    """Give the calling libfuse thread a Python thread state for good.

    A ctypes callback on a thread Python did not start makes a thread state and deletes it
    again on return, for every FUSE request; one more ``PyGILState_Ensure``, never released,
    keeps it (libfuse's pool is fixed at MAX_THREADS, so that is at most that many).
    """
    ident = threading.get_ident()
    if ident not in _kept_threads:
        _PyGILState_Ensure()
        _kept_threads.add(ident)


class FUSE(mfusepy.FUSE):
    """mfusepy's FUSE with the open file (and rename flags) passed through, and data moved
    without copies (see the module docstring)."""

    def _wrapper(self, func, *args, **kwargs):
        if threading.get_ident() not in _kept_threads:
            _keep_thread_state()
        return super()._wrapper(func, *args, **kwargs)

    def getattr_fuse_3(self, path, buf, fip):
        attrs = self.operations.getattr(_decode(self, path), fip.contents if fip else None)
        ctypes.memmove(buf, stat_bytes(attrs), _STAT.size)
        return 0

    def read(self, path, buf, size, offset, fip):
        if size < ZERO_COPY_MIN:
            return super().read(path, buf, size, offset, fip)
        return self.operations.read_into(_decode(self, path), _view(buf, size), offset, fip.contents)

    def write(self, path, buf, size, offset, fip):
        data = _view(buf, size) if size >= ZERO_COPY_MIN else ctypes.string_at(buf, size)
        return self.operations.write(_decode(self, path), data, offset, fip.contents)

    def truncate_fuse_3(self, path, length, fip):
        return self.operations.truncate(_decode(self, path), length, _fh(fip))

    def chmod_fuse_3(self, path, mode, fip):
        return self.operations.chmod(_decode(self, path), mode, _fh(fip))

    def chown_fuse_3(self, path, uid, gid, fip):
        if ctypes.c_uint32(uid + 1).value == 0:
            uid = -1
        if ctypes.c_uint32(gid + 1).value == 0:
            gid = -1
        return self.operations.chown(_decode(self, path), uid, gid, _fh(fip))

    def utimens_fuse_3(self, path, buf, fip):
        times = None
        if buf:
            times = (mfusepy.time_of_timespec(buf.contents.actime, use_ns=True),
                     mfusepy.time_of_timespec(buf.contents.modtime, use_ns=True))
        return self.operations.utimens(_decode(self, path), times, _fh(fip))

    def rename_fuse_3(self, old, new, flags):
        return self.operations.rename(_decode(self, old), _decode(self, new), flags)


# fuse_invalidate_path (libfuse >= 3.1): the kernel drops its cached attributes of a path.
_invalidate_path = getattr(mfusepy._libfuse, "fuse_invalidate_path", None)
if _invalidate_path is not None:
    _invalidate_path.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    _invalidate_path.restype = ctypes.c_int


_fuse_ptr = None  # the session's struct fuse, saved by remember_session() during init


def remember_session() -> None:
    """Save this mount's ``struct fuse``: call from ``init``, which runs in a libfuse thread."""
    global _fuse_ptr
    context = mfusepy._libfuse.fuse_get_context()
    if context and context.contents.fuse:
        _fuse_ptr = context.contents.fuse


def invalidate_path(path: str) -> None:
    """Make the kernel ask again about ``path`` instead of trusting its cache until attr_timeout.

    Works from any thread once ``remember_session`` ran (the sweeper's hide and purge too).  It
    sends FUSE_NOTIFY_INVAL_INODE, which takes no lock a request in flight could hold, so it is
    safe inside a handler.  A path the kernel never looked up has nothing cached: that -ENOENT
    is ignored.
    """
    if _invalidate_path is None:
        return
    fuse = _fuse_ptr
    if fuse is None:
        context = mfusepy._libfuse.fuse_get_context()
        fuse = context.contents.fuse if context else None
    if fuse:
        _invalidate_path(fuse, path.encode("utf-8", "surrogateescape"))
