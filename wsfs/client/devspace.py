"""Development workspaces, client side: git worktrees, data copies, sync, safe endings, merge.

README "Parallel development workspaces" is the user's guide.  Everything here runs in the CLI's
process as the calling user and reaches workspaces through the mount, so
every file git or a copy writes is in the job's manifest and counted against
its quota.  The daemon never runs git: it would run as root on a user's
repository.  That is also why the safe-ending check (``ending_problems``) is
the CLI's: a program that writes ``archived`` to ``.state`` itself bypasses
it.

Parts:

- git: ``plan_worktree`` checks the input (a repository, a new branch, a
  known base) before any job exists; ``add_worktree`` makes ``src/`` a
  worktree; ``ending_problems``, ``salvage`` and ``after_archive`` are the
  safe endings; ``merge_branch`` merges and never leaves a repository
  mid-merge or mid-rebase.
- sync: ``plan_sync`` compares two trees (workspaces or plain directories)
  and ``run_sync`` applies the plan with one of three strategies.

Threading: none; one thread, blocking subprocess calls.
"""

from __future__ import annotations

import dataclasses
import errno
import fnmatch
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from ..core.model import JOB_ID_RE

#: Never synced: a worktree's ``.git`` file names its own worktree; copying it would point DST at SRC's.
SYNC_SKIPPED_NAMES = (".git",)
#: A workspace root's control files: not data, never synced.
CONTROL_NAMES = (".state", ".job", ".manifest", "receipt.json")
STRATEGIES = ("mirror", "update", "selective")
SALVAGE_DIR = "wsfs-salvage"  # under MOUNT/shared/: survives the job's archive and purge


class DevspaceError(Exception):
    """A development-workspace operation that cannot go on; the message says why."""

    def __init__(self, message: str, errno_: int | None = None):
        super().__init__(message)
        self.errno = errno_


# -- git ---------------------------------------------------------------------------


def git(repo, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``git -C repo ARGS`` as the calling user; raise ``DevspaceError`` with git's message if it fails."""
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                            env=None if env is None else {**os.environ, **env})
    if check and result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise DevspaceError(f"git {args[0]} failed: {message[-1] if message else f'exit {result.returncode}'}")
    return result


@dataclasses.dataclass(frozen=True)
class GitPlan:
    """Where a development workspace's worktree comes from: recorded in the job record's ``git``."""

    repo: str
    branch: str
    base: str
    base_commit: str

    def control_options(self) -> dict[str, str]:
        """``git_*`` options for the ``create``/``clone`` control command (see control.py)."""
        return {"git_repo": self.repo, "git_branch": self.branch, "git_base": self.base,
                "git_base_commit": self.base_commit}


def repo_toplevel(repo) -> str:
    if shutil.which("git") is None:
        raise DevspaceError("git is not installed")
    result = git(repo, "rev-parse", "--show-toplevel", check=False)
    if result.returncode != 0 or not result.stdout.strip():
        raise DevspaceError(f"{repo} is not a git repository", errno.EINVAL)
    return result.stdout.strip()


def current_branch(repo) -> str | None:
    result = git(repo, "symbolic-ref", "--quiet", "--short", "HEAD", check=False)
    return result.stdout.strip() or None


def branch_exists(repo, branch: str) -> bool:
    return git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False).returncode == 0


