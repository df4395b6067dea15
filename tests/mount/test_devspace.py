"""Development workspaces (README "Parallel development workspaces") through a real mount and real git repositories.

Each test makes its own repository (several commits and a data dir) in a tmp
dir and drives ``wsfs`` as a user's shell would: create from git, commit
inside the workspace, sync with every strategy, clone, refuse-then-force
endings with a bundle that ``git clone`` restores, merge with and without a
conflict.  Git runs with a fixed identity and no global config.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, control_as, wait_hashed

pytestmark = [pytest.mark.mount,
              pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")]

GIT_ENV = {"GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.org", "GIT_COMMITTER_NAME": "Dev",
           "GIT_COMMITTER_EMAIL": "dev@example.org", "GIT_CONFIG_GLOBAL": "/dev/null",
           "GIT_CONFIG_NOSYSTEM": "1"}


def env() -> dict:
    full = dict(os.environ, PYTHONPATH=str(REPO), **GIT_ENV)
    full.pop("WSFS_MOUNT", None)
    return full


def git(where, *args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, env=env())
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr}")
    return result


def wsfs(m, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsfs", *args, "--mount", str(m.mnt)], capture_output=True,
                          text=True, env=env(), timeout=120)


def ok(m, *args) -> subprocess.CompletedProcess:
    result = wsfs(m, *args)
    assert result.returncode == 0, f"wsfs {' '.join(args)}: {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def make_repo(base: Path) -> Path:
    """A repository on ``main`` with three commits, code and a data dir (untracked data/big.tmp too)."""
    repo = base / "proj"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("proj\n")
    (repo / "app.py").write_text("VALUE = 1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    (repo / "lib").mkdir()
    (repo / "lib" / "util.py").write_text("def f():\n    return 1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "second")
    (repo / "data" / "knowledge").mkdir(parents=True)
    (repo / "data" / "knowledge" / "facts.json").write_text('{"a": 1}\n')
    (repo / "data" / "knowledge" / "scratch.tmp").write_text("junk\n")
    (repo / "data" / "knowledge" / "deep").mkdir()
    (repo / "data" / "knowledge" / "deep" / "vectors.bin").write_bytes(os.urandom(300_000))
    (repo / ".gitignore").write_text("data/\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "third")
    return repo


def job_record(m, job) -> dict:
    return json.loads((m.ws / job / ".job").read_text())


def listed(m) -> set[str]:
    return {r["id"] for r in json.loads(ok(m, "list", "--json").stdout)}


# -- create -------------------------------------------------------------------------


def test_create_from_git_copies_data_and_commits_inside(mount_factory, tmp_path):
    m = mount_factory()
    repo = make_repo(tmp_path)
    result = ok(m, "create", "feat", "--git", str(repo), "--copy-data", str(repo / "data" / "knowledge"),
                "--exclude", "*.tmp")
    ws = m.ws / "feat"
    assert result.stdout.strip() == str(ws)
    assert "copied 2 files" in result.stderr and " s" in result.stderr

    src = ws / "src"
    assert git(src, "rev-parse", "--abbrev-ref", "HEAD").stdout.strip() == "wsfs/feat"
    assert git(src, "rev-parse", "HEAD").stdout == git(repo, "rev-parse", "main").stdout
    assert (src / "lib" / "util.py").read_text() == "def f():\n    return 1\n"
    assert str(src) in git(repo, "worktree", "list").stdout

    record = job_record(m, "feat")
    assert record["template"] == "dev" and set(record["areas"]) == {"src", "data", "temp"}
    assert record["git"] == {"repo": str(repo), "branch": "wsfs/feat", "base": "main",
                             "base_commit": git(repo, "rev-parse", "main").stdout.strip()}
    manifest = {json.loads(line)["path"] for line in (ws / ".manifest").read_text().splitlines()}
    assert {"src/app.py", "src/lib/util.py", "src/.git", "data/knowledge/facts.json",
            "data/knowledge/deep/vectors.bin"} <= manifest
    assert "data/knowledge/scratch.tmp" not in manifest
    assert record["usage"]["files"] == len(manifest)
    assert f"{repo} on wsfs/feat from main" in ok(m, "show", "feat").stdout

    # Work inside the workspace like in any checkout: the commit lands on the job's branch.
    (src / "app.py").write_text("VALUE = 2\n")
    git(src, "commit", "-q", "-am", "inside the workspace")
    assert git(repo, "log", "-1", "--format=%s", "wsfs/feat").stdout.strip() == "inside the workspace"
    assert git(repo, "log", "-1", "--format=%s", "main").stdout.strip() == "third"

    # --branch and --base
    ok(m, "create", "old", "--git", str(repo), "--branch", "try/old", "--base", "main~2")
    assert (m.ws / "old" / "src" / "app.py").exists() and not (m.ws / "old" / "src" / "lib").exists()
    assert job_record(m, "old")["git"]["branch"] == "try/old"


def test_bad_input_and_failed_setup_leave_no_job(mount_factory, tmp_path):
    m = mount_factory(config='[templates.dev]\nsetup = "test -f README.md && echo ran > ../temp/setup-ran"\n'
                             '[templates.devbad]\nareas = { src = "keep", temp = "scratch" }\n'
                             'setup = "echo broken >&2; exit 3"\n'
                             '[templates.tiny]\nareas = { src = "keep" }\nmax_files = 3\n')
    repo = make_repo(tmp_path)
    plain = tmp_path / "plain"
    plain.mkdir()
    git(repo, "branch", "taken")

    for args, message in [
        (("--git", str(plain)), "is not a git repository"),
        (("--git", str(repo), "--branch", "taken"), "branch taken already exists"),
        (("--git", str(repo), "--base", "no-such-ref"), "unknown base 'no-such-ref'"),
    ]:
        result = wsfs(m, "create", "bad", *args)
        assert result.returncode == 1, result.stderr
        assert message in result.stderr
    assert listed(m) == set()

    failed = wsfs(m, "create", "bad2", "--git", str(repo), "--template", "devbad")
    assert failed.returncode == 1
    assert "setup command" in failed.stderr and "exit status 3" in failed.stderr and "broken" in failed.stderr
    assert "bad2" not in listed(m) and not (m.ws / "bad2").exists()
    assert not git(repo, "rev-parse", "--verify", "--quiet", "refs/heads/wsfs/bad2", check=False).stdout
    assert "bad2" not in git(repo, "worktree", "list").stdout

    # The template's limits hold for the worktree: more files than max_files fails cleanly.
    over = wsfs(m, "create", "big", "--git", str(repo), "--template", "tiny")
    assert over.returncode == 1 and "workspace big was removed" in over.stderr
    assert "big" not in listed(m)
    assert not git(repo, "rev-parse", "--verify", "--quiet", "refs/heads/wsfs/big", check=False).stdout

    ok(m, "create", "good", "--git", str(repo))
    assert (m.ws / "good" / "temp" / "setup-ran").read_text() == "ran\n"
    assert listed(m) == {"good"}


# -- sync ---------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_sync_strategies_between_workspaces(mount_factory, tmp_path):
    m = mount_factory()
    a, b = Path(ok(m, "create", "a").stdout.strip()), Path(ok(m, "create", "b").stdout.strip())
    (a / "input" / "d").mkdir()
    (a / "input" / "d" / "one.csv").write_text("1\n")
    (a / "input" / "two.csv").write_text("2\n")
    (a / "output" / "log.txt").write_text("log\n")
    (a / "input" / "link").symlink_to("two.csv")

    first = json.loads(ok(m, "sync", "a", "b", "--strategy", "mirror", "--json", "--verify").stdout)
    assert first["files_copied"] == 4 and first["files_deleted"] == 0 and first["errors"] == []
    assert first["bytes"] == 8 and first["verified"] == 3 and first["duration_s"] >= 0
    assert _tree(b / "input") == _tree(a / "input") and (b / "output" / "log.txt").read_text() == "log\n"
    assert os.readlink(b / "input" / "link") == "two.csv"
    again = json.loads(ok(m, "sync", "a", "b", "--strategy", "mirror", "--json").stdout)
    assert again["files_copied"] == 0  # unchanged files (size and mtime kept) are not copied again

    # Changes on both sides.
    (a / "input" / "two.csv").write_text("22\n")
    (a / "input" / "three.csv").write_text("3\n")
    (a / "input" / "d" / "one.csv").unlink()
    (b / "output" / "extra.txt").write_text("only in b\n")
    (b / "output" / "keep.log").write_text("excluded\n")

    dry = ok(m, "sync", "a", "b", "--strategy", "mirror", "--dry-run", "--exclude", "*.log")
    assert "would copy   input/two.csv" in dry.stdout and "would copy   input/three.csv" in dry.stdout
    assert "would delete input/d/one.csv" in dry.stdout and "would delete output/extra.txt" in dry.stdout
    assert "keep.log" not in dry.stdout
    assert not (b / "input" / "three.csv").exists() and (b / "output" / "extra.txt").exists()

    update = json.loads(ok(m, "sync", "a", "b", "--strategy", "update", "--json").stdout)
    assert sorted(update["copied"]) == ["input/three.csv", "input/two.csv"] and update["deleted"] == []
    assert (b / "input" / "d" / "one.csv").exists() and (b / "output" / "extra.txt").exists()

    mirror = json.loads(ok(m, "sync", "a", "b", "--strategy", "mirror", "--exclude", "*.log", "--json").stdout)
    assert sorted(mirror["deleted"]) == ["input/d/one.csv", "output/extra.txt"]
    assert (b / "output" / "keep.log").exists()  # excluded: neither copied nor deleted
    assert _tree(b / "input") == _tree(a / "input")

    # Selective: only the named patterns.
    (a / "input" / "four.csv").write_text("4\n")
    (a / "output" / "report.md").write_text("# r\n")
    sel = json.loads(ok(m, "sync", "a", "b", "--strategy", "selective", "--include", "output/*", "--json").stdout)
    assert sel["copied"] == ["output/report.md"]
    assert not (b / "input" / "four.csv").exists()
    assert wsfs(m, "sync", "a", "b", "--strategy", "selective").returncode == 1  # needs --include

    # A workspace and a plain directory, both ways.
    plain = tmp_path / "export"
    ok(m, "sync", "a", str(plain), "--strategy", "mirror")
    assert _tree(plain / "input") == _tree(a / "input")
    (plain / "output" / "from-outside.txt").write_text("x\n")
    ok(m, "sync", str(plain / "output"), str(m.ws / "b" / "output"))
    assert (b / "output" / "from-outside.txt").read_text() == "x\n"

    # A sealed destination refuses before copying anything.
    (a / "input" / "five.csv").write_text("5\n")
    ok(m, "state", "b", "completed")
    sealed = wsfs(m, "sync", "a", "b", "--json")
    assert sealed.returncode == 1 and "EROFS" in sealed.stderr
    assert json.loads(sealed.stdout)["errno"] == 30
    assert not (b / "input" / "five.csv").exists()


# -- clone --------------------------------------------------------------------------


def test_clone_a_git_workspace(mount_factory, tmp_path):
    m = mount_factory()
    repo = make_repo(tmp_path)
    ok(m, "create", "orig", "--git", str(repo), "--copy-data", str(repo / "data" / "knowledge"))
    src = m.ws / "orig" / "src"
    (src / "app.py").write_text("VALUE = 3\n")
    git(src, "commit", "-q", "-am", "orig work")
    (src / "lib" / "util.py").write_text("changed, not committed\n")
    (m.ws / "orig" / "temp" / "scratch").write_text("s\n")
    wait_hashed(m.ws / "orig", "src/app.py")  # renamed into place by git after its close: hashed all the same

    result = json.loads(ok(m, "clone", "orig", "copy", "--json").stdout)
    assert result["origin"] == "orig" and result["git"]["branch"] == "wsfs/copy"
    new = m.ws / "copy"
    record = job_record(m, "copy")
    assert record["state"] == "running" and record["origin"] == "orig"
    assert record["history"][0]["state"] == "running" and len(record["history"]) == 1
    assert record["uid"] == os.getuid()
    assert "cloned from orig" in ok(m, "show", "copy").stdout
    for area in ("data", "temp"):
        assert _tree(new / area) == _tree(m.ws / "orig" / area)
    assert (new / "data" / "knowledge" / "deep" / "vectors.bin").stat().st_size == 300_000
    assert (new / "src" / "lib" / "util.py").read_text() == "changed, not committed\n"
    # Its own worktree on its own branch from orig's, with orig's uncommitted change carried over.
    assert git(new / "src", "rev-parse", "--abbrev-ref", "HEAD").stdout.strip() == "wsfs/copy"
    assert git(new / "src", "log", "-1", "--format=%s").stdout.strip() == "orig work"
    assert git(new / "src", "status", "--porcelain").stdout.split() == ["M", "lib/util.py"]
    (new / "src" / "new.txt").write_text("clone only\n")
    assert "new.txt" not in git(src, "status", "--porcelain").stdout
    assert git(src, "rev-parse", "--abbrev-ref", "HEAD").stdout.strip() == "wsfs/orig"
    # Usage and manifest are the clone's own, with sha256 carried over from the origin.
    assert record["usage"]["files"] >= 8
    manifest = {json.loads(line)["path"]: json.loads(line) for line in (new / ".manifest").read_text().splitlines()}
    assert manifest["src/app.py"]["sha256"] is not None
    events = [json.loads(line) for line in (m.mnt / ".wsfs" / "events").read_text().splitlines()]
    assert any(e["kind"] == "cloned" and e["job"] == "copy" and e["source"] == "orig" for e in events)

    assert wsfs(m, "clone", "orig", "copy").returncode == 1  # the id is taken
    assert wsfs(m, "clone", "nope", "copy2").returncode == 1


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_clone_needs_read_permission(mount_factory, tmp_path):
    m = mount_factory(allow_other=True)
    ws = Path(ok(m, "create", "private").stdout.strip())
    (ws / "output" / "secret").write_text("s\n")
    os.chmod(ws, 0o700)
    ok(m, "create", "open")

    def as_nobody(line: str) -> subprocess.CompletedProcess:
        return control_as(m, 65534, line)

    refused = as_nobody("clone private stolen")
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    assert not (m.ws / "stolen").exists() and "stolen" not in listed(m)
    assert as_nobody("clone open mine").returncode == 0
    assert job_record(m, "mine")["uid"] == 65534 and job_record(m, "mine")["origin"] == "open"
    assert (m.ws / "mine").stat().st_uid == 65534 and (m.ws / "mine" / "output").stat().st_uid == 65534


# -- safe endings and merge ------------------------------------------------------------


def test_refused_then_forced_archive_keeps_a_restorable_bundle(mount_factory, tmp_path):
    m = mount_factory()
    repo = make_repo(tmp_path)
    ok(m, "create", "risky", "--git", str(repo))
    src = m.ws / "risky" / "src"
    (src / "feature.py").write_text("print('new')\n")
    git(src, "add", "feature.py")
    git(src, "commit", "-q", "-m", "unmerged feature")
    (src / "app.py").write_text("VALUE = 99\n")
    (src / "notes.txt").write_text("untracked\n")

    refused = wsfs(m, "state", "risky", "completed")
    assert refused.returncode == 1
    assert "uncommitted:  M app.py" in refused.stderr and "uncommitted: ?? notes.txt" in refused.stderr
    assert "unmerged feature" in refused.stderr and "--force" in refused.stderr
    assert (m.ws / "risky" / ".state").read_text() == "running\n"

    forced = ok(m, "state", "risky", "completed", "--force")
    salvage = m.mnt / "shared" / "wsfs-salvage" / "risky"
    assert "kept" in forced.stderr and (salvage / "risky.bundle").exists()
    assert (m.ws / "risky" / ".state").read_text() == "completed\n"

    assert wsfs(m, "state", "risky", "archived").returncode == 1  # still at risk: refused again
    ok(m, "state", "risky", "archived", "--force")
    assert not (m.ws / "risky").exists()
    assert "risky" not in git(repo, "worktree", "list").stdout  # pruned
    assert git(repo, "rev-parse", "--verify", "--quiet", "refs/heads/wsfs/risky", check=False).returncode == 0

    restored = tmp_path / "restored"
    subprocess.run(["git", "clone", "-q", str(salvage / "risky.bundle"), str(restored)], check=True, env=env())
    assert git(restored, "log", "-1", "--format=%s").stdout.strip() == "unmerged feature"
    git(restored, "apply", str(salvage / "risky.patch"))
    assert (restored / "app.py").read_text() == "VALUE = 99\n"
    assert (restored / "notes.txt").read_text() == "untracked\n"

    # A clean, merged workspace ends without --force, and archiving deletes its branch.
    ok(m, "create", "tidy", "--git", str(repo))
    ok(m, "state", "tidy", "completed")
    archived = ok(m, "state", "tidy", "archived")
    assert "deleted" in archived.stderr
    assert git(repo, "rev-parse", "--verify", "--quiet", "refs/heads/wsfs/tidy", check=False).returncode != 0


def test_merge_with_and_without_conflict(mount_factory, tmp_path):
    m = mount_factory()
    repo = make_repo(tmp_path)
    ok(m, "create", "clean", "--git", str(repo))
    ok(m, "create", "clash", "--git", str(repo))
    ok(m, "create", "squashy", "--git", str(repo))
    git(m.ws / "clean" / "src", "checkout", "-q", "-b", "side")  # the worktree may move; merge uses the record
    git(m.ws / "clean" / "src", "checkout", "-q", "wsfs/clean")
    (m.ws / "clean" / "src" / "added.py").write_text("x = 1\n")
    git(m.ws / "clean" / "src", "add", "added.py")
    git(m.ws / "clean" / "src", "commit", "-q", "-m", "add a module")
    (m.ws / "clash" / "src" / "app.py").write_text("VALUE = 'branch'\n")
    git(m.ws / "clash" / "src", "commit", "-q", "-am", "branch change")
    for name in ("s1", "s2"):
        (m.ws / "squashy" / "src" / f"{name}.py").write_text(f"{name}\n")
        git(m.ws / "squashy" / "src", "add", "-A")
        git(m.ws / "squashy" / "src", "commit", "-q", "-m", name)
    (repo / "app.py").write_text("VALUE = 'main'\n")
    git(repo, "commit", "-q", "-am", "main change")

    merged = json.loads(ok(m, "merge", "clean", "--json").stdout)
    assert merged["ok"] and merged["into"] == "main" and merged["conflicts"] == []
    assert (repo / "added.py").read_text() == "x = 1\n"

    conflict = wsfs(m, "merge", "clash")
    assert conflict.returncode == 1
    assert "conflict: app.py" in conflict.stdout
    assert not (repo / ".git" / "MERGE_HEAD").exists()
    assert git(repo, "status", "--porcelain").stdout == ""
    assert (repo / "app.py").read_text() == "VALUE = 'main'\n"

    before = int(git(repo, "rev-list", "--count", "main").stdout)
    ok(m, "merge", "squashy", "--squash")
    assert int(git(repo, "rev-list", "--count", "main").stdout) == before + 1
    assert (repo / "s1.py").exists() and (repo / "s2.py").exists()

    # --rebase: the clashing branch rebased onto main conflicts too; nothing is left mid-rebase.
    rebase = wsfs(m, "merge", "clash", "--rebase")
    assert rebase.returncode == 1 and "app.py" in rebase.stdout
    assert git(m.ws / "clash" / "src", "status", "--porcelain").stdout == ""
    assert git(m.ws / "clash" / "src", "log", "-1", "--format=%s").stdout.strip() == "branch change"
