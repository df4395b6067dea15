"""POSIX ACLs as the kernel stores them in ``system.posix_acl_access`` and ``_default``.  Pure.

wsfs shares a workspace (README "Sharing a workspace") by adding one named entry per sharee
to the access ACL of every file and directory of the job, and to the default ACL of every
directory, so that files made later inherit it; the kernel enforces them through the mount
(``FUSE_CAP_POSIX_ACL``).  This module reads and writes that xattr format
(``include/uapi/linux/posix_acl_xattr.h``): a little-endian header (version 2), then
entries of (tag u16, perm u16, id u32) sorted by tag, then id.  The mask is kept as
``setfacl`` keeps it: the union of the group class (named users, the owning group,
named groups).
"""

from __future__ import annotations

import stat
import struct

ACCESS = "system.posix_acl_access"
DEFAULT = "system.posix_acl_default"

USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF
R, W, X = 4, 2, 1
_VERSION = 2
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")

Entry = tuple[int, int, int]  # (tag, perm, id)


class AclError(ValueError):
    """Bytes that are no POSIX ACL."""


def decode(blob: bytes) -> list[Entry]:
    if len(blob) < _HEADER.size or (len(blob) - _HEADER.size) % _ENTRY.size:
        raise AclError(f"an ACL of {len(blob)} bytes")
    if _HEADER.unpack_from(blob)[0] != _VERSION:
        raise AclError("an ACL of another version")
    return [_ENTRY.unpack_from(blob, offset) for offset in range(_HEADER.size, len(blob), _ENTRY.size)]


def encode(entries: list[Entry]) -> bytes:
    return _HEADER.pack(_VERSION) + b"".join(_ENTRY.pack(*e) for e in sorted(entries, key=lambda e: (e[0], e[2])))


def from_mode(mode: int) -> list[Entry]:
    """The minimal ACL that a mode is (what a file without an ACL xattr has)."""
    return [(USER_OBJ, (mode >> 6) & 7, UNDEFINED_ID), (GROUP_OBJ, (mode >> 3) & 7, UNDEFINED_ID),
            (OTHER, mode & 7, UNDEFINED_ID)]


def _with_mask(entries: list[Entry]) -> list[Entry]:
    """Entries with the mask recomputed (none when no named entry is left: the minimal ACL)."""
    base = [e for e in entries if e[0] != MASK]
    if not any(t in (USER, GROUP) for t, _p, _i in base):
        return base
    union = 0
    for tag, perm, _id in base:
        if tag in (USER, GROUP_OBJ, GROUP):
            union |= perm
    return base + [(MASK, union, UNDEFINED_ID)]


def granted(entries: list[Entry], tag: int, ident: int, perm: int) -> list[Entry]:
    """``entries`` with ``tag``:``ident`` given exactly ``perm`` (added or replaced)."""
    kept = [e for e in entries if not (e[0] == tag and e[2] == ident)]
    return _with_mask(kept + [(tag, perm, ident)])


def revoked(entries: list[Entry], tag: int, ident: int) -> list[Entry]:
    return _with_mask([e for e in entries if not (e[0] == tag and e[2] == ident)])


def is_minimal(entries: list[Entry]) -> bool:
    return all(t in (USER_OBJ, GROUP_OBJ, OTHER) for t, _p, _i in entries)


def perm_for(mode: int, write: bool) -> int:
    """What a sharee gets on an entry of ``mode``: read (and write), and execute on a directory
    or a file someone may execute (``setfacl``'s ``X``)."""
    perm = R | (W if write else 0)
    if stat.S_ISDIR(mode) or mode & 0o111:
        perm |= X
    return perm
