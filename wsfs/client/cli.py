"""The ``wsfs`` command: sugar over the mount (docs/spec.md §10).

Exit codes: 0 done, 1 error, 2 usage (click's own, and bad config), and for
``mount`` 78 for a bad config (EX_CONFIG: the units never restart on it).

Data commands take ``--json``; tables and event lines are coloured only on
a terminal (click strips the styles in a pipe); logs get journald's ``<N>``
priority prefixes when stderr is the journal.  ``doctor`` goes through the
mount when a daemon serves it, else it locks the data dir and opens the
store itself (``wsfs.doctor``).

Threading: one thread, except ``sweep`` on a terminal with purges due: a
``wsfs-control`` thread writes the command while the main thread counts
``purged`` events into the progress bar.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import typing
from pathlib import Path

import click

from .. import __version__
from ..core.config import ConfigError, load_config
from ..core.model import JOB_ID_RE
from ..core.units import format_duration, format_size
from . import Mount, WsfsClientError, resolve_mount, sharee_name
from .mounts import MountError, default_data_dir, default_mountpoint

EX_CONFIG = 78  # sysexits.h; systemd calls it "CONFIGURATION"
LIVE_STATES = ("running", "completed", "failed", "cancelled", "crashed")


class JournalFormatter(logging.Formatter):
    """``<N>`` priority prefixes that journald reads from a service's stderr."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record):
        return f"<{self.PRIORITY.get(record.levelno, 6)}>" + super().format(record)


def stderr_is_journal() -> bool:
    """Is stderr the journal?  systemd sets ``JOURNAL_STREAM=DEV:INODE`` for a service's stderr.

    Children inherit the variable, so it is compared with stderr itself
    (systemd.exec(5)): a shell started from a service gets no ``<N>`` prefixes.
    """
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return dev.isdigit() and ino.isdigit() and (st.st_dev, st.st_ino) == (int(dev), int(ino))


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(threadName)s]: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)
    # mfusepy logs every errno it returns, with a traceback, at debug level: a refused write is
    # no event worth a traceback.  Its warnings and errors still come through.
    logging.getLogger("fuse").setLevel(max(logging.INFO, logging.getLogger().level))


def mount_option(func):
    return click.option("--mount", "mount", type=click.Path(file_okay=False), default=None,
                        help="The wsfs mount point (default: $WSFS_MOUNT, else the one wsfs mount "
                             f"mounted, else {default_mountpoint()}).")(func)


def fail(message: str, code: int = 1) -> typing.NoReturn:
    click.echo(f"wsfs: {message}", err=True)
    sys.exit(code)


def complete_jobs(ctx, _param, incomplete: str) -> list[str]:
    """Shell completion of job ids, from the mount's ``.wsfs/jobs`` (nothing when it is not mounted)."""
    try:
        records = Mount(ctx.params.get("mount")).jobs()
    except (OSError, ValueError, WsfsClientError):
        return []
    return sorted(r["id"] for r in records if r["id"].startswith(incomplete))


