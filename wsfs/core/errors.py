"""Exceptions of the core, each knowing the errno a FUSE caller sees.

The FUSE adapter (``fs.py``) is the one errno boundary: it maps a
``WsfsError`` to ``.errno``, an ``OSError`` to its own errno and anything else
to a logged traceback and ``EIO``.
"""

import errno as _errno


class WsfsError(Exception):
    """Base of every error the core raises on purpose."""

    errno = _errno.EIO

    def __init__(self, message: str = "", *, errno: int | None = None):
        super().__init__(message)
        if errno is not None:
            self.errno = errno


class BadCommandError(WsfsError):
    """A control write that does not parse (unknown word, bad argument, size)."""

    errno = _errno.EINVAL


class BadJobIdError(WsfsError):
    """A job id outside ``^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$``."""

    errno = _errno.EINVAL


class JobExistsError(WsfsError):
    """A job id that was used before (even archived or purged)."""

    errno = _errno.EEXIST


class NoSuchJobError(WsfsError):
    errno = _errno.ENOENT


class InvalidTransitionError(WsfsError):
    """A transition the table in model.TRANSITIONS does not allow."""

    errno = _errno.EPERM


class NotAllowedError(WsfsError):
    """An operation the layout forbids (a file at a job's root, rmdir of a job)."""

    errno = _errno.EPERM


class SealedError(WsfsError):
    """A change to a sealed (ended) workspace."""

    errno = _errno.EROFS


class QuotaError(WsfsError):
    errno = _errno.EDQUOT


class NoSpaceError(WsfsError):
    errno = _errno.ENOSPC


class UnsafePathError(WsfsError):
    """A symlink or a name that would lead outside the data dir."""

    errno = _errno.ELOOP


class StoreError(WsfsError):
    """The store cannot be used (unknown schema version, locked, damaged)."""

    errno = _errno.EIO


class AccessDeniedError(WsfsError):
    """The caller may not read what it asked for (cloning another user's workspace)."""

    errno = _errno.EACCES