def plan_worktree(repo, job: str, branch: str | None = None, base: str | None = None) -> GitPlan:
    """Check everything ``add_worktree`` needs before a job exists; bad input raises ``DevspaceError``."""
    top = repo_toplevel(repo)
    branch = branch or f"wsfs/{job}"
    if git(top, "check-ref-format", "--branch", branch, check=False).returncode != 0:
        raise DevspaceError(f"{branch!r} is not a valid branch name", errno.EINVAL)
    if branch_exists(top, branch):
        raise DevspaceError(f"branch {branch} already exists in {top} (give another with --branch)", errno.EEXIST)
    base = base or current_branch(top) or "HEAD"
    result = git(top, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{base}^{{commit}}", check=False)
    if result.returncode != 0:
        raise DevspaceError(f"unknown base {base!r} in {top}", errno.EINVAL)
    return GitPlan(top, branch, base, result.stdout.strip())


def add_worktree(plan: GitPlan, path: Path) -> None:
    """Make ``path`` (an empty area, through the mount) a worktree of a new branch at the base commit.

    git accepts an existing empty directory as a new worktree's path.
    """
    git(plan.repo, "worktree", "add", "--quiet", "-b", plan.branch, str(path), plan.base_commit)


def undo_worktree(plan: GitPlan, path: Path) -> None:
    """After a failed creation: forget the worktree and delete the branch we made (best effort)."""
    git(plan.repo, "worktree", "remove", "--force", str(path), check=False)
    git(plan.repo, "worktree", "prune", check=False)
    git(plan.repo, "branch", "-D", plan.branch, check=False)


def adopt_worktree(plan: GitPlan, src: Path) -> None:
    """Make a cloned ``src/`` (a copy of another worktree's files) a worktree of its own new branch.

    The copied ``.git`` file names the origin's worktree; it is replaced by one
    made for ``src/``: ``git worktree add --no-checkout`` into an empty
    directory below, its ``.git`` file moved up, ``git worktree repair`` to
    point the repository at the new place, then ``git reset`` to fill the index
    from the branch (the copied files stay as they are, so the origin's
    uncommitted changes are the clone's too).
    """
    (src / ".git").unlink(missing_ok=True)
    staging = src / f".wsfs-worktree-{os.getpid()}"
    staging.mkdir()
    try:
        git(plan.repo, "worktree", "add", "--quiet", "--no-checkout", "-b", plan.branch, str(staging),
            plan.base_commit)
        os.replace(staging / ".git", src / ".git")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    git(plan.repo, "worktree", "repair", str(src))
    git(src, "reset", "--quiet")


def ending_problems(src: Path, branch: str) -> dict[str, list[str]]:
    """What ending or archiving would put at risk: uncommitted changes and commits on no other branch."""
    status = git(src, "status", "--porcelain=v1", "--untracked-files=normal")
    commits = git(src, "log", "--format=%h %s", branch, "--not", f"--exclude={branch}", "--branches")
    return {"uncommitted": [line for line in status.stdout.splitlines() if line.strip()],
            "unmerged_commits": [line for line in commits.stdout.splitlines() if line.strip()]}


def salvage(src: Path, branch: str, dest: Path, job: str) -> list[Path]:
    """Keep a ``git bundle`` of the branch and a patch of every uncommitted change (untracked files too).

    The patch is made with a throw-away index, so the worktree's own index is
    untouched: ``git apply --index JOB.patch`` on the branch brings it back.
    """
    dest.mkdir(parents=True, exist_ok=True)
    bundle, patch = dest / f"{job}.bundle", dest / f"{job}.patch"
    git(src, "bundle", "create", str(bundle), "HEAD", branch)
    with tempfile.TemporaryDirectory(prefix="wsfs-salvage-") as tmp:
        env = {"GIT_INDEX_FILE": os.path.join(tmp, "index")}
        git(src, "read-tree", "HEAD", env=env)
        git(src, "add", "-A", env=env)
        diff = git(src, "diff", "--cached", "--binary", "HEAD", env=env)
    patch.write_text(diff.stdout)
    return [bundle, patch]


def after_archive(repo: str, branch: str) -> str:
    """The worktree is gone: prune it from the repository, delete the branch if it is merged."""
    git(repo, "worktree", "prune", check=False)
    if not branch_exists(repo, branch):
        return f"branch {branch} is already gone"
    if git(repo, "branch", "-d", branch, check=False).returncode == 0:
        return f"branch {branch} was merged: deleted"
    return f"branch {branch} is not merged: kept"


def prune_worktrees(repo) -> list[str]:
    """``git worktree prune``, then delete every merged ``wsfs/*`` branch no worktree has checked out."""
    top = repo_toplevel(repo)
    pruned = git(top, "worktree", "prune", "--verbose")
    lines = [line for line in (pruned.stdout + pruned.stderr).splitlines() if line.strip()]
    checked_out = {line.split(" ", 1)[1].removeprefix("refs/heads/")
                   for line in git(top, "worktree", "list", "--porcelain").stdout.splitlines()
                   if line.startswith("branch ")}
    branches = git(top, "for-each-ref", "--format=%(refname:short)", "refs/heads/wsfs/").stdout.split()
    for branch in branches:
        if branch in checked_out:
            continue
        if git(top, "branch", "-d", branch, check=False).returncode == 0:
            lines.append(f"deleted merged branch {branch}")
        else:
            lines.append(f"kept unmerged branch {branch}")
    return lines


@dataclasses.dataclass
class MergeResult:
    ok: bool
    how: str
    branch: str
    into: str
    commit: str | None = None
    conflicts: list[str] = dataclasses.field(default_factory=list)
    message: str = ""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _conflicts(where) -> list[str]:
    return git(where, "diff", "--name-only", "--diff-filter=U", check=False).stdout.split()


def merge_branch(repo: str, branch: str, *, into: str | None = None, how: str = "merge",
                 worktree: Path | None = None) -> MergeResult:
    """Merge ``branch`` into ``into`` (default: the repository's current branch).

    ``how``: ``merge`` (a merge commit unless it fast-forwards), ``squash``
    (one commit), ``rebase`` (the branch is rebased onto ``into`` in the job's
    worktree, then fast-forwarded).  On a conflict the merge or rebase is
    aborted and the conflicting files are reported; the repository is left as
    it was, on the branch it was on.
    """
    top = repo_toplevel(repo)
    current = current_branch(top)
    into = into or current
    if into is None:
        raise DevspaceError(f"{top} has a detached HEAD: say which branch to merge into with --into")
    if not branch_exists(top, branch):
        raise DevspaceError(f"branch {branch} is not in {top}")
    result = MergeResult(False, how, branch, into)
    if how == "rebase":
        if worktree is None:
            raise DevspaceError("--rebase needs the job's worktree (a running workspace)")
        r = git(worktree, "rebase", into, check=False)
        if r.returncode != 0:
            result.conflicts = _conflicts(worktree)
            git(worktree, "rebase", "--abort", check=False)
            result.message = f"rebasing {branch} onto {into} stopped on conflicts; rebase aborted"
            return result
    switched = into != current
    if switched:
        git(top, "checkout", "--quiet", into)
    try:
        if how == "squash":
            r = git(top, "merge", "--squash", branch, check=False)
            if r.returncode == 0:
                if git(top, "diff", "--cached", "--quiet", check=False).returncode != 0:
                    git(top, "commit", "--quiet", "-m", f"Squashed {branch} into {into}")
                result.ok = True
        elif how == "rebase":
            r = git(top, "merge", "--ff-only", branch, check=False)
            result.ok = r.returncode == 0
        else:
            r = git(top, "merge", "--no-edit", branch, check=False)
            result.ok = r.returncode == 0
        if not result.ok:
            result.conflicts = _conflicts(top)
            if how == "squash":
                git(top, "reset", "--merge", check=False)  # --squash leaves no MERGE_HEAD to --abort
            else:
                git(top, "merge", "--abort", check=False)
            text = (r.stdout + r.stderr).strip().splitlines()
            result.message = (f"merging {branch} into {into} conflicts; merge aborted" if result.conflicts
                              else f"merging {branch} into {into} failed: {text[-1] if text else r.returncode}")
            return result
        result.commit = git(top, "rev-parse", "HEAD").stdout.strip()
        result.message = f"merged {branch} into {into} ({how}) at {result.commit[:12]}"
        return result
    finally:
        if switched and current is not None:
            git(top, "checkout", "--quiet", current, check=False)


# -- sync --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One side of a sync: a directory, and the job whose workspace holds it (if any)."""

    path: Path
    job: str | None = None
    job_root: bool = False          # the workspace's root: only its areas are data
    areas: tuple[str, ...] = ()


def resolve_endpoint(mount, arg: str) -> Endpoint:
    """A job id (a workspace under the mount), or a path (anything with a ``/``, or an existing dir)."""
    workspaces = Path(mount.path) / "workspaces"
    if "/" not in arg and arg not in (".", "..") and JOB_ID_RE.fullmatch(arg) and (workspaces / arg).is_dir():
        return Endpoint(workspaces / arg, arg, True, tuple(_job_info(workspaces / arg).get("areas", {})))
    path = Path(arg).absolute()
    try:
        rel = Path(os.path.normpath(path)).relative_to(workspaces)
    except ValueError:
        return Endpoint(path)
    if not rel.parts:
        raise DevspaceError(f"{arg}: give a workspace, not all of workspaces/")
    job = rel.parts[0]
    if len(rel.parts) == 1:
        return Endpoint(workspaces / job, job, True, tuple(_job_info(workspaces / job).get("areas", {})))
    return Endpoint(path, job)


def _job_info(job_dir: Path) -> dict:
    try:
        with open(job_dir / ".job") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise DevspaceError(f"{job_dir}: not a workspace ({getattr(exc, 'strerror', None) or exc})") from None


def check_writable(endpoint: Endpoint, mount) -> None:
    """A sealed (ended) destination workspace refuses before anything is copied: ``EROFS``."""
    if endpoint.job is None:
        return
    info = _job_info(Path(mount.path) / "workspaces" / endpoint.job)
    if info.get("state") != "running" or info.get("sealed") or info.get("ending"):
        raise DevspaceError(f"workspace {endpoint.job} is {info.get('state')} and sealed: nothing copied "
                            f"(EROFS)", errno.EROFS)


def path_matches(path: str, patterns) -> bool:
    """Does a glob match the relative path, one of its leading directories, or one of its names?

    So ``data`` and ``data/*`` take everything under ``data/``, ``*.csv`` every CSV file anywhere,
    ``cache`` every directory or file named ``cache``.
    """
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)] + parts
    return any(fnmatch.fnmatchcase(c, p.rstrip("/")) for p in patterns for c in candidates)