def live_mount(path) -> Mount:
    try:
        return Mount(path).check()
    except WsfsClientError as exc:
        fail(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wsfs")
@click.option("--log-level", default="info", show_default=True, envvar="WSFS_LOG_LEVEL",
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              help="How much the daemon and commands log (also $WSFS_LOG_LEVEL).")
def main(log_level):
    """wsfs: a workspace filesystem for batch jobs.

    Mount it, `mkdir workspaces/JOB`, let any program write there, and
    `echo completed > workspaces/JOB/.state`.

    \b
    Shell completion (bash; zsh and fish alike with zsh_source, fish_source):
      eval "$(_WSFS_COMPLETE=bash_source wsfs)"
    """
    setup_logging(log_level)


# -- mounting ---------------------------------------------------------------------


@main.command()
@click.argument("mountpoint", type=click.Path(), required=False)
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help=f"The data dir (default: {default_data_dir()}).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="A TOML config file (default: /etc/wsfs/wsfs.toml when present).")
@click.option("--foreground", "-f", is_flag=True, help="Serve in this process instead of in the background.")
@click.option("--allow-other", is_flag=True, help="Let other users in (run as root; files belong to their maker).")
@click.option("--debug", is_flag=True, hidden=True, help="libfuse's own debug output.")
@click.pass_context
def mount(ctx, mountpoint, data_dir, config_file, foreground, allow_other, debug):
    """Mount wsfs on MOUNTPOINT.

    \b
    Example:
      wsfs mount /mnt/wsfs --data /var/lib/wsfs
    """
    from ..fuse import daemon

    if mountpoint is None:  # the default place is made on first use, as the default data dir is
        mountpoint = default_mountpoint()
        with contextlib.suppress(FileExistsError):
            os.makedirs(mountpoint, mode=0o755)
    data_dir = data_dir or default_data_dir()
    try:
        config = load_config(config_file)
    except ConfigError as exc:
        # Under systemd: a status line saying why, and an exit status it does not restart on
        # (RestartPreventExitStatus=): the next try would read the same file.
        daemon.sd_notify(f"STATUS=bad config, not mounted: {exc}")
        fail(f"bad config, not mounted: {exc}", EX_CONFIG)
    try:
        if foreground:
            sys.exit(daemon.serve(mountpoint, data_dir, config, allow_other=allow_other, debug=debug,
                                  config_file=config_file))
        level = logging.getLevelName(logging.getLogger().level).lower()
        daemon.spawn(mountpoint, data_dir, config_file, allow_other=allow_other, log_level=level)
    except MountError as exc:
        fail(str(exc))
    click.echo(f"wsfs mounted on {mountpoint} (data in {data_dir})")


@main.command()
@click.argument("mountpoint", type=click.Path(), required=False)
@click.option("--lazy", "-z", is_flag=True, help="Detach now even if busy; the daemon stops when it is free.")
def unmount(mountpoint, lazy):
    """Unmount wsfs cleanly (waits until the daemon has closed its store).

    \b
    Example:
      wsfs unmount /mnt/wsfs
    """
    from ..fuse import daemon

    mountpoint = mountpoint or str(resolve_mount(None))
    try:
        message = daemon.unmount(mountpoint, lazy=lazy)
    except MountError as exc:
        fail(str(exc))
    click.echo(message)


@main.command()
@click.argument("job", shell_complete=complete_jobs)
@click.argument("duration")
@mount_option
def extend(job, duration, mount):
    """Push a job's deadline DURATION further (2d; a bare number is days), within max_extensions.

    A running job's lease end, or an ended job's retention (when it is hidden, then purged).

    \b
    Examples:
      wsfs extend slurm-4711 2d
      wsfs extend render-42 7        # keep an ended job 7 days longer
    """
    if duration.isdigit():
        duration += "d"
    m = live_mount(mount)
    try:
        m.set_state(job, "extend", duration)
    except WsfsClientError as exc:
        fail(str(exc))
    record = m.job_dir(job) / ".job"
    ends = json.loads(record.read_text()).get("expires_at")
    click.echo(f"{job}: lease ends {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ends))}" if ends
               else f"{job}: extended")


@main.command()
@click.argument("job", shell_complete=complete_jobs)
@click.argument("who", required=False)
@click.option("--write", is_flag=True, help="read-write (default: read-only)")
@click.option("--list", "as_list", is_flag=True, help="who the job is shared with")
@mount_option
def share(job, who, write, as_list, mount):
    """Share a job's workspace with a user or @group: read, or read-write with --write.

    Existing files and those made later; the job stays yours to end, resume and share.

    \b
    Examples:
      wsfs share render-42 alice
      wsfs share render-42 @render --write
      wsfs share render-42 --list
    """
    m = live_mount(mount)
    if as_list == bool(who):
        fail("give a user or @group to share with, or --list")
    try:
        if not as_list:
            m.share(job, who, write)
        shares = json.loads((m.job_dir(job) / ".job").read_text()).get("shares") or {}
    except WsfsClientError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{job}: {exc.strerror}")
    if not as_list:
        click.echo(f"{job}: shared with {who} ({'read-write' if write else 'read-only'})")
        return
    for key, access in sorted(shares.items()):
        click.echo(f"{sharee_name(key)}\t{'read-write' if access == 'rw' else 'read-only'}")


@main.command()
@click.argument("job", shell_complete=complete_jobs)
@click.argument("who")
@mount_option
def unshare(job, who, mount):
    """Stop sharing a job with a user or @group.

    \b
    Example:
      wsfs unshare render-42 alice
    """
    m = live_mount(mount)
    try:
        m.unshare(job, who)
    except WsfsClientError as exc:
        fail(str(exc))
    click.echo(f"{job}: no longer shared with {who}")


@main.command()
@mount_option
def reload(mount):
    """Make the daemon read its config again (systemctl reload runs this); nothing is unmounted.

    A config that does not load is refused (exit 1, with the reason) and the one in use stays.

    \b
    Example:
      wsfs reload --mount /mnt/wsfs
    """
    m = live_mount(mount)
    try:
        m.control("reload")
    except WsfsClientError as exc:
        fail(str(exc))
    click.echo(f"{m.path}: config reloaded")


@main.command()
@click.option("--timeout", default="30s", show_default=True, help="Give up after this long (0: ask once).")
@mount_option
def wait(timeout, mount):
    """Wait until the mount answers (for scripts and boot ordering); exit 1 on timeout.

    \b
    Example:
      wsfs wait --timeout 60s && wsfs list
    """
    seconds = _duration(timeout, "--timeout")
    deadline = time.monotonic() + seconds
    while True:
        try:
            m = Mount(mount).check()  # found anew each time: the mount may appear meanwhile
            click.echo(f"{m.path}: wsfs answers")
            return
        except WsfsClientError as exc:
            if time.monotonic() >= deadline:
                fail(f"{exc} (waited {format_duration(seconds)})")
        time.sleep(0.1)


# -- jobs ---------------------------------------------------------------------------


def _input_area(m: Mount, template: str | None, inputs) -> str | None:
    """The template's input-kind area for ``--input``, checked before the job exists: an unknown
    template or one without an input area fails here, and no id is used up."""
    try:
        areas = m.template_areas(template)
    except WsfsClientError as exc:
        fail(str(exc))
    if not inputs:
        return None
    area = next((a for a, kind in areas.items() if kind == "input"), None)
    if area is None:
        fail(f"template {template or 'default'} has no input area for --input (its areas: "
             + ", ".join(f"{a} ({k})" for a, k in areas.items()) + ")")
    return area


def _copy_inputs(paths, dest: Path) -> None:
    """Copy inputs into the job's input area with a progress bar on a terminal: a file as itself,
    a directory's contents (``--input album/`` and ``--input album`` both give ``input/*.wav``)."""
    files = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files += [(p, dest / p.relative_to(path)) for p in sorted(path.rglob("*")) if p.is_file()]
        else:
            files.append((path, dest / path.name))
    total = sum(src.stat().st_size for src, _ in files)
    with click.progressbar(length=total, label="copying inputs", file=sys.stderr,
                           show_pos=False) as bar:
        for src, dst in files:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            shutil.copystat(src, dst)
            bar.update(src.stat().st_size)


@main.command()
@click.argument("job", required=False)
@click.option("--template", "-t", default=None, help="The template naming the job's areas.")
@click.option("--quota", default=None, help="Bytes the job may use, e.g. 10G.")
@click.option("--max-files", type=int, default=None, help="Files the job may hold.")
@click.option("--input", "inputs", multiple=True, type=click.Path(exists=True),
              help="A file, or a directory's contents, to copy into the template's input area (repeatable).")
@click.option("--git", "git_repo", type=click.Path(exists=True, file_okay=False), default=None,
              help="Make src/ a git worktree of this repository (template dev unless --template).")
@click.option("--branch", default=None, help="With --git: the new branch (default wsfs/JOB).")
@click.option("--base", default=None, help="With --git: the commit to start from (default the repo's branch).")
@click.option("--copy-data", "copy_data", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="A data directory to copy into data/ (repeatable).")
@click.option("--include", "includes", multiple=True, help="With --copy-data: only paths matching this glob.")
@click.option("--exclude", "excludes", multiple=True, help="With --copy-data: skip paths matching this glob.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="A label for the job (repeatable).")
@click.option("--max-running", default=None, help="The job's lease, e.g. 14d (default: its template's).")
@click.option("--json", "as_json", is_flag=True, help="Print {job, path} as JSON instead of the path.")
@mount_option
def create(job, template, quota, max_files, inputs, git_repo, branch, base, copy_data, includes, excludes,
           labels, max_running, as_json, mount):
    """Create a job's workspace and print its path (an id is generated when JOB is omitted).

    \b
    Examples:
      cd "$(wsfs create render-42 --input scene.blend)"
      wsfs create feat-x --git ~/proj --copy-data ~/proj/data/knowledge --exclude '*.tmp'
    """
    m = live_mount(mount)
    if git_repo or copy_data:
        from .cli_devspace import create_development_workspace
        create_development_workspace(m, job, template=template, quota=quota, max_files=max_files,
                                     repo=git_repo, branch=branch, base=base, copy_data=copy_data,
                                     includes=includes, excludes=excludes, as_json=as_json)
        return
    if branch or base or includes or excludes:
        fail("--branch and --base go with --git; --include and --exclude with --copy-data", 2)
    ws = _create_checked(m, job, template, quota, max_files, inputs, labels=_labels(labels),
                         extra={"max_running": max_running} if max_running else None)
    click.echo(json.dumps({"job": ws.job, "path": str(ws.path)}, sort_keys=True) if as_json else str(ws.path))


def _labels(labels) -> dict[str, str]:
    """``--label K=V`` (repeatable) -> {K: V}."""
    out = {}
    for label in labels:
        key, eq, value = label.partition("=")
        if not eq or not key:
            fail(f"--label {label!r}: KEY=VALUE", 2)
        out[key] = value
    return out


def _create_checked(m: Mount, job, template, quota, max_files, inputs, owner: int | None = None,
                    labels: dict[str, str] | None = None, extra: dict | None = None):
    """Make a job after every check that can come first (id, template, input area, inputs), then
    copy the inputs; a copy that fails ends the job ``failed`` and exits 1."""
    if job is not None and not JOB_ID_RE.fullmatch(job):
        fail(f"bad job id {job[:64]!r}: 1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit")
    area = _input_area(m, template, inputs)
    for path in inputs:
        if not os.access(path, os.R_OK):
            fail(f"cannot read input {path}")
    try:
        ws = m.create(job, template=template, quota=quota, max_files=max_files, owner=owner, labels=labels,
                      extra=extra)
    except WsfsClientError as exc:
        fail(str(exc))
    if inputs and area is not None:  # with inputs, _input_area found the area or failed
        try:
            _copy_inputs(inputs, ws.area(area))
        except OSError as exc:
            reason = f"copying inputs failed: {exc.strerror or exc}"
            try:
                ws.fail(reason)
            except WsfsClientError:
                pass
            fail(f"{reason}; job {ws.job} marked failed")
    return ws


def _list_rows(records):
    now = time.time()
    rows = []
    for r in records:
        expiry = r.get("expires_at")
        rows.append([
            r["id"], r["state"] + (" (purged)" if r.get("purged_at") else " (hidden)" if r.get("hidden") else ""),
            r.get("stage") or "-",
            format_duration(now - r["created"]),
            f"{format_size(r['usage']['bytes'])}/{r['usage']['files']}f",
            # A running job's expiry is its lease's end (max_running), an ended one's its retention.
            "-" if expiry is None else ("due" if expiry <= now else "in " + format_duration(expiry - now))
            + (" (lease)" if expiry is not None and r["state"] == "running" else ""),
            _date(r.get("purge_at")),
            _publish_cell(r.get("publish")),
        ])
    return rows


def _date(when: float | None) -> str:
    return "-" if when is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(when))


def _publish_cell(publish: dict | None) -> str:
    """The PUBLISH column: -, pending, done, or failed with the attempts made."""
    if not publish:
        return "-"
    if publish["status"] == "failed":
        return f"FAILED ({publish.get('attempts', 0)} attempts)"
    if publish["status"] == "pending" and publish.get("attempts"):
        return f"pending (retry {publish['attempts']})"
    return publish["status"] + (" (deleted)" if publish.get("deleted_at") else "")


STATE_COLOURS = {"running": "cyan", "completed": "green", "failed": "red", "cancelled": "yellow",
                 "crashed": "magenta", "archived": "bright_black"}


def _records(mount) -> list[dict]:
    """Job records: through the mount, or read-only from the store when none is mounted."""
    try:
        m = Mount(mount)
        return m.check().jobs()
    except WsfsClientError as exc:
        # Several mounts (the user must say which), or a mount whose daemon is gone: its store
        # may be any data dir, so none is read in its place.
        if exc.errno is None or exc.errno == errno.ENOTCONN:
            fail(str(exc))
        problem = str(exc)
    from ..core.store import Store

    data = os.environ.get("WSFS_DATA") or default_data_dir()
    store_path = os.path.join(data, "store")
    if not os.path.exists(os.path.join(store_path, "data.mdb")):
        fail(f"{problem}; and there is no store at {store_path} to read instead")
    store = Store(store_path, readonly=True)
    try:
        with store.read() as r:
            return [record.to_stored() for record in r.jobs()]
    finally:
        store.close()


@main.command(name="list")
@click.option("--state", "states", multiple=True, type=click.Choice(LIVE_STATES + ("archived",)),
              help="Only jobs in this state (repeatable).")
@click.option("--all", "show_all", is_flag=True, help="Archived, hidden and purged jobs too.")
@click.option("--publish", "publish_states", multiple=True, type=click.Choice(["pending", "done", "failed"]),
              help="Only jobs whose publishing is in this state (repeatable); any tree or none.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Only jobs with this label (repeatable; VALUE may be a glob).")
@click.option("--user", "user", default=None, help="Only this user's jobs (a name or a uid).")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.argument("patterns", nargs=-1)
@mount_option
def list_jobs(states, show_all, publish_states, labels, user, as_json, patterns, mount):
    """List jobs with state, stage, age, usage, expiry (a running job's: its lease) and publishing.

    PATTERNS are globs on job ids.

    \b
    Examples:
      wsfs list --state failed
      wsfs list --publish failed
      wsfs list 'slurm-*' --label partition=gpu
    """
    import fnmatch

    records = _records(mount)
    if user is not None:
        import pwd

        try:
            uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
        except KeyError:
            fail(f"no user {user!r}", 2)
        records = [r for r in records if r.get("uid") == uid]
    if patterns:
        records = [r for r in records if any(fnmatch.fnmatchcase(r["id"], p) for p in patterns)]
    for label in labels:
        key, eq, value = label.partition("=")
        if not eq:
            fail(f"--label {label!r}: KEY=VALUE", 2)
        records = [r for r in records if key in (r.get("labels") or {})
                   and fnmatch.fnmatchcase(r["labels"][key], value)]
    if publish_states:
        records = [r for r in records if (r.get("publish") or {}).get("status") in publish_states]
    if states:
        records = [r for r in records if r["state"] in states]
    elif not show_all and not publish_states:
        records = [r for r in records if r["state"] in LIVE_STATES and not r.get("hidden") and r.get("where")]
    records.sort(key=lambda r: r["created"])
    if as_json:
        click.echo(json.dumps(records, indent=2, sort_keys=True))
        return
    if not records:
        click.echo("no jobs", err=True)
        return
    header = ["JOB", "STATE", "STAGE", "AGE", "USAGE", "EXPIRES", "PURGE", "PUBLISH"]
    rows = _list_rows(records)
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for record, row in zip(records, rows, strict=True):
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=True)]
        cells[1] = click.style(cells[1], fg=STATE_COLOURS.get(record["state"]))
        click.echo("  ".join(cells).rstrip())


