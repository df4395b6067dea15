"""The one import of the FUSE binding (mfusepy), pinned to libfuse 3.

mfusepy prefers libfuse 2 when both are installed (docs/spec.md §1), so the path of
libfuse 3 is handed to it through ``FUSE_LIBRARY_PATH`` before the import: ``WSFS_LIBFUSE3``
when set, else the libfuse that ``tools/build-libfuse.sh`` built into this virtualenv (3.17,
for kernel passthrough, when the system's is older), else the system's.

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
import fcntl
import os
import struct
import sys
import threading
import typing

#: where tools/build-libfuse.sh (make venv, make install) puts a libfuse newer than the system's
BUILT_LIBFUSE3 = os.path.join(sys.prefix, "lib", "wsfs-libfuse", "libfuse3.so.3")


def _libfuse3() -> str | None:
    if os.environ.get("WSFS_LIBFUSE3"):
        return os.environ["WSFS_LIBFUSE3"]
    if os.path.exists(BUILT_LIBFUSE3):
        return BUILT_LIBFUSE3
    return ctypes.util.find_library("fuse3")


_LIBFUSE3 = _libfuse3()
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


def libfuse_version() -> str:
    """The loaded libfuse's own version string (``fuse_pkgversion``, e.g. ``3.14.0``)."""
    pkgversion = getattr(mfusepy._libfuse, "fuse_pkgversion", None)
    if pkgversion is None:
        return f"{LIBFUSE_VERSION[0]}.{LIBFUSE_VERSION[1]}"
    pkgversion.restype = ctypes.c_char_p
    return pkgversion().decode()


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
    slots: list[tuple[int, typing.Any, tuple[str, int | None]]] = []  # (offset, ctypes type, what)
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
#: ``enum fuse_readdir_flags`` and ``enum fuse_fill_dir_flags`` (libfuse 3 fuse.h).
READDIR_PLUS, FILL_DIR_PLUS = 1 << 0, 1 << 1
#: ``WSFS_READDIRPLUS=0`` (benchmarks: bench/listing_cost.py) lists names only, as before.
READDIRPLUS = os.environ.get("WSFS_READDIRPLUS", "1") != "0"
#: libfuse >= 3.17 keeps a listing given without offsets (offsets of 0) whole, attributes included
#: (its ``fuse_direntry`` carries FUSE_FILL_DIR_PLUS; 3.14 to 3.16 drop them): one call of the
#: operations per listing, the kernel's further READDIRs served from libfuse's buffer.  The
#: operations give offsets instead (a call per READDIR) where libfuse cannot keep a listing, and
#: for a directory too big to hold whole.  ``WSFS_READDIR_BUFFERED=0``: always offsets.
READDIR_BUFFERED = LIBFUSE_VERSION >= (3, 17) and os.environ.get("WSFS_READDIR_BUFFERED", "1") != "0"
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
    if address is None:
        raise ValueError("a NULL buffer")
    return memoryview((ctypes.c_char * size).from_address(address)).cast("B")


_PyGILState_Ensure = ctypes.pythonapi.PyGILState_Ensure
_kept_threads: set[int] = set()


class FUSE(mfusepy.FUSE):
    """mfusepy's FUSE with the open file (and rename flags) passed through, and data moved
    without copies (see the module docstring)."""

    def _wrapper(self, func, *args, **kwargs):
        # A ctypes callback on a thread Python did not start makes a thread state and deletes it
        # again on return, for every request; one more PyGILState_Ensure, never released, keeps
        # it for the thread's life (libfuse's pool is fixed at MAX_THREADS threads).
        ident = threading.get_ident()
        if ident not in _kept_threads:
            _PyGILState_Ensure()
            _kept_threads.add(ident)
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

    def copy_file_range(self, path_in, fi_in, off_in, path_out, fi_out, off_out, size, flags):
        """``copy_file_range(2)`` between two open files of the mount (mfusepy declares the
        callback but wraps none): the operations copy on the backing files, in the kernel."""
        return self.operations.copy_file_range(_decode(self, path_in), fi_in.contents, off_in,
                                               _decode(self, path_out), fi_out.contents, off_out, size, flags)

    def rename_fuse_3(self, old, new, flags):
        return self.operations.rename(_decode(self, old), _decode(self, new), flags)

    def readdir_fuse_3(self, path, buf, filler, offset, fip, flags):
        """A listing from ``offset`` on, each entry with the offset of the next, until the
        kernel's buffer is full; or a whole listing, every offset 0, which libfuse keeps
        (``READDIR_BUFFERED``).  For the kernel's READDIRPLUS (``FUSE_READDIR_PLUS``) an entry
        the operations give all attributes of goes with them (``FUSE_FILL_DIR_PLUS``): libfuse
        makes its node from them and the kernel asks no LOOKUP for it.  (mfusepy passes mode and
        inode only, and offsets of 0, with which libfuse 3.14 drops the attributes.)"""
        plus = bool(flags & READDIR_PLUS) and READDIRPLUS
        st = mfusepy.c_stat()
        address = ctypes.addressof(st)
        for name, attrs, after in self.operations.readdir(_decode(self, path), fip.contents.fh, offset, plus):
            ctypes.memmove(address, stat_bytes(attrs), _STAT.size)
            fill = FILL_DIR_PLUS if plus and "st_nlink" in attrs else 0
            if filler(buf, name.encode(self.encoding, self.errors), st, after, fill) != 0:
                break
        return 0