def scan(endpoint: Endpoint) -> dict[str, tuple]:
    """relative path -> ``("f", size, mtime_ns)``, ``("d",)`` or ``("l", target)``; never follows symlinks."""
    out: dict[str, tuple] = {}
    root = endpoint.path
    if not root.exists():
        return out
    if not root.is_dir():
        raise DevspaceError(f"{root} is not a directory")
    tops = [a for a in endpoint.areas if (root / a).is_dir()] if endpoint.job_root else None

    def walk(directory: Path, prefix: str, names=None):
        try:
            entries = sorted(names if names is not None else os.listdir(directory))
        except OSError as exc:
            raise DevspaceError(f"cannot list {directory}: {exc.strerror}", exc.errno) from None
        for name in entries:
            if name in SYNC_SKIPPED_NAMES or name.startswith(".fuse_hidden"):
                continue
            rel = f"{prefix}{name}"
            try:
                st = os.lstat(directory / name)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("d",)
                walk(directory / name, rel + "/")
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("f", st.st_size, st.st_mtime_ns)
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(directory / name))
    walk(root, "", tops)
    return out


@dataclasses.dataclass
class SyncPlan:
    copies: list[str]
    deletes: list[str]
    mkdirs: list[str]
    bytes: int
    src_tree: dict
    dst_tree: dict