@main.command()
@click.argument("job", shell_complete=complete_jobs)
@click.option("--json", "as_json", is_flag=True, help="The whole record as JSON.")
@click.option("--receipt", "receipt", is_flag=True,
              help="Print the job's receipt, also once its tree is gone (archived, purged, published).")
@mount_option
def show(job, as_json, receipt, mount):
    """Show one job: state, times, stages, usage and where its files are.

    \b
    Examples:
      wsfs show render-42 --json | jq .usage
      wsfs show render-42 --receipt | jq '.outputs[].sha256'
    """
    try:
        m = Mount(mount)
    except WsfsClientError as exc:
        fail(str(exc))
    if receipt:
        try:
            document = m.receipt(job)
        except WsfsClientError as exc:
            fail(str(exc))
        click.echo(json.dumps(document, sort_keys=True) if as_json else json.dumps(document, indent=2, sort_keys=True))
        return
    try:
        with open(m.job_dir(job) / ".job") as f:
            record = json.load(f)
        path = str(m.job_dir(job))
    except (WsfsClientError, OSError):
        matches = [r for r in _records(mount) if r["id"] == job]
        if not matches:
            fail(f"no job {job}")
        record, path = matches[0], None
    if as_json:
        click.echo(json.dumps(record, indent=2, sort_keys=True))
        return
    lines = [("job", record["id"]), ("state", record["state"] + (" (hidden)" if record.get("hidden") else "")),
             ("template", record.get("template")), ("path", path or "-"),
             ("stage", record.get("stage") or "-"), ("reason", record.get("reason") or "-"),
             ("owner", f"uid {record.get('uid')}" + (f", pid {record['owner']['pid']}" if record.get("owner")
                                                      else "")),
             ("created", record.get("created_iso") or record.get("created")),
             ("ended", record.get("ended_iso") or record.get("ended") or "-"),
             ("usage", f"{format_size(record['usage']['bytes'])} in {record['usage']['files']} files"),
             ("publish", _publish_cell(record.get("publish"))
              + (f": {record['publish']['error']}" if (record.get("publish") or {}).get("error") else ""))]
    if record.get("git"):  # a development workspace (README "Parallel development workspaces")
        git_info = record["git"]
        lines.append(("git", f"{git_info.get('repo')} on {git_info.get('branch')} from {git_info.get('base')}"))
    if record.get("origin"):
        lines.append(("origin", f"cloned from {record['origin']}"))
    for key, value in sorted((record.get("labels") or {}).items()):
        lines.append(("label", f"{key}={value}"))
    for key, access in sorted((record.get("shares") or {}).items()):
        lines.append(("shared", f"{sharee_name(key)} ({'read-write' if access == 'rw' else 'read-only'})"))
    if record.get("state") == "running" and record.get("expires_at"):
        lines.append(("lease", f"ends {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record['expires_at']))}"
                               f" (extended {record.get('extensions') or 0} times)"))
    for stage in record.get("stages") or []:
        dropped = f"  (dropped {', '.join(a + '/' for a in stage['dropped'])})" if stage.get("dropped") else ""
        lines.append(("  stage", stage["name"] + dropped))
    for key, value in lines:
        click.echo(f"{key:>10}  {value}")


