"""wsfs: a workspace filesystem for batch jobs (see README.md and SPEC)."""

__version__ = "0.1.0"