# fuse_invalidate_path (libfuse >= 3.1): the kernel drops its cached attributes of a path.
_invalidate_path = getattr(mfusepy._libfuse, "fuse_invalidate_path", None)
if _invalidate_path is not None:
    _invalidate_path.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    _invalidate_path.restype = ctypes.c_int


_fuse_ptr = None  # the session's struct fuse, saved by remember_session() during init
_session = threading.Condition()  # guards _fuse_ptr against end_session() and counts calls using it
_calls_in_flight = 0


def remember_session() -> None:
    """Save this mount's ``struct fuse``: call from ``init``, which runs in a libfuse thread."""
    global _fuse_ptr
    context = mfusepy._libfuse.fuse_get_context()
    if context and context.contents.fuse:
        with _session:
            _fuse_ptr = context.contents.fuse


def caller_umask() -> int:
    """The umask of the process whose request this thread serves (FUSE_CREATE, MKDIR, MKNOD).
    The kernel leaves it to the daemon when POSIX ACLs are on (FUSE_CAP_DONT_MASK), for a
    directory's default ACL, not the umask, decides a new entry's mode when it has one."""
    context = mfusepy._libfuse.fuse_get_context()
    return context.contents.umask & 0o777 if context else 0o022


#: libfuse's capability bits (fuse_common.h, the same from 3.0 on)
CAP_DONT_MASK = 1 << 6
CAP_POSIX_ACL = 1 << 19
CAP_HANDLE_KILLPRIV_V2 = 1 << 21  # libfuse >= 3.14 (kernel 5.12)
CAP_PASSTHROUGH = 1 << 29  # libfuse >= 3.17, kernel >= 6.9


# -- kernel passthrough (libfuse >= 3.17) ----------------------------------------------------
#
# A file opened with a backing id has its reads, writes and mmap served by the kernel from the
# backing file; the daemon still sees open, flush, fsync, release and every metadata call.
# The high-level API has no call for it, so this is done as libfuse's own fuse_passthrough_open
# does it: FUSE_DEV_IOC_BACKING_OPEN on the session's /dev/fuse fd, and the id in the open
# reply's fuse_file_info (3.17's layout below; mfusepy declares the 3.14 one).

class _ConnInfo317(ctypes.Structure):  # struct fuse_conn_info, its head (fuse_common.h, 3.17)
    _fields_ = [("proto_major", ctypes.c_uint32), ("proto_minor", ctypes.c_uint32),
                ("max_write", ctypes.c_uint32), ("max_read", ctypes.c_uint32),
                ("max_readahead", ctypes.c_uint32), ("capable", ctypes.c_uint32), ("want", ctypes.c_uint32),
                ("max_background", ctypes.c_uint32), ("congestion_threshold", ctypes.c_uint32),
                ("time_gran", ctypes.c_uint32), ("max_backing_stack_depth", ctypes.c_uint32)]


class _FileInfo317(ctypes.Structure):  # struct fuse_file_info (fuse_common.h, 3.17)
    _fields_ = [("flags", ctypes.c_int32), ("bits", ctypes.c_uint32), ("padding2", ctypes.c_uint32),
                ("padding3", ctypes.c_uint32), ("fh", ctypes.c_uint64), ("lock_owner", ctypes.c_uint64),
                ("poll_events", ctypes.c_uint32), ("backing_id", ctypes.c_int32),
                ("compat_flags", ctypes.c_uint64), ("reserved", ctypes.c_uint64 * 2)]


def _iow(number: int, size: int) -> int:
    return (1 << 30) | (size << 16) | (229 << 8) | number  # _IOW(FUSE_DEV_IOC_MAGIC, number, size)


