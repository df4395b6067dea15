"""The Python API: wsfs through its mount, as any program would use it (SPEC §10).

    from wsfs.client import Workspace

    with Workspace.create("/mnt/wsfs", "render-42") as ws:
        (ws.output / "frame.png").write_bytes(render())
    # completed on normal exit; failed, with the exception's text, otherwise

Everything goes through the mount's files (``.wsfs/control``, ``.state``);
nothing here opens the store, so it works for any user the mount lets in.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import secrets
import urllib.parse
from pathlib import Path

from .daemon import default_mountpoint


class WsfsClientError(Exception):
    """A command the daemon refused: ``errno`` plus the daemon's own reason."""

    def __init__(self, message: str, errno_: int | None = None):
        super().__init__(message)
        self.errno = errno_


def resolve_mount(mount: str | os.PathLike | None = None) -> Path:
    """``mount``, else ``$WSFS_MOUNT``, else the default mount point."""
    return Path(mount or os.environ.get("WSFS_MOUNT") or default_mountpoint())


def generate_job_id(now: datetime.datetime | None = None) -> str:
    """``job_20240115_143000_a3f8``: sortable by time, unique enough to retry on clash."""
    now = now or datetime.datetime.now()
    return f"job_{now:%Y%m%d_%H%M%S}_{secrets.token_hex(2)}"


class Mount:
    """A live wsfs mount point."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = resolve_mount(path)

    def check(self) -> "Mount":
        try:
            with open(self.path / ".wsfs" / "status") as f:
                json.load(f)
        except (OSError, ValueError):
            raise WsfsClientError(f"{self.path} is not a mounted wsfs (mount it with: wsfs mount {self.path})") \
                from None
        return self

    def status(self) -> dict:
        with open(self.path / ".wsfs" / "status") as f:
            return json.load(f)

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

    def control(self, line: str, *, job: str | None = None) -> None:
        self._command(self.path / ".wsfs" / "control", line, job=job)

    def set_state(self, job: str, word: str, reason: str | None = None) -> None:
        line = word if not reason else f"{word} {reason}"
        self._command(self.job_dir(job) / ".state", line, job=job)

    def create(self, job: str | None = None, *, template: str | None = None, quota: str | int | None = None,
               max_files: int | None = None, owner: int | None = None,
               extra: dict[str, str] | None = None) -> "Workspace":
        """Make a job (a generated id when none is given) and return its workspace.

        ``extra``: more ``create`` options (``git_repo=`` ...), percent-encoded here.
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
            try:
                self.control(" ".join(words), job=job_id)
            except WsfsClientError as exc:
                if exc.errno == errno.EEXIST and job is None:
                    continue  # a generated id clashed: draw another
                raise
            return Workspace(self, job_id)
        raise WsfsClientError("could not find a free job id")


class Workspace:
    """One job's workspace.  As a context manager it ends the job (see the module docstring)."""

    def __init__(self, mount: Mount | str | os.PathLike | None, job: str):
        self.mount = mount if isinstance(mount, Mount) else Mount(mount)
        self.job = job

    @classmethod
    def create(cls, mount: str | os.PathLike | None = None, job: str | None = None, **options) -> "Workspace":
        return Mount(mount).create(job, **options)

    @property
    def path(self) -> Path:
        return self.mount.job_dir(self.job)

    def area(self, name: str) -> Path:
        return self.path / name

    @property
    def input(self) -> Path:
        return self.area("input")

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
        with open(self.path / "receipt.json") as f:
            return json.load(f)

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

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.state != "running":
            return False  # ended inside the block: leave it as it is
        if exc is None:
            self.complete()
        else:
            # One line without control characters, or the daemon refuses it (SPEC §5) and the
            # job stays running while the caller gets our error instead of theirs.
            text = "".join(c if c.isprintable() else " " for c in f"{exc_type.__name__}: {exc}")
            text = " ".join(text.split())[:1000]
            self.fail(text)
        return False

    def __repr__(self) -> str:
        return f"Workspace({str(self.mount.path)!r}, {self.job!r})"
