"""Sharing a workspace with users and groups (README "Sharing a workspace").

``share JOB u:UID|g:GID r|rw`` and ``unshare JOB u:UID|g:GID`` on ``.wsfs/control``, by the
job's owner or root.  The grant is recorded in the record (``shares``: ``{"u:1001": "rw"}``)
and the events, then applied as POSIX ACL entries to the job's tree, which the kernel
enforces through the mount (the daemon negotiates ``FUSE_CAP_POSIX_ACL``):

- every file and directory gets a named entry for the sharee in its access ACL: read (and
  execute where someone may execute), or read-write;
- every directory also gets it in its default ACL, with a named entry for the job's owner,
  so that what anyone makes there later is shared the same way and stays the owner's to use;
- the job's root directory gets read and search only (and so does ``receipt.json``, made
  there at the ending): the areas are made with the job.

What a sharee may do is what the ACLs let it do with files.  The job itself stays its
owner's: ``.state`` is writable by the owner alone, and ``resume``, ``restore``,
``publish``, ``share`` and ``unshare`` check the caller, so a sharee never ends, resumes,
archives or shares the job.  ``unshare`` takes the entries out again.

Threading: the caller holds the job's lock exclusively while the tree is walked, so no
file appears half-shared to a write; the walk is O(files) and runs in the control write.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat

from . import acl
from .errors import BadCommandError, NotAllowedError, SealedError, WsfsError
from .model import JobRecord
from .records import location

_TAGS = {"u": acl.USER, "g": acl.GROUP}
ACCESS_WORDS = {"r": False, "rw": True}


def parse_principal(text: str) -> tuple[int, int]:
    """``u:UID`` or ``g:GID`` -> (ACL tag, id)."""
    kind, _sep, number = text.partition(":")
    if kind not in _TAGS or not number.isascii() or not number.isdigit() or int(number) >= acl.UNDEFINED_ID:
        raise BadCommandError(f"a sharee is u:UID or g:GID, got {text[:40]!r}")
    return _TAGS[kind], int(number)


def _set(at: tuple[str, bool], name: str, entries: list[acl.Entry] | None) -> None:
    path, follow = at
    if entries is None:
        try:
            os.removexattr(path, name, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
        return
    os.setxattr(path, name, acl.encode(entries), follow_symlinks=follow)


def _access(at: tuple[str, bool], mode: int) -> list[acl.Entry]:
    """An entry's access ACL: its xattr's, else the minimal one its mode is."""
    current = _current(at, acl.ACCESS)
    return current if current is not None else acl.from_mode(mode)


def _current(at: tuple[str, bool], name: str) -> list[acl.Entry] | None:
    path, follow = at
    try:
        return acl.decode(os.getxattr(path, name, follow_symlinks=follow))
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise
    return None


def apply(service, record: JobRecord, tag: int, ident: int, write: bool | None) -> list[str]:
    """Grant (``write`` True/False) or revoke (None) one principal on the job's whole tree.
    Returns the paths below the job's root that were changed (``""`` for the root)."""
    where = location(record)
    if where is None:
        return []  # no tree: nothing to share (``share`` refuses it first)
    root, rel = where
    owner = record.uid
    others_left = bool(record.shares)  # after this change
    changed = []
    for path, st, at in service.tree.walk_entries(root, rel):
        is_dir = stat.S_ISDIR(st.st_mode)
        entries = _access(at, st.st_mode)
        if write is None:
            new = acl.revoked(entries, tag, ident)
        else:
            perm = acl.R | acl.X if path == "" else acl.perm_for(st.st_mode, write)
            new = acl.granted(entries, tag, ident, perm)
        if new != entries:
            _set(at, acl.ACCESS, new)
        if is_dir:  # the root's too: receipt.json is made there at the ending
            default = _current(at, acl.DEFAULT)
            if write is not None:
                base = default if default is not None else acl.from_mode(st.st_mode)
                new_default = acl.granted(base, tag, ident, acl.R | acl.X | (acl.W if write and path else 0))
                if not (tag == acl.USER and ident == owner):
                    new_default = acl.granted(new_default, acl.USER, owner, acl.R | acl.W | acl.X)
                _set(at, acl.DEFAULT, new_default)
            elif default is not None:
                new_default = acl.revoked(default, tag, ident)
                if not others_left:
                    new_default = acl.revoked(new_default, acl.USER, owner)
                _set(at, acl.DEFAULT, None if acl.is_minimal(new_default) else new_default)
        changed.append(path)
    return changed


def share(service, job_id: str, who: str, access: str | None, caller_uid: int) -> JobRecord:
    """Grant ``who`` (``u:UID``/``g:GID``) ``access`` (``r``/``rw``), or revoke it (None)."""
    tag, ident = parse_principal(who)
    if not service.acls_enforced:
        raise WsfsError("sharing needs POSIX ACLs enforced by the kernel through the mount, and this mount "
                        "has none (kernel or libfuse without FUSE_CAP_POSIX_ACL, or WSFS_POSIX_ACL=0)",
                        errno=errno.EOPNOTSUPP)
    if access is not None and access not in ACCESS_WORDS:
        raise BadCommandError(f"access is r or rw, got {access!r}")
    with service.records.lock(job_id).exclusive():
        record = service.records.require(job_id)
        if caller_uid not in (0, record.uid):
            raise NotAllowedError(f"job {job_id} belongs to uid {record.uid}: only its owner or root shares it")
        if location(record) is None or record.hidden or record.pending:
            raise SealedError(f"job {job_id} has no tree to share" if location(record) is None
                              else f"job {job_id} is {'hidden' if record.hidden else 'ending'}",
                              errno=errno.EPERM)
        if tag == acl.USER and ident == record.uid:
            raise BadCommandError(f"uid {ident} owns job {job_id}")
        shares = dict(record.shares or {})
        if access is None and who not in shares:
            raise BadCommandError(f"job {job_id} is not shared with {who}")
        if access is None:
            del shares[who]
        else:
            shares[who] = access
        probe = dataclasses.replace(record, shares=shares)
        changed = apply(service, probe, tag, ident, None if access is None else ACCESS_WORDS[access])

        def change(record: JobRecord, w) -> None:
            record.shares = shares
        event = ("unshared", {"with": who}) if access is None else ("shared", {"with": who, "access": access})
        record = service.records.update(job_id, change, event)
    service.acl_changed(job_id, changed)
    return record
