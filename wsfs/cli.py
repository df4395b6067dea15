"""The ``wsfs`` command: sugar over the mount (SPEC §10).

Exit codes: 0 done, 1 error, 2 usage (click's own, and bad config).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from . import __version__
from .client import Mount, WsfsClientError, resolve_mount
from .config import ConfigError, load_config
from .daemon import MountError, default_data_dir, default_mountpoint
from .units import format_duration, format_size

LIVE_STATES = ("running", "completed", "failed", "cancelled", "crashed")


class JournalFormatter(logging.Formatter):
    """``<N>`` priority prefixes that journald reads from a service's stderr."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record):
        return f"<{self.PRIORITY.get(record.levelno, 6)}>" + super().format(record)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(threadName)s]: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)


def mount_option(func):
    return click.option("--mount", "mount", type=click.Path(file_okay=False), default=None,
                        help="The wsfs mount point (default: $WSFS_MOUNT, else "
                             f"{default_mountpoint()}).")(func)


def fail(message: str, code: int = 1):
    click.echo(f"wsfs: {message}", err=True)
    sys.exit(code)


def live_mount(path) -> Mount:
    try:
        return Mount(path).check()
    except WsfsClientError as exc:
        fail(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wsfs")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              help="How much the daemon and commands log.")
def main(log_level):
    """wsfs: a workspace filesystem for batch jobs.

    Mount it, `mkdir workspaces/JOB`, let any program write there, and
    `echo completed > workspaces/JOB/.state`.
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
    from . import daemon

    mountpoint = mountpoint or default_mountpoint()
    data_dir = data_dir or default_data_dir()
    try:
        config = load_config(config_file)
    except ConfigError as exc:
        fail(str(exc), 2)
    try:
        if foreground:
            sys.exit(daemon.serve(mountpoint, data_dir, config, allow_other=allow_other, debug=debug))
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
    from . import daemon

    mountpoint = mountpoint or str(resolve_mount(None))
    try:
        daemon.unmount(mountpoint, lazy=lazy)
    except MountError as exc:
        fail(str(exc))
    click.echo(f"unmounted {mountpoint}")


# -- jobs ---------------------------------------------------------------------------


def _copy_inputs(paths, dest: Path) -> None:
    """Copy inputs into the job's input/ with a progress bar on a terminal."""
    files = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files += [(p, dest / path.name / p.relative_to(path)) for p in sorted(path.rglob("*")) if p.is_file()]
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
              help="A file or directory to copy into input/ (repeatable).")
@mount_option
def create(job, template, quota, max_files, inputs, mount):
    """Create a job's workspace and print its path (an id is generated when JOB is omitted).

    \b
    Example:
      cd "$(wsfs create render-42 --input scene.blend)"
    """
    m = live_mount(mount)
    try:
        ws = m.create(job, template=template, quota=quota, max_files=max_files)
    except WsfsClientError as exc:
        fail(str(exc))
    if inputs:
        try:
            _copy_inputs(inputs, ws.input)
        except OSError as exc:
            reason = f"copying inputs failed: {exc.strerror or exc}"
            try:
                ws.fail(reason)
            except WsfsClientError:
                pass
            fail(f"{reason}; job {ws.job} marked failed")
    click.echo(str(ws.path))


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
            "-" if expiry is None else ("due" if expiry <= now else "in " + format_duration(expiry - now)),
        ])
    return rows


STATE_COLOURS = {"running": "cyan", "completed": "green", "failed": "red", "cancelled": "yellow",
                 "crashed": "magenta", "archived": "bright_black"}


def _records(mount) -> list[dict]:
    """Job records: through the mount, or read-only from the store when none is mounted."""
    m = Mount(mount)
    try:
        return m.check().jobs()
    except WsfsClientError:
        pass
    from .store import Store

    data = os.environ.get("WSFS_DATA") or default_data_dir()
    store_path = os.path.join(data, "store")
    if not os.path.exists(os.path.join(store_path, "data.mdb")):
        fail(f"{m.path} is not mounted and there is no store at {store_path}")
    store = Store(store_path, readonly=True)
    try:
        with store.read() as r:
            return list(r.jobs())
    finally:
        store.close()


@main.command(name="list")
@click.option("--state", "states", multiple=True, type=click.Choice(LIVE_STATES + ("archived",)),
              help="Only jobs in this state (repeatable).")
@click.option("--all", "show_all", is_flag=True, help="Archived, hidden and purged jobs too.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@mount_option
def list_jobs(states, show_all, as_json, mount):
    """List jobs with state, stage, age, usage and expiry.

    \b
    Example:
      wsfs list --state failed
    """
    records = _records(mount)
    if states:
        records = [r for r in records if r["state"] in states]
    elif not show_all:
        records = [r for r in records if r["state"] in LIVE_STATES and not r.get("hidden") and r.get("where")]
    records.sort(key=lambda r: r["created"])
    if as_json:
        click.echo(json.dumps(records, indent=2, sort_keys=True))
        return
    if not records:
        click.echo("no jobs", err=True)
        return
    header = ["JOB", "STATE", "STAGE", "AGE", "USAGE", "EXPIRES"]
    rows = _list_rows(records)
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for record, row in zip(records, rows):
        cells = [str(c).ljust(w) for c, w in zip(row, widths)]
        cells[1] = click.style(cells[1], fg=STATE_COLOURS.get(record["state"]))
        click.echo("  ".join(cells).rstrip())


@main.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="The whole record as JSON.")
@mount_option
def show(job, as_json, mount):
    """Show one job: state, times, stages, usage and where its files are.

    \b
    Example:
      wsfs show render-42 --json | jq .usage
    """
    m = Mount(mount)
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
             ("usage", f"{format_size(record['usage']['bytes'])} in {record['usage']['files']} files")]
    for stage in record.get("stages") or []:
        lines.append(("  stage", stage["name"]))
    for key, value in lines:
        click.echo(f"{key:>10}  {value}")


