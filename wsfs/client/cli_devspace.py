"""The ``wsfs`` commands of development workspaces: clone, sync, merge, prune-worktrees.

Also the development half of ``wsfs create`` (``--git``, ``--copy-data``) and
of ``wsfs state`` (the safe ending of a git workspace), which ``cli.py``
hands over to.  Sugar over ``wsfs.devspace``, which does the work; this
module only parses, prints and picks exit codes (0 done, 1 error, 2 usage).
Registered on ``cli.main`` when ``cli`` is imported.

Threading: one thread.
"""

from __future__ import annotations

import json
import sys

import click

from ..core.units import format_size
from . import WsfsClientError, devspace
from .cli import complete_jobs, fail, interactive, live_mount, main, mount_option


def _progress_factory():
    """A byte progress bar on stderr for a person watching; nothing in a pipe."""
    if not interactive():
        return None
    def start(total: int):
        bar = click.progressbar(length=max(total, 1), label="copying data", file=sys.stderr, show_pos=False)
        bar.__enter__()
        return bar.update
    return start


def create_development_workspace(m, job, *, template, quota, max_files, repo, branch, base, copy_data,
                                 includes, excludes, as_json) -> None:
    progress = _progress_factory()
    try:
        report = devspace.create_devspace(m, job, repo=repo, branch=branch, base=base, template=template,
                                          quota=quota, max_files=max_files, copy_data=copy_data,
                                          includes=includes, excludes=excludes, progress=progress,
                                          setup_output=sys.stderr)
    except devspace.DevspaceError as exc:
        fail(str(exc))
    finally:
        for bar in getattr(progress, "bars", []):
            bar.__exit__(None, None, None)
    if copy_data:
        click.echo(f"copied {report.copied_files} file{'' if report.copied_files == 1 else 's'}, "
                   f"{format_size(report.copied_bytes)} "
                   f"in {report.copy_seconds:.2f} s", err=True)
    if report.git:
        click.echo(f"src/ is a worktree of {report.git['git_repo']} on branch {report.git['git_branch']} "
                   f"(from {report.git['git_base']})", err=True)
    if report.setup:
        click.echo(f"setup `{report.setup}` done in {report.setup_seconds:.2f} s", err=True)
    if as_json:
        click.echo(json.dumps(report.as_dict(), sort_keys=True))
        return
    click.echo(report.path)


def end_if_development_workspace(m, job: str, word: str, reason: str | None, force: bool) -> bool:
    """``wsfs state`` for a git workspace; False when JOB is no git workspace (the plain path applies)."""
    try:
        info = json.loads((m.job_dir(job) / ".job").read_text())
    except (WsfsClientError, OSError, ValueError):
        return False
    if not info.get("git"):
        return False
    try:
        messages = devspace.end_devspace(m, job, word, reason, force=force)
    except devspace.DevspaceError as exc:
        fail(str(exc))
    for line in messages:
        click.echo(line, err=True)
    click.echo(f"{job}: {word}" + (f" {reason}" if reason else ""))
    return True


@main.command()
@click.argument("src", shell_complete=complete_jobs)
@click.argument("new")
@click.option("--branch", default=None, help="A git workspace's clone: its new branch (default wsfs/NEW).")
@click.option("--json", "as_json", is_flag=True, help="Print {job, path, origin, git, usage} as JSON.")
@mount_option
def clone(src, new, branch, as_json, mount):
    """Make NEW a running workspace holding a copy of SRC's areas; print its path.

    The copy is made by the daemon inside the data dir (reflinks or
    copy_file_range, no FUSE round trip per file), for a caller who may read
    SRC.  A git workspace's clone gets its own worktree on a new branch from
    SRC's branch; SRC's uncommitted changes come along as the clone's.

    \b
    Example:
      wsfs clone feat-x feat-x-try2
    """
    m = live_mount(mount)
    try:
        result = devspace.clone_devspace(m, src, new, branch=branch)
    except devspace.DevspaceError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
        return
    usage = result.get("usage") or {}
    click.echo(f"cloned {src} into {new}: {usage.get('files', 0)} files, {format_size(usage.get('bytes', 0))}",
               err=True)
    click.echo(result["path"])


@main.command()
@click.argument("src")
@click.argument("dst")
@click.option("--strategy", type=click.Choice(devspace.STRATEGIES), default="update", show_default=True,
              help="mirror: DST equal to SRC (extra files deleted); update: new and changed files; "
                   "selective: only --include patterns.")
