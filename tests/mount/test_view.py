"""The view a user sees through a real mount (docs/spec.md §3, §10, §12): top level, jobs, control files.

Every refusal is checked by its errno, from Python and, where a user would
meet it there, from a real shell.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat

import pytest
from conftest import MountedWsfs, errno_of, events, sh

import wsfs

pytestmark = pytest.mark.mount

JOB_ENTRIES = [".job", ".manifest", ".state", "input", "output", "temp"]

_LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (\w+) ")


def daemon_problems(m: MountedWsfs) -> list[str]:
    """``m.daemon_errors()`` without mfusepy's noise.

    At debug level mfusepy logs every errno it returns other than ENOENT from
    getattr (EPERM, EEXIST, EINVAL ...) as a DEBUG line *with a traceback*;
    those are answers, not errors.  Any other traceback, and every ERROR or
    CRITICAL line, counts.
    """
    problems, previous = [], ""
    for line in m.log_text().splitlines():
        record = _LOG_RECORD.match(line)
        if record and record.group(1) in ("ERROR", "CRITICAL"):
            problems.append(line)
        elif line.startswith("Traceback"):
            before = _LOG_RECORD.match(previous)
            if not (before and before.group(1) == "DEBUG" and " fuse[" in previous):
                problems.append(line)
        previous = line
    return problems


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# -- top level and .wsfs ----------------------------------------------------------------


def test_top_level_lists_exactly_the_four_entries(wsfs_mount):
    m = wsfs_mount
    assert sorted(os.listdir(m.mnt)) == [".wsfs", "quarantine", "shared", "workspaces"]
    for name in (".wsfs", "quarantine", "shared", "workspaces"):
        assert stat.S_ISDIR(os.stat(m.mnt / name).st_mode)
    assert os.listdir(m.ws) == [] and os.listdir(m.mnt / "quarantine") == []
    assert {"control", "events", "status"} <= set(os.listdir(m.mnt / ".wsfs"))
    assert errno_of(os.stat, m.mnt / "other") == errno.ENOENT
    # Refused (today with ENOENT: nothing can live there), and nothing is made.
    assert errno_of(os.mkdir, m.mnt / "other") in (errno.EPERM, errno.EACCES, errno.ENOENT)
    assert errno_of(os.open, m.mnt / "other", os.O_CREAT | os.O_WRONLY, 0o644) in (errno.EPERM, errno.EACCES,
                                                                                   errno.ENOENT)
    assert sorted(os.listdir(m.mnt)) == [".wsfs", "quarantine", "shared", "workspaces"]
    assert daemon_problems(m) == []


def test_status_is_json_with_version_jobs_and_free_space(wsfs_mount):
    m = wsfs_mount
    os.mkdir(m.ws / "J")
    status = json.loads(read(m.mnt / ".wsfs" / "status"))
    assert status["version"] == wsfs.__version__
    assert status["jobs"] == {"running": 1}
    data = os.statvfs(m.data)
    assert status["total_bytes"] == data.f_blocks * data.f_frsize
    assert 0 < status["free_bytes"] <= status["total_bytes"]
    assert status["pid"] == m.proc.pid
    from wsfs.fuse import binding

    # kernel passthrough: with libfuse >= 3.17 (tools/build-libfuse.sh), run as root, on ext4 (freezable)
    passthrough = "on" if binding.LIBFUSE_VERSION >= (3, 17) and os.geteuid() == 0 else "off"
    assert status["fuse"] == {"libfuse": binding.libfuse_version(), "passthrough": passthrough,
                              "readdirplus": True, "posix_acl": status["fuse"]["posix_acl"]}
    assert status["fuse"]["libfuse"].startswith(f"{binding.LIBFUSE_VERSION[0]}.{binding.LIBFUSE_VERSION[1]}.")
    # Through a shell tool, as a user reads it.
    assert json.loads(sh("python3 -m json.tool .wsfs/status", cwd=m.mnt).stdout)["version"] == wsfs.__version__
    assert daemon_problems(m) == []


def test_events_are_json_lines_with_a_created_event(wsfs_mount):
    m = wsfs_mount
    os.mkdir(m.ws / "evjob")
    created = [e for e in events(m) if e["kind"] == "created" and e.get("job") == "evjob"]
    assert len(created) == 1 and created[0]["uid"] == 0
    sh("echo 'create viactl' > .wsfs/control", cwd=m.mnt)
    assert [e["job"] for e in events(m) if e["kind"] == "created"] == ["evjob", "viactl"]
    seqs = [e["seq"] for e in events(m)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert daemon_problems(m) == []


def test_virtual_files_report_their_true_size_and_honour_offsets(wsfs_mount):
    m = wsfs_mount
    job = m.ws / "sized"
    os.mkdir(job)
    (job / "output" / "a.txt").write_text("some output\n")
    (job / "temp" / "b").write_bytes(b"x" * 1000)
    paths = [job / ".state", job / ".job", job / ".manifest", m.mnt / ".wsfs" / "events", m.mnt / ".wsfs" / "jobs"]
    for path in paths:
        content = read(path)
        assert len(content) > 0, path
        assert os.stat(path).st_size == len(content), path
        fd = os.open(path, os.O_RDONLY)
        try:
            assert os.fstat(fd).st_size == len(content), path
            for offset in (0, 1, 3, len(content) // 2, len(content) - 1, len(content), len(content) + 10):
                assert os.pread(fd, 7, offset) == content[offset:offset + 7], (path, offset)
            assert os.lseek(fd, 0, os.SEEK_END) == len(content)
        finally:
            os.close(fd)
    assert read(job / ".state") == b"running\n"
    manifest = [json.loads(line) for line in read(job / ".manifest").decode().splitlines()]
    assert [(e["path"], e["size"]) for e in manifest] == [("output/a.txt", 12), ("temp/b", 1000)]
    # The shell tools a user reaches for.
    job_bytes = read(job / ".job")
    assert sh("head -c 3 sized/.job", cwd=m.ws).stdout == job_bytes[:3].decode()
    assert sh("tail -c 4 sized/.job", cwd=m.ws).stdout == job_bytes[-4:].decode()
    assert sh("tail -c 4 sized/.state", cwd=m.ws).stdout == "ing\n"
    assert sh("cat sized/.state", cwd=m.ws).stdout == "running\n"
    assert json.loads(sh("python3 -m json.tool sized/.job", cwd=m.ws).stdout)["id"] == "sized"
    if shutil.which("jq"):
        assert sh("jq -r .state sized/.job", cwd=m.ws).stdout == "running\n"
        assert sh("jq -r .path sized/.manifest", cwd=m.ws).stdout == "output/a.txt\ntemp/b\n"
    status = m.mnt / ".wsfs" / "status"
    assert abs(os.stat(status).st_size - len(read(status))) < 16  # its uptime and free space move
    assert daemon_problems(m) == []


# -- jobs -------------------------------------------------------------------------------------


def test_mkdir_makes_the_areas_and_control_files(wsfs_mount):
    m = wsfs_mount
    os.mkdir(m.ws / "J")
    assert os.listdir(m.ws) == ["J"]
    assert sorted(os.listdir(m.ws / "J")) == JOB_ENTRIES
    for area in ("input", "output", "temp"):
        assert stat.S_ISDIR(os.stat(m.ws / "J" / area).st_mode)
        assert os.listdir(m.ws / "J" / area) == []
    for name in (".state", ".job", ".manifest"):
        assert stat.S_ISREG(os.stat(m.ws / "J" / name).st_mode)
    document = json.loads(read(m.ws / "J" / ".job"))
    assert (document["id"], document["state"], document["uid"]) == ("J", "running", 0)
    assert read(m.ws / "J" / ".manifest") == b""
    assert sorted(os.listdir(m.data / "jobs" / "J")) == ["input", "output", "temp"]
    assert daemon_problems(m) == []


BAD_IDS = [".hidden", "a b", "x" * 129, "-x", "_under", "tab\tid", "\u00e9t\u00e9", "..x"]


def test_bad_job_ids_are_einval(wsfs_mount):
    m = wsfs_mount
    for bad in BAD_IDS:
        assert (bad, errno_of(os.mkdir, m.ws / bad)) == (bad, errno.EINVAL)
    result = sh("mkdir workspaces/-x", cwd=m.mnt, check=False)
    assert result.returncode == 1 and "Invalid argument" in result.stderr
    assert os.listdir(m.ws) == []
    assert os.listdir(m.data / "jobs") == []
    assert json.loads(read(m.mnt / ".wsfs" / "status"))["jobs"] == {}
    assert daemon_problems(m) == []


def test_longest_job_id_is_fine(wsfs_mount):
    m = wsfs_mount
    good = "A" + "b" * 127
    os.mkdir(m.ws / good)
    assert os.listdir(m.ws) == [good]
    assert sorted(os.listdir(m.ws / good)) == JOB_ENTRIES


def test_a_used_id_is_eexist_even_after_archiving(wsfs_mount):
    m = wsfs_mount
    os.mkdir(m.ws / "once")
    assert errno_of(os.mkdir, m.ws / "once") == errno.EEXIST
    sh("echo completed > workspaces/once/.state && echo archived > workspaces/once/.state", cwd=m.mnt)
    # A fresh mount: no dentry the kernel cached for "once" can answer the mkdir in the daemon's place.
    m.restart()
    assert os.listdir(m.ws) == [] and not (m.ws / "once").exists()
    assert errno_of(os.mkdir, m.ws / "once") == errno.EEXIST
    result = sh("echo 'create once' > .wsfs/control", cwd=m.mnt, check=False)
    assert result.returncode == 1 and "File exists" in result.stderr
    assert os.listdir(m.ws) == [] and os.listdir(m.data / "jobs") == []
    record = json.loads(read(m.mnt / ".wsfs" / "jobs"))
    assert (record["id"], record["state"]) == ("once", "archived")
    assert daemon_problems(m) == []


def test_nothing_but_areas_at_a_jobs_root(wsfs_mount):
    m = wsfs_mount
    job = m.ws / "J"
    os.mkdir(job)
    (job / "output" / "f").write_bytes(b"f")
    assert errno_of(os.open, job / "stray", os.O_CREAT | os.O_WRONLY, 0o644) == errno.EPERM
    assert errno_of(os.mkdir, job / "extra") == errno.EPERM
    assert errno_of(os.symlink, "output", job / "link") == errno.EPERM
    assert errno_of(os.mkfifo, job / "fifo") == errno.EPERM
    assert errno_of(os.link, job / "output" / "f", job / "hard") == errno.EPERM
    assert errno_of(os.rename, job / "output" / "f", job / "moved") == errno.EPERM
    assert errno_of(os.rename, job / "output", job / "renamed") == errno.EPERM
    result = sh("echo hi > workspaces/J/stray", cwd=m.mnt, check=False)
    assert result.returncode == 1 and "Operation not permitted" in result.stderr
    assert errno_of(os.rmdir, job) == errno.EPERM
    assert errno_of(os.rmdir, job / "temp") == errno.EPERM  # an empty area stays too
    assert errno_of(os.unlink, job / ".state") == errno.EPERM
    assert errno_of(os.unlink, job / ".job") == errno.EPERM
    assert errno_of(os.rename, job / ".state", job / "output" / "s") == errno.EPERM
    # a job keeps its id, and jobs are made in workspaces/ only
    result = sh("mv workspaces/J workspaces/K; mkdir quarantine/Q", cwd=m.mnt, check=False)
    assert result.stderr.count("Operation not permitted") == 2, result.stderr
    assert sorted(os.listdir(m.ws)) == ["J"] and os.listdir(m.mnt / "quarantine") == []
    assert sorted(os.listdir(job)) == JOB_ENTRIES
    assert sorted(os.listdir(m.data / "jobs" / "J")) == ["input", "output", "temp"]
    assert read(job / ".state") == b"running\n"
    assert daemon_problems(m) == []


def test_job_and_manifest_files_refuse_writes(wsfs_mount):
    m = wsfs_mount
    job = m.ws / "J"
    os.mkdir(job)
    before = read(job / ".job")
    refusals = (errno.EACCES, errno.EPERM, errno.EROFS)
    for name in (".job", ".manifest"):
        assert errno_of(os.open, job / name, os.O_WRONLY) in refusals
        assert errno_of(os.open, job / name, os.O_RDWR) in refusals
        assert errno_of(os.truncate, job / name, 0) in refusals
        result = sh(f"echo '{{}}' > workspaces/J/{name}", cwd=m.mnt, check=False)
        assert result.returncode == 1
    assert read(job / ".job") == before
    assert daemon_problems(m) == []


# -- .wsfs/control -------------------------------------------------------------------------------


def test_create_through_control_is_visible_at_once(wsfs_mount):
    m = wsfs_mount
    assert not (m.ws / "J2").exists()  # looked up (and missed) before it exists
    sh('echo "create J2" > .wsfs/control', cwd=m.mnt)
    assert (m.ws / "J2").is_dir()
    assert sorted(os.listdir(m.ws / "J2")) == JOB_ENTRIES
    assert sh("cat workspaces/J2/.state", cwd=m.mnt).stdout == "running\n"
    assert daemon_problems(m) == []


BAD_CONTROL_COMMANDS = ["create .bad", "create a/b", "create", "create J3 template=nope", "create J3 colour=blue",
                        "create J3 quota=lots", "frobnicate J3"]


def test_bad_control_commands_show_an_error_and_make_nothing(wsfs_mount):
    m = wsfs_mount
    for command in BAD_CONTROL_COMMANDS:
        result = sh(f"echo '{command}' > .wsfs/control", cwd=m.mnt, check=False)
        assert (command, result.returncode) == (command, 1)
        assert "Invalid argument" in result.stderr, command
    assert os.listdir(m.ws) == []
    assert os.listdir(m.data / "jobs") == []
    rejected = [e for e in events(m) if e["kind"] == "rejected"]
    assert [e["command"] for e in rejected] == BAD_CONTROL_COMMANDS
    assert {e["via"] for e in rejected} == {"control"}
    assert not [e for e in events(m) if e["kind"] == "created"]
    assert daemon_problems(m) == []


def test_control_is_not_readable(wsfs_mount):
    m = wsfs_mount
    control = m.mnt / ".wsfs" / "control"
    assert errno_of(read, control) == errno.EACCES
    try:
        fd = os.open(control, os.O_RDWR)  # root passes the mode bits: then it must read nothing
    except PermissionError:
        pass
    else:
        try:
            assert os.read(fd, 100) == b""
        finally:
            os.close(fd)
    result = sh("cat .wsfs/control", cwd=m.mnt, check=False)
    assert result.returncode == 1 and "Permission denied" in result.stderr
    assert stat.S_IMODE(os.stat(control).st_mode) & 0o444 == 0
    for name in ("status", "events"):
        assert errno_of(os.open, m.mnt / ".wsfs" / name, os.O_WRONLY) == errno.EACCES
    assert daemon_problems(m) == []


# -- names --------------------------------------------------------------------------------------


def test_names_of_255_bytes_work_and_256_are_enametoolong(wsfs_mount):
    m = wsfs_mount
    os.mkdir(m.ws / "J")
    os.mkdir(m.mnt / "shared" / "s")
    longest = "n" * 251 + ".txt"
    multibyte = "é" * 127 + "x"  # 255 bytes in UTF-8
    too_long = "n" * 252 + ".txt"
    assert len(longest.encode()) == len(multibyte.encode()) == 255 and len(too_long.encode()) == 256
    for where in (m.ws / "J" / "output", m.ws / "J" / "temp", m.mnt / "shared" / "s"):
        for name in (longest, multibyte):
            (where / name).write_bytes(name.encode())
            assert read(where / name) == name.encode()
            os.mkdir(where / (name[:-1] + "d"))
        assert sorted(os.listdir(where)) == sorted([longest, multibyte, longest[:-1] + "d", multibyte[:-1] + "d"])
        assert errno_of(os.open, where / too_long, os.O_CREAT | os.O_WRONLY, 0o644) == errno.ENAMETOOLONG
        assert errno_of(os.mkdir, where / too_long) == errno.ENAMETOOLONG
        assert errno_of(os.stat, where / too_long) == errno.ENAMETOOLONG
        assert errno_of(os.rename, where / longest, where / too_long) == errno.ENAMETOOLONG
        assert errno_of(os.symlink, "x", where / too_long) == errno.ENAMETOOLONG
        result = sh(f"echo x > {too_long}", cwd=where, check=False)
        assert result.returncode == 1 and "File name too long" in result.stderr
    assert daemon_problems(m) == []