def plan_sync(src: Endpoint, dst: Endpoint, strategy: str, includes=(), excludes=()) -> SyncPlan:
    """What a sync would do, from the two trees' listings and the strategy.

    - ``mirror``: DST becomes equal to SRC: new and different files copied
      (size or mtime differ), files and dirs SRC lacks deleted;
    - ``update``: new files, and files whose size or mtime differ unless DST's
      copy is newer; nothing deleted;
    - ``selective``: as ``update``, for the ``--include`` patterns only.

    ``--include`` limits every strategy to matching paths; ``--exclude``
    leaves matching paths alone on both sides (never copied, never deleted).
    """
    if strategy not in STRATEGIES:
        raise DevspaceError(f"unknown strategy {strategy!r} (use {', '.join(STRATEGIES)})")
    if strategy == "selective" and not includes:
        raise DevspaceError("the selective strategy copies only what --include names: give at least one")
    s_tree, d_tree = scan(src), scan(dst)

    def wanted(path: str) -> bool:
        if excludes and path_matches(path, excludes):
            return False
        return not includes or path_matches(path, includes)

    copies, mkdirs, total = [], [], 0
    for path, entry in s_tree.items():
        if entry[0] == "d":
            if path not in d_tree and wanted(path):
                mkdirs.append(path)
            continue
        if not wanted(path):
            continue
        have = d_tree.get(path)
        if have is not None and have[0] == entry[0]:
            if entry[0] == "l" and have[1] == entry[1]:
                continue
            if entry[0] == "f":
                if have[1:] == entry[1:]:
                    continue
                if strategy != "mirror" and have[2] > entry[2]:
                    continue  # DST's copy is newer: update never goes back in time
        copies.append(path)
        if entry[0] == "f":
            total += entry[1]
    deletes = []
    if strategy == "mirror":
        for path in sorted(d_tree, reverse=True):  # children before their directories
            if path in s_tree and s_tree[path][0] == d_tree[path][0]:
                continue
            if excludes and path_matches(path, excludes):
                continue
            if includes and not wanted(path):
                continue
            if dst.job_root and "/" not in path:
                continue  # an area stays for the job's life
            deletes.append(path)
        # a type change (dir <-> file) is a delete then a copy
    if includes:  # directories that lead to included files
        needed = {"/".join(p.split("/")[:i]) for p in copies for i in range(1, p.count("/") + 1)}
        mkdirs = sorted(set(mkdirs) | {d for d in needed if d not in d_tree})
    return SyncPlan(copies, deletes, sorted(mkdirs), total, s_tree, d_tree)


