"""Sharing a workspace with users and groups: two users on one root-run ``--allow-other`` mount.

Alice (uid 65534) owns the jobs; Bob (uid 65533) is shared with, by name or through a group
(4242).  The grants are POSIX ACLs the kernel enforces (wsfs.sharing), so every check here is
a real shell's ``cat`` or ``echo`` as that user, allowed or refused by the kernel.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import MountedWsfs, as_user, sh, wsfs_cli

pytestmark = pytest.mark.mount

ALICE, BOB, TEAM = 65534, 65533, 4242


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def denied(result: subprocess.CompletedProcess, why: str = "Permission denied") -> None:
    assert result.returncode != 0 and why in result.stderr, (result.stdout, result.stderr)


def listed(m, uid, groups=()) -> set[str]:
    return {json.loads(line)["id"] for line in ok(as_user(uid, "cat .wsfs/jobs", m.mnt, groups)).splitlines()}


@pytest.fixture
def alices_job(mount_factory) -> MountedWsfs:
    m = mount_factory(allow_other=True)
    ok(as_user(ALICE, "umask 077 && mkdir workspaces/sim && echo result > workspaces/sim/output/r.txt "
                      "&& mkdir workspaces/sim/output/frames && echo f1 > workspaces/sim/output/frames/1", m.mnt))
    denied(as_user(BOB, "cat workspaces/sim/output/r.txt", m.mnt))
    return m


def test_a_read_share_lets_bob_read_now_and_later_but_change_nothing(alices_job):
    m = alices_job
    ok(as_user(ALICE, 'echo "share sim u:65533 r" > .wsfs/control', m.mnt))
    assert ok(as_user(BOB, "cat workspaces/sim/output/r.txt workspaces/sim/output/frames/1", m.mnt)) == "result\nf1\n"
    assert json.loads(ok(as_user(BOB, "cat workspaces/sim/.job", m.mnt)))["shares"] == {"u:65533": "r"}
    assert ok(as_user(BOB, "cat workspaces/sim/.state", m.mnt)) == "running\n"
    assert "sim" in listed(m, BOB)
    # What Alice makes later, with her umask 077, is shared too (the directories' default ACLs).
    ok(as_user(ALICE, "umask 077 && echo later > workspaces/sim/output/frames/2 && mkdir workspaces/sim/output/new "
                      "&& echo deep > workspaces/sim/output/new/x", m.mnt))
    assert ok(as_user(BOB, "cat workspaces/sim/output/frames/2 workspaces/sim/output/new/x", m.mnt)) == "later\ndeep\n"
    # Read only: no write, no new file, no removal, and the job is not Bob's to end or share.
    denied(as_user(BOB, "echo x >> workspaces/sim/output/r.txt", m.mnt))
    denied(as_user(BOB, "echo x > workspaces/sim/output/bob.txt", m.mnt))
    denied(as_user(BOB, "rm workspaces/sim/output/frames/1", m.mnt))
    denied(as_user(BOB, "echo completed > workspaces/sim/.state", m.mnt))
    denied(as_user(BOB, 'echo "share sim u:65533 rw" > .wsfs/control', m.mnt), "Operation not permitted")
    denied(as_user(BOB, 'echo "unshare sim u:65533" > .wsfs/control', m.mnt), "Operation not permitted")
    assert (m.ws / "sim" / "output" / "r.txt").read_text() == "result\n"
    kinds = [json.loads(line)["kind"] for line in (m.mnt / ".wsfs" / "events").read_text().splitlines()]
    assert kinds.count("shared") == 1 and kinds.count("rejected") == 2
    # A new file takes its directory's default ACL, not the umask (POSIX): its group bits show the
    # mask (rw-, Alice's named entry), while its owning group and others still get nothing.
    assert oct((m.ws / "sim" / "output" / "frames" / "2").stat().st_mode & 0o777) == "0o660"
    denied(as_user(4343, "cat workspaces/sim/output/frames/2", m.mnt, groups=(ALICE,)))


def test_a_write_share_lets_bob_work_in_the_job_but_not_end_it(alices_job):
    m = alices_job
    ok(as_user(ALICE, 'echo "share sim u:65533 rw" > .wsfs/control', m.mnt))
    ok(as_user(BOB, "echo more >> workspaces/sim/output/r.txt && echo bob > workspaces/sim/output/bob.txt "
                    "&& mkdir workspaces/sim/output/bobdir && echo b > workspaces/sim/output/bobdir/b", m.mnt))
    # Bob's files stay Alice's to use (the default ACLs name her too).
    ok(as_user(ALICE, "echo alice >> workspaces/sim/output/bob.txt && echo a > workspaces/sim/output/bobdir/a", m.mnt))
    assert (m.ws / "sim" / "output" / "bob.txt").read_text() == "bob\nalice\n"
    usage = json.loads((m.ws / "sim" / ".job").read_text())["usage"]
    assert usage["files"] == 5  # r.txt, frames/1, bob.txt, bobdir/b, bobdir/a: the job's, whoever wrote them
    denied(as_user(BOB, "echo completed > workspaces/sim/.state", m.mnt))
    denied(as_user(BOB, "echo archived > workspaces/sim/.state", m.mnt))
    ok(as_user(ALICE, "echo completed > workspaces/sim/.state", m.mnt))
    denied(as_user(BOB, 'echo "resume sim" > .wsfs/control', m.mnt), "Operation not permitted")
    # Ended: Bob still reads the results, and writes nothing (sealed).
    assert ok(as_user(BOB, "cat workspaces/sim/output/bobdir/b", m.mnt)) == "b\n"
    denied(as_user(BOB, "echo x >> workspaces/sim/output/bob.txt", m.mnt), "Read-only file system")
    receipt = json.loads(ok(as_user(BOB, "cat workspaces/sim/receipt.json", m.mnt)))
    assert "output/bob.txt" in [o["path"] for o in receipt["outputs"]]


def test_a_group_share_and_unshare(alices_job):
    m = alices_job
    ok(as_user(ALICE, f'echo "share sim g:{TEAM} r" > .wsfs/control', m.mnt))
    assert ok(as_user(BOB, "cat workspaces/sim/output/r.txt", m.mnt, groups=(TEAM,))) == "result\n"
    denied(as_user(BOB, "cat workspaces/sim/output/r.txt", m.mnt))  # not in the group
    assert "sim" in listed(m, BOB, (TEAM,)) and "sim" not in listed(m, BOB)
    ok(as_user(ALICE, f'echo "unshare sim g:{TEAM}" > .wsfs/control', m.mnt))
    denied(as_user(BOB, "cat workspaces/sim/output/r.txt", m.mnt, groups=(TEAM,)))
    denied(as_user(BOB, "cat workspaces/sim/.job", m.mnt, groups=(TEAM,)))
    assert "sim" not in listed(m, BOB, (TEAM,))
    assert json.loads((m.ws / "sim" / ".job").read_text())["shares"] == {}
    # Nothing is left of the grant on disk: Alice's files are as she made them.
    out = subprocess.run(["getfacl", "-R", "-p", str(m.ws / "sim" / "output")], capture_output=True, text=True)
    assert out.returncode == 0 and str(TEAM) not in out.stdout and "default:" not in out.stdout, out.stdout


def test_the_cli_shares_lists_and_unshares_and_bad_requests_change_nothing(alices_job):
    m = alices_job
    r = wsfs_cli("share", "sim", str(BOB), "--write", "--mount", str(m.mnt))
    assert r.returncode == 0, r.stderr
    r = wsfs_cli("share", "sim", f"@{TEAM}", "--mount", str(m.mnt))
    assert r.returncode == 0, r.stderr
    r = wsfs_cli("share", "sim", "--list", "--mount", str(m.mnt))
    assert r.returncode == 0 and "read-write" in r.stdout and "read-only" in r.stdout, r.stdout
    r = wsfs_cli("show", "sim", "--mount", str(m.mnt))
    assert r.stdout.count("shared") == 2, r.stdout
    for bad in ("share sim x:1 r", "share sim u:abc r", "share sim u:65533 rwx", "unshare sim u:1",
                "share sim u:65534 r", "share nosuch u:1 r"):
        r = subprocess.run(["bash", "-c", f'echo "{bad}" > .wsfs/control'], cwd=m.mnt, capture_output=True, text=True)
        assert r.returncode != 0, bad
    r = wsfs_cli("share", "sim", "no-such-user-here", "--mount", str(m.mnt))
    assert r.returncode != 0 and "no user named" in r.stderr
    assert json.loads((m.ws / "sim" / ".job").read_text())["shares"] == {f"u:{BOB}": "rw", f"g:{TEAM}": "r"}
    r = wsfs_cli("unshare", "sim", str(BOB), "--mount", str(m.mnt))
    assert r.returncode == 0, r.stderr
    denied(as_user(BOB, "cat workspaces/sim/output/r.txt", m.mnt))
    assert m.daemon_errors() == []


def test_a_dropped_scratch_area_stays_shared(alices_job):
    m = alices_job
    ok(as_user(ALICE, 'echo "share sim u:65533 rw" > .wsfs/control && echo t > workspaces/sim/temp/t '
                      '&& echo "drop temp" > workspaces/sim/.state', m.mnt))
    ok(as_user(BOB, "echo again > workspaces/sim/temp/again", m.mnt))
    sh("test -f workspaces/sim/temp/again", cwd=m.mnt)


def test_without_acls_enforced_sharing_is_refused_and_nothing_changes(mount_factory):
    m = mount_factory(allow_other=True, env={"WSFS_POSIX_ACL": "0"})
    ok(as_user(ALICE, "mkdir -m 0700 workspaces/sim && echo r > workspaces/sim/output/r", m.mnt))
    denied(as_user(ALICE, 'echo "share sim u:65533 r" > .wsfs/control', m.mnt), "Operation not supported")
    assert json.loads((m.ws / "sim" / ".job").read_text())["shares"] is None
    denied(as_user(BOB, "cat workspaces/sim/output/r", m.mnt))