@main.command()
@click.argument("job")
@click.argument("word", type=click.Choice(["completed", "failed", "cancelled", "archived", "stage", "owner"]))
@click.argument("reason", nargs=-1)
@mount_option
def state(job, word, reason, mount):
    """Change a job's state (the same as writing WORD to its .state).

    \b
    Examples:
      wsfs state render-42 completed
      wsfs state render-42 failed "out of memory"
    """
    m = live_mount(mount)
    try:
        m.set_state(job, word, " ".join(reason) or None)
    except WsfsClientError as exc:
        fail(str(exc))
    click.echo(f"{job}: {word}" + (f" {' '.join(reason)}" if reason else ""))


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--job", default=None, help="The job id (generated when omitted).")
@click.option("--template", "-t", default=None, help="The template naming the job's areas.")
@click.option("--quota", default=None, help="Bytes the job may use, e.g. 10G.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@mount_option
def run(job, template, quota, command, mount):
    """Run COMMAND in a new job's workspace; exit 0 completes the job, anything else fails it.

    The command runs with its working directory in the workspace and
    WSFS_JOB, WSFS_WORKSPACE, WSFS_INPUT, WSFS_OUTPUT, WSFS_TEMP set; wsfs
    exits with the command's status.

    \b
    Example:
      wsfs run --job transcode-7 -- ffmpeg -i in.wav "$WSFS_OUTPUT/out.flac"
    """
    m = live_mount(mount)
    try:
        ws = m.create(job, template=template, quota=quota, owner=os.getpid())
    except WsfsClientError as exc:
        fail(str(exc))
    path = ws.path
    env = dict(os.environ, WSFS_JOB=ws.job, WSFS_WORKSPACE=str(path), WSFS_MOUNT=str(m.path))
    for area in ("input", "output", "temp"):
        if (path / area).is_dir():
            env[f"WSFS_{area.upper()}"] = str(path / area)
    try:
        child = subprocess.Popen(list(command), cwd=path, env=env)
    except OSError as exc:
        ws.fail(f"could not start {command[0]}: {exc.strerror}")
        fail(f"could not start {command[0]}: {exc.strerror}", 127 if exc.errno == 2 else 126)

    def forward(signum, _frame):
        child.send_signal(signum)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    status = child.wait()
    try:
        if status == 0:
            ws.complete()
        elif status < 0:
            ws.fail(f"killed by {signal.Signals(-status).name}")
        else:
            ws.fail(f"exit status {status}")
    except WsfsClientError as exc:
        click.echo(f"wsfs: could not end job {ws.job}: {exc}", err=True)
    sys.exit(128 - status if status < 0 else status)


def _control_job(mount, verb: str, job: str) -> None:
    m = live_mount(mount)
    try:
        m.control(f"{verb} {job}", job=job)
    except WsfsClientError as exc:
        fail(str(exc))


@main.command()
@click.argument("job")
@mount_option
def restore(job, mount):
    """Bring back a job that retention hid (its files were kept); its retention starts over.

    \b
    Example:
      wsfs restore render-42
    """
    _control_job(mount, "restore", job)
    click.echo(f"{job}: restored")


@main.command()
@click.argument("job")
@mount_option
def resume(job, mount):
    """Run a failed or crashed job again: its tree comes back to workspaces/, unsealed, files kept.

    \b
    Example:
      wsfs resume transcode-7
    """
    _control_job(mount, "resume", job)
    click.echo(f"{job}: running again")


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
    try:
        m.control("sweep dry-run" if dry_run else "sweep")
    except WsfsClientError as exc:
        fail(str(exc))
    reports = [e for e in m.events() if e["kind"] == "sweep" and e["seq"] > before and e["dry_run"] == dry_run]
    if not reports:
        fail("the sweep ran but its report was not found in .wsfs/events")
    report = reports[0]
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    verb = {"hide": "would hide", "purge": "would purge", "skip": "would skip", "crash": "would crash"} \
        if dry_run else {"hide": "hidden", "purge": "purged", "skip": "skipped", "crash": "crashed"}
    for action in report["actions"]:
        line = f"{action['job']}: {verb.get(action['action'], action['action'])} ({action['why']})"
        if action.get("error"):
            line += f": FAILED: {action['error']}"
        click.echo(line)
    counts = ", ".join(f"{n} {k}" for k, n in sorted(report["counts"].items())) or "nothing due"
    click.echo(f"sweep{' (dry run)' if dry_run else ''}: {counts} in {report['duration_ms']:.1f} ms")


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
    click.echo(json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