@main.command()
@click.argument("job", shell_complete=complete_jobs)
@click.argument("word", type=click.Choice(["completed", "failed", "cancelled", "archived", "stage", "owner"]))
@click.argument("reason", nargs=-1)
@click.option("--force", is_flag=True,
              help="A git workspace with unsaved work: end it anyway, keeping a bundle and a patch first.")
@mount_option
def state(job, word, reason, force, mount):
    """Change a job's state (the same as writing WORD to its .state).

    A git workspace (wsfs create --git) is not completed, cancelled or
    archived while src/ has uncommitted changes or commits on no other branch,
    unless --force; archiving one prunes its worktree and deletes its branch
    if merged (README "Parallel development workspaces").

    \b
    Examples:
      wsfs state render-42 completed
      wsfs state render-42 failed "out of memory"
    """
    m = live_mount(mount)
    if word in ("completed", "cancelled", "archived"):
        from .cli_devspace import end_if_development_workspace
        if end_if_development_workspace(m, job, word, " ".join(reason) or None, force):
            return
    try:
        m.set_state(job, word, " ".join(reason) or None)
    except WsfsClientError as exc:
        fail(str(exc))
    click.echo(f"{job}: {word}" + (f" {' '.join(reason)}" if reason else ""))


def _duration(text: str, option: str) -> float:
    from ..core.units import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError:
        seconds = None
    if seconds is None:
        fail(f"bad {option} {text!r}: a duration such as 30s or 2m", 2)
    return seconds


