"""bench/image_layers.py on the real agent image: its own bytes and its base's add up to the
image, and its exit status says whether the 90% target is met."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support import ROOT


def image_layers(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.image_layers", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ours_and_the_base_make_the_image(agent_image):
    done = image_layers("--image", agent_image)
    assert done.returncode in (0, 1), done.stderr
    ours, reused, whole = map(
        int, re.search(r"bytes: ours (\d+) reused (\d+) image (\d+)", done.stdout).groups()
    )
    assert ours > 0 and reused > 0
    assert ours + reused == whole
    share = float(re.search(r"reused ([\d.]+)% of the image's bytes", done.stdout).group(1))
    assert abs(share - 100 * reused / whole) < 0.1
    assert done.returncode == (0 if share >= 90 else 1)
    assert "of which the CLI's executable" in done.stdout


def test_a_missing_image_is_named():
    done = image_layers("--image", "claudecluster/bench-missing:none")
    assert done.returncode == 2
    assert "no such image here" in done.stderr and "bench-missing" in done.stderr
