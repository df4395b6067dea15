"""``wsfs list``'s filters and table (docs/spec.md §10), on job lines given to it (the lines
``.wsfs/jobs`` holds): no mount.  Which jobs each option keeps, the order, the columns, the
refusals of bad options.  The same command against a real mount: ``mount/test_cli.py``."""

from __future__ import annotations

import json
import os
import time

import pytest
from click.testing import CliRunner

from wsfs.client import cli as cli_module
from wsfs.client.cli import main


def line(job: str, state: str = "running", *, created: float, **fields) -> dict:
    base = {"id": job, "state": state, "created": created, "uid": 1000, "stage": None, "hidden": False,
            "where": "jobs", "purged_at": None, "expires_at": None, "usage": {"bytes": 0, "files": 0},
            "labels": {}, "publish": None, "purge_at": None}
    return base | fields


def jobs(now: float) -> list[dict]:
    """The job lines ``wsfs list`` is given, their times relative to ``now`` (when it runs)."""
    return [
        line("render-1", created=now - 3600, stage="encode", usage={"bytes": 5 << 20, "files": 3},
             labels={"partition": "gpu"}),
        line("render-2", "failed", created=now - 7200, expires_at=now + 86400, uid=1001,
             publish={"status": "failed", "attempts": 3}),
        line("ingest-7", "completed", created=now - 60, expires_at=now + 3600, labels={"partition": "cpu"},
             publish={"status": "done"}),
        line("old-1", "completed", created=now - 9e5, hidden=True, expires_at=now - 5),
        line("gone-1", "archived", created=now - 1e6, where=None),
        line("lease-1", created=now - 10, expires_at=now + 600),
    ]


@pytest.fixture
def run(monkeypatch):
    extra: list[dict] = []
    monkeypatch.setattr(cli_module, "_records", lambda mount: jobs(time.time()) + extra)

    def invoke(*args):
        return CliRunner().invoke(main, ["list", *args], catch_exceptions=False)
    invoke.extra = extra
    return invoke


def ids(result) -> list[str]:
    return [row.split()[0] for row in result.stdout.splitlines()[1:]]


def json_ids(result) -> list[str]:
    return [j["id"] for j in json.loads(result.stdout)]


def test_by_default_the_live_jobs_oldest_first(run):
    result = run()
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0].split() == ["JOB", "STATE", "STAGE", "AGE", "USAGE", "EXPIRES", "PURGE",
                                                     "PUBLISH"]
    assert ids(result) == ["render-2", "render-1", "ingest-7", "lease-1"]


def test_all_shows_hidden_archived_and_purged_too(run):
    assert json_ids(run("--all", "--json")) == ["gone-1", "old-1", "render-2", "render-1", "ingest-7", "lease-1"]


def test_state_patterns_labels_users_and_publishing_narrow_the_list(run):
    assert json_ids(run("--state", "completed", "--json")) == ["old-1", "ingest-7"]
    assert json_ids(run("--state", "failed", "--state", "running", "--json")) == ["render-2", "render-1", "lease-1"]
    assert json_ids(run("render-*", "--json")) == ["render-2", "render-1"]
    assert json_ids(run("--label", "partition=g*", "--json")) == ["render-1"]
    assert json_ids(run("--label", "partition=*", "--label", "partition=cpu", "--json")) == ["ingest-7"]
    assert json_ids(run("--user", "1001", "--json")) == ["render-2"]
    assert json_ids(run("--publish", "failed", "--json")) == ["render-2"]
    assert json_ids(run("--publish", "done", "--publish", "failed", "--json")) == ["render-2", "ingest-7"]


def test_the_columns_say_stage_usage_expiry_lease_and_publishing(run):
    rows = {row.split()[0]: row for row in run().stdout.splitlines()[1:]}
    assert "encode" in rows["render-1"] and "5.0M/3f" in rows["render-1"].replace("MiB", "M")
    assert "(lease)" in rows["lease-1"] and (" in 9m" in rows["lease-1"] or " in 10m" in rows["lease-1"])
    assert "FAILED (3 attempts)" in rows["render-2"]
    assert rows["ingest-7"].rstrip().endswith("done")
    hidden = {row.split()[0]: row for row in run("--all").stdout.splitlines()[1:]}["old-1"]
    assert "completed (hidden)" in hidden and " due " in hidden


def test_nothing_to_show_says_so_on_stderr(run):
    result = run("nomatch-*")
    assert result.exit_code == 0 and result.stdout == "" and "no jobs" in result.stderr


def test_bad_options_are_usage_errors_and_list_nothing(run):
    result = run("--label", "partition")
    assert result.exit_code == 2 and "KEY=VALUE" in result.stderr and result.stdout == ""
    result = run("--user", "no-such-user-here")
    assert result.exit_code == 2 and "no user" in result.stderr
    result = run("--state", "exploded")
    assert result.exit_code == 2


def test_a_user_name_is_looked_up(run):
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    run.extra.append(line("mine-1", created=time.time(), uid=os.getuid()))
    assert json_ids(run("--user", me, "--json")) == ["mine-1"]
