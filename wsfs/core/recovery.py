"""Recovery: what a crash left behind, put right (docs/spec.md §7).

``Recovery.recover`` runs when a daemon mounts a data dir (and for ``wsfs doctor``): it
finishes every transition a crash interrupted (through the lifecycle's own steps, so the
state machine acts in one place), and, after an unclean end, forgets the manifest entries of
scratch areas already gone, moves back trees a resume left in the wrong root, trashes the
empty trees of creations cut before their record, rebuilds the manifests of running jobs
from their trees, and quarantines them (``on_crash``).

``rebuild_manifest``, ``tree_files`` and ``remove_hidden_leftovers`` make a job's manifest
equal to its files; doctor uses them too.

Threading: ``recover`` runs before the mount serves (or in ``wsfs doctor`` with the data-dir
lock held); the others run under the job's lock or on an idle job.
"""

from __future__ import annotations

import logging
import os
import stat
import typing

from .model import JOB_ID_RE, JobRecord, JobState, is_hidden_name
from .receipts import RECEIPT_FILE
from .records import location
from .usage import usage_of

if typing.TYPE_CHECKING:
    from .lifecycle import JobService

log = logging.getLogger("wsfs.recovery")

#: the store's list of [job, path in the job, inode] of the files frozen at their job's seal
#: (wsfs.fuse.operations: a file written through kernel passthrough), until their last close
FROZEN_META = "frozen"


