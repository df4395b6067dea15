"""The FUSE adapter: the binding, the operations, the daemon (docs/architecture.md).

``binding`` is the one import of mfusepy (libfuse 3); ``view`` says what every path shows;
``operations`` (``WsfsOperations``) resolves a path through the view, makes one call into
``wsfs.core`` and maps the error to an errno; ``coherence`` keeps the kernel's caches true;
``daemon`` mounts, runs the worker threads and shuts down in order.
"""
