"""The `claudecluster` command: one entry for running, setting up, checking and trying the service.

Each subcommand is its own module and registers itself on `main` when imported below; click
(commands, options, help) and rich (progress on long steps) do the terminal work.
"""

from __future__ import annotations

from importlib import import_module

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="claudecluster", prog_name="claudecluster")
def main() -> None:
    """Run ClaudeCluster, set up its GitHub App, check it, or try it on a local repository."""


# Each subcommand's module registers it on `main` when imported: one line per module (imported
# by name, since a plain import statement down here would break ruff's import order).
import_module("jobs.cli.run")
import_module("jobs.cli.sessions")