def _expand(command, ws, areas: dict[str, str]) -> list[str]:
    """``{output}/out.flac`` -> the workspace's path: placeholders in the command's arguments."""
    values = {"workspace": str(ws.path), "job": ws.job, **{a: str(ws.path / a) for a in areas}}
    for kind in ("input", "output", "temp"):  # by kind too, whatever the template names them
        named = next((a for a, k in areas.items() if k == {"output": "keep", "temp": "scratch"}.get(kind, kind)),
                     None)
        if kind not in values and named is not None:
            values[kind] = str(ws.path / named)
    expanded = []
    for arg in command:
        for name, value in values.items():
            arg = arg.replace("{" + name + "}", value)
        expanded.append(arg)
    return expanded


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--job", default=None, help="The job id (generated when omitted).")
@click.option("--template", "-t", default=None, help="The template naming the job's areas.")
@click.option("--quota", default=None, help="Bytes the job may use, e.g. 10G.")
@click.option("--input", "inputs", multiple=True, type=click.Path(exists=True),
              help="A file, or a directory's contents, to copy into the input area first (repeatable).")
@click.option("--here", is_flag=True, help="Run in this directory instead of in the workspace.")
@click.option("--kill-after", default="10s", show_default=True,
              help="After SIGTERM or SIGINT, how long the command has before SIGKILL.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@mount_option
def run(job, template, quota, inputs, here, kill_after, command, mount):
    """Run COMMAND in a new job's workspace; exit 0 completes the job, anything else fails it.

    The command runs in the workspace (or, with --here, in this directory)
    with WSFS_JOB, WSFS_WORKSPACE and WSFS_<AREA> (WSFS_INPUT, WSFS_OUTPUT,
    WSFS_TEMP ...) set.  Its arguments may name the workspace with
    placeholders, which wsfs expands (your shell would expand $WSFS_OUTPUT
    before the job exists): {workspace}, {job}, {input}, {output}, {temp}
    and {AREA} for each area of the template.

    SIGTERM, SIGINT or SIGHUP (scancel, a time limit, Ctrl-C, systemctl stop)
    go to the command, and the job ends cancelled with the signal as its
    reason; a command still running --kill-after later is killed.  wsfs exits
    with the command's status (128+N after signal N), or 1 when the job did
    not end the way that status says (quarantined or ended meanwhile).

    \b
    Examples:
      wsfs run --job transcode-7 --input in.wav -- ffmpeg -i input/in.wav output/out.flac
      wsfs run --here -- ffmpeg -i in.wav {output}/out.flac
    """
    grace = _duration(kill_after, "--kill-after")
    m = live_mount(mount)
    ws = _create_checked(m, job, template, quota, None, inputs, owner=os.getpid())
    areas = ws.info().get("areas") or {}
    path = ws.path
    env = dict(os.environ, WSFS_JOB=ws.job, WSFS_WORKSPACE=str(path), WSFS_MOUNT=str(m.path))
    for area in areas:
        env[f"WSFS_{area.upper()}"] = str(path / area)
    argv = _expand(command, ws, areas)
    try:
        child = subprocess.Popen(argv, cwd=None if here else path, env=env)
    except OSError as exc:
        ws.fail(f"could not start {argv[0]}: {exc.strerror}")
        fail(f"could not start {argv[0]}: {exc.strerror}", 127 if exc.errno == 2 else 126)
    status, signalled = _wait_forwarding(child, grace)
    sys.exit(_end_run(ws, status, signalled))


def _wait_forwarding(child: subprocess.Popen, grace: float) -> tuple[int, int | None]:
    """Wait for ``child``, forwarding SIGTERM, SIGHUP and (unless it came from our terminal, which
    sent it to the child too) SIGINT; SIGKILL it ``grace`` seconds after the first.  Returns
    (the child's wait status as Popen gives it, the signal that ended our wait or None)."""
    got: list[int] = []

    def forward(signum, _frame):
        first = not got
        got.append(signum)
        from_terminal = signum == signal.SIGINT and _in_foreground()
        if not from_terminal:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)
        if first:
            timer = threading.Timer(grace, lambda: None if child.poll() is not None else child.kill())
            timer.daemon = True
            timer.start()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    while True:
        try:
            return child.wait(), (got[0] if got else None)
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue


def _in_foreground() -> bool:
    """Is this process in the foreground process group of its terminal (Ctrl-C reached us all)?"""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError):
        return False


def _end_run(ws, status: int, signalled: int | None) -> int:
    """End the job as the command ended; the exit status that tells the truth about both."""
    if signalled is not None:
        word, reason, code = "cancelled", signal.Signals(signalled).name, 128 + signalled
    elif status == 0:
        word, reason, code = "completed", None, 0
    elif status < 0:
        word, reason, code = "failed", f"killed by {signal.Signals(-status).name}", 128 - status
    else:
        word, reason, code = "failed", f"exit status {status}", status
    try:
        ws.set_state(word, reason)
    except WsfsClientError as exc:
        try:
            now = ws.state
        except (OSError, WsfsClientError):
            now = "unknown"
        click.echo(f"wsfs: job {ws.job} did not end {word} ({exc}); it is {now}", err=True)
        return code or 1
    return code


def _control_job(mount, verb: str, job: str) -> None:
    m = live_mount(mount)
    try:
        m.control(f"{verb} {job}", job=job)
    except WsfsClientError as exc:
        fail(str(exc))


