"""Limits and templates (docs/spec.md §8, §9): the core's UsageMeter, then a real mount and a real shell."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import threading

import pytest
from conftest import REPO, make_core, parse_toml_config, sh

from wsfs.core.errors import BadCommandError, NoSpaceError, QuotaError
from wsfs.core.model import JobState

KIB, MIB = 1 << 10, 1 << 20


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


# -- the core: UsageMeter ------------------------------------------------------------------


def test_meter_refuses_a_change_that_would_cross_the_quota_whole(core):
    core.create_job("q", 0, 0, quota=1000)
    meter = core.usage
    meter.charge("q", 600)
    with pytest.raises(QuotaError) as info:
        meter.charge("q", 401)
    assert info.value.errno == errno.EDQUOT and "quota" in str(info.value)
    assert meter.current("q") == (600, 0)  # nothing of the refused change was counted
    meter.charge("q", 400)                # exactly up to the quota is fine
    assert meter.current("q") == (1000, 0)
    with pytest.raises(QuotaError):
        meter.charge("q", 1)
    meter.charge("q", -300)               # freeing is always allowed
    meter.charge("q", 300)
    assert meter.current("q") == (1000, 0)


def test_meter_max_files(core):
    core.create_job("mf", 0, 0, max_files=2)
    meter = core.usage
    meter.charge("mf", 0, 1)
    meter.charge("mf", 0, 1)
    with pytest.raises(QuotaError) as info:
        meter.charge("mf", 0, 1)
    assert "max_files" in str(info.value)
    meter.charge("mf", 10**12, 0)  # no byte quota: any size
    meter.charge("mf", 0, -1)
    meter.charge("mf", 0, 1)
    assert meter.current("mf") == (10**12, 2)


def test_meter_never_goes_below_zero_and_zero_means_no_limit(core):
    core.create_job("free", 0, 0)
    core.usage.charge("free", -50, -3)
    assert core.usage.current("free") == (0, 0)
    core.usage.charge("free", 10**15, 10**6)
    assert core.usage.current("free") == (10**15, 10**6)


def test_meter_starts_from_the_manifest_and_reloads_after_forget(core):
    core.create_job("m", 0, 0, quota=100)
    out = os.path.join(core.tree.data_dir, "jobs", "m", "output")
    with open(os.path.join(out, "a"), "wb") as f:
        f.write(b"x" * 70)
    core.recovery.rebuild_manifest("m")  # the manifest, not a tree walk, is where usage comes from
    assert core.usage.current("m") == (70, 1)
    with pytest.raises(QuotaError):
        core.usage.charge("m", 31)
    core.usage.charge("m", 30)
    core.usage.forget("m")
    assert core.usage.current("m") == (70, 1)  # back to the manifest's sum


def test_meter_lets_exactly_the_quota_through_under_concurrency(core):
    core.create_job("race", 0, 0, quota=500)
    ok, refused = [], []

    def writer():
        for _ in range(100):
            try:
                core.usage.charge("race", 1)
                ok.append(1)
            except QuotaError:
                refused.append(1)
    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) == 500 and len(refused) == 300
    assert core.usage.current("race") == (500, 0)


def test_limits_come_from_the_template_unless_given(tmp_path, clock):
    config = parse_toml_config('quota = "2M"\nmax_files = 9\n[templates.media]\n'
                               'areas = { audio = "scratch", output = "keep" }\nquota = "5G"\n')
    core = make_core(tmp_path / "data", clock, config)
    try:
        assert (core.create_job("a", 0, 0).quota, core.records.get("a").max_files) == (2 * MIB, 9)
        media = core.create_job("b", 0, 0, template="media")
        assert (media.quota, media.max_files) == (5 << 30, 9)
        given = core.create_job("c", 0, 0, template="media", quota=MIB, max_files=1)
        assert (given.quota, given.max_files) == (MIB, 1)
    finally:
        core.store.close()
        core.tree.close()


def test_max_jobs_and_min_free_at_creation(tmp_path, clock):
    core = make_core(tmp_path / "data", clock, parse_toml_config("max_jobs = 2\n"))
    try:
        core.create_job("one", 0, 0)
        core.create_job("two", 0, 0)
        with pytest.raises(QuotaError):
            core.create_job("three", 0, 0)
        assert core.records.get("three") is None
        core.transition("one", JobState.COMPLETED)
        core.transition("one", JobState.ARCHIVED)  # its workspace is gone: room for another
        core.create_job("three", 0, 0)
    finally:
        core.store.close()
        core.tree.close()
    core = make_core(tmp_path / "data2", clock, parse_toml_config('min_free = "1P"\n'))
    try:
        with pytest.raises(NoSpaceError) as info:
            core.create_job("big", 0, 0)
        assert info.value.errno == errno.ENOSPC
        assert core.records.get("big") is None and not os.path.exists(tmp_path / "data2" / "jobs" / "big")
    finally:
        core.store.close()
        core.tree.close()


def test_unknown_template_is_einval(core):
    with pytest.raises(BadCommandError) as info:
        core.create_job("t", 0, 0, template="nope")
    assert info.value.errno == errno.EINVAL and "nope" in str(info.value)
    assert core.records.get("t") is None


# -- through a real mount -------------------------------------------------------------------------

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


MEDIA = """
[templates.media]
areas = { audio = "scratch", video = "scratch", output = "keep" }
max_files = 50
[templates.media.retention]
failed = "3d"
"""


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