_BACKING_OPEN = _iow(1, 16)   # struct fuse_backing_map {int32 fd; uint32 flags; uint64 padding}
_BACKING_CLOSE = _iow(2, 4)   # uint32 backing id
_dev_fd = -1  # the session's /dev/fuse fd, once passthrough was negotiated


if LIBFUSE_VERSION >= (3, 17):
    assert _FileInfo317.fh.offset == mfusepy.fuse_file_info.fh.offset


def want_passthrough(conn) -> bool:
    """At init: ask for kernel passthrough when this libfuse and kernel offer it.  The backing
    files may sit on one stacked filesystem (a data dir on overlayfs, as in a container)."""
    if LIBFUSE_VERSION < (3, 17) or not conn.capable & CAP_PASSTHROUGH:
        return False
    global _dev_fd
    with _session:
        fuse = _fuse_ptr
    if fuse is None:
        return False
    _dev_fd = _session_fd(_fuse_get_session(fuse))
    if _dev_fd < 0:
        return False
    conn.want |= CAP_PASSTHROUGH
    depth = _ConnInfo317.max_backing_stack_depth
    ctypes.c_uint32.from_address(ctypes.addressof(conn) + depth.offset).value = 1
    return True


def backing_open(fd: int) -> int:
    """A backing id for the file open at ``fd`` (OSError when the kernel refuses it)."""
    return fcntl.ioctl(_dev_fd, _BACKING_OPEN, bytearray(struct.pack("=iIQ", fd, 0, 0)), True)


def backing_close(backing_id: int) -> None:
    """Forget a backing id.  Files already opened with it keep their backing file."""
    fcntl.ioctl(_dev_fd, _BACKING_CLOSE, struct.pack("=I", backing_id))


def set_backing_id(fi, backing_id: int) -> None:
    """The open reply goes out with ``backing_id``: FOPEN_PASSTHROUGH (libfuse's fill_open)."""
    ctypes.c_int32.from_address(ctypes.addressof(fi) + _FileInfo317.backing_id.offset).value = backing_id


class _FuseArgs(ctypes.Structure):
    _fields_ = [("argc", ctypes.c_int), ("argv", ctypes.POINTER(ctypes.c_char_p)), ("allocated", ctypes.c_int)]


class _CmdlineOpts(ctypes.Structure):  # struct fuse_cmdline_opts, libfuse >= 3.12
    _fields_ = [("singlethread", ctypes.c_int), ("foreground", ctypes.c_int), ("debug", ctypes.c_int),
                ("nodefault_subtype", ctypes.c_int), ("mountpoint", ctypes.c_void_p),
                ("show_version", ctypes.c_int), ("show_help", ctypes.c_int), ("clone_fd", ctypes.c_int),
                ("max_idle_threads", ctypes.c_uint), ("max_threads", ctypes.c_uint)]


def _declare(name: str, restype, *argtypes):
    function = getattr(mfusepy._libfuse, name)
    function.restype, function.argtypes = restype, list(argtypes)
    return function


_HAS_OWN_MAIN = LIBFUSE_VERSION >= (3, 12) and hasattr(mfusepy._libfuse, "fuse_loop_mt_312")
if _HAS_OWN_MAIN:
    _P = ctypes.c_void_p
    _parse_cmdline = _declare("fuse_parse_cmdline_312", ctypes.c_int, ctypes.POINTER(_FuseArgs),
                              ctypes.POINTER(_CmdlineOpts))
    _fuse_new = _declare("fuse_new_31", _P, ctypes.POINTER(_FuseArgs), _P, ctypes.c_size_t, _P)
    _fuse_mount = _declare("fuse_mount", ctypes.c_int, _P, _P)
    _fuse_get_session = _declare("fuse_get_session", _P, _P)
    _session_fd = _declare("fuse_session_fd", ctypes.c_int, _P)
    _set_signal_handlers = _declare("fuse_set_signal_handlers", ctypes.c_int, _P)
    _remove_signal_handlers = _declare("fuse_remove_signal_handlers", None, _P)
    _loop_cfg_create = _declare("fuse_loop_cfg_create", _P)
    _loop_cfg_destroy = _declare("fuse_loop_cfg_destroy", None, _P)
    _loop_cfg_set_clone_fd = _declare("fuse_loop_cfg_set_clone_fd", None, _P, ctypes.c_uint)
    _loop_cfg_set_idle_threads = _declare("fuse_loop_cfg_set_idle_threads", ctypes.c_uint, _P, ctypes.c_uint)
    _loop_cfg_set_max_threads = _declare("fuse_loop_cfg_set_max_threads", ctypes.c_uint, _P, ctypes.c_uint)
    _fuse_loop = _declare("fuse_loop", ctypes.c_int, _P)
    _fuse_loop_mt = _declare("fuse_loop_mt_312", ctypes.c_int, _P, _P)
    _fuse_unmount = _declare("fuse_unmount", None, _P)
    _fuse_destroy = _declare("fuse_destroy", None, _P)
    _opt_free_args = _declare("fuse_opt_free_args", None, ctypes.POINTER(_FuseArgs))
    _libc_free = ctypes.CDLL(None).free
    _libc_free.argtypes = [_P]