def _job_control_command(verb: str, done: str, help_text: str) -> None:
    """``wsfs VERB JOB``: one ``VERB JOB`` control command, then ``JOB: done``."""
    @main.command(name=verb, help=help_text)
    @click.argument("job", shell_complete=complete_jobs)
    @mount_option
    def command(job, mount):
        _control_job(mount, verb, job)
        click.echo(f"{job}: {done}")


_job_control_command("restore", "restored", """Bring back a job that retention hid (its files were kept); its
    retention starts over.

    \b
    Example:
      wsfs restore render-42
    """)
_job_control_command("resume", "running again", """Run a failed or crashed job again: its tree comes back to
    workspaces/, unsealed, files kept.

    \b
    Example:
      wsfs resume transcode-7
    """)


PUBLISH_POLL = 0.2


def _publish_record(m: Mount, job: str) -> dict | None:
    """The job's record: its ``.job`` while it has a workspace, else its line of ``.wsfs/jobs``."""
    try:
        with open(m.job_dir(job) / ".job") as f:
            return json.load(f)
    except (WsfsClientError, OSError, ValueError):
        pass
    return next((r for r in m.jobs() if r["id"] == job), None)


@main.command()
@click.argument("job", shell_complete=complete_jobs)
@click.option("--retry", is_flag=True, help="Start a failed publish over (or publish a finished one again).")
@click.option("--no-wait", is_flag=True, help="Return once it is queued instead of waiting for the outcome.")
@mount_option
def publish(job, retry, no_wait, mount):
    """Run publishing now for a completed job (its targets and hooks), and wait for the outcome.

    A job whose publishing is under way (queued by its completion) or done is
    not published again: this waits for, or reports, that outcome.  Exit 0
    when everything was published, 1 when it failed (the workspace is kept;
    --retry starts over).

    \b
    Examples:
      wsfs publish render-42
      wsfs list --publish failed
      wsfs publish render-42 --retry
    """
    m = live_mount(mount)
    record = _publish_record(m, job)
    status = ((record or {}).get("publish") or {}).get("status")
    # Done or under way already (a completion queues it): wait for, or report, that outcome.
    if retry or status not in ("done", "pending"):
        try:
            m.control(f"publish {job}" + (" retry" if retry else ""), job=job)
        except WsfsClientError as exc:
            fail(str(exc))
    if no_wait:
        click.echo(f"{job}: publishing queued")
        return
    try:
        while True:
            record = _publish_record(m, job)
            publish_ = (record or {}).get("publish") or {}
            if publish_.get("status") != "pending":
                break
            time.sleep(PUBLISH_POLL)
    except KeyboardInterrupt:
        fail(f"{job}: still publishing in the background (see wsfs show {job})", 130)
    for target in publish_.get("targets", []):
        line = f"  {target['area']}/ -> {target.get('dest') or target['to']} ({target['mode']}): {target['status']}"
        click.echo(line + (f": {target['error']}" if target.get("error") and target["status"] != "done" else ""))
    for name, hook in sorted(publish_.get("hooks", {}).items()):
        click.echo(f"  {name}: {hook['status']}" + (f": {hook['error']}" if hook.get("error") else ""))
    if publish_.get("status") != "done":
        fail(f"{job}: publishing {publish_.get('status')}: {publish_.get('error')}")
    click.echo(f"{job}: published" + (" (workspace deleted)" if publish_.get("deleted_at") else ""))


@main.command()
@click.option("--dry-run", "-n", is_flag=True, help="Say what would be done, and why; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@mount_option
def sweep(dry_run, as_json, mount):
    """Run the retention sweep now: hide expired jobs, purge hidden ones, crash orphaned ones.

    \b
    Example:
      wsfs sweep --dry-run
    """
    m = live_mount(mount)
    before = max((e["seq"] for e in m.events()), default=0)
    purges = 0 if dry_run else _due_purges(m)
    try:
        if purges and interactive():
            _control_with_progress(m, "sweep", before, purges, "purging")
        else:
            m.control("sweep dry-run" if dry_run else "sweep")
    except WsfsClientError as exc:
        fail(str(exc))
    report = _report_after(m, before, "sweep", dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    verb = {"hide": "would hide", "purge": "would purge", "skip": "would skip", "crash": "would crash",
            "empty-trash": "would empty"} if dry_run else \
        {"hide": "hidden", "purge": "purged", "skip": "skipped", "crash": "crashed", "empty-trash": "emptied"}
    pressure = report.get("pressure")
    if pressure:
        click.echo(f"disk pressure: {format_size(pressure['free_before'])} free, min_free "
                   f"{format_size(pressure['min_free'])}"
                   + ("" if dry_run else f"; {format_size(pressure['free_after'])} free after"))
    for action in report["actions"]:
        line = f"{action.get('job') or 'trash'}: {verb.get(action['action'], action['action'])} ({action['why']})"
        if action.get("error"):
            line += f": FAILED: {action['error']}"
        click.echo(line)
    counts = ", ".join(f"{n} {k}" for k, n in sorted(report["counts"].items())) or "nothing due"
    click.echo(f"sweep{' (dry run)' if dry_run else ''}: {counts} in {report['duration_ms']:.1f} ms")


def _report_after(m: Mount, before: int, kind: str, **fields) -> dict:
    """The report a control command left as a ``kind`` event (``sweep``, ``doctor``) after event
    ``before``, with ``fields`` as given."""
    for event in m.events():
        if event["kind"] == kind and event["seq"] > before and all(event.get(k) == v for k, v in fields.items()):
            return event
    fail(f"{kind} ran but its report was not found in .wsfs/events")


def interactive() -> bool:
    """Progress bars only for a person watching (stderr is a terminal)."""
    return sys.stderr.isatty()


def _due_purges(m: Mount) -> int:
    """Hidden jobs whose grace is over: what the next sweep purges (from ``.wsfs/jobs``)."""
    now = time.time()
    try:
        return sum(1 for r in m.jobs() if r.get("hidden") and r.get("where") and r.get("expires_at") is not None
                   and r["expires_at"] <= now)
    except (OSError, ValueError):
        return 0


def _control_with_progress(m: Mount, line: str, before: int, total: int, label: str) -> None:
    """Write a control command from a thread; meanwhile count its ``purged`` events into a progress bar."""
    outcome: dict = {}

    def work():
        try:
            m.control(line)
        except WsfsClientError as exc:
            outcome["error"] = exc
    worker = threading.Thread(target=work, name="wsfs-control", daemon=True)
    worker.start()
    done = 0
    with click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True) as bar:
        while worker.is_alive():
            worker.join(0.2)
            try:
                seen = sum(1 for e in m.events() if e["seq"] > before and e["kind"] == "purged")
            except (OSError, ValueError):
                continue
            if min(seen, total) > done:
                bar.update(min(seen, total) - done)
                done = min(seen, total)
        bar.update(total - done)
    if "error" in outcome:
        raise outcome["error"]


@main.command()
@click.option("--json", "as_json", is_flag=True, help="The whole of .wsfs/status as JSON.")
@mount_option
def status(as_json, mount):
    """Show the daemon's status: version, uptime, jobs by state, usage, free space, last sweep, counters.

    \b
    Example:
      wsfs status --json | jq .jobs
    """
    st = live_mount(mount).status()
    if as_json:
        click.echo(json.dumps(st, indent=2, sort_keys=True))
        return
    jobs = ", ".join(f"{n} {s}" for s, n in sorted(st.get("jobs", {}).items())) or "none"
    used = st.get("used", {})
    counters = st.get("counters", {})
    last = st.get("last_sweep")
    if last:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(last.get("counts", {}).items())) or "nothing due"
        last_text = f"{format_duration(time.time() - last['at'])} ago: {counts}"
    else:
        last_text = f"not yet (every {format_duration(st.get('sweep_interval_s'))})"
    lines = [
        ("wsfs", f"{st.get('version')} on {st.get('mountpoint')} (pid {st.get('pid')}, "
                 f"up {format_duration(st.get('uptime_s', 0))})"),
        ("data", st.get("data_dir")),
        ("fuse", _fuse_cell(st.get("fuse"))),
        ("jobs", jobs),
        ("used", f"{format_size(used.get('bytes', 0))} in {used.get('files', 0)} files"),
        ("free", f"{format_size(st.get('free_bytes', 0))} of {format_size(st.get('total_bytes', 0))}"),
        ("last sweep", last_text),
        ("rejected", f"{counters.get('rejected_writes', 0)} writes"),
        ("failed", f"{counters.get('failed_removals', 0)} removals"),
        ("trash", f"{st.get('trash_entries', 0)} entries waiting"),
    ]
    for key, value in lines:
        click.echo(f"{key:>10}  {value}")


