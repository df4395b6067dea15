"""Per-job quota and max_files, checked at the call that would cross them (docs/spec.md §8).

``UsageMeter`` keeps each job's live usage in memory: the record's usage (the
manifest's sum) when first asked, then moved by every change the FUSE layer
makes (bytes a write adds, files created or removed), so a check costs a
dict lookup, not a store read.  A job's meter is dropped (and reloaded from
the record) whenever its tree changes wholesale: ending, resume, rebuild.

Threading: any FUSE thread; ``_lock`` guards the table.  The check and the
charge are one step, so two writers cannot both slip under the quota.
Hard links count once per name, as the manifest does.

A user's ``quota_per_user`` is checked in the same step, against the sum over the
user's live jobs (``_user_bytes``), which every charge moves.
"""

from __future__ import annotations

import threading

from .errors import QuotaError


class UsageMeter:
    def __init__(self, service):
        self._service = service
        self._usage: dict[str, list[int]] = {}
        self._users: dict[int, int] = {}  # uid -> bytes over its live jobs (quota_per_user)
        self._lock = threading.Lock()

    def _load(self, job: str) -> list[int]:
        usage = self._usage.get(job)
        if usage is None:
            self._service.manifest.flush()
            record = self._service.records.require(job)
            usage = self._usage[job] = [record.usage["bytes"], record.usage["files"]]
        return usage

    def charge(self, job: str, dbytes: int = 0, dfiles: int = 0) -> None:
        """Account a change; refuse it whole (EDQUOT) if it would cross a limit: the job's own,
        or its owner's ``quota_per_user`` over all of the owner's live jobs."""
        if not dbytes and not dfiles:
            return
        record = self._service.records.require(job)
        _max_jobs, user_quota = self._service.config.limits_for(record.uid)
        with self._lock:
            usage = self._load(job)
            quota, max_files = record.quota or 0, record.max_files or 0
            if dbytes > 0 and quota and usage[0] + dbytes > quota:
                raise QuotaError(f"job {job} would use {usage[0] + dbytes} bytes; its quota is {quota}")
            if dfiles > 0 and max_files and usage[1] + dfiles > max_files:
                raise QuotaError(f"job {job} would hold {usage[1] + dfiles} files; max_files is {max_files}")
            if user_quota:
                mine = self._user_bytes(record.uid)
                if dbytes > 0 and mine + dbytes > user_quota:
                    raise QuotaError(f"uid {record.uid} would use {mine + dbytes} bytes over its jobs; "
                                     f"its quota is {user_quota} (quota_per_user)")
                self._users[record.uid] = max(mine + dbytes, 0)
            usage[0] = max(usage[0] + dbytes, 0)
            usage[1] = max(usage[1] + dfiles, 0)

    def _user_bytes(self, uid: int) -> int:
        """Bytes of a user's live jobs: the store's per-user total of their records, corrected by
        the meters of their jobs loaded here (what is written but not yet in a record).  Counted
        again only after one of the user's jobs changed wholesale (``forget``)."""
        if uid not in self._users:
            self._service.manifest.flush()
            with self._service.store.read() as r:
                total = r.totals().get("users", {}).get(str(uid), [0, 0, 0])[1]
            for job, usage in self._usage.items():
                record = self._service.records.get(job)
                if record is not None and record.uid == uid and record.where:
                    total += usage[0] - record.usage["bytes"]
            self._users[uid] = total
        return self._users[uid]

    def user_jobs(self, uid: int) -> int:
        """A user's live jobs (with a tree), from the store's totals: O(1)."""
        with self._service.store.read() as r:
            return r.totals().get("users", {}).get(str(uid), [0, 0, 0])[0]

    def users(self) -> dict[int, dict]:
        """Per user: live jobs, bytes and files (the records'), and the limits that apply."""
        self._service.manifest.flush()
        with self._service.store.read() as r:
            users = r.totals().get("users", {})
        out = {}
        for uid, (jobs, nbytes, files) in users.items():
            max_jobs, quota = self._service.config.limits_for(int(uid))
            out[int(uid)] = {"jobs": jobs, "bytes": nbytes, "files": files, "max_jobs": max_jobs, "quota": quota}
        return out

    def current(self, job: str) -> tuple[int, int]:
        with self._lock:
            usage = self._load(job)
            return usage[0], usage[1]

    def forget(self, job: str) -> None:
        with self._lock:
            self._usage.pop(job, None)
            self._users.clear()  # a job's usage changed wholesale: its owner's sum is counted again
