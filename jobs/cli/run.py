"""`claudecluster run --repo PATH "task"`: a session on a local checkout, without GitHub.

The run is jobs/cli/local.py, its live view jobs/cli/progress.py; this module is the command:
its options, the summary and one exit status per way a run can end, so that a script can tell
them apart.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from jobs.cli.local import (
    LocalResult,
    LocalRun,
    LocalRunError,
    LocalTask,
    Settings,
    describe,
    on_interrupt,
)
from jobs.cli.progress import Progress
from jobs.common.redact import redactor
from jobs.github.tracking import took

# 2 and 3 are LocalRunError's: bad input (not a repository, no commits, a bad branch name) and a
# machine not set up (no Docker, no agent image, no model credential, bad configuration).
EXIT_FAILED = 1
EXIT_NO_CHANGES = 4
EXIT_INTERRUPTED = 130  # as a shell reports a process ended by SIGINT


@click.command("run")
@click.argument("instruction")
@click.option(
    "--repo",
    "repository",
    type=click.Path(path_type=Path),
    default=".",
    show_default=True,
    help="The git checkout to work on; it is only read, the result is a new branch in it.",
)
@click.option("--branch", help="The new branch's name (default: claude/local-<task>).")
@click.option("--model", help="--model for the CLI (default: CLAUDE_MODEL).")
@click.option("--max-turns", type=click.IntRange(min=1), help="Default: CLAUDE_MAX_TURNS.")
@click.option(
    "--budget",
    "budget_usd",
    type=click.FloatRange(min=0, min_open=True),
    help="The most the session may spend, in USD; the gateway enforces it.",
)
@click.option(
    "--timeout", type=click.IntRange(min=1), help="Wall-clock seconds (default: SESSION_TIMEOUT)."
)
@click.option(
    "--keep-workspace", is_flag=True, help="Leave the session's workspace for inspection."
)
def run_command(instruction: str, repository: Path, **options: Any) -> None:
    """Run Claude on a local git checkout; its change lands on a new branch there.

    Your current branch, index and work tree stay as they are; only committed work is given
    to Claude. Needs Docker, the agent image and a model credential (ANTHROPIC_API_KEY, or a
    running gateway service). Exit status: 0 a branch was created, 1 the session failed,
    2 bad input, 3 not set up, 4 Claude changed nothing, 130 interrupted.
    """
    # The options are named as LocalTask's fields.
    task = LocalTask(repository.expanduser().absolute(), instruction, **options)
    raise SystemExit(execute(task, Console(highlight=False, soft_wrap=True), Console(stderr=True)))


def execute(task: LocalTask, out: Console, err: Console) -> int:
    """The run from its checks to its summary; the exit status."""
    if not task.instruction.strip():
        err.print("claudecluster run: the task is empty: say what Claude should do")
        return 2
    progress = Progress(out)
    try:
        local = LocalRun(task, Settings.read(), progress)
        checkout = local.start()
    except LocalRunError as exc:
        err.print(f"claudecluster run: {escape(str(exc))}", highlight=False)
        return exc.exit_code
    out.print(f"Session {local.session_id} on {escape(str(checkout.top))} ({checkout.where})")
    if checkout.uncommitted:
        out.print(
            f"[yellow]Note:[/yellow] {len(checkout.uncommitted)} uncommitted change(s) in your "
            "checkout are not included: Claude works on the last commit."
        )
    previous = signal.signal(signal.SIGINT, on_interrupt(local))
    try:
        with progress:
            result = local.run(checkout)
    except KeyboardInterrupt:
        err.print("Interrupted: the sandbox and the workspace were removed; nothing was committed.")
        return EXIT_INTERRUPTED
    except LocalRunError as exc:
        err.print(f"claudecluster run: {escape(str(exc))}", highlight=False)
        return exc.exit_code
    except Exception as exc:
        err.print(f"claudecluster run: the session failed: {escape(describe(exc))}")
        err.print("No branch was created.")
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGINT, previous)
    return summarize(result, out)


def summarize(result: LocalResult, out: Console) -> int:
    outcome = result.outcome
    stats = f"⏱ {took(result.seconds)} · {outcome.num_turns} turns · ${outcome.cost_usd:.4f}"
    answer = escape(redactor(outcome.result.strip()))
    if result.stopped:
        out.print("⏹  Stopped (Ctrl-C): the sandbox was removed and nothing was committed.")
        out.print(stats)
        return EXIT_INTERRUPTED
    if result.failure:
        out.print(f"❌ The session failed: {escape(result.failure)}")
        out.print("No branch was created.")
        out.print(stats)
        return EXIT_FAILED
    if result.change is None:
        out.print("💬 Claude changed nothing, so no branch was created.")
        if answer:
            out.print(f"\n[bold]Claude's answer:[/bold]\n{answer}\n")
        out.print(stats)
        return EXIT_NO_CHANGES
    base = result.checkout.branch or result.checkout.head[:12]
    out.print(f"✅ Claude committed {result.change.sha[:12]} on the new branch {result.branch}")
    out.print(f"\n[bold]Branch:[/bold] {escape(result.branch)} (from {escape(base)})")
    out.print("[bold]Files changed:[/bold]")
    for line in result.change.files[:100]:
        status, _, path = line.partition("\t")
        out.print(f"  {escape(status)}  {escape(path)}")
    if answer:
        out.print(f"\n[bold]Claude's summary:[/bold]\n{answer}\n")
    out.print(stats)
    out.print(
        f"Your checkout is as it was. See the change: git log -p {escape(base)}..{result.branch}"
    )
    if result.workspace:
        out.print(f"The session's workspace was kept: {escape(str(result.workspace))}")
    return 0
