"""The core: jobs, their store and their trees, with no FUSE binding (docs/architecture.md).

Pure modules (no I/O): ``model`` (states and their table, job ids), ``control`` (the grammar of
``.state`` and ``.wsfs/control``), ``units``, ``errors`` (one errno per exception), ``acl`` (the
POSIX ACL xattr format), ``config``, ``usage`` (usage as the manifest's sum), ``syscalls``.
Services on a data dir: ``store`` (LMDB), ``tree`` (the data dir through directory fds),
``manifest`` (its writer), ``receipts``, ``limits`` (quotas at the call), ``hashing``, ``lifecycle``
(``JobService``), ``sharing``, ``retention`` (the sweeper), ``publish``, ``cloning``,
``doctor``, ``metrics``.  ``open_data_dir`` (in ``lifecycle``) wires store, tree and service
together for the daemon, the CLI's offline commands, the tests and the benchmark.

Nothing here imports ``wsfs.fuse`` or ``wsfs.client``.
"""
