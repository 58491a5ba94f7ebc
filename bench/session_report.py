"""The session bench's figures: each phase's median, p90 and ratio to its floor; the overhead."""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.session_marks import CLI_FROM, CLI_TO, MARKS, PHASES, phases

TARGET_OVERHEAD = 2.0  # seconds (issue 13)
# The CLI's own span: the model's think time is in it, and no phase of ours.
CLI_PHASES = {"last answer", "CLI done"}


def floor_of(phase: str, cache_on: bool) -> str | None:
    """The floor a phase compares with: what the same step costs without our code around it."""
    return {
        "fetched": "git fetch" if cache_on else "git clone",
        "started": "docker run true",
        "first request": "CLI start",
    }.get(phase)


def p90(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def summary(
    sessions: list[dict[str, float]], floors: dict[str, float], cache_on: bool, model: float
) -> dict:
    """Per phase across sessions, and the overhead: wall time minus the CLI's own time."""
    timed = [phases(marks) for marks in sessions]
    table = {}
    for phase in PHASES:
        values = [t[phase] for t in timed]
        row = {"median": statistics.median(values), "p90": p90(values)}
        if name := floor_of(phase, cache_on):
            row |= {"floor": name, "floor_s": floors[name], "ratio": row["median"] / floors[name]}
        table[phase] = row
    first, last = MARKS[0][0], MARKS[-1][0]
    walls = [m[last] - m[first] for m in sessions]
    cli = [m[CLI_TO] - m[CLI_FROM] for m in sessions]
    overhead = [w - c for w, c in zip(walls, cli, strict=True)]
    return {
        "phases_summary": table,
        "overhead": {
            "wall_median": statistics.median(walls),
            "cli_median": statistics.median(cli),
            "model_think": model,
            "median": statistics.median(overhead),
            "p90": p90(overhead),
            "target": TARGET_OVERHEAD,
            "remains": {p: table[p]["median"] for p in PHASES if p not in CLI_PHASES},
        },
    }


def report(result: dict) -> str:
    """A Markdown table and the overhead, as printed and as docs/performance.md quotes it."""
    o = result["options"]
    lines = [
        f"{len(result['sessions'])} sessions after a warm-up; runtime {o['runtime']}, pool "
        f"{o['pool']}, cache {o['cache']}, {o['repo_files']} files, think {o['think']} s/answer",
        "",
        "| phase (ends when …) | median | p90 | floor | × floor |",
        "|---|---|---|---|---|",
    ]
    seen = dict(MARKS)
    for phase, row in result["phases_summary"].items():
        floor = f"{row['floor']} {row['floor_s']:.3f} s" if "floor" in row else "–"
        ratio = f"{row['ratio']:.1f}×" if "ratio" in row else "–"
        lines.append(
            f"| {phase}: {seen[phase]} | {row['median']:.3f} s | {row['p90']:.3f} s "
            f"| {floor} | {ratio} |"
        )
    over = result["overhead"]
    verdict = "met" if over["median"] <= over["target"] else "NOT met"
    lines += [
        "",
        f"session wall time {over['wall_median']:.2f} s (median), of which the CLI's own "
        f"{over['cli_median']:.2f} s (the scripted model's think time {over['model_think']:.1f} s)",
        f"session overhead {over['median']:.2f} s median, p90 {over['p90']:.2f} s "
        f"(target <= {over['target']:.0f} s: {verdict})",
        "what remains: "
        + ", ".join(f"{p} {s:.2f} s" for p, s in sorted(over["remains"].items(), key=_by_time)),
    ]
    return "\n".join(lines)


def _by_time(item: tuple[str, float]) -> float:
    return -item[1]


def chart(result: dict, path: Path) -> None:
    """Horizontal bars per phase: its median, its p90 as a whisker, and its floor beside it."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    table = result["phases_summary"]
    names = list(table)
    rows = range(len(names))
    medians = [table[n]["median"] for n in names]
    whiskers = [table[n]["p90"] - table[n]["median"] for n in names]
    floors = [table[n].get("floor_s", 0.0) for n in names]
    figure, axes = pyplot.subplots(figsize=(9, 5.5))
    axes.barh([r - 0.2 for r in rows], medians, 0.4, xerr=[[0] * len(names), whiskers])
    axes.barh([r + 0.2 for r in rows], floors, 0.4, color="#999999")
    axes.set_yticks(list(rows), names)
    axes.invert_yaxis()
    axes.set_xlabel("seconds (median, whisker to p90; grey: the phase's floor)")
    o, over = result["options"], result["overhead"]
    axes.set_title(
        f"Where a session's seconds go: runtime {o['runtime']}, pool {o['pool']}, "
        f"cache {o['cache']} — overhead {over['median']:.2f} s median"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
