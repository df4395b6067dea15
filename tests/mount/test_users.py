"""Several users on one mount (docs/spec.md §12): root runs it with ``--allow-other``.

An unprivileged user (``nobody``, through ``setpriv``) makes and ends its own
job, and the files it makes are its own, through the mount and on disk; it
cannot write into, end or read another user's job unless the modes let it.

The tmp dirs above the mount point are root's (0700), so the user's commands
run with their cwd already inside the mount and use relative paths.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
from conftest import NOBODY, MountedWsfs, as_nobody, sh

pytestmark = pytest.mark.mount



def owner(path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


@pytest.fixture
def shared_mount(mount_factory) -> MountedWsfs:
    m = mount_factory(allow_other=True)
    if as_nobody("true", "/").returncode != 0:
        pytest.skip("setpriv cannot switch to uid 65534 here")
    return m


def test_a_user_makes_owns_and_ends_its_own_job(shared_mount):
    m = shared_mount
    result = as_nobody("set -e; id -u; mkdir workspaces/userjob; cd workspaces/userjob; "
                       "echo data > output/f; mkdir -p temp/sub/deeper; echo t > temp/sub/deeper/t; "
                       "ln -s f output/link; mkfifo temp/fifo; ln output/f output/hard; cat output/f", cwd=m.mnt)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{NOBODY}\ndata\n"
    job, backing = m.ws / "userjob", m.data / "jobs" / "userjob"
    made = ["", "input", "output", "temp", "output/f", "output/link", "output/hard", "temp/sub",
            "temp/sub/deeper", "temp/sub/deeper/t", "temp/fifo"]
    for rel in made:
        assert (rel, owner(job / rel)) == (rel, (NOBODY, NOBODY))  # through the mount
        assert (rel, owner(backing / rel)) == (rel, (NOBODY, NOBODY))  # and on disk
    for name in (".state", ".job", ".manifest"):
        assert owner(job / name) == (NOBODY, NOBODY)
    document = json.loads((job / ".job").read_text())
    assert (document["uid"], document["gid"]) == (NOBODY, NOBODY)
    # The user ends its own job.
    result = as_nobody("echo completed > workspaces/userjob/.state && cat workspaces/userjob/.state", cwd=m.mnt)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "completed\n"
    assert not (job / "temp").exists()
    assert (job / "output" / "f").read_text() == "data\n"
    # Sealed now, for its owner too.
    result = as_nobody("echo more >> workspaces/userjob/output/f", cwd=m.mnt)
    assert result.returncode == 1 and "Read-only file system" in result.stderr
    assert m.daemon_errors() == []


def test_a_job_made_through_control_belongs_to_its_maker(shared_mount):
    m = shared_mount
    result = as_nobody("echo 'create viactl' > .wsfs/control && echo x > workspaces/viactl/input/x", cwd=m.mnt)
    assert result.returncode == 0, result.stderr
    assert owner(m.ws / "viactl") == owner(m.data / "jobs" / "viactl") == (NOBODY, NOBODY)
    assert owner(m.data / "jobs" / "viactl" / "input" / "x") == (NOBODY, NOBODY)
    assert json.loads((m.ws / "viactl" / ".job").read_text())["uid"] == NOBODY
    assert m.daemon_errors() == []


def test_a_user_cannot_write_end_or_read_roots_job(shared_mount):
    m = shared_mount
    job = m.ws / "rootjob"
    os.mkdir(job)
    assert owner(job / "output") == (0, 0)
    assert stat.S_IMODE(os.stat(job / "output").st_mode) == 0o755
    (job / "output" / "public.txt").write_text("anyone may read\n")
    os.chmod(job / "output" / "public.txt", 0o644)
    (job / "output" / "secret.txt").write_text("root only\n")
    os.chmod(job / "output" / "secret.txt", 0o600)
    refused = {
        "echo x > workspaces/rootjob/output/new": "Permission denied",
        "mkdir workspaces/rootjob/output/dir": "Permission denied",
        "echo x >> workspaces/rootjob/output/public.txt": "Permission denied",
        "rm -f workspaces/rootjob/output/public.txt": "Permission denied",
        "mv workspaces/rootjob/output/public.txt workspaces/rootjob/output/moved": "Permission denied",
        "echo completed > workspaces/rootjob/.state": "Permission denied",
        "echo 'failed boom' > workspaces/rootjob/.state": "Permission denied",
        "cat workspaces/rootjob/output/secret.txt": "Permission denied",
        "echo x > workspaces/rootjob/temp/t": "Permission denied",
    }
    for command, message in refused.items():
        result = as_nobody(command, cwd=m.mnt)
        assert (command, result.returncode) == (command, 1)
        assert message in result.stderr, (command, result.stderr)
    # What the modes allow still works.
    result = as_nobody("cat workspaces/rootjob/output/public.txt && cat workspaces/rootjob/.state", cwd=m.mnt)
    assert result.returncode == 0 and result.stdout == "anyone may read\nrunning\n"
    # Nothing changed.
    assert (job / ".state").read_text() == "running\n"
    assert sorted(os.listdir(job / "output")) == ["public.txt", "secret.txt"]
    assert os.listdir(job / "temp") == []
    assert (job / "output" / "public.txt").read_text() == "anyone may read\n"
    assert not [e for e in json.loads("[" + ",".join((m.mnt / ".wsfs" / "events").read_text().splitlines()) + "]")
                if e["kind"] != "created"]
    assert m.daemon_errors() == []


def test_a_user_cannot_resume_or_restore_roots_job(shared_mount):
    m = shared_mount
    os.mkdir(m.ws / "rj")
    sh("echo 'failed on purpose' > workspaces/rj/.state", cwd=m.mnt)
    result = as_nobody("echo 'resume rj' > .wsfs/control", cwd=m.mnt)
    assert result.returncode == 1 and "Operation not permitted" in result.stderr
    assert (m.ws / "rj" / ".state").read_text() == "failed\n"
    assert m.daemon_errors() == []


def test_device_nodes_as_on_the_disk_inert_through_nodev_nosuid(shared_mount):
    """A device node is made by a caller the kernel lets make one (root: CAP_MKNOD), as on the
    disk; nobody else gets EPERM; and through the nodev mount no device node opens."""
    m = shared_mount
    os.mkdir(m.ws / "J")
    os.chmod(m.ws / "J" / "temp", 0o777)
    os.mkdir(m.mnt / "shared" / "open", 0o777)
    os.chmod(m.mnt / "shared" / "open", 0o777)
    for where in (m.ws / "J" / "temp", m.mnt / "shared" / "open"):
        for kind in (stat.S_IFCHR, stat.S_IFBLK):
            os.mknod(where / "dev", kind | 0o666, os.makedev(1, 3))
            assert stat.S_IFMT(os.lstat(where / "dev").st_mode) == kind
            with pytest.raises(PermissionError):
                open(where / "dev", "rb")
            os.unlink(where / "dev")
        result = as_nobody("mknod null c 1 3", where)
        assert result.returncode == 1 and "Operation not permitted" in result.stderr
        assert not os.path.lexists(where / "null")
    with open("/proc/self/mounts") as f:
        entry = [line.split() for line in f if line.split()[1] == str(m.mnt)]
    assert len(entry) == 1
    options = entry[0][3].split(",")
    assert {"nodev", "nosuid", "default_permissions", "allow_other"} <= set(options)
    assert entry[0][2] == "fuse.wsfs"
    assert m.daemon_errors() == []


@pytest.mark.parametrize("killpriv", ["1", "0"])
def test_a_change_by_another_user_drops_set_id_bits_as_on_the_disk(mount_factory, killpriv):
    """With FUSE_CAP_HANDLE_KILLPRIV_V2 (the default) the daemon drops set-id bits itself, and the
    kernel asks no getxattr before each write; WSFS_KILLPRIV=0 leaves it to the kernel.  Either
    way a write, a truncate or an O_TRUNC by an unprivileged user drops them, and root's own write
    keeps them; with the daemon doing it, exactly as on the bare disk."""
    m = mount_factory(allow_other=True, env={"WSFS_KILLPRIV": killpriv})
    if as_nobody("true", "/").returncode != 0:
        pytest.skip("setpriv cannot switch to uid 65534 here")
    native = m.base / "native"
    native.mkdir()
    os.chmod(native, 0o1777)

    def scenario(d):
        for name, mode in (("w", 0o6777), ("t", 0o6777), ("o", 0o6777), ("g", 0o2766), ("h", 0o2766),
                           ("r", 0o6777)):
            (d / name).write_bytes(b"x")
            os.chmod(d / name, mode)
        os.chown(d / "h", 0, NOBODY)  # set-group-ID, not group-executable, of the writer's own group
        result = as_nobody("echo more >> w && truncate -s 0 t && echo new > o && echo more >> g "
                           "&& echo more >> h", cwd=d)
        assert result.returncode == 0, result.stderr
        with open(d / "r", "ab") as f:  # root has CAP_FSETID: its write keeps them
            f.write(b"root")
        return {name: oct(stat.S_IMODE(os.stat(d / name).st_mode)) for name in "wtoghr"}
    on_disk = scenario(native)
    assert on_disk == {"w": "0o777", "t": "0o777", "o": "0o777", "g": "0o766", "h": "0o2766", "r": "0o6777"}
    through = scenario(m.mnt / "shared")
    if killpriv == "0":
        # The kernel's own FUSE rule (fuse_setattr) keeps a set-group-ID bit without group execute
        # whoever writes; the VFS's (setattr_should_drop_sgid, the disk's) drops it for a writer
        # outside the file's group.  The daemon follows the disk's.
        assert through == {**on_disk, "g": "0o2766"}
        return
    assert through == on_disk
    assert {name: oct(stat.S_IMODE(os.stat(m.data / "shared" / name).st_mode)) for name in "wtoghr"} == on_disk
