"""Where wsfs lives on this machine: default places, and the wsfs mounts a process can see.

Standard library only: the client side (``wsfs.client``, the CLI's job commands) imports
this, never the daemon, the store or psutil.

A command that is given no mount (no ``--mount``, no ``$WSFS_MOUNT``) uses the one wsfs
mount in ``/proc/self/mountinfo`` (the caller's mount namespace, so a service's mount at
``/mnt/wsfs`` is found by every user); with several it names them and asks which.  With
none it falls back to the default mount point, and the command then says nothing is
mounted there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

FSNAME = "wsfs"
FSTYPE = f"fuse.{FSNAME}"
_ESCAPE = re.compile(r"\\([0-7]{3})")


class MountError(Exception):
    """A refusal to mount or unmount: the message is the one line the user sees."""


class MountLookupError(Exception):
    """No single wsfs mount could be chosen; the message says which ones there are."""


def default_data_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/wsfs"
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "wsfs")


def default_mountpoint() -> str:
    return "/mnt/wsfs" if os.geteuid() == 0 else os.path.expanduser("~/wsfs")


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def visible_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """The mount points of every wsfs mount this process can see, in mount order, each once."""
    found: list[str] = []
    try:
        with open(mountinfo) as f:
            for line in f:
                left, sep, right = line.partition(" - ")
                fields = left.split()
                if sep and len(fields) > 4 and right.split(" ", 1)[0] == FSTYPE:
                    point = _unescape(fields[4])
                    if point not in found:
                        found.append(point)
    except OSError:
        pass
    return found


def find_mount(explicit: str | os.PathLike | None = None) -> Path:
    """``explicit``, else ``$WSFS_MOUNT``, else the one wsfs mount visible, else the default."""
    if explicit:
        return Path(explicit)
    if os.environ.get("WSFS_MOUNT"):
        return Path(os.environ["WSFS_MOUNT"])
    mounts = visible_mounts()
    if len(mounts) == 1:
        return Path(mounts[0])
    if len(mounts) > 1:
        raise MountLookupError(f"{len(mounts)} wsfs mounts: {', '.join(mounts)}; say which with --mount "
                               "or $WSFS_MOUNT")
    return Path(default_mountpoint())
