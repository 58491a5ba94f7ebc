"""A module that must never be imported by the worker: importing it leaves a mark.

Tests queue jobs and callbacks that name it, as someone with access to Redis could, and check
that the worker refused them without importing it.
"""

import os
from pathlib import Path

Path(os.environ.get("CLAUDECLUSTER_CANARY", "/dev/null")).write_text("imported\n")


def touch(path: str, *args: object) -> None:
    Path(path).write_text("ran\n")