def _fuse_cell(fuse: dict | None) -> str:
    """``libfuse 3.17.2, passthrough on, readdirplus on, POSIX ACLs on`` (``-`` from an older daemon);
    passthrough is ``on``, ``reads`` (writes come to the daemon) or ``off``."""
    if not fuse:
        return "-"
    def word(key):
        value = fuse.get(key)
        return value if isinstance(value, str) else "on" if value else "off"
    return (f"libfuse {fuse.get('libfuse')}, passthrough {word('passthrough')}, readdirplus {word('readdirplus')}, "
            f"POSIX ACLs {word('posix_acl')}")


EVENT_COLOURS = {"rejected": "red", "crashed": "magenta", "purged": "yellow", "hidden": "yellow",
                 "transition": "green", "created": "cyan", "doctor": "blue", "recovered": "magenta",
                 "hook": "blue", "published": "green", "publish-error": "red"}
FOLLOW_INTERVAL = 0.5


def _event_detail(event: dict) -> str:
    kind = event["kind"]
    extra = {k: v for k, v in event.items() if k not in ("seq", "t", "kind", "job")}
    if kind == "transition":
        text = f"{extra.pop('from', '?')} -> {extra.pop('to', '?')}"
        reason = extra.pop("reason", None)
        return text + (f" ({reason})" if reason else "")
    if kind == "created":
        return f"template {extra.get('template')}, uid {extra.get('uid')}"
    if kind == "stage":
        return f"stage {extra.get('stage')}"
    if kind == "rejected":
        return f"{extra.get('via')} {extra.get('command')!r}: {extra.get('errno')}: {extra.get('reason')}"
    if kind == "sweep":
        counts = ", ".join(f"{n} {k}" for k, n in sorted(extra.get("counts", {}).items())) or "nothing due"
        return f"{'dry run: ' if extra.get('dry_run') else ''}{counts} in {extra.get('duration_ms', 0):.1f} ms"
    if kind == "hook":
        text = f"{extra.get('hook')}: " + (f"failed: {extra['error']}" if extra.get("error") else "ok")
        output = (extra.get("output") or "").strip().splitlines()
        return text + (f" | {output[-1]}" if output else "")
    if kind == "published":
        return f"{extra.get('area')}/ -> {extra.get('dest')} ({extra.get('mode')}, {extra.get('outcome')})"
    if kind == "doctor":
        text = f"{extra.get('problems', 0)} problem(s)"
        if extra.get("repair"):
            text += f", {len(extra.get('actions', []))} repair(s), {extra.get('remaining', 0)} left"
        return text
    return " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(extra.items()))