class Recovery:
    """Finishing what a crash interrupted, for one ``JobService``."""

    def __init__(self, service: JobService):
        self.service = service
        self.tree = service.tree
        self.records = service.records

    def thaw_frozen(self) -> int:
        """Clear the immutable flag of the files a daemon froze at their job's seal because they
        were open for writing through kernel passthrough (docs/spec.md §8a): that daemon would have
        at their last close, and it is gone.  Returns how many files it found frozen."""
        with self.service.store.read() as r:
            frozen = r.meta(FROZEN_META) or []
        for job_id, rel, ino in frozen:
            record = self.records.get(job_id)
            where = location(record) if record is not None else None
            if where is None:
                continue  # its tree went to the trash, whose emptying clears the flag (tree.remove_contents)
            try:
                self.tree.thaw(where[0], f"{where[1]}/{rel}", ino)
            except OSError as exc:
                log.warning("job %s: could not clear the immutable flag of %s: %s", job_id, rel, exc)
        if frozen:
            with self.service.store.write() as w:
                w.put_meta(FROZEN_META, [])
        return len(frozen)

    def recover(self, unclean: bool) -> list[str]:
        """Finish interrupted transitions; after a daemon crash, quarantine running jobs.

        With ``on_crash = "resume"`` running jobs stay running instead.  Either
        way their manifests are rebuilt from their trees, since the last batch
        of manifest changes may not have reached the store.  Returns the jobs whose
        transition was finished.
        """
        service = self.service
        self.thaw_frozen()
        with service.store.read() as r:
            pending = [record for j in r.pending_ids() if (record := r.job(j)) is not None]
        finished = []
        for record in pending:
            log.warning("finishing the interrupted %s of job %s (after step %s)",
                        record.pending["target"], record.id, record.pending["step"])
            with self.records.lock(record.id).exclusive():
                service.finish_pending(record)
            finished.append(record.id)
        if unclean:
            service.drop_scratch_entries()
            self._return_misplaced_trees()
            self._trash_unfinished_creations()
            with service.store.read() as r:
                running = [j.id for j in r.jobs() if j.state == JobState.RUNNING and j.where]
            for job_id in running:
                service.trash_stale_receipt(job_id)
                self.rebuild_manifest(job_id)
                if service.config.on_crash == "quarantine":
                    service.transition(job_id, JobState.CRASHED, "the wsfs daemon crashed")
        return finished

    def _return_misplaced_trees(self) -> None:
        """Trees in the other root than their record says, after a crash: a resume cut between
        moving the tree out of quarantine/ and its commit.  The record is the truth (the resume
        was not acknowledged): the tree goes back, its receipt with it.  Pending transitions
        are finished before this, so none of them is still moving a tree.
        """
        for root, other in (("jobs", "quarantine"), ("quarantine", "jobs")):
            for name, _ino, kind in self.tree.scandir(root, ""):
                if kind != stat.S_IFDIR or not JOB_ID_RE.fullmatch(name):
                    continue
                record = self.records.get(name)
                if record is None or record.pending or record.where != other \
                        or self.tree.exists(other, name):
                    continue
                log.warning("job %s: its tree was in %s/, its record (%s) says %s/: moved back", name, root,
                            record.state, other)
                self.tree.rename(root, name, other, name)

    def _trash_unfinished_creations(self) -> None:
        """Trees in jobs/ that a crash left between ``create_job``'s mkdir and its commit.

        Such a tree has no record, so the view never showed it and nothing was written into
        it: with no file inside it goes to the trash (``wsfs doctor`` would call it an orphan).
        A tree without a record that holds files is not ours to judge: doctor adopts it.
        """
        for name, _ino, kind in self.tree.scandir("jobs", ""):
            if kind != stat.S_IFDIR or not JOB_ID_RE.fullmatch(name) or self.records.get(name) is not None:
                continue
            if next(iter(self.tree.walk_files("jobs", name)), None) is not None:
                continue
            log.warning("job %s: its creation was interrupted before it was recorded; its empty tree "
                        "goes to the trash", name)
            self.tree.move_to_trash("jobs", name, f"{name}.unfinished")
            self.service.trash_wake.set()

    def tree_files(self, record: JobRecord, hidden: list[str] | None = None) -> dict[str, os.stat_result]:
        """The files of a job's tree that belong in its manifest: AREA/path -> stat.

        Not the receipt, and not libfuse's ``.fuse_hidden*`` names of unlinked
        files still open (they left the manifest when they were unlinked): those
        are appended to ``hidden``, when given, as paths below the job's root.
        """
        where = location(record)
        if where is None:
            return {}
        files = {}
        for path, st in self.tree.walk_files(*where):
            if is_hidden_name(path.rsplit("/", 1)[-1]):
                if hidden is not None:
                    hidden.append(path)
            elif path not in (RECEIPT_FILE, RECEIPT_FILE + ".tmp"):
                files[path] = st
        return files

    def remove_hidden_leftovers(self, record: JobRecord, paths: list[str]) -> int:
        """Unlink hidden names that no open file needs any more (after a crash, or left by an
        older wsfs or libfuse); the caller knows no file of the job is open.  Returns how many."""
        where = location(record)
        if where is None:
            return 0
        removed = 0
        for path in paths:
            try:
                self.tree.unlink(where[0], f"{where[1]}/{path}")
                removed += 1
            except FileNotFoundError:
                pass
        if removed:
            log.info("job %s: removed %d hidden name(s) of files unlinked while open", record.id, removed)
        return removed

    def rebuild_manifest(self, job_id: str) -> JobRecord:
        """Make a job's manifest equal to its tree (keeps hashes that still match).

        No file of the job may be open (recovery, doctor on an idle job): the hidden
        names of files unlinked while open that a crash left behind go as well.
        """
        record = self.records.require(job_id)
        hidden: list[str] = []
        files = self.tree_files(record, hidden)
        self.remove_hidden_leftovers(record, hidden)

        def fn(w) -> list[JobRecord]:
            old = dict(w.manifest(job_id))
            w.delete_manifest_prefix(job_id)
            entries = []
            for path, st in files.items():
                entry = [st.st_size, st.st_mtime_ns, st.st_ino, None]
                prev = old.get(path)
                if prev and prev[:3] == entry[:3]:
                    entry[3] = prev[3]
                w.put_manifest(job_id, path, entry)
                entries.append((path, entry))
            rec = w.job(job_id)
            rec.usage, rec.area_usage = usage_of(entries)
            w.put_job(rec)
            return [rec]
        self.service.manifest.flush()
        record = self.records.commit(fn)[0]
        self.service.usage.forget(job_id)
        return record
