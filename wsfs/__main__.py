"""``python -m wsfs`` runs the CLI (the background daemon is started this way)."""

from .client.cli import main

main(prog_name="wsfs")