@dataclasses.dataclass
class SyncReport:
    strategy: str
    source: str
    destination: str
    dry_run: bool
    copied: list[str] = dataclasses.field(default_factory=list)
    deleted: list[str] = dataclasses.field(default_factory=list)
    bytes: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    verified: int | None = None
    duration_s: float = 0.0

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["files_copied"] = len(self.copied)
        d["files_deleted"] = sum(1 for p in self.deleted if not p.endswith("/"))
        return d


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


_ABORTING = (errno.EROFS, errno.EDQUOT, errno.ENOSPC)


def run_sync(src: Endpoint, dst: Endpoint, strategy: str, *, includes=(), excludes=(), verify: bool = False,
             dry_run: bool = False, progress=None, mount=None) -> SyncReport:
    """Plan and apply a sync (see ``plan_sync``); ``progress(nbytes)`` is told of every file copied.

    An ``EROFS`` (the destination ended meanwhile), ``EDQUOT`` or ``ENOSPC``
    stops the sync at once; other per-file errors are collected and the rest goes on.
    """
    started = time.monotonic()
    if mount is not None:
        check_writable(dst, mount)
    if src.path.resolve() == dst.path.resolve():
        raise DevspaceError("source and destination are the same directory")
    plan = plan_sync(src, dst, strategy, includes, excludes)
    report = SyncReport(strategy, str(src.path), str(dst.path), dry_run)
    if dry_run:
        report.copied, report.bytes = plan.copies, plan.bytes
        report.deleted = [p + ("/" if plan.dst_tree[p][0] == "d" else "") for p in plan.deletes]
        report.duration_s = round(time.monotonic() - started, 3)
        return report
    if not dst.path.exists():
        dst.path.mkdir(parents=True)
    try:
        for path in plan.deletes:
            before = len(report.errors)
            removed = []
            _apply(report, path, lambda p=path: removed.append(_remove(dst.path / p)))
            if len(report.errors) == before and removed[0]:
                report.deleted.append(path + ("/" if plan.dst_tree[path][0] == "d" else ""))
        for path in plan.mkdirs:
            _apply(report, path, lambda p=path: (dst.path / p).mkdir(parents=True, exist_ok=True))
        for path in plan.copies:
            entry = plan.src_tree[path]
            before = len(report.errors)
            _apply(report, path, lambda p=path, e=entry: _copy_one(src.path / p, dst.path / p, e))
            if len(report.errors) == before:
                report.copied.append(path)
                if entry[0] == "f":
                    report.bytes += entry[1]
                    if progress:
                        progress(entry[1])
        if verify:
            report.verified = 0
            for path in report.copied:
                if plan.src_tree[path][0] != "f":
                    continue
                try:
                    if file_sha256(src.path / path) != file_sha256(dst.path / path):
                        report.errors.append(f"{path}: sha256 differs after copying")
                    else:
                        report.verified += 1
                except OSError as exc:
                    report.errors.append(f"{path}: cannot verify: {exc.strerror}")
        # Directories' mtimes last: copying into them moved them.
        for path in plan.mkdirs:
            try:
                st = os.lstat(src.path / path)
                os.utime(dst.path / path, ns=(st.st_atime_ns, st.st_mtime_ns))
            except OSError:
                pass
    except _Abort as stop:
        report.errors.append(str(stop))
    report.duration_s = round(time.monotonic() - started, 3)
    return report


