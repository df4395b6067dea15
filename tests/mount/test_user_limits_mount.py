"""Per-user limits through a real mount: jobs per user and bytes over a user's live jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, as_user, sh

pytestmark = pytest.mark.mount

NOBODY = 65534


def as_nobody(command: str, cwd) -> subprocess.CompletedProcess:
    return as_user(NOBODY, command, cwd)


def test_max_jobs_and_quota_per_user_with_an_override(mount_factory):
    m = mount_factory(allow_other=True, config='max_jobs_per_user = 2\nquota_per_user = "100K"\n'
                                               '[users.root]\nmax_jobs = 10\n')
    ok = as_nobody("mkdir workspaces/n1 workspaces/n2", m.mnt)
    assert ok.returncode == 0, ok.stderr
    over = as_nobody("mkdir workspaces/n3", m.mnt)
    assert over.returncode != 0 and "Disk quota exceeded" in over.stderr
    assert not (m.ws / "n3").exists()
    events = [json.loads(line) for line in (m.mnt / ".wsfs" / "events").read_text().splitlines()]
    assert any(e["kind"] == "rejected" and e.get("job") == "n3" and "max_jobs_per_user" in e["reason"] for e in events)
    # Root's own table raises its count; its bytes still fall under the top-level quota_per_user.
    sh("mkdir workspaces/r1 workspaces/r2 workspaces/r3", cwd=m.mnt)
    # 100K over all of a user's live jobs: 60K in one job and 60K in another do not both fit,
    # and the write that would cross is refused whole.
    assert as_nobody("head -c 61440 /dev/zero > workspaces/n1/output/a", m.mnt).returncode == 0
    crossed = as_nobody("head -c 61440 /dev/zero > workspaces/n2/output/b", m.mnt)
    assert crossed.returncode != 0 and "Disk quota exceeded" in crossed.stderr
    assert os.path.getsize(m.ws / "n2" / "output" / "b") < 61440
    # Freeing space in one job makes room in the other.
    assert as_nobody("rm workspaces/n1/output/a && head -c 61440 /dev/zero > workspaces/n2/output/c",
                     m.mnt).returncode == 0
    # Archiving a job frees a place in the count.
    assert as_nobody("echo cancelled > workspaces/n1/.state && echo archived > workspaces/n1/.state && "
                     "mkdir workspaces/n4", m.mnt).returncode == 0
    # The user sees its own usage in .wsfs/status, root everyone's; wsfs list --user filters.
    mine = json.loads(as_nobody("cat .wsfs/status", m.mnt).stdout)["users"]
    assert list(mine) == [str(NOBODY)] and mine[str(NOBODY)]["jobs"] == 2  # n2, n4 (n1 archived)
    assert mine[str(NOBODY)]["max_jobs"] == 2 and mine[str(NOBODY)]["quota"] == 100 * 1024
    everyone = json.loads((m.mnt / ".wsfs" / "status").read_text())["users"]
    assert set(everyone) == {"0", str(NOBODY)} and everyone["0"]["max_jobs"] == 10
    env = dict(os.environ, PYTHONPATH=str(REPO))
    listed = subprocess.run([sys.executable, "-m", "wsfs", "list", "--user", str(NOBODY), "--json", "--mount",
                             str(m.mnt)], capture_output=True, text=True, env=env)
    assert sorted(r["id"] for r in json.loads(listed.stdout)) == ["n2", "n4"]


def test_limits_for_users_and_groups():
    from conftest import parse_toml_config

    config = parse_toml_config('max_jobs_per_user = 2\nquota_per_user = "1M"\n[users.root]\nmax_jobs = 5\n'
                               '[groups.nogroup]\nquota = "2M"\n[groups.users]\nquota = 0\n')
    assert config.limits_for(0) == (5, 1 << 20)          # its own table for max_jobs, the default quota
    assert config.limits_for(NOBODY) == (2, 2 << 20)     # its group's quota
    assert config.limits_for(123456) == (2, 1 << 20)     # no account: the defaults
    assert parse_toml_config("").limits_for(0) == (0, 0)
