"""The FUSE adapter: the binding, the operations, the daemon (docs/architecture.md).

``binding`` is the one import of mfusepy (libfuse 3); ``operations`` (``WsfsOperations``)
resolves a path to what the view shows there, makes one call into ``wsfs.core`` and maps the
error to an errno; ``daemon`` mounts, runs the worker threads and shuts down in order.
"""
