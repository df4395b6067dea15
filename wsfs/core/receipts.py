"""A job's receipt: what its ending wrote to ``receipt.json`` (docs/spec.md §6).

``receipt_bytes`` is the document (its version, ``RECEIPT_VERSION``, changes with its fields);
``verified_entry`` and ``current_entry`` are what the ending knows of each file as it is now,
hashed or not; ``write_atomically`` puts the receipt in place, fsynced, whole or not at all.
``JobService._step_receipt`` (wsfs.core.lifecycle) runs them under the job's lock.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import stat
from collections.abc import Callable

from .errors import UnsafePathError
from .manifest import manifest_bytes
from .model import JobRecord, JobState
from .tree import Tree

RECEIPT_FILE = "receipt.json"
RECEIPT_VERSION = 1
HASH_CHUNK = 1 << 20


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="milliseconds")


def file_sha256(fd: int) -> bytes:
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, HASH_CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.digest()


def current_entry(tree: Tree, root: str, rel: str, entry: list) -> list | None:
    """The entry of the file as it is now, unhashed if it changed; None when the file is gone."""
    try:
        st = tree.lstat(root, rel)
    except FileNotFoundError:
        return None
    current = [st.st_size, st.st_mtime_ns, st.st_ino]
    return entry if list(entry[:3]) == current else current + [None]


def verified_entry(tree: Tree, root: str, rel: str, entry: list,
                   pending_digest: Callable[[int, int], bytes | None]) -> list | None:
    """The entry with a sha256 that matches the file as it is now; None when the file is gone.

    Gone also when the name is no regular file any more, or no longer reachable without
    following a link (changed behind the daemon's back, docs/spec.md §2): that is no output, and
    must not make every attempt to end the job fail (EISDIR, ELOOP) for ever.  A hash the FUSE
    layer is finishing (``pending_digest``) is taken rather than read again.
    """
    try:
        fd = tree.open(root, rel, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError, UnsafePathError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        current = [st.st_size, st.st_mtime_ns, st.st_ino]
        if entry[3] is not None and entry[:3] == current:
            return entry
        return current + [pending_digest(st.st_ino, st.st_size) or file_sha256(fd)]
    finally:
        os.close(fd)


def receipt_bytes(record: JobRecord, target: JobState, ordered: list, hashed: dict) -> bytes:
    """``receipt.json`` of a job ending in ``target``: ``ordered`` are its manifest entries as they
    stay, sorted by path; ``hashed`` the kept files, whose sha256 make the outputs."""
    job_id = record.id
    outputs = [{"path": p, "size": e[0], "sha256": e[3].hex()} for p, e in ordered if p in hashed]
    ended = record.pending["at"]
    receipt = {
        "receipt_version": RECEIPT_VERSION,
        "job": job_id, "template": record.template, "state": target.value,
        "reason": record.pending["reason"],
        "owner": {"uid": record.uid, "gid": record.gid,
                  "pid": (record.owner or {}).get("pid")},
        "created": iso(record.created), "ended": iso(ended),
        "duration_s": round(ended - record.created, 3),
        "stage": record.stage,
        "stages": [{"name": s["name"], "at": iso(s["at"]), **({"dropped": s["dropped"]} if "dropped" in s else {})}
                   for s in record.stages],
        "outputs": outputs,
        "totals": {"files": len(ordered), "bytes": sum(e[0] for _p, e in ordered),
                   "output_files": len(outputs), "output_bytes": sum(o["size"] for o in outputs)},
        "manifest_sha256": hashlib.sha256(manifest_bytes(ordered)).hexdigest(),
    }
    if record.labels:
        receipt["labels"] = record.labels
    return (json.dumps(receipt, indent=2) + "\n").encode()


def write_atomically(tree: Tree, root: str, rel: str, data: bytes) -> None:
    """``data`` at ``rel``, read-only, through a temporary name and a rename, both fsynced."""
    tmp = rel + ".tmp"
    fd = tree.open(root, tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o444)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tree.rename(root, tmp, root, rel)
    dfd = tree.open_dir(root, rel.split("/")[:-1])
    try:
        rfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=dfd)
        os.fsync(rfd)
        os.close(rfd)
    finally:
        os.close(dfd)
