"""wsfs: a workspace filesystem for batch jobs (see README.md and docs/spec.md)."""

__version__ = "0.1.0"