class _Abort(Exception):
    pass


def _apply(report: SyncReport, path: str, action) -> None:
    try:
        action()
    except OSError as exc:
        if exc.errno in _ABORTING:
            raise _Abort(f"{path}: {exc.strerror} ({errno.errorcode[exc.errno]}): sync stopped") from None
        report.errors.append(f"{path}: {exc.strerror or exc}")


def _remove(path: Path) -> bool:
    """Remove a file or symlink, or a directory that is empty by now (its children went first).

    A directory still holding something after that holds only excluded files: it stays.
    """
    if path.is_dir() and not path.is_symlink():
        try:
            path.rmdir()
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:
                return False
            raise
        return True
    path.unlink(missing_ok=True)
    return True


def _copy_one(src: Path, dst: Path, entry: tuple) -> None:
    if dst.is_symlink() or (entry[0] == "l" and dst.exists() and not dst.is_dir()):
        dst.unlink()
    elif dst.is_dir():
        shutil.rmtree(dst)  # a directory where SRC has a file
    dst.parent.mkdir(parents=True, exist_ok=True)
    if entry[0] == "l":
        os.symlink(entry[1], dst)
        return
    try:
        shutil.copyfile(src, dst)
    except PermissionError:
        dst.unlink()  # a read-only file in the way: replace it, as cp --remove-destination would
        shutil.copyfile(src, dst)
    shutil.copystat(src, dst)


# -- whole commands: create, clone, end (the CLI prints what these return) -----------


@dataclasses.dataclass
class CreateReport:
    job: str
    path: str
    git: dict | None = None
    copied_files: int = 0
    copied_bytes: int = 0
    copy_seconds: float = 0.0
    setup: str | None = None
    setup_seconds: float | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _remove_job(ws, reason: str) -> None:
    """Undo a creation: cancelled, then archived (tree deleted); ``wsfs list`` shows it no more."""
    from . import WsfsClientError

    try:
        ws.cancel(" ".join(reason.split())[:1000])
        ws.set_state("archived")
    except WsfsClientError:
        pass


