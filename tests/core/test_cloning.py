"""``clone`` in the core (wsfs.cloning), no mount: copy rules, permission, limits, clean failure.

Also the sync planner and pattern rules of wsfs.devspace on plain directories.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from wsfs.client.devspace import DevspaceError, Endpoint, path_matches, plan_sync, run_sync
from wsfs.core import control
from wsfs.core.cloning import copy_file_data, may_read
from wsfs.core.errors import AccessDeniedError, BadCommandError, BadJobIdError, NoSuchJobError, QuotaError


def job_path(core, job: str) -> Path:
    return Path(core.tree.data_dir) / "jobs" / job


def make_source(core, job="src", **options) -> Path:
    core.create_job(job, 0, 0, **options)
    root = job_path(core, job)
    (root / "output" / "sub").mkdir()
    (root / "output" / "sub" / "data.bin").write_bytes(b"x" * 5000)
    (root / "output" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "output" / "run.sh", 0o755)
    os.utime(root / "output" / "sub" / "data.bin", ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    (root / "output" / "escape").symlink_to("/etc/passwd")
    (root / "input" / ".fuse_hidden0001").write_text("unlinked but open\n")
    (root / "temp" / "t").write_text("t\n")
    core.recovery.rebuild_manifest(job)
    return root


def test_grammar_of_clone_and_git_options():
    cmd = control.parse_control_command(b"clone a b git_repo=/home/me/my%20proj git_branch=wsfs/b")
    assert (cmd.verb, cmd.source, cmd.job) == ("clone", "a", "b")
    assert cmd.option("git_repo") == "/home/me/my proj" and cmd.option("git_branch") == "wsfs/b"
    create = control.parse_control_command(b"create j template=dev git_base=main git_base_commit=abc123")
    assert create.option("git_base") == "main" and create.option("template") == "dev"
    for bad in (b"clone a", b"clone a ../b", b"clone a b quota=1G", b"create j git_repo=%0a", b"clone a b git_repo="):
        with pytest.raises((BadCommandError, BadJobIdError)) as exc:
            control.parse_control_command(bad)
        assert exc.value.errno == errno.EINVAL


def test_clone_copies_areas_without_following_symlinks(core):
    root = make_source(core)
    core.write_control(b"clone src new git_repo=/r git_branch=wsfs/new", 0, 0)
    new = job_path(core, "new")
    record = core.records.require("new")
    assert record.state == "running" and record.origin == "src"
    assert record.git == {"repo": "/r", "branch": "wsfs/new"}
    assert (new / "output" / "sub" / "data.bin").read_bytes() == b"x" * 5000
    assert os.readlink(new / "output" / "escape") == "/etc/passwd"  # a symlink, copied as one
    assert stat.S_IMODE(os.stat(new / "output" / "run.sh").st_mode) == 0o755
    assert os.stat(new / "output" / "sub" / "data.bin").st_mtime_ns == 1_600_000_000_123_456_789
    assert not (new / "input" / ".fuse_hidden0001").exists()
    assert (new / "temp" / "t").read_text() == "t\n"
    entries = dict(core.manifest_entries("new"))
    assert set(entries) == {"output/sub/data.bin", "output/run.sh", "temp/t"}
    assert record.usage == {"bytes": 5000 + 10 + 2, "files": 3}
    assert (root / "output" / "sub" / "data.bin").exists()  # the source is untouched


def test_clone_carries_sha256_that_still_matches(core):
    make_source(core)
    core.transition("src", core_state("completed"))  # the receipt step hashes every kept file
    src_entries = dict(core.manifest_entries("src"))
    assert src_entries["output/sub/data.bin"][3] is not None
    core.write_control(b"clone src new", 0, 0)
    entries = dict(core.manifest_entries("new"))
    assert entries["output/sub/data.bin"][3] == src_entries["output/sub/data.bin"][3]
    assert "temp/t" not in entries  # the completed job's scratch area is gone
    assert core.records.require("new").state == "running"


def core_state(word):
    from wsfs.core.model import JobState
    return JobState(word)


def test_clone_permission_follows_the_modes(core):
    root = make_source(core)
    os.chmod(root, 0o755)
    core.write_control(b"clone src readable", 1000, 1000)
    assert core.records.require("readable").uid == 1000
    os.chmod(root / "output" / "run.sh", 0o700)
    with pytest.raises(AccessDeniedError):
        core.write_control(b"clone src one-file-hidden", 1000, 1000)
    assert core.records.require("one-file-hidden").state == "archived"  # undone: no workspace stays
    assert not job_path(core, "one-file-hidden").exists() or core.records.require("one-file-hidden").where is None
    os.chmod(root, 0o700)
    with pytest.raises(AccessDeniedError) as exc:
        core.write_control(b"clone src stolen", 1000, 1000)
    assert exc.value.errno == errno.EACCES
    assert core.records.get("stolen") is None  # refused before anything was made
    with pytest.raises(NoSuchJobError):
        core.write_control(b"clone nothing x", 0, 0)


def test_may_read_is_the_kernel_rule():
    st = os.stat_result((stat.S_IFREG | 0o640, 0, 0, 1, 10, 20, 0, 0, 0, 0))
    assert may_read(st, 10, 99) and may_read(st, 11, 20) and not may_read(st, 11, 21) and may_read(st, 0, 0)
    directory = os.stat_result((stat.S_IFDIR | 0o704, 0, 0, 1, 10, 20, 0, 0, 0, 0))
    assert not may_read(directory, 11, 21)  # r without x: cannot be walked


def test_clone_over_the_limits_fails_whole(core):
    make_source(core, max_files=3)
    # Three files in the manifest: fine.  A fourth behind the daemon's back is found during the copy.
    (job_path(core, "src") / "output" / "late").write_text("l\n")
    with pytest.raises(QuotaError):
        core.write_control(b"clone src over", 0, 0)
    record = core.records.require("over")
    assert record.state == "archived" and record.where is None
    assert "clone failed" in record.history[1]["reason"]
    core.create_job("big", 0, 0, quota=100)
    (job_path(core, "big") / "output" / "f").write_bytes(b"y" * 200)
    core.recovery.rebuild_manifest("big")
    with pytest.raises(QuotaError):
        core.write_control(b"clone big big2", 0, 0)
    assert core.records.get("big2") is None


def test_copy_file_data_copies_every_byte(tmp_path):
    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_bytes(os.urandom(3 << 20))
    with open(src, "rb") as s, open(dst, "wb") as d:
        assert copy_file_data(s.fileno(), d.fileno()) in ("reflink", "copy_file_range", "read/write")
    assert dst.read_bytes() == src.read_bytes()


# -- the sync planner on plain directories -------------------------------------------------


def test_path_matches_paths_dirs_and_names():
    assert path_matches("data/x/y.csv", ["data"]) and path_matches("data/x/y.csv", ["*.csv"])
    assert path_matches("data/x/y.csv", ["data/x/*"]) and path_matches("data/x/y.csv", ["x"])
    assert not path_matches("data/x/y.csv", ["data/y*"])
    assert not path_matches("data/y.txt", ["*.csv", "other"])


def _files(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_plan_sync_strategies(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _files(a, {"x.csv": "1", "d/y.csv": "2", "z.txt": "3"})
    _files(b, {"x.csv": "old", "extra.txt": "e", "d/gone.csv": "g"})
    os.utime(b / "x.csv", ns=(0, 0))
    src, dst = Endpoint(a), Endpoint(b)
    mirror = plan_sync(src, dst, "mirror")
    assert sorted(mirror.copies) == ["d/y.csv", "x.csv", "z.txt"]
    assert mirror.deletes == ["extra.txt", "d/gone.csv"]
    update = plan_sync(src, dst, "update")
    assert sorted(update.copies) == ["d/y.csv", "x.csv", "z.txt"] and update.deletes == []
    os.utime(b / "x.csv", ns=(4_000_000_000_000_000_000, 4_000_000_000_000_000_000))
    assert "x.csv" not in plan_sync(src, dst, "update").copies  # DST's is newer: kept
    assert "x.csv" in plan_sync(src, dst, "mirror").copies
    selective = plan_sync(src, dst, "selective", includes=["d/*"])
    assert selective.copies == ["d/y.csv"] and selective.deletes == []
    with pytest.raises(DevspaceError):
        plan_sync(src, dst, "selective")
    with pytest.raises(DevspaceError):
        plan_sync(src, dst, "bogus")
    excluded = plan_sync(src, dst, "mirror", excludes=["*.txt"])
    assert "z.txt" not in excluded.copies and "extra.txt" not in excluded.deletes


def test_run_sync_dry_run_changes_nothing_and_verify_checks(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _files(a, {"x.csv": "1", ".git": "gitdir: elsewhere", "sub/.git/HEAD": "ref"})
    _files(b, {"extra": "e"})
    dry = run_sync(Endpoint(a), Endpoint(b), "mirror", dry_run=True)
    assert dry.copied == ["x.csv"] and dry.deleted == ["extra"] and (b / "extra").exists()
    assert not (b / "x.csv").exists()
    done = run_sync(Endpoint(a), Endpoint(b), "mirror", verify=True)
    assert done.copied == ["x.csv"] and done.verified == 1 and done.errors == []
    assert not (b / "extra").exists() and not (b / ".git").exists()  # .git never synced
    assert (b / "x.csv").stat().st_mtime_ns == (a / "x.csv").stat().st_mtime_ns
    with pytest.raises(DevspaceError):
        run_sync(Endpoint(a), Endpoint(a), "mirror")


# -- the dev template and its limits ------------------------------------------------------


def test_dev_template_is_built_in_and_overridable(tmp_path):
    from conftest import parse_toml_config

    from wsfs.core.config import default_config

    assert list(default_config().template("dev").areas) == ["src", "data", "temp"]
    cfg = parse_toml_config('[templates.dev]\nquota = "10G"\nsetup = "make venv"\n')
    assert cfg.template("dev").quota == 10 << 30 and cfg.template("dev").setup == "make venv"
    assert list(cfg.template("dev").areas) == ["src", "data", "temp"]
    from wsfs.core.config import ConfigError
    with pytest.raises(ConfigError, match="setup"):
        parse_toml_config('[templates.dev]\nsetup = 3\n')


def test_template_max_jobs_caps_its_live_workspaces(tmp_path):
    from conftest import make_core, parse_toml_config

    from wsfs.core.model import JobState

    core = make_core(tmp_path / "data", config=parse_toml_config('[templates.dev]\nmax_jobs = 2\n'))
    try:
        core.create_job("a", 0, 0, template="dev")
        core.create_job("b", 0, 0, template="dev")
        core.create_job("plain", 0, 0)  # other templates do not count
        with pytest.raises(QuotaError, match="max_jobs"):
            core.write_control(b"create c template=dev", 0, 0)
        with pytest.raises(QuotaError):
            core.write_control(b"clone a a2", 0, 0)  # a clone is a dev workspace too
        core.transition("a", JobState.COMPLETED)
        with pytest.raises(QuotaError):
            core.create_job("c", 0, 0, template="dev")  # completed still has its tree: still live
        core.transition("a", JobState.ARCHIVED)
        core.create_job("c", 0, 0, template="dev")
        assert core.records.require("c").template == "dev"
    finally:
        core.manifest.flush()
        core.store.close()
        core.tree.close()


def test_a_clone_keeps_usage_by_area_so_a_later_drop_gives_back_exactly_what_its_area_held(core):
    """Usage is the manifest's sum in all and by area (docs/spec.md §8), on every path that writes
    entries: a clone's per-area sums must be there, or a drop after a new write would take off
    only what was written since the clone."""
    make_source(core)
    core.write_control(b"clone src new", 0, 0)
    record = core.records.require("new")
    assert record.area_usage == {"output": [5010, 2], "temp": [2, 1]}
    path = job_path(core, "new") / "temp" / "more"
    path.write_bytes(b"y" * 100)
    core.manifest.put("new", "temp/more", os.lstat(path))
    core.manifest.flush()
    core.drop_areas("new", ["temp"])
    assert core.records.require("new").usage == {"bytes": 5010, "files": 2}
