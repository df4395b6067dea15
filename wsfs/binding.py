"""The one import of the FUSE binding (mfusepy), pinned to libfuse 3.

mfusepy prefers libfuse 2 when both are installed (SPEC §1), so the path of
libfuse 3 is handed to it through ``FUSE_LIBRARY_PATH`` before the import.

``FUSE`` here fixes what mfusepy's libfuse-3 wrappers drop: they call
``truncate``, ``chmod``, ``chown`` and ``utimens`` without the open file,
which with ``nullpath_ok`` leaves ``ftruncate(fd)`` on an unlinked file
nothing to act on, and they drop ``rename``'s flags, which would turn
``RENAME_NOREPLACE`` into a silent overwrite.
"""

from __future__ import annotations

import ctypes.util
import os

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


class FUSE(mfusepy.FUSE):
    """mfusepy's FUSE with the open file (and rename flags) passed through."""

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
