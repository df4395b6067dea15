"""Listings are private to who may read them: two users on one root-run ``--allow-other`` mount.

The users are uids run through ``setpriv`` (no account needed): 65534 and 65533, each in a
group of its own number, and 65533 also in group 65534 where a test says so.  Each makes its
jobs with a shell, as it would.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import MountedWsfs, as_user, sh

pytestmark = pytest.mark.mount

ALICE, BOB = 65534, 65533





def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def two_users(mount_factory) -> MountedWsfs:
    m = mount_factory(allow_other=True)
    ok(as_user(ALICE, "mkdir -m 0700 workspaces/alice-secret && mkdir -m 0750 workspaces/alice-team "
                      "&& mkdir workspaces/alice-open && echo 'failed token=hunter2' > workspaces/alice-secret/.state",
               m.mnt))
    ok(as_user(BOB, "mkdir -m 0700 workspaces/bob-secret", m.mnt))
    return m


def test_a_job_others_may_enter_but_not_read_shows_them_nothing(two_users):
    """0711: others may pass through the job's root (to a path they were given), not read it: its
    .job, .manifest, .state and receipt.json are the owner's and the group's alone."""
    m = two_users
    ok(as_user(ALICE, "mkdir -m 0711 workspaces/alice-x && chmod 0755 workspaces/alice-x/output "
                      "&& echo r > workspaces/alice-x/output/r && echo completed > workspaces/alice-x/.state", m.mnt))
    for name in (".job", ".manifest", ".state", "receipt.json"):
        denied = as_user(BOB, f"cat workspaces/alice-x/{name}", m.mnt)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, name
    assert ok(as_user(BOB, "cat workspaces/alice-x/output/r", m.mnt)) == "r\n"  # given a path, the disk's rules
    assert "alice-x" not in listed(m, BOB) and "alice-x" in listed(m, ALICE)


def listed(m, uid, groups=()) -> set[str]:
    return {json.loads(line)["id"] for line in ok(as_user(uid, "cat .wsfs/jobs", m.mnt, groups)).splitlines()}


def event_jobs(m, uid, groups=()) -> set[str]:
    lines = ok(as_user(uid, "cat .wsfs/events", m.mnt, groups)).splitlines()
    return {json.loads(line).get("job") for line in lines} - {None}


def test_each_user_lists_only_the_jobs_it_may_read(two_users):
    m = two_users
    assert listed(m, ALICE) == {"alice-secret", "alice-team", "alice-open"}
    assert listed(m, BOB) == {"bob-secret", "alice-open"}
    assert listed(m, BOB, groups=(ALICE,)) == {"bob-secret", "alice-open", "alice-team"}  # by the job's group
    root_sees = {json.loads(line)["id"] for line in (m.mnt / ".wsfs" / "jobs").read_text().splitlines()}
    assert root_sees == {"alice-secret", "alice-team", "alice-open", "bob-secret"}
    assert event_jobs(m, BOB) == {"bob-secret", "alice-open"}
    assert "hunter2" not in ok(as_user(BOB, "cat .wsfs/events; cat .wsfs/jobs", m.mnt))
    assert "hunter2" in ok(as_user(ALICE, "cat .wsfs/events", m.mnt))
    # (`wsfs list` prints what .wsfs/jobs holds for its caller: tests/mount/test_cli.py reads it as root.)


def test_a_jobs_files_follow_its_roots_mode(two_users):
    m = two_users
    for name in (".job", ".manifest", ".state"):
        denied = as_user(BOB, f"cat workspaces/alice-team/{name}", m.mnt)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        ok(as_user(BOB, f"cat workspaces/alice-team/{name}", m.mnt, groups=(ALICE,)))
        ok(as_user(BOB, f"cat workspaces/alice-open/{name}", m.mnt))
    # The owner opens her job to the world, then closes it again: the files follow at once.
    ok(as_user(ALICE, "chmod 0755 workspaces/alice-team", m.mnt))
    ok(as_user(BOB, "cat workspaces/alice-team/.job", m.mnt))
    ok(as_user(ALICE, "chmod 0700 workspaces/alice-team && echo hi > workspaces/alice-team/output/r "
                      "&& echo completed > workspaces/alice-team/.state", m.mnt))
    for name in (".job", "receipt.json"):
        denied = as_user(BOB, f"cat workspaces/alice-team/{name}", m.mnt)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert json.loads(ok(as_user(ALICE, "cat workspaces/alice-team/receipt.json", m.mnt)))["state"] == "completed"
    sh("cat workspaces/alice-team/receipt.json workspaces/bob-secret/.job", cwd=m.mnt)  # root reads all
