"""Jobs, their states and the transition table. Pure: no I/O, no clock.

The table ``TRANSITIONS`` is the only place that says which state may follow
which; every path that changes a job's state (``.state``, ``.wsfs/control``,
the CLI, the sweeper, recovery) asks ``check_transition``.
"""

from __future__ import annotations

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


class JobRecord(typing.TypedDict, total=False):
    """A job's record as the store keeps it (``store.py``'s docstring; made by
    ``JobService.new_record``).  The first group is in every record; the rest only in the
    records that need them (readers use ``.get``)."""

    v: int
    id: str
    state: str                      # a JobState value
    template: str
    areas: dict[str, str]           # area -> an AreaKind value
    created: float
    state_since: float
    ended: float | None
    uid: int
    gid: int
    owner: typing.Any               # None or {"pid", "create_time"} of the owning process
    reason: str | None
    stage: str | None
    stages: list[dict]              # {"name", "at", "dropped"?}
    history: list[dict]             # {"state", "at", "reason"?}
    usage: dict[str, int]           # {"bytes", "files"}: the manifest's sum
    area_usage: dict[str, list[int]]
    quota: int
    max_files: int
    sealed: bool
    pending: typing.Any             # None or a transition in flight: {"target", "reason", "at", "step", "from"}
    where: str | None               # "jobs", "quarantine" or None once the tree is gone
    hidden: bool
    expires_at: float | None
    purged_at: float | None
    receipt_sha256: str | None
    # optional
    git: dict[str, str]
    origin: str
    setup: str | None
    labels: dict[str, str]
    max_running: float | None
    extensions: int
    notified: dict[str, float]
    publish: typing.Any             # None or publishing's state (wsfs.core.publish)
    shares: dict[str, str]          # "u:UID" | "g:GID" -> "r" | "rw"
    purge_reason: str
