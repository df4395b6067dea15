"""The manifest and usage rules under random sequences of operations (no mount): after every
operation, a job's ``.manifest`` lists exactly its regular files with their sizes, its usage
is their sum, no write past the quota has succeeded, and the receipt at completion holds the
sha256 of every kept file as it is on the disk (docs/spec.md §6, §8).  hypothesis shrinks a
failing sequence to the shortest one that breaks a rule."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from operations_support import fresh_fs

from wsfs.fuse.binding import FuseOSError

QUOTA = 64 * 1024
NAMES = ["output/a", "output/b", "output/d/c", "temp/a", "input/i"]  # few: operations meet the same files

op = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(NAMES), st.integers(0, 40_000), st.integers(0, 20_000)),
    st.tuples(st.just("truncate"), st.sampled_from(NAMES), st.integers(0, 50_000)),
    st.tuples(st.just("unlink"), st.sampled_from(NAMES)),
    st.tuples(st.just("rename"), st.sampled_from(NAMES), st.sampled_from(NAMES)),
    st.tuples(st.just("link"), st.sampled_from(NAMES), st.sampled_from(NAMES)),
    st.tuples(st.just("mkdir"), st.just("output/d")),
)

#: What a refused operation may answer: the quota, a name that is not there (or is), a
#: directory in the way.  Anything else is a failure of the test.
EXPECTED = {errno.EDQUOT, errno.ENOENT, errno.EEXIST, errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY}


def apply(f, job: str, step: tuple) -> None:
    base = f"/workspaces/{job}/"
    kind, *args = step
    if kind == "write":
        name, offset, size = args
        fi = f.fi(os.O_WRONLY | os.O_CREAT)
        try:
            f.ops.open(base + name, fi)
        except FuseOSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            f.ops.create(base + name, 0o644, fi)
        try:
            f.ops.write(base + name, bytes([offset % 251]) * size, offset, fi)
        finally:
            f.ops.release(base + name, fi)
    elif kind == "truncate":
        f.ops.truncate(base + args[0], args[1])
    elif kind == "unlink":
        f.ops.unlink(base + args[0])
    elif kind == "rename":
        f.ops.rename(base + args[0], base + args[1])
    elif kind == "link":
        f.ops.link(base + args[1], base + args[0])
    elif kind == "mkdir":
        f.ops.mkdir(base + args[0], 0o755)


def disk_files(root: str) -> dict[str, int]:
    """AREA/path -> size of every regular file of a job's tree (not its receipt)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                out[os.path.relpath(path, root)] = os.lstat(path).st_size
    out.pop("receipt.json", None)
    return out


def check(f, data: str, job: str) -> dict[str, int]:
    files = disk_files(os.path.join(data, "jobs", job))
    assert {e["path"]: e["size"] for e in f.manifest(job)} == files
    usage = f.job(job)["usage"]
    assert usage == {"bytes": sum(files.values()), "files": len(files)}
    assert usage["bytes"] <= QUOTA
    return files


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(op, max_size=25))
def test_manifest_usage_and_quota_hold_after_every_operation(steps):
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        with fresh_fs(data) as f:
            f.command("/.wsfs/control", f"create j quota={QUOTA}")
            for step in steps:
                try:
                    apply(f, "j", step)
                except FuseOSError as exc:
                    assert exc.errno in EXPECTED, (step, os.strerror(exc.errno))
                check(f, data, "j")
            kept = {p: s for p, s in check(f, data, "j").items() if not p.startswith("temp/")}
            contents = {p: open(os.path.join(data, "jobs", "j", p), "rb").read() for p in kept}
            f.command("/workspaces/j/.state", "completed")
            receipt = json.loads(f.read("/workspaces/j/receipt.json"))
            outputs = {o["path"]: o["sha256"] for o in receipt["outputs"]}
            assert outputs == {p: hashlib.sha256(c).hexdigest() for p, c in contents.items() if p.startswith("output/")}
            assert check(f, data, "j") == kept
