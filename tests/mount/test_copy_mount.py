"""copy_file_range(2) through the mount (issue 16): ``cp --reflink=auto`` has the backing filesystem
copy (a reflink where it has them, an in-kernel copy on ext4), and the copy is a write like any
other: in the manifest and the receipt, charged to a quota, refused in a sealed job.  Copies may
cross jobs and areas; renames and links between jobs still may not (EXDEV)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re

from conftest import errno_of, sh, wait_until


def copies(m) -> int:
    """copy_file_range requests the daemon served (``.wsfs/metrics``)."""
    found = re.search(r'^wsfs_fuse_requests_total\{op="copy_file_range"\} ([0-9.e+]+)$',
                      (m.mnt / ".wsfs" / "metrics").read_text(), re.M)
    return int(float(found.group(1))) if found else 0


def manifest(job_dir) -> dict:
    return {d["path"]: d for d in map(json.loads, (job_dir / ".manifest").read_text().splitlines())}


def test_cp_reflink_within_and_across_jobs_and_areas(wsfs_mount):
    m = wsfs_mount
    sh("mkdir workspaces/a workspaces/b && head -c 5000000 /dev/urandom > workspaces/a/output/src", cwd=m.mnt)
    data = (m.ws / "a" / "output" / "src").read_bytes()
    before = copies(m)
    sh("cp --reflink=auto workspaces/a/output/src workspaces/a/output/same-area "
       "&& cp --reflink=auto workspaces/a/output/src workspaces/a/temp/other-area "
       "&& cp --reflink=auto workspaces/a/output/src workspaces/b/output/other-job "
       "&& cp --reflink=auto workspaces/a/output/src shared/outside-jobs", cwd=m.mnt)
    assert copies(m) >= before + 4  # the kernel handed each copy to the daemon
    for path in ("a/output/same-area", "a/temp/other-area", "b/output/other-job"):
        assert (m.ws / path).read_bytes() == data, path
    assert sh("cmp workspaces/a/output/src shared/outside-jobs", cwd=m.mnt).returncode == 0
    wait_until(lambda: manifest(m.ws / "a").get("output/same-area", {}).get("size") == len(data),
               "the copy in a's manifest")
    assert manifest(m.ws / "a")["temp/other-area"]["size"] == len(data)
    assert manifest(m.ws / "b")["output/other-job"]["size"] == len(data)
    assert json.loads((m.ws / "b" / ".job").read_text())["usage"] == {"bytes": len(data), "files": 1}
    # Moving or linking between jobs is still refused: a copy is the way.
    for call in (os.rename, os.link):
        assert errno_of(call, m.ws / "a" / "output" / "src", m.ws / "b" / "output" / "moved") == errno.EXDEV
    sh("echo completed > workspaces/b/.state", cwd=m.mnt)
    outputs = json.loads((m.ws / "b" / "receipt.json").read_text())["outputs"]
    assert outputs == [{"path": "output/other-job", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]



def test_a_copy_past_the_quota_is_refused_whole_and_a_sealed_job_takes_none(wsfs_mount):
    m = wsfs_mount
    sh('mkdir workspaces/src && head -c 3000000 /dev/urandom > workspaces/src/output/big '
       '&& echo "create q quota=1M" > .wsfs/control', cwd=m.mnt)
    result = sh("cp --reflink=auto workspaces/src/output/big workspaces/q/output/copy", cwd=m.mnt, check=False)
    assert result.returncode != 0 and "Disk quota exceeded" in result.stderr
    assert (m.ws / "q" / "output" / "copy").stat().st_size == 0  # nothing written past the quota
    small = m.ws / "src" / "output" / "small"
    small.write_bytes(os.urandom(100_000))
    sh("cp --reflink=auto workspaces/src/output/small workspaces/q/output/small", cwd=m.mnt)
    wait_until(lambda: json.loads((m.ws / "q" / ".job").read_text())["usage"]["bytes"] == 100_000, "q's usage")

    # Into a sealed job through a descriptor opened before the seal: refused.
    fd = os.open(m.ws / "q" / "output" / "late", os.O_WRONLY | os.O_CREAT, 0o644)
    src = os.open(small, os.O_RDONLY)
    try:
        sh("echo failed > workspaces/q/.state", cwd=m.mnt)
        try:
            os.copy_file_range(src, fd, 100_000)
            raise AssertionError("a copy into a sealed job worked")
        except OSError as exc:
            assert exc.errno == errno.EROFS
    finally:
        os.close(src)
        os.close(fd)
    assert (m.ws / "q" / "output" / "late").stat().st_size == 0
