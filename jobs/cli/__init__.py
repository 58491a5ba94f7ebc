"""The `claudecluster` command: one entry for running, setting up, checking and trying the service.

Each subcommand is its own module; `main` adds them below. click (commands, options, help) and
rich (progress on long steps) do the terminal work.
"""

from __future__ import annotations

import click

from jobs.cli.doctor import doctor
from jobs.cli.run import run_command
from jobs.cli.serve import serve
from jobs.cli.sessions import sessions
from jobs.cli.setup import setup


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="claudecluster", prog_name="claudecluster")
def main() -> None:
    """Run ClaudeCluster, set up its GitHub App, check it, or try it on a local repository."""


main.add_command(setup)
main.add_command(serve)
main.add_command(doctor)
main.add_command(run_command)
main.add_command(sessions)
