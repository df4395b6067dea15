"""Per-job quota and max_files, checked at the call that would cross them (SPEC §8).

``UsageMeter`` keeps each job's live usage in memory: the record's usage (the
manifest's sum) when first asked, then moved by every change the FUSE layer
makes (bytes a write adds, files created or removed), so a check costs a
dict lookup, not a store read.  A job's meter is dropped (and reloaded from
the record) whenever its tree changes wholesale: ending, resume, rebuild.

Threading: any FUSE thread; ``_lock`` guards the table.  The check and the
charge are one step, so two writers cannot both slip under the quota.
Hard links count once per name, as the manifest does.
"""

from __future__ import annotations

import threading

from .errors import QuotaError


class UsageMeter:
    def __init__(self, service):
        self._service = service
        self._usage: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def _load(self, job: str) -> list[int]:
        usage = self._usage.get(job)
        if usage is None:
            self._service.manifest.flush()
            record = self._service.require(job)
            usage = self._usage[job] = [record["usage"]["bytes"], record["usage"]["files"]]
        return usage

    def charge(self, job: str, dbytes: int = 0, dfiles: int = 0) -> None:
        """Account a change; refuse it whole (EDQUOT) if it would cross a limit."""
        if not dbytes and not dfiles:
            return
        record = self._service.require(job)
        with self._lock:
            usage = self._load(job)
            quota, max_files = record.get("quota") or 0, record.get("max_files") or 0
            if dbytes > 0 and quota and usage[0] + dbytes > quota:
                raise QuotaError(f"job {job} would use {usage[0] + dbytes} bytes; its quota is {quota}")
            if dfiles > 0 and max_files and usage[1] + dfiles > max_files:
                raise QuotaError(f"job {job} would hold {usage[1] + dfiles} files; max_files is {max_files}")
            usage[0] = max(usage[0] + dbytes, 0)
            usage[1] = max(usage[1] + dfiles, 0)

    def current(self, job: str) -> tuple[int, int]:
        with self._lock:
            usage = self._load(job)
            return usage[0], usage[1]

    def forget(self, job: str) -> None:
        with self._lock:
            self._usage.pop(job, None)