def create_devspace(mount, job: str | None, *, repo=None, branch: str | None = None, base: str | None = None,
                    template: str | None = None, quota=None, max_files: int | None = None, copy_data=(),
                    includes=(), excludes=(), progress=None, setup_output=None) -> CreateReport:
    """``wsfs create --git/--copy-data``: a workspace with a worktree in ``src/``, data copied, setup run.

    Input is checked before the job exists; anything failing after that
    removes the job again (cancelled, archived) and the branch it made, then
    raises ``DevspaceError``.  ``progress(total)`` returns a callable told of
    each copied file's bytes; ``setup_output`` is the setup command's stdout.
    """
    from . import WsfsClientError, generate_job_id

    job = job or generate_job_id()
    plan = plan_worktree(repo, job, branch, base) if repo is not None else None
    data_dirs = [Path(d).absolute() for d in copy_data]
    for d in data_dirs:
        if not d.is_dir():
            raise DevspaceError(f"--copy-data {d}: not a directory", errno.ENOTDIR)
    if template is None and plan is not None:
        template = "dev"
    try:
        ws = mount.create(job, template=template, quota=quota, max_files=max_files,
                          extra=plan.control_options() if plan else None)
    except WsfsClientError as exc:
        raise DevspaceError(str(exc), exc.errno) from None
    report = CreateReport(job, str(ws.path), git=plan.control_options() if plan else None)
    src = Path(mount.path) / "workspaces" / job / "src"
    try:
        if plan is not None:
            if not src.is_dir():
                raise DevspaceError(f"template {ws.info()['template']} has no src area for the worktree")
            add_worktree(plan, src)
        _copy_data(ws, data_dirs, includes, excludes, progress, report)
        info = ws.info()
        if info.get("setup"):
            report.setup = info["setup"]
            _run_setup(ws, info, src if src.is_dir() else ws.path, setup_output, report)
    except (DevspaceError, OSError, WsfsClientError) as exc:
        text = str(exc) if not isinstance(exc, OSError) else f"{exc.filename or ''}: {exc.strerror or exc}"
        _remove_job(ws, f"creation failed: {text}")
        if plan is not None:
            undo_worktree(plan, src)
        raise DevspaceError(f"{text}; workspace {job} was removed", getattr(exc, "errno", None)) from None
    return report


def _copy_data(ws, data_dirs, includes, excludes, progress, report: CreateReport) -> None:
    if not data_dirs:
        return
    area = next((a for a in ("data", "input") if (ws.path / a).is_dir()), None)
    if area is None:
        raise DevspaceError("the template has neither a data nor an input area for --copy-data")
    started = time.monotonic()
    pairs = [(Endpoint(d), Endpoint(ws.path / area / d.name, ws.job)) for d in data_dirs]
    plans = [plan_sync(s, t, "update", includes, excludes) for s, t in pairs]
    tick = progress(sum(p.bytes for p in plans)) if progress else None
    for s, t in pairs:
        result = run_sync(s, t, "update", includes=includes, excludes=excludes, progress=tick)
        if result.errors:
            raise DevspaceError(f"copying {s.path} failed: {result.errors[0]}"
                                + (f" (and {len(result.errors) - 1} more)" if len(result.errors) > 1 else ""))
        report.copied_files += sum(1 for p in result.copied if not p.endswith("/"))
        report.copied_bytes += result.bytes
    report.copy_seconds = round(time.monotonic() - started, 3)


def _run_setup(ws, info: dict, cwd: Path, output, report: CreateReport) -> None:
    """The template's ``setup`` command, as the calling user, in ``src/`` (else the workspace root)."""
    env = dict(os.environ, WSFS_JOB=ws.job, WSFS_WORKSPACE=str(ws.path), WSFS_MOUNT=str(ws.mount.path))
    for area in info.get("areas", {}):
        env[f"WSFS_{area.upper().replace('-', '_').replace('.', '_')}"] = str(ws.path / area)
    started = time.monotonic()
    result = subprocess.run(info["setup"], shell=True, cwd=cwd, env=env, stdout=output, stderr=subprocess.PIPE,
                            text=True)
    report.setup_seconds = round(time.monotonic() - started, 3)
    if result.returncode != 0:
        last = result.stderr.strip().splitlines()[-3:]
        raise DevspaceError(f"setup command {info['setup']!r} failed with exit status {result.returncode}"
                            + (": " + " / ".join(last) if last else ""))


