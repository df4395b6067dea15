"""Prometheus metrics through a real mount: ``.wsfs/metrics`` with ``cat``, and ``metrics_listen`` over HTTP."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import urllib.request

import pytest
from conftest import as_user, errno_of, sh
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.mount


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def samples(text: str) -> dict[tuple, float]:
    """{(name, ((label, value), ...)): value} of a scrape (parsing it is part of the test)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(scrape: dict, name: str, **labels) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_are_scraped_with_cat_and_over_http_and_counters_move(mount_factory):
    port = free_port()
    m = mount_factory(config=f'metrics_listen = "127.0.0.1:{port}"\n', allow_other=True)
    before = samples(sh("cat .wsfs/metrics", cwd=m.mnt).stdout)
    sh('mkdir workspaces/a && echo data > workspaces/a/output/o && echo completed > workspaces/a/.state', cwd=m.mnt)
    sh('echo "create q quota=10" > .wsfs/control', cwd=m.mnt)
    refused = subprocess.run(["bash", "-c", "echo 0123456789abcdef > workspaces/q/output/big; "
                                            "echo failed > workspaces/a/.state; echo sweep > .wsfs/control"],
                             cwd=m.mnt, capture_output=True, text=True)
    assert "Disk quota exceeded" in refused.stderr and "Operation not permitted" in refused.stderr
    # an xattr that is not there is an answer, not a refusal (as a name that is not there)
    assert errno_of(os.getxattr, m.mnt / "workspaces" / "a" / "output" / "o", "user.nosuch") == errno.ENODATA
    after = samples(sh("cat .wsfs/metrics", cwd=m.mnt).stdout)
    moved = {key: after[key] - before.get(key, 0) for key in after}
    assert value(moved, "wsfs_transitions_total", from_state="running", to_state="completed") == 1
    assert value(moved, "wsfs_fuse_errors_total", op="write", errno="EDQUOT") >= 1
    assert value(moved, "wsfs_rejected_commands_total", via=".state", errno="EPERM") == 1
    assert value(moved, "wsfs_sweep_seconds_count") == 1
    assert value(moved, "wsfs_fuse_requests_total", op="mkdir") >= 1
    assert value(moved, "wsfs_fuse_request_seconds_count", op="mkdir") >= 1
    assert value(moved, "wsfs_fuse_requests_total", op="getxattr") >= 1
    assert not [key for key, n in moved.items() if key[0] == "wsfs_fuse_errors_total" and ("errno", "ENODATA") in key[1]
                and n]
    assert value(after, "wsfs_jobs", state="completed") == 1 and value(after, "wsfs_jobs", state="running") == 1
    assert value(after, "wsfs_job_bytes", state="completed", template="default") == 5
    assert value(after, "wsfs_user_jobs", uid="0") == 2
    assert ("wsfs_trash_entries", ()) in after and ("wsfs_hash_backlog", ()) in after
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        over_http = samples(response.read().decode())
    assert value(over_http, "wsfs_transitions_total", from_state="running", to_state="completed") >= 1
    # Per-user usage is root's to read (as every job's listing is, README "What is in the mount").
    nobody = as_user(65534, "cat .wsfs/metrics", m.mnt)
    assert nobody.returncode != 0 and "Permission denied" in nobody.stderr


