"""Usage bookkeeping: a job record's ``usage`` is its manifest's sum, in all and by area
(``area_usage``), docs/spec.md §8.  Every path that changes entries keeps both with these:

- ``usage_of``: both, from a whole manifest (a rebuild, a clone);
- ``add_area_usage``: per-area deltas (the manifest writer's batches of writes, removals, renames);
- ``take_area_usage``: areas leaving the job whole (completion's scratch, ``drop``, a publish
  ``move``), from the per-area sums, without reading their entries.

Pure functions on a record (a dict) inside the caller's store transaction.
"""

from __future__ import annotations

from .model import JobRecord


def usage_of(entries) -> tuple[dict, dict[str, list[int]]]:
    """``(usage, area_usage)`` of manifest entries ``(path, entry)``; entry[0] is the size."""
    total: list[int] = [0, 0]
    by_area: dict[str, list[int]] = {}
    for path, entry in entries:
        mine = by_area.setdefault(path.split("/", 1)[0], [0, 0])
        for sums in (total, mine):
            sums[0] += entry[0]
            sums[1] += 1
    return {"bytes": total[0], "files": total[1]}, by_area


def add_area_usage(record: JobRecord, deltas: dict[str, list[int]]) -> None:
    """Move a record's usage by ``{area: [bytes, files]}`` deltas (never below zero)."""
    usage = record.usage
    by_area = record.area_usage
    for area, (dbytes, dfiles) in deltas.items():
        usage["bytes"] = max(usage["bytes"] + dbytes, 0)
        usage["files"] = max(usage["files"] + dfiles, 0)
        mine = by_area.setdefault(area, [0, 0])
        mine[0], mine[1] = max(mine[0] + dbytes, 0), max(mine[1] + dfiles, 0)


def take_area_usage(record: JobRecord, w, areas: list[str]) -> dict[str, dict]:
    """Take areas' usage off a record, from its per-area sums; returns what each held.  ``w``
    (the store writer) counts an area's entries for a record from before per-area sums.
    Their manifest entries are the caller's to delete."""
    by_area = record.area_usage
    taken = {}
    for area in areas:
        if area not in by_area:
            entries = list(w.manifest(record.id, area))
            by_area[area] = [sum(e[0] for _p, e in entries), len(entries)]
        dbytes, dfiles = by_area.pop(area)
        taken[area] = {"bytes": dbytes, "files": dfiles}
        record.usage["bytes"] = max(record.usage["bytes"] - dbytes, 0)
        record.usage["files"] = max(record.usage["files"] - dfiles, 0)
    return taken