def clone_devspace(mount, src_job: str, new_job: str, *, branch: str | None = None) -> dict:
    """``wsfs clone``: the daemon copies SRC's areas; a git workspace's clone gets its own worktree and branch."""
    from . import Workspace, WsfsClientError

    try:
        info = _job_info(mount.job_dir(src_job))
    except WsfsClientError as exc:
        raise DevspaceError(str(exc), exc.errno) from None
    plan = None
    source_git = info.get("git")
    if source_git:
        repo = repo_toplevel(source_git["repo"])
        branch = branch or f"wsfs/{new_job}"
        if branch_exists(repo, branch):
            raise DevspaceError(f"branch {branch} already exists in {repo} (give another with --branch)",
                                errno.EEXIST)
        head = git(repo, "rev-parse", "--verify", f"refs/heads/{source_git['branch']}^{{commit}}", check=False)
        if head.returncode != 0:
            raise DevspaceError(f"the origin's branch {source_git['branch']} is gone from {repo}")
        plan = GitPlan(repo, branch, source_git["branch"], head.stdout.strip())
    words = [f"clone {src_job} {new_job}"]
    if plan is not None:
        import urllib.parse
        words += [f"{k}={urllib.parse.quote(v, safe='/')}" for k, v in plan.control_options().items()]
    try:
        mount.control(" ".join(words), job=new_job)
    except WsfsClientError as exc:
        raise DevspaceError(str(exc), exc.errno) from None
    ws = Workspace(mount, new_job)
    if plan is not None:
        try:
            adopt_worktree(plan, ws.path / "src")
        except (DevspaceError, OSError) as exc:
            _remove_job(ws, f"clone failed: {exc}")
            git(plan.repo, "worktree", "prune", check=False)
            git(plan.repo, "branch", "-D", plan.branch, check=False)
            raise DevspaceError(f"making the clone's worktree failed: {exc}; workspace {new_job} was removed") \
                from None
    record = ws.info()
    return {"job": new_job, "path": str(ws.path), "origin": src_job, "git": record.get("git"),
            "usage": record.get("usage")}


def end_devspace(mount, job: str, word: str, reason: str | None, *, force: bool = False) -> list[str]:
    """``wsfs state JOB completed|cancelled|archived`` for a git workspace, with the safety check.

    Refused (``DevspaceError``, listing what is at risk) when ``src/`` has
    uncommitted changes or the branch has commits on no other branch, unless
    ``force``: then a bundle and a patch go to ``MOUNT/shared/wsfs-salvage/JOB/``
    first.  After ``archived`` the worktree is pruned and a merged branch deleted.
    """
    from . import WsfsClientError

    messages: list[str] = []
    try:
        job_dir = mount.job_dir(job)
    except WsfsClientError as exc:
        raise DevspaceError(str(exc), exc.errno) from None
    info = _job_info(job_dir)
    git_info = info.get("git") or {}
    src = job_dir / "src"
    if git_info and (src / ".git").exists():
        try:
            problems = ending_problems(src, git_info["branch"])
        except DevspaceError as exc:  # the repository moved or went: nothing left to check against
            if not force:
                raise DevspaceError(f"cannot check {src} with git ({exc}); give --force to {word} it anyway") \
                    from None
            messages.append(f"warning: not checked, nothing kept: {exc}")
            problems = {"uncommitted": [], "unmerged_commits": []}
        if problems["uncommitted"] or problems["unmerged_commits"]:
            listing = [f"  uncommitted: {line}" for line in problems["uncommitted"]]
            listing += [f"  only on {git_info['branch']}: {line}" for line in problems["unmerged_commits"]]
            if not force:
                raise DevspaceError(f"workspace {job} has work that {word} would put at risk:\n"
                                    + "\n".join(listing) + "\ncommit and merge it, or give --force "
                                    "(a bundle and a patch are kept in shared/" + SALVAGE_DIR + f"/{job}/)")
            kept = salvage(src, git_info["branch"], Path(mount.path) / "shared" / SALVAGE_DIR / job, job)
            messages.append("kept " + ", ".join(str(p) for p in kept))
    try:
        mount.set_state(job, word, reason)
    except WsfsClientError as exc:
        raise DevspaceError(str(exc), exc.errno) from None
    if word == "archived" and git_info:
        messages.append(after_archive(git_info["repo"], git_info["branch"]))
    return messages
