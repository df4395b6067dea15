"""The Python API: wsfs through its mount, as any program would use it (docs/spec.md §10).

    from wsfs.client import Workspace

    with Workspace.create("/mnt/wsfs", "render-42") as ws:
        (ws.output / "frame.png").write_bytes(render())
    # completed on normal exit; failed, with the exception's text, otherwise

Everything goes through the mount's files (``.wsfs/control``, ``.state``);
nothing here opens the store, so it works for any user the mount lets in.
Standard library only: importing it loads none of the daemon's modules or
dependencies (lmdb, msgpack, psutil, mfusepy).

A reason (``fail``, ``cancel``, ``set_state``) never keeps a job running: it is
folded to one line and cut to what ``.state`` takes (``MAX_REASON_CHARS``), and
when that changed it, the whole text goes to the job's events as a ``note``.

``Workspace.info()`` is ``.job``: a documented document (``JOB_DOCUMENT_VERSION``,
README "What is in the mount"); this module reads only its documented fields.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import secrets
import typing
import urllib.parse
from pathlib import Path

from .mounts import MountLookupError, find_mount

#: What ``.state`` takes as a reason (wsfs.control.MAX_REASON_CHARS, one line, no control characters).
MAX_REASON_CHARS = 1024
#: A whole reason kept in the events (a ``note`` through ``.wsfs/control``; wsfs.control's limits).
MAX_NOTE_CHARS = 64 * 1024
MAX_NOTE_BYTES = 256 * 1024 - 200


class WsfsClientError(Exception):
    """A command the daemon refused: ``errno`` plus the daemon's own reason."""

    def __init__(self, message: str, errno_: int | None = None):
        super().__init__(message)
        self.errno = errno_


def resolve_mount(mount: str | os.PathLike | None = None) -> Path:
    """``mount``, else ``$WSFS_MOUNT``, else the one wsfs mount visible, else the default mount point."""
    try:
        return find_mount(mount)
    except MountLookupError as exc:
        raise WsfsClientError(str(exc)) from None


def fold_reason(text: str) -> str:
    """A reason as ``.state`` takes it: one line (newlines and control characters become
    `` | `` and spaces), at most ``MAX_REASON_CHARS``, cut with a marker that says so."""
    lines = ["".join(c if c.isprintable() else " " for c in line).strip() for line in text.splitlines()]
    folded = " | ".join(line for line in lines if line)
    if len(folded) > MAX_REASON_CHARS:
        marker = f" [... cut: {len(folded)} characters, the whole text is in the job's events]"
        folded = folded[:MAX_REASON_CHARS - len(marker)].rstrip() + marker
    return folded


def generate_job_id(now: datetime.datetime | None = None) -> str:
    """``job_20240115_143000_a3f8``: sortable by time, unique enough to retry on clash."""
    now = now or datetime.datetime.now()
    return f"job_{now:%Y%m%d_%H%M%S}_{secrets.token_hex(2)}"


