"""Kernel passthrough (docs/spec.md §8a): the kernel reads and writes a job's files
itself, and every promise that used to sit on the daemon's write path still holds: receipts,
quotas, the seal of a file still open for writing, recovery after kill -9.

These need libfuse >= 3.17 (``make`` builds it into .venv when the system's is older, see
tools/build-libfuse.sh), a kernel >= 6.9 and root; elsewhere they skip, and with
``WSFS_REQUIRE_PASSTHROUGH=1`` (CI) they fail instead.
"""

from __future__ import annotations

import errno
import faulthandler
import hashlib
import json
import mmap
import os
import re
import signal
import subprocess

import psutil
import pytest
from conftest import errno_of, immutable, passthrough_of, sh, wait_hashed, wait_until


@pytest.fixture
def pt(mount_factory):
    m = mount_factory()
    mode = passthrough_of(m.mnt)
    if mode != "on":
        why = f"kernel passthrough is {mode} here (libfuse >= 3.17, kernel >= 6.9, root, ext4-like data dir)"
        if os.environ.get("WSFS_REQUIRE_PASSTHROUGH") == "1":
            pytest.fail(f"WSFS_REQUIRE_PASSTHROUGH=1 but {why}")
        pytest.skip(why)
    return m


def fuse_requests(m, op: str) -> int:
    """How many FUSE requests of ``op`` the daemon served (``.wsfs/metrics``)."""
    text = (m.mnt / ".wsfs" / "metrics").read_text()
    found = re.search(rf'^wsfs_fuse_requests_total\{{op="{op}"\}} ([0-9.e+]+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


def daemon_wrote(m) -> int:
    """Bytes the daemon has written with write(2) and friends (to the disk and to /dev/fuse)."""
    return psutil.Process(m.proc.pid).io_counters().write_chars


def test_writes_and_reads_bypass_the_daemon_and_the_receipt_is_right(pt):
    m = pt
    sh("mkdir workspaces/p", cwd=m.mnt)
    job = m.ws / "p"
    writes, written = fuse_requests(m, "write"), daemon_wrote(m)
    sh("echo hello > output/hello.txt && head -c 3000000 /dev/urandom > output/blob "
       "&& cat output/hello.txt output/blob > /dev/null", cwd=job)
    assert sh("cat output/hello.txt", cwd=job).stdout == "hello\n"
    # The kernel moved the data: no write request, and the daemon wrote neither the 3 MB to the
    # disk nor the 3 MB read back to /dev/fuse (its own reads are the hasher's, so they do not tell).
    assert fuse_requests(m, "write") == writes
    assert daemon_wrote(m) - written < 1_000_000
    blob = (job / "output" / "blob").read_bytes()
    assert (m.data / "jobs" / "p" / "output" / "blob").read_bytes() == blob

    # Hashed after its close, in the background: in .manifest soon, and in the receipt at the end.
    assert wait_hashed(job, "output/blob")["sha256"] == hashlib.sha256(blob).hexdigest()
    # A file renamed after its close (how git, rsync and editors write) keeps its name's hash.
    sh("head -c 2000000 /dev/urandom > output/.tmp && mv output/.tmp output/final", cwd=job)
    final = (job / "output" / "final").read_bytes()
    assert wait_hashed(job, "output/final")["sha256"] == hashlib.sha256(final).hexdigest()
    assert sh("echo completed > .state", cwd=job).returncode == 0
    outputs = {o["path"]: o["sha256"] for o in json.loads((job / "receipt.json").read_text())["outputs"]}
    assert outputs == {"output/hello.txt": hashlib.sha256(b"hello\n").hexdigest(),
                       "output/blob": hashlib.sha256(blob).hexdigest(),
                       "output/final": hashlib.sha256(final).hexdigest()}
    # A sealed job's files are read through passthrough too.
    written = daemon_wrote(m)
    assert (job / "output" / "blob").read_bytes() == blob
    assert daemon_wrote(m) - written < 1_000_000


def test_a_job_with_a_quota_is_written_through_the_daemon_and_stops_at_its_quota(pt):
    m = pt
    sh('echo "create q quota=1M" > .wsfs/control', cwd=m.mnt)
    writes = fuse_requests(m, "write")
    result = sh("dd if=/dev/zero of=output/big bs=64k count=32", cwd=m.ws / "q", check=False)
    assert result.returncode != 0 and "Disk quota exceeded" in result.stderr
    assert (m.ws / "q" / "output" / "big").stat().st_size == 1 << 20  # nothing past the quota
    assert fuse_requests(m, "write") > writes
    # A job without one, on the same mount: no write reaches the daemon.
    sh("mkdir workspaces/free && dd if=/dev/zero of=workspaces/free/output/big bs=64k count=32", cwd=m.mnt)
    after = fuse_requests(m, "write")
    sh("dd if=/dev/zero of=workspaces/free/output/big2 bs=64k count=32", cwd=m.mnt)
    assert fuse_requests(m, "write") == after


def test_a_writer_still_open_at_the_seal_is_frozen_until_its_last_close(pt):
    m = pt
    sh("mkdir workspaces/s", cwd=m.mnt)
    job, backing = m.ws / "s", m.data / "jobs" / "s"
    log = open(job / "output" / "log", "w")  # held open across the seal
    mapped_fd = os.open(job / "output" / "mapped", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        log.write("before\n")
        log.flush()
        os.ftruncate(mapped_fd, 4096)
        mapped = mmap.mmap(mapped_fd, 4096)
        mapped[:6] = b"mapped"
        assert sh("echo completed > .state", cwd=job).returncode == 0
        assert immutable(backing / "output" / "log") and immutable(backing / "output" / "mapped")

        with pytest.raises(OSError) as refused:
            log.write("after\n")
            log.flush()
        assert refused.value.errno == errno.EPERM
        child = os.fork()
        if child == 0:  # a store into a page the seal wrote back faults
            faulthandler.disable()  # pytest's would report the SIGBUS this test expects
            mapped[100:103] = b"late"[:3]
            os._exit(0)
        _pid, status = os.waitpid(child, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGBUS
        mapped.close()
    finally:
        with pytest.raises(OSError):
            log.close()  # its buffered "after\n" is refused again
        os.close(mapped_fd)
    wait_until(lambda: not immutable(backing / "output" / "log") and not immutable(backing / "output" / "mapped"),
               "the flags cleared at the last close", timeout=10)
    assert (job / "output" / "log").read_text() == "before\n"
    outputs = {o["path"]: o["sha256"] for o in json.loads((job / "receipt.json").read_text())["outputs"]}
    assert outputs["output/log"] == hashlib.sha256(b"before\n").hexdigest()
    assert outputs["output/mapped"] == hashlib.sha256((job / "output" / "mapped").read_bytes()).hexdigest()
    assert (job / "output" / "mapped").read_bytes()[:6] == b"mapped"
    # Sealed all the same: a new open for writing is the daemon's to refuse.
    assert "Read-only file system" in sh("echo x >> output/log", cwd=job, check=False).stderr


def test_resume_thaws_a_frozen_writer(pt):
    m = pt
    sh("mkdir workspaces/r", cwd=m.mnt)
    job = m.ws / "r"
    fd = os.open(job / "output" / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, b"one\n")
        sh("echo failed > .state", cwd=job)
        assert errno_of(os.write, fd, b"no\n") == errno.EPERM
        sh('echo "resume r" > .wsfs/control', cwd=m.mnt)
        assert (job / ".state").read_text() == "running\n"
        os.write(fd, b"two\n")  # running again: the same descriptor writes
    finally:
        os.close(fd)
    assert (job / "output" / "log").read_text() == "one\ntwo\n"
    assert not immutable(m.data / "jobs" / "r" / "output" / "log")


def test_a_frozen_file_is_thawed_by_the_next_mount_after_kill_9(pt):
    m = pt
    sh("mkdir workspaces/k", cwd=m.mnt)
    writer = subprocess.Popen(["sh", "-c", "exec 3>>output/log; echo one >&3; sleep 60"], cwd=m.ws / "k")
    try:
        wait_until(lambda: (m.ws / "k" / "output" / "log").read_bytes() == b"one\n", "the writer wrote",
                   tolerate=(FileNotFoundError,))
        sh("echo completed > .state", cwd=m.ws / "k")
        assert immutable(m.data / "jobs" / "k" / "output" / "log")
        m.kill9()
    finally:
        writer.kill()
        writer.wait()
    assert immutable(m.data / "jobs" / "k" / "output" / "log")  # nobody left to clear it
    m.start()
    assert not immutable(m.data / "jobs" / "k" / "output" / "log")
    assert sh("cat workspaces/k/output/log", cwd=m.mnt).stdout == "one\n"


def test_wsfs_passthrough_0_serves_every_read_and_write(mount_factory):
    m = mount_factory(env={"WSFS_PASSTHROUGH": "0"})
    assert passthrough_of(m.mnt) == "off"
    writes = fuse_requests(m, "write")
    sh("mkdir workspaces/s && head -c 300000 /dev/urandom > workspaces/s/output/f "
       "&& cat workspaces/s/output/f > /dev/null", cwd=m.mnt)
    assert fuse_requests(m, "write") > writes
    data = (m.ws / "s" / "output" / "f").read_bytes()
    assert wait_hashed(m.ws / "s", "output/f")["sha256"] == hashlib.sha256(data).hexdigest()
