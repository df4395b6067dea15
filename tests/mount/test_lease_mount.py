"""Jobs made on behalf of a user, labels, and leases for running jobs, through a real mount.

What a scheduler's glue needs from wsfs (README "Running on a cluster"): root makes a job owned
by the job's user, with the scheduler's job id as a label, and a lease that ends a running job
whose end never comes (a lost epilog): past it the sweeper crashes it, ``lease expired``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from conftest import as_user, sh, wsfs_cli

pytestmark = pytest.mark.mount

NOBODY = 65534


def job(m, name: str, top: str = "workspaces") -> dict:
    return json.loads((m.mnt / top / name / ".job").read_text())


wsfs = wsfs_cli


def test_root_creates_a_job_on_behalf_of_a_user_with_labels(mount_factory):
    m = mount_factory(allow_other=True)
    sh('echo "create slurm-42 uid=65534 gid=65534 label=slurm_job=42 label=partition=debug '
       'label=name=my%20sim" > .wsfs/control', cwd=m.mnt)
    st = os.stat(m.ws / "slurm-42")
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    assert os.stat(m.ws / "slurm-42" / "output").st_uid == NOBODY
    record = job(m, "slurm-42")
    assert (record["uid"], record["gid"]) == (NOBODY, NOBODY)
    assert record["labels"] == {"slurm_job": "42", "partition": "debug", "name": "my sim"}
    # The user it was made for writes and ends it, as if it were its own.
    r = as_user(NOBODY, "echo x > workspaces/slurm-42/output/r && echo completed > workspaces/slurm-42/.state", m.mnt)
    assert r.returncode == 0, r.stderr
    assert json.loads((m.ws / "slurm-42" / "receipt.json").read_text())["labels"]["slurm_job"] == "42"
    # Only root may: a user asking for another owner gets EPERM, and nothing is made.
    r = as_user(NOBODY, 'echo "create theirs uid=0 gid=0" > .wsfs/control', m.mnt)
    assert r.returncode != 0 and "Operation not permitted" in r.stderr
    assert not (m.ws / "theirs").exists()
    events = [json.loads(line) for line in (m.mnt / ".wsfs" / "events").read_text().splitlines()]
    assert [e["labels"]["partition"] for e in events if e["kind"] == "created" and e["job"] == "slurm-42"] == ["debug"]


def test_list_filters_by_label_and_glob(mount_factory):
    m = mount_factory()
    sh('echo "create slurm-1 label=partition=gpu" > .wsfs/control && '
       'echo "create slurm-2 label=partition=cpu" > .wsfs/control && mkdir workspaces/other', cwd=m.mnt)
    r = wsfs("list", "slurm-*", "--label", "partition=g*", "--json", "--mount", str(m.mnt))
    assert r.returncode == 0, r.stderr
    assert [j["id"] for j in json.loads(r.stdout)] == ["slurm-1"]
    r = wsfs("list", "slurm-*", "--mount", str(m.mnt))
    assert "slurm-1" in r.stdout and "slurm-2" in r.stdout and "other" not in r.stdout
    r = wsfs("create", "labelled", "--label", "team=render", "--label", "note=a b=c", "--mount", str(m.mnt))
    assert r.returncode == 0, r.stderr
    assert job(m, "labelled")["labels"] == {"team": "render", "note": "a b=c"}


def test_a_running_job_past_its_lease_is_crashed_unless_extended(mount_factory):
    m = mount_factory(config='[templates.leased]\nareas = { output = "keep" }\nmax_running = "1h"\n'
                             'max_extensions = 1\n')
    sh('echo "create lost max_running=1s" > .wsfs/control && echo "create kept max_running=1s" > .wsfs/control '
       '&& echo "create tmpl template=leased" > .wsfs/control', cwd=m.mnt)
    assert job(m, "tmpl")["max_running"] == 3600 and job(m, "tmpl")["expires_at"] > time.time() + 3500
    sh('echo "extend 1h" > workspaces/kept/.state', cwd=m.mnt)
    r = subprocess.run(["bash", "-c", 'echo "extend 1h" > workspaces/kept/.state'], cwd=m.mnt, capture_output=True,
                       text=True)
    assert r.returncode == 0  # the default template allows 3
    r = subprocess.run(["bash", "-c", 'echo "extend 1h" > workspaces/tmpl/.state; '
                                      'echo "extend 1h" > workspaces/tmpl/.state'], cwd=m.mnt, capture_output=True,
                       text=True)
    assert "Operation not permitted" in r.stderr  # its template allows one extension
    assert job(m, "tmpl")["extensions"] == 1
    time.sleep(1.2)
    sh('echo sweep > .wsfs/control', cwd=m.mnt)
    lost = job(m, "lost", "quarantine")
    assert (lost["state"], lost["reason"]) == ("crashed", "lease expired")
    assert job(m, "kept")["state"] == "running" and job(m, "kept")["extensions"] == 2
    # Resumed, it gets a fresh lease.
    sh('echo "resume lost" > .wsfs/control', cwd=m.mnt)
    again = job(m, "lost")
    assert again["state"] == "running" and again["expires_at"] > time.time() and again["extensions"] == 0
    r = wsfs("extend", "kept", "2h", "--mount", str(m.mnt))
    assert r.returncode == 0 and "lease ends" in r.stdout
    assert "(lease)" in wsfs("list", "--mount", str(m.mnt)).stdout