@click.option("--include", "includes", multiple=True, help="Only paths matching this glob (repeatable).")
@click.option("--exclude", "excludes", multiple=True, help="Leave paths matching this glob alone (repeatable).")
@click.option("--verify", is_flag=True, help="Compare sha256 of both sides of every copied file.")
@click.option("--dry-run", "-n", "dry_run", is_flag=True, help="Say what would be copied and deleted; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@mount_option
def sync(src, dst, strategy, includes, excludes, verify, dry_run, as_json, mount):
    """Copy files from SRC to DST: each a workspace (a job id) or a directory (a path with a /).

    A workspace's areas are synced (not its control files); `.git` entries
    never are.  A sealed (ended) DST refuses with EROFS and nothing is copied.
    Exit 1 when anything failed.

    \b
    Examples:
      wsfs sync feat-x feat-y --strategy mirror --exclude '*.log'
      wsfs sync feat-x ./results --strategy selective --include 'data/out/*.csv' --verify
    """
    m = live_mount(mount)
    try:
        source = devspace.resolve_endpoint(m, src)
        target = devspace.resolve_endpoint(m, dst)
        progress = None
        bar = None
        if interactive() and not dry_run and not as_json:
            total = devspace.plan_sync(source, target, strategy, includes, excludes).bytes
            bar = click.progressbar(length=max(total, 1), label="syncing", file=sys.stderr, show_pos=False)
            bar.__enter__()
            progress = bar.update
        try:
            report = devspace.run_sync(source, target, strategy, includes=includes, excludes=excludes,
                                       verify=verify, dry_run=dry_run, progress=progress, mount=m)
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
    except devspace.DevspaceError as exc:
        if as_json:
            click.echo(json.dumps({"error": str(exc), "errno": exc.errno}, sort_keys=True))
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    else:
        would = "would " if dry_run else ""
        for path in report.copied:
            click.echo(f"{would}copy   {path}")
        for path in report.deleted:
            click.echo(f"{would}delete {path}")
        for error in report.errors:
            click.echo(click.style(f"error  {error}", fg="red"), err=True)
        line = (f"sync ({strategy}{', dry run' if dry_run else ''}): {len(report.copied)} copied, "
                f"{len(report.deleted)} deleted, {format_size(report.bytes)}, {len(report.errors)} errors "
                f"in {report.duration_s:.2f} s")
        if report.verified is not None:
            line += f"; {report.verified} verified by sha256"
        click.echo(line)
    sys.exit(1 if report.errors else 0)


@main.command()
@click.argument("job", shell_complete=complete_jobs)
@click.option("--into", default=None, help="The branch to merge into (default: the repository's current one).")
@click.option("--squash", "how", flag_value="squash", help="One commit with all of the job's changes.")
@click.option("--rebase", "how", flag_value="rebase",
              help="Rebase the job's branch onto --into in its worktree, then fast-forward.")
@click.option("--json", "as_json", is_flag=True, help="The result as JSON.")
@mount_option
def merge(job, into, how, as_json, mount):
    """Merge a git workspace's branch; on a conflict, abort and list the conflicting files (exit 1).

    The repository is never left mid-merge or mid-rebase, and is back on the
    branch it was on.

    \b
    Examples:
      wsfs merge feat-x
      wsfs merge feat-x --into main --squash
    """
    m = live_mount(mount)
    how = how or "merge"
    record = next((r for r in m.jobs() if r["id"] == job), None)
    if record is None:
        fail(f"no job {job}")
    git_info = record.get("git")
    if not git_info:
        fail(f"job {job} is not a git workspace (made without --git)")
    worktree = None
    if how == "rebase":
        try:
            worktree = m.job_dir(job) / "src"
        except WsfsClientError as exc:
            fail(str(exc))
    try:
        result = devspace.merge_branch(git_info["repo"], git_info["branch"], into=into, how=how, worktree=worktree)
    except devspace.DevspaceError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2, sort_keys=True))
    else:
        click.echo(result.message)
        for path in result.conflicts:
            click.echo(f"  conflict: {path}")
    sys.exit(0 if result.ok else 1)


@main.command(name="prune-worktrees")
@click.argument("repo", type=click.Path(exists=True, file_okay=False))
def prune_worktrees(repo):
    """Forget worktrees whose workspace is gone (purged by retention), delete merged wsfs/* branches.

    `wsfs state JOB archived` does this for its own job; the sweeper cannot
    (the daemon never runs git), so run this now and then, e.g. from cron.

    \b
    Example:
      wsfs prune-worktrees ~/proj
    """
    try:
        for line in devspace.prune_worktrees(repo):
            click.echo(line)
    except devspace.DevspaceError as exc:
        fail(str(exc))
