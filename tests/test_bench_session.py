"""bench/session.py works: one session end to end on real parts (the service from the Procfile,
Redis, Docker, the agent image and its CLI; only GitHub and the model API are stand-ins), and
every phase it reports was seen, in the order a session takes them. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.session_marks import MARKS, PHASES
from tests.support import ROOT


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.session", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.parametrize("pool", ["0", "1"])
def test_one_session_has_every_phase_in_order(agent_image, tmp_path, pool):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    done = bench(
        "--pool",
        pool,
        "--spacing",
        "0.5",
        "--sessions",
        "1",
        "--think",
        "0.2",
        "--floor-rounds",
        "1",
        "--image",
        agent_image,
        "--json",
        str(out),
        "--chart",
        str(png),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())

    (session,) = result["sessions"]
    times = [session["marks"][name] for name, _ in MARKS]
    assert times == sorted(times), session["marks"]
    assert list(session["phases"]) == PHASES
    # A warm sandbox is taken over by an exec: created and started are that one moment.
    warm = pool == "1"
    assert any(" docker pool exec_start" in line for line in session["trail"]) == warm
    assert all(
        seconds > 0 or (warm and name == "started") for name, seconds in session["phases"].items()
    ), session["phases"]
    assert len(set(times)) == len(times) - warm
    assert list(result["phases_summary"]) == PHASES
    assert set(result["floors"]) == {"docker run true", "git clone", "git fetch", "CLI start"}
    assert all(seconds > 0 for seconds in result["floors"].values())
    over = result["overhead"]
    # The model thought twice for 0.2 s inside the CLI's own time, which the overhead leaves out.
    assert over["cli_median"] > over["model_think"] == 0.4
    assert 0 < over["median"] < over["wall_median"]
    assert set(over["remains"]) == set(PHASES) - {"last answer", "CLI done"}
    assert "session overhead" in done.stdout and "| first request:" in done.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_options_are_refused_with_a_reason():
    done = bench("--sessions", "0")
    assert done.returncode == 2
    assert "--sessions, --repo-files and --floor-rounds must be at least 1" in done.stderr
    done = bench("--runtime", "kata")
    assert done.returncode == 2 and "invalid choice: 'kata'" in done.stderr