class Mount:
    """A live wsfs mount point."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = resolve_mount(path)

    def check(self) -> Mount:
        """The mount answers, or a WsfsClientError that says why not (gone, or never mounted)."""
        try:
            with open(self.path / ".wsfs" / "status") as f:
                json.load(f)
        except (OSError, ValueError) as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
                raise WsfsClientError(f"the wsfs mount at {self.path} is gone: its daemon stopped "
                                      f"(mount it again with: wsfs mount {self.path})", exc.errno) from None
            raise WsfsClientError(f"{self.path} is not a mounted wsfs (mount it with: wsfs mount {self.path})",
                                  errno.ENODEV) from None
        return self

    def status(self) -> dict:
        with open(self.path / ".wsfs" / "status") as f:
            return json.load(f)

    def template_areas(self, template: str | None) -> dict[str, str]:
        """The areas (name -> kind) a new job of ``template`` gets; WsfsClientError if no such template."""
        name = template or "default"
        templates = self.status().get("templates") or {}
        if name not in templates:
            raise WsfsClientError(f"no template {name!r} (this mount has: {', '.join(sorted(templates)) or 'none'})",
                                  errno.EINVAL)
        return dict(templates[name]["areas"])

    def events(self) -> list[dict]:
        with open(self.path / ".wsfs" / "events") as f:
            return [json.loads(line) for line in f if line.strip()]

    def jobs(self) -> list[dict]:
        with open(self.path / ".wsfs" / "jobs") as f:
            return [json.loads(line) for line in f if line.strip()]

    def job_dir(self, job: str) -> Path:
        for top in ("workspaces", "quarantine"):
            candidate = self.path / top / job
            if candidate.is_dir():
                return candidate
        self.check()  # a mount that is gone says so, not that the job is
        raise WsfsClientError(f"no workspace {job} under {self.path} (archived, hidden or never made?)",
                              errno.ENOENT)

    def _command(self, target: Path, line: str, *, job: str | None = None) -> None:
        """Write one command; on refusal raise with the daemon's reason from the events."""
        data = (line + "\n").encode()
        try:
            fd = os.open(target, os.O_WRONLY | os.O_TRUNC)
        except OSError as exc:
            raise WsfsClientError(f"{target}: {exc.strerror}", exc.errno) from None
        try:
            os.write(fd, data)
        except OSError as exc:
            raise WsfsClientError(self._reason(job, exc, line), exc.errno) from None
        finally:
            os.close(fd)

    def _reason(self, job: str | None, exc: OSError, line: str = "") -> str:
        try:
            for event in reversed(self.events()):
                # A command that did not parse names no job: its own text finds it.
                if event.get("kind") == "rejected" and (job is None or event.get("job") == job
                                                        or event.get("command") == line.strip()):
                    return f"{event['reason']} ({exc.strerror})"
        except (OSError, ValueError):
            pass
        return exc.strerror or str(exc)

    def receipt(self, job: str) -> dict:
        """A job's receipt: its ``receipt.json``, or, once its tree is gone (archived, purged,
        deleted after publishing), the copy the store keeps (``.wsfs/receipts/JOB``)."""
        try:
            path = self.job_dir(job) / "receipt.json"
        except WsfsClientError as exc:
            if exc.errno != errno.ENOENT:
                raise
            path = self.path / ".wsfs" / "receipts" / job
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            raise WsfsClientError(f"job {job} has no receipt (still running, or never ended?)", errno.ENOENT) \
                from None
        except OSError as exc:
            raise WsfsClientError(f"{path}: {exc.strerror}", exc.errno) from None

    def control(self, line: str, *, job: str | None = None) -> None:
        self._command(self.path / ".wsfs" / "control", line, job=job)

    def set_state(self, job: str, word: str, reason: str | None = None) -> None:
        """Write ``word [reason]`` to the job's ``.state``; a reason is folded (``fold_reason``)."""
        folded = fold_reason(reason) if reason else ""
        line = word if not folded else f"{word} {folded}"
        self._command(self.job_dir(job) / ".state", line, job=job)
        if reason and folded != reason.strip():
            text = reason[:MAX_NOTE_CHARS]
            while len(encoded := urllib.parse.quote(text, safe="")) > MAX_NOTE_BYTES:
                text = text[:len(text) * 3 // 4]
            try:
                self.control(f"note {job} {encoded}", job=job)
            except WsfsClientError:
                pass  # the job ended as asked; only the long form of its reason is missing

    def create(self, job: str | None = None, *, template: str | None = None, quota: str | int | None = None,
               max_files: int | None = None, owner: int | None = None,
               extra: dict | None = None, labels: dict[str, str] | None = None) -> Workspace:
        """Make a job (a generated id when none is given) and return its workspace.

        ``extra``: more ``create`` options (``git_repo=``, ``max_running=`` ...) and ``labels``
        (KEY -> text), percent-encoded here.
        """
        self.check()
        for _attempt in range(5):
            job_id = job or generate_job_id()
            words = [f"create {job_id}"]
            for name, value in (("template", template), ("quota", quota), ("max_files", max_files),
                                ("owner", owner)):
                if value is not None:
                    words.append(f"{name}={value}")
            words += [f"{name}={urllib.parse.quote(str(value), safe='/')}" for name, value in (extra or {}).items()]
            words += [f"label={key}={urllib.parse.quote(str(value), safe='')}" for key, value in (labels or {}).items()]
            try:
                self.control(" ".join(words), job=job_id)
            except WsfsClientError as exc:
                if exc.errno == errno.EEXIST and job is None:
                    continue  # a generated id clashed: draw another
                raise
            return Workspace(self, job_id)
        raise WsfsClientError("could not find a free job id")


    def share(self, job: str, who: str, write: bool = False) -> None:
        """Share a job with a user (a name or uid) or ``@group`` (a name or gid): read, or read-write."""
        self.control(f"share {job} {sharee(who)} {'rw' if write else 'r'}", job=job)

    def unshare(self, job: str, who: str) -> None:
        self.control(f"unshare {job} {sharee(who)}", job=job)


def sharee(who: str) -> str:
    """``alice``, ``1001``, ``@render``, ``@100`` -> ``u:1001``, ``g:100`` (what ``share`` takes)."""
    import grp
    import pwd

    group = who.startswith("@")
    name = who[1:] if group else who
    if name.isascii() and name.isdigit():
        return f"{'g' if group else 'u'}:{int(name)}"
    try:
        return f"g:{grp.getgrnam(name).gr_gid}" if group else f"u:{pwd.getpwnam(name).pw_uid}"
    except KeyError:
        raise WsfsClientError(f"no {'group' if group else 'user'} named {name!r}", errno.EINVAL) from None


def sharee_name(key: str) -> str:
    """``u:1001`` -> ``alice``, ``g:100`` -> ``@render`` (the number when the name is unknown)."""
    import grp
    import pwd

    kind, _sep, number = key.partition(":")
    try:
        return f"@{grp.getgrgid(int(number)).gr_name}" if kind == "g" else pwd.getpwuid(int(number)).pw_name
    except (KeyError, ValueError):
        return f"@{number}" if kind == "g" else number


class Workspace:
    """One job's workspace.  As a context manager it ends the job (see the module docstring)."""

    def __init__(self, mount: Mount | str | os.PathLike | None, job: str):
        self.mount = mount if isinstance(mount, Mount) else Mount(mount)
        self.job = job

    @classmethod
    def create(cls, mount: str | os.PathLike | None = None, job: str | None = None, **options) -> Workspace:
        return Mount(mount).create(job, **options)

    @property
    def path(self) -> Path:
        return self.mount.job_dir(self.job)

    def area(self, name: str) -> Path:
        return self.path / name

    @property
    def input(self) -> Path:
        """The template's input area, whatever its name (``input`` in the default template)."""
        areas = self.info().get("areas") or {}
        return self.area(next((a for a, kind in areas.items() if kind == "input"), "input"))

    @property
    def output(self) -> Path:
        return self.area("output")

    @property
    def temp(self) -> Path:
        return self.area("temp")

    @property
    def state(self) -> str:
        return (self.path / ".state").read_text().strip()

    def info(self) -> dict:
        with open(self.path / ".job") as f:
            return json.load(f)

    def receipt(self) -> dict:
        return self.mount.receipt(self.job)

    def set_state(self, word: str, reason: str | None = None) -> None:
        self.mount.set_state(self.job, word, reason)

    def stage(self, name: str) -> None:
        self.set_state("stage", name)

    def complete(self) -> None:
        self.set_state("completed")

    def fail(self, reason: str | None = None) -> None:
        self.set_state("failed", reason)

    def cancel(self, reason: str | None = None) -> None:
        self.set_state("cancelled", reason)

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, exc_type, exc, tb) -> typing.Literal[False]:
        if self.state != "running":
            return False  # ended inside the block: leave it as it is
        if exc is None:
            self.complete()
        else:
            self.fail(f"{exc_type.__name__}: {exc}")  # folded and cut by set_state, whole in a note
        return False

    def __repr__(self) -> str:
        return f"Workspace({str(self.mount.path)!r}, {self.job!r})"