def event_line(event: dict) -> str:
    """One readable line: local time, kind, job, details."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event["t"]))
    kind = click.style(f"{event['kind']:<10}", fg=EVENT_COLOURS.get(event["kind"]))
    return f"{when}  {kind}  {event.get('job') or '-':<16}  {_event_detail(event)}".rstrip()


@main.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option("--job", default=None, shell_complete=complete_jobs, help="Only this job's events.")
@click.option("--lines", "-n", type=click.IntRange(min=0), default=20, show_default=True,
              help="How many of the latest events to print first (0: all the mount keeps).")
@click.option("--json", "as_json", is_flag=True, help="The raw JSON lines of .wsfs/events.")
@mount_option
def events(follow, job, lines, as_json, mount):
    """Print the mount's latest events: creations, transitions, sweeps, rejected writes ...

    \b
    Examples:
      wsfs events --job render-42
      wsfs events --follow --json | jq -c 'select(.kind == "rejected")'
    """
    m = live_mount(mount)

    def show(batch):
        for event in batch:
            if job is None or event.get("job") == job:
                click.echo(json.dumps(event, sort_keys=True) if as_json else event_line(event))

    def read():
        try:
            return m.events()
        except (OSError, ValueError) as exc:
            fail(f"cannot read {m.path}/.wsfs/events: {getattr(exc, 'strerror', None) or exc}")

    batch = read()
    last = batch[-1]["seq"] if batch else 0
    if job is not None:
        batch = [e for e in batch if e.get("job") == job]
    show(batch[-lines:] if lines else batch)
    if not follow:
        return
    try:
        while True:
            time.sleep(FOLLOW_INTERVAL)
            new = [e for e in read() if e["seq"] > last]
            if not new:
                continue
            if last and new[0]["seq"] > last + 1:
                click.echo(f"wsfs: {new[0]['seq'] - last - 1} events came and went between two reads", err=True)
            last = new[-1]["seq"]
            show(new)
    except KeyboardInterrupt:
        pass


def _finding_line(finding: dict) -> str:
    kind = click.style(finding["kind"], fg="yellow")
    return f"{kind}: {finding['job']}: {finding['detail']}" if finding.get("job") else f"{kind}: {finding['detail']}"


def _doctor_offline(data_dir: str, config_file: str | None, repair: bool) -> dict:
    """``doctor`` with no daemon: take the data dir's lock, open the store ourselves."""
    from ..core import doctor as doctor_mod
    from ..core.errors import StoreError
    from ..core.lifecycle import open_data_dir
    from ..fuse import daemon as daemon_mod

    store_path = os.path.join(data_dir, "store")
    if not os.path.exists(os.path.join(store_path, "data.mdb")):
        fail(f"{data_dir} is not a wsfs data dir (it has no store/)")
    try:
        config = load_config(config_file)
    except ConfigError as exc:
        fail(str(exc), 2)
    try:
        lock_fd = daemon_mod.lock_data_dir(data_dir)
    except MountError:
        fail(_served_by(data_dir, store_path))
    except OSError as exc:
        fail(f"cannot lock {data_dir}: {exc.strerror}")
    try:
        try:
            service = open_data_dir(data_dir, config)
        except StoreError as exc:
            fail(str(exc))
        try:
            report = doctor_mod.run(service, repair_too=repair)
        finally:
            service.close()
    finally:
        os.close(lock_fd)
    return report.as_dict(limit=1 << 30)


def _served_by(data_dir: str, store_path: str) -> str:
    from ..core.store import Store

    mount = {}
    try:
        store = Store(store_path, readonly=True)
        try:
            with store.read() as r:
                mount = r.meta("mount", {})
        finally:
            store.close()
    except Exception:  # noqa: BLE001 - only for a better message
        pass
    where = mount.get("mountpoint")
    return (f"data dir {data_dir} is in use by a running wsfs daemon (pid {mount.get('pid', '?')}"
            f"{', mounted on ' + where if where else ''}): "
            + (f"run `wsfs doctor --mount {where}`" if where else "run wsfs doctor through its mount (--mount)"))


@main.command()
@click.option("--repair", is_flag=True, help="Fix what was found, and say what was done.")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Check this data dir with no daemon running (doctor takes its lock).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="With --data: the TOML config (templates for adopted trees).")
@mount_option
def doctor(repair, as_json, data_dir, config_file, mount):
    """Compare the store with the data dir: orphan trees, missing trees, manifests, trash, reader slots.

    Through the mount when a daemon serves it (the daemon does the work),
    else on the data dir directly (--data, default $WSFS_DATA or the default
    data dir).  Exit 0 when everything is clean, 1 when problems were found
    (even when --repair fixed them; run it again to check).

    \b
    Examples:
      wsfs doctor
      wsfs doctor --repair
      wsfs doctor --data /var/lib/wsfs     # with the daemon stopped
    """
    live = False
    if data_dir is None:
        try:
            m = Mount(mount)
            m.check()
            live = True
        except WsfsClientError as exc:
            data_dir = os.environ.get("WSFS_DATA") or default_data_dir()
            if not os.path.exists(os.path.join(data_dir, "store", "data.mdb")):
                fail(f"{exc} and {data_dir} has no store: give --mount or --data")
    if live:
        before = max((e["seq"] for e in m.events()), default=0)
        try:
            m.control("doctor repair" if repair else "doctor")
        except WsfsClientError as exc:
            fail(str(exc))
        report = _report_after(m, before, "doctor", repair=repair)
    else:
        report = _doctor_offline(data_dir, config_file, repair)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        for finding in report["findings"]:
            click.echo(_finding_line(finding))
        if len(report["findings"]) < report["problems"]:
            click.echo(f"... and {report['problems'] - len(report['findings'])} more (see --json)")
        for action in report["actions"]:
            click.echo(f"{click.style('repaired', fg='green')}: {action}")
        if not report["problems"]:
            click.echo(click.style("doctor: clean", fg="green"))
        else:
            counts = ", ".join(f"{n} {k}" for k, n in sorted(report["counts"].items()))
            line = f"doctor: {report['problems']} problem(s) ({counts})"
            if report["repair"]:
                line += f"; after repair {report['remaining']} left"
            else:
                line += "; `wsfs doctor --repair` fixes them"
            click.echo(line)
    sys.exit(1 if report["problems"] else 0)


@main.command(name="config")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="The TOML file to read (default: /etc/wsfs/wsfs.toml when present).")
def show_config(config_file):
    """Print the effective configuration (defaults filled in) as JSON.

    \b
    Example:
      wsfs config --config /etc/wsfs/scratch.toml
    """
    import dataclasses

    try:
        config = load_config(config_file)
    except ConfigError as exc:
        fail(str(exc), 2)
    shown = {k: v for k, v in dataclasses.asdict(config).items() if not k.startswith("_")}
    click.echo(json.dumps(shown, indent=2, sort_keys=True, default=str))


from . import cli_devspace  # noqa: E402,F401 - registers clone, sync, merge, prune-worktrees on main

if __name__ == "__main__":
    main()