def _main_ending_the_session(argc, argv, ops, ops_size, user_data) -> int:
    """libfuse's ``fuse_main_real``, step for step, with ``end_session()`` between the end of
    the loop and ``fuse_destroy``.

    libfuse frees the path table (what ``fuse_invalidate_path`` walks) first thing in
    ``fuse_destroy`` and calls the ``destroy`` operation only after that, so ``destroy`` is too
    late to stop the daemon's own threads (the manifest writer, the sweeper, the publisher)
    from invalidating through a session being torn down.  Here they stop before it starts.
    Foreground only (the daemon never lets libfuse daemonize); returns fuse_main_real's codes.
    """
    args = _FuseArgs(argc, ctypes.cast(argv, ctypes.POINTER(ctypes.c_char_p)), 0)
    opts = _CmdlineOpts()
    if _parse_cmdline(ctypes.byref(args), ctypes.byref(opts)) != 0:
        return 1
    fuse = loop_config = None
    try:
        if not opts.mountpoint:
            return 2
        fuse = _fuse_new(ctypes.byref(args), ctypes.cast(ops, ctypes.c_void_p), ops_size, user_data)
        if not fuse:
            return 3
        if _fuse_mount(fuse, opts.mountpoint) != 0:
            return 4
        session = _fuse_get_session(fuse)
        try:
            if _set_signal_handlers(session) != 0:
                return 6
            try:
                if opts.singlethread:
                    res = _fuse_loop(fuse)
                else:
                    loop_config = _loop_cfg_create()
                    if not loop_config:
                        return 7
                    _loop_cfg_set_clone_fd(loop_config, opts.clone_fd)
                    _loop_cfg_set_idle_threads(loop_config, opts.max_idle_threads)
                    _loop_cfg_set_max_threads(loop_config, opts.max_threads)
                    res = _fuse_loop_mt(fuse, loop_config)
            finally:
                _remove_signal_handlers(session)
        finally:
            _fuse_unmount(fuse)
        return 8 if res else 0
    finally:
        end_session()  # unmounting leaves the path table alone; fuse_destroy frees it first thing
        if fuse:
            _fuse_destroy(fuse)
        if loop_config:
            _loop_cfg_destroy(loop_config)
        _libc_free(opts.mountpoint)
        _opt_free_args(ctypes.byref(args))


if _HAS_OWN_MAIN:
    mfusepy.fuse_main_real = _main_ending_the_session  # FUSE.__init__ calls it by this module-level name


def end_session() -> None:
    """The session is ending (``destroy``): libfuse frees its ``struct fuse`` right after.

    From now on ``invalidate_path`` does nothing; this waits for the calls already in
    flight, so no thread (the sweeper, the publisher) can still be inside libfuse with it.
    """
    global _fuse_ptr
    with _session:
        _fuse_ptr = None
        _session.wait_for(lambda: _calls_in_flight == 0, timeout=5.0)


def invalidate_path(path: str) -> None:
    """Make the kernel ask again about ``path`` instead of trusting its cache until attr_timeout.

    Works from any thread between ``remember_session`` and ``end_session`` (the sweeper's
    hide and purge too); outside that window it does nothing.  It sends
    FUSE_NOTIFY_INVAL_INODE, which takes no lock a request in flight could hold, so it is
    safe inside a handler.  A path the kernel never looked up has nothing cached: that
    -ENOENT is ignored.
    """
    global _calls_in_flight
    if _invalidate_path is None:
        return
    with _session:
        fuse = _fuse_ptr
        if fuse is None:
            return
        _calls_in_flight += 1
    try:
        _invalidate_path(fuse, path.encode("utf-8", "surrogateescape"))
    finally:
        with _session:
            _calls_in_flight -= 1
            if not _calls_in_flight:
                _session.notify_all()
