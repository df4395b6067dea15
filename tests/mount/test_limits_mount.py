"""Limits and templates through a real mount and a real shell (docs/spec.md §8, §9): quotas,
``max_files``, ``max_jobs``, ``min_free`` and templates as a user meets them.  The meter
itself is in ``core/test_limits.py``."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, sh

KIB, MIB = 1 << 10, 1 << 20

MEDIA = """
[templates.media]
areas = { audio = "scratch", video = "scratch", output = "keep" }
max_files = 50
[templates.media.retention]
failed = "3d"
"""


def wsfs(m, *args, check: bool = True) -> subprocess.CompletedProcess:
    """The ``wsfs`` CLI against mount ``m``, as a user would run it."""
    env = dict(os.environ, WSFS_MOUNT=str(m.mnt), PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "wsfs", *args], capture_output=True, text=True, env=env,
                            timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"wsfs {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


def job_doc(m, job: str) -> dict:
    return json.loads((m.ws / job / ".job").read_text())


@pytest.mark.mount
def test_quota_from_a_shell(mount_factory):
    m = mount_factory()
    sh('echo "create q1 quota=1M" > .wsfs/control', cwd=m.mnt)
    assert job_doc(m, "q1")["quota"] == MIB
    big = m.ws / "q1" / "output" / "big"

    result = sh("dd if=/dev/zero of=workspaces/q1/output/big bs=64k count=100", cwd=m.mnt, check=False)
    assert result.returncode != 0
    assert "Disk quota exceeded" in result.stderr
    assert MIB - 64 * KIB <= big.stat().st_size <= MIB
    assert job_doc(m, "q1")["usage"] == {"bytes": big.stat().st_size, "files": 1}

    # A write that would cross the quota is refused whole: 0 bytes written, not a short write.
    big.unlink()
    part = m.ws / "q1" / "output" / "part"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        assert os.write(fd, b"a" * (500 * KIB)) == 500 * KIB
        with pytest.raises(OSError) as info:
            os.write(fd, b"b" * (600 * KIB))
        assert info.value.errno == errno.EDQUOT
        assert os.fstat(fd).st_size == 500 * KIB
    finally:
        os.close(fd)
    assert part.read_bytes() == b"a" * (500 * KIB)

    # Deleting a file frees its quota.
    sh("rm workspaces/q1/output/part && head -c 600K /dev/zero > workspaces/q1/output/again", cwd=m.mnt)
    assert (m.ws / "q1" / "output" / "again").stat().st_size == 600 * KIB
    # ... and truncating one does too.
    sh(": > workspaces/q1/output/again && head -c 1000K /dev/zero > workspaces/q1/output/third", cwd=m.mnt)
    assert job_doc(m, "q1")["usage"]["bytes"] == 1000 * KIB
    assert m.daemon_errors() == []


@pytest.mark.mount
def test_quota_counts_every_way_a_file_grows(mount_factory):
    m = mount_factory()
    sh('echo "create q2 quota=100K" > .wsfs/control', cwd=m.mnt)
    out = m.ws / "q2" / "output"
    r = sh("truncate -s 200K workspaces/q2/output/sparse", cwd=m.mnt, check=False)
    assert r.returncode != 0 and "Disk quota exceeded" in r.stderr
    r = sh("fallocate -l 200K workspaces/q2/output/falloc", cwd=m.mnt, check=False)
    assert r.returncode != 0 and "Disk quota exceeded" in r.stderr
    sh("head -c 60K /dev/zero > workspaces/q2/output/a", cwd=m.mnt)
    r = sh("cp workspaces/q2/output/a workspaces/q2/output/b", cwd=m.mnt, check=False)
    assert r.returncode != 0 and "Disk quota exceeded" in r.stderr
    sh("mv workspaces/q2/output/a workspaces/q2/output/c", cwd=m.mnt)  # a rename costs nothing
    assert (out / "c").stat().st_size == 60 * KIB
    assert m.daemon_errors() == []


@pytest.mark.mount
def test_max_files_from_a_shell(mount_factory):
    m = mount_factory()
    sh('echo "create f1 max_files=3" > .wsfs/control', cwd=m.mnt)
    sh("cd workspaces/f1 && touch output/a output/b input/c && mkdir output/sub", cwd=m.mnt)
    result = sh("touch workspaces/f1/output/sub/d", cwd=m.mnt, check=False)
    assert result.returncode != 0 and "Disk quota exceeded" in result.stderr
    assert not (m.ws / "f1" / "output" / "sub" / "d").exists()
    sh("rm workspaces/f1/output/a && touch workspaces/f1/output/sub/d", cwd=m.mnt)
    assert job_doc(m, "f1")["usage"]["files"] == 3
    assert m.daemon_errors() == []


@pytest.mark.mount
def test_create_with_quota_and_max_files_from_the_cli(mount_factory):
    m = mount_factory()
    path = wsfs(m, "create", "cq", "--quota", "1M", "--max-files", "2").stdout.strip()
    assert path == str(m.ws / "cq")
    doc = job_doc(m, "cq")
    assert (doc["quota"], doc["max_files"]) == (MIB, 2)
    r = sh("head -c 2M /dev/zero > output/a", cwd=path, check=False)
    assert r.returncode != 0 and "Disk quota exceeded" in r.stderr
    sh("touch output/b", cwd=path)
    r = sh("touch output/c", cwd=path, check=False)
    assert r.returncode != 0 and "Disk quota exceeded" in r.stderr
    assert m.daemon_errors() == []


@pytest.mark.mount
def test_max_jobs_from_a_shell(mount_factory):
    m = mount_factory(config="max_jobs = 2\n")
    sh("mkdir workspaces/a workspaces/b", cwd=m.mnt)
    result = sh("mkdir workspaces/c", cwd=m.mnt, check=False)
    assert result.returncode != 0 and "Disk quota exceeded" in result.stderr
    assert not (m.ws / "c").exists()
    result = sh('echo "create c" > .wsfs/control', cwd=m.mnt, check=False)
    assert result.returncode != 0 and "Disk quota exceeded" in result.stderr
    sh("echo completed > workspaces/a/.state && echo archived > workspaces/a/.state", cwd=m.mnt)
    sh("mkdir workspaces/c", cwd=m.mnt)
    assert m.daemon_errors() == []


@pytest.mark.mount
def test_min_free_from_a_shell(mount_factory):
    m = mount_factory(config='min_free = "1P"\n')  # more than any disk here has free
    result = sh("mkdir workspaces/nospace", cwd=m.mnt, check=False)
    assert result.returncode != 0 and "No space left on device" in result.stderr
    result = sh('echo "create nospace" > .wsfs/control', cwd=m.mnt, check=False)
    assert result.returncode != 0 and "No space left on device" in result.stderr
    assert not (m.ws / "nospace").exists()
    assert os.listdir(m.data / "jobs") == []
    assert m.daemon_errors() == []


@pytest.mark.mount
def test_media_template_from_a_shell(mount_factory):
    m = mount_factory(config=MEDIA)
    sh('echo "create m1 template=media" > .wsfs/control', cwd=m.mnt)
    assert sh("ls workspaces/m1", cwd=m.mnt).stdout.split() == ["audio", "output", "video"]
    doc = job_doc(m, "m1")
    assert doc["template"] == "media" and doc["max_files"] == 50
    r = sh("touch workspaces/m1/temp", cwd=m.mnt, check=False)
    assert r.returncode != 0  # no temp/ in this template: nothing else lives at the root
    sh("cd workspaces/m1 && head -c 3000 /dev/urandom > audio/track1.wav && echo frame > video/f1.raw"
       " && printf 'mixed\\n' > output/mix.flac", cwd=m.mnt)
    sh("echo completed > workspaces/m1/.state", cwd=m.mnt)
    assert sh("ls workspaces/m1", cwd=m.mnt).stdout.split() == ["output", "receipt.json"]
    assert not (m.data / "jobs" / "m1" / "audio").exists()
    receipt = json.loads((m.ws / "m1" / "receipt.json").read_text())
    assert receipt["template"] == "media"
    assert receipt["outputs"] == [{"path": "output/mix.flac", "size": 6,
                                   "sha256": hashlib.sha256(b"mixed\n").hexdigest()}]
    assert m.daemon_errors() == []


@pytest.mark.mount
def test_run_with_a_template(mount_factory):
    m = mount_factory(config=MEDIA)
    result = wsfs(m, "run", "--template", "media", "--", "sh", "-c",
                  'ls; echo "out=$WSFS_OUTPUT temp=${WSFS_TEMP-unset}"')
    lines = result.stdout.splitlines()
    assert lines[:3] == ["audio", "output", "video"]
    (job,) = [j for j in (json.loads(line) for line in (m.mnt / ".wsfs" / "jobs").read_text().splitlines())]
    assert job["template"] == "media" and job["state"] == "completed"
    assert lines[3] == f"out={m.ws / job['id'] / 'output'} temp=unset"
    path = wsfs(m, "create", "m2", "--template", "media").stdout.strip()
    assert sorted(os.listdir(path)) == [".job", ".manifest", ".state", "audio", "output", "video"]
    assert m.daemon_errors() == []


@pytest.mark.mount
def test_unknown_template_from_a_shell_and_the_cli(mount_factory):
    m = mount_factory(config=MEDIA)
    result = sh('echo "create t1 template=nope" > .wsfs/control', cwd=m.mnt, check=False)
    assert result.returncode != 0 and "Invalid argument" in result.stderr
    result = wsfs(m, "create", "t2", "--template", "nope", check=False)
    assert result.returncode == 1 and "nope" in result.stderr
    result = wsfs(m, "run", "--template", "nope", "--", "true", check=False)
    assert result.returncode == 1 and "nope" in result.stderr
    assert os.listdir(m.ws) == []
    assert m.daemon_errors() == []


def test_a_hard_linked_file_counts_once_per_name_in_the_manifest_and_the_quota(wsfs_mount):
    """docs/spec.md §8: each name of a file is an entry; a change through one name is every entry's."""
    m = wsfs_mount
    sh('echo "create q quota=5K" > .wsfs/control', cwd=m.mnt)
    sh("printf x > workspaces/q/output/a && ln workspaces/q/output/a workspaces/q/temp/b", cwd=m.mnt)
    result = sh("head -c 3000 /dev/zero >> workspaces/q/output/a", cwd=m.mnt, check=False)
    assert result.returncode != 0 and "Disk quota exceeded" in result.stderr  # 2 x 3001 > 5 KiB
    sh("head -c 2000 /dev/zero >> workspaces/q/temp/b", cwd=m.mnt)
    manifest = [json.loads(line) for line in sh("cat workspaces/q/.manifest", cwd=m.mnt).stdout.splitlines()]
    assert {e["path"]: e["size"] for e in manifest} == {"output/a": 2001, "temp/b": 2001}
    assert json.loads((m.ws / "q" / ".job").read_text())["usage"] == {"bytes": 4002, "files": 2}
