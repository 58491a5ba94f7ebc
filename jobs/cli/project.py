"""The checkout the command runs from: the Procfile, the scripts and the env files' examples.

The subcommands work from its root, as `scripts/run` always did, so that `.env` and
`deploy/env/` are read the way the service's processes read them.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def enter() -> Path:
    os.chdir(ROOT)
    return ROOT
