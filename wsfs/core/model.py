"""Jobs, their states and the transition table. Pure: no I/O, no clock.

The table ``TRANSITIONS`` is the only place that says which state may follow
which; every path that changes a job's state (``.state``, ``.wsfs/control``,
the CLI, the sweeper, recovery) asks ``check_transition``.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import re
import typing

from .errors import BadJobIdError, InvalidTransitionError

JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: A stage name (``stage NAME``), a label key: one word.
STAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class JobState(str, enum.Enum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CRASHED = "crashed"
    ARCHIVED = "archived"

    def __str__(self) -> str:  # so f"{state}" gives the word
        return self.value


S = JobState

# docs/spec.md §4.  "resume" is the command that leads failed/crashed back to running.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED, S.CANCELLED, S.CRASHED}),
    S.COMPLETED: frozenset({S.ARCHIVED}),
    S.FAILED: frozenset({S.ARCHIVED, S.RUNNING}),
    S.CANCELLED: frozenset({S.ARCHIVED}),
    S.CRASHED: frozenset({S.ARCHIVED, S.RUNNING}),
    S.ARCHIVED: frozenset(),
}

#: States in which the workspace is sealed (read-only) and has a receipt.
ENDED_STATES = frozenset({S.COMPLETED, S.FAILED, S.CANCELLED, S.CRASHED})
#: States whose tree lives in quarantine/ rather than workspaces/.
QUARANTINED_STATES = frozenset({S.CRASHED})


def check_transition(current: JobState, target: JobState) -> None:
    """Raise ``InvalidTransitionError`` unless ``current -> target`` is allowed."""
    if target not in TRANSITIONS[current]:
        raise InvalidTransitionError(f"cannot go from {current.value} to {target.value}")


def validate_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
        raise BadJobIdError(
            f"bad job id {job_id!r}: use 1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    return job_id


#: libfuse's names for unlinked files that are still open (wsfs runs without
#: hard_remove, see fs.py): hidden from listings, never in a manifest.
HIDDEN_PREFIX = ".fuse_hidden"


def is_hidden_name(name: str) -> bool:
    return name.startswith(HIDDEN_PREFIX)


class AreaKind(str, enum.Enum):
    """What becomes of an area at completion (docs/spec.md §9)."""

    INPUT = "input"      # kept, not hashed into the receipt's outputs
    KEEP = "keep"        # kept and hashed: the results
    SCRATCH = "scratch"  # deleted (renamed into the trash) at completion


#: The default template: name -> {area: kind}.
DEFAULT_TEMPLATE = {"input": AreaKind.INPUT, "output": AreaKind.KEEP, "temp": AreaKind.SCRATCH}


#: The record's own version (``JobRecord.v``); the store's schema version is ``store.SCHEMA_VERSION``.
RECORD_VERSION = 1


@dataclasses.dataclass(slots=True)
class JobRecord:
    """A job's record (``store.py``'s docstring is the stored format).

    The fields down to ``receipt_sha256`` are stored in every record; the optional ones after
    it are stored only when set (None means absent, so a record stored without them, by this
    or an older wsfs, reads the same).  A field this wsfs does not know, written by a newer
    one, is kept in ``extra`` and stored again as it was.  The store gives each reader a fresh
    copy; a record held in ``JobService``'s cache is never changed in place."""

    id: str
    template: str
    areas: dict[str, str]           # area -> an AreaKind value
    created: float
    uid: int
    gid: int
    state: JobState = JobState.RUNNING
    state_since: float = 0.0
    ended: float | None = None
    owner: typing.Any = None        # None or {"pid", "create_time"} of the owning process
    reason: str | None = None
    stage: str | None = None
    stages: list[dict] = dataclasses.field(default_factory=list)   # {"name", "at", "dropped"?}
    history: list[dict] = dataclasses.field(default_factory=list)  # {"state", "at", "reason"?}
    usage: dict[str, int] = dataclasses.field(default_factory=lambda: {"bytes": 0, "files": 0})
    area_usage: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # area -> [bytes, files]
    quota: int = 0
    max_files: int = 0
    sealed: bool = False
    pending: typing.Any = None      # None or a transition in flight: {"target", "reason", "at", "step", "from"}
    where: str | None = "jobs"      # "jobs", "quarantine", or None once the tree is gone
    hidden: bool = False
    expires_at: float | None = None
    purged_at: float | None = None
    receipt_sha256: str | None = None
    v: int = RECORD_VERSION
    # optional: stored only when not None
    git: dict[str, str] | None = None
    origin: str | None = None
    setup: str | None = None
    labels: dict[str, str] | None = None
    max_running: float | None = None
    extensions: int | None = None
    notified: dict[str, float] | None = None
    publish: typing.Any = None      # None or publishing's state (wsfs.core.publish)
    shares: dict[str, str] | None = None  # "u:UID" | "g:GID" -> "r" | "rw"
    purge_reason: str | None = None
    extra: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_stored(cls, data: dict) -> JobRecord:
        known = {key: value for key, value in data.items() if key in _FIELDS}
        record = cls(**known)
        record.state = JobState(record.state)
        if len(known) < len(data):
            record.extra = {key: value for key, value in data.items() if key not in _FIELDS}
        return record

    def to_stored(self) -> dict:
        stored = {name: getattr(self, name) for name in _ALWAYS_STORED}
        stored["state"] = self.state.value
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                stored[name] = value
        stored.update(self.extra)
        return stored

    def copy(self) -> JobRecord:
        """A deep copy (nested lists and dicts too), to change without touching this one."""
        return JobRecord.from_stored(copy.deepcopy(self.to_stored()))


_FIELDS = frozenset(f.name for f in dataclasses.fields(JobRecord)) - {"extra"}
_OPTIONAL = ("git", "origin", "setup", "labels", "max_running", "extensions", "notified", "publish",
             "shares", "purge_reason")
_ALWAYS_STORED = tuple(f.name for f in dataclasses.fields(JobRecord)
                       if f.name not in _OPTIONAL and f.name != "extra")
