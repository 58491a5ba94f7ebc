"""`python -m tests.standins`: a GitHub and a model to try ClaudeCluster against, by hand.

Starts the GitHub stand-in (REST, git over HTTP, the App manifest flow, and pages to open
issues and comment) and the scripted Anthropic API stand-in on fixed local ports, with one
repository, `octocat/hello`, where the App can be installed. Then: point the service at them
(the lines printed), open its /setup, register and install the App, and comment `/claude …` on
an issue on the stand-in's pages. The scripted model answers every session the same way: it
writes HELLO.md and says so; the real CLI in the sandbox does the writing.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from jobs.common.registration import write_env_file
from jobs.common.settings import env_file
from tests.standins.anthropic import AnthropicStandIn, Text, ToolUse
from tests.standins.github import GitHubStandIn

HELLO = "# Hello\n\nWritten by Claude Code in a ClaudeCluster sandbox (scripted model).\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.standins", description=__doc__)
    parser.add_argument("--github-port", type=int, default=9100)
    parser.add_argument("--model-port", type=int, default=9200)
    parser.add_argument("--service-port", type=int, default=8000, help="where the service runs")
    parser.add_argument(
        "--configure",
        action="store_true",
        help="write the settings below into .env and deploy/env/gateway.env (0600)",
    )
    args = parser.parse_args()

    github = GitHubStandIn(app_slug="unregistered", app_name="(no App registered yet)")
    github.start(args.github_port)
    github.add_user("octocat", id=583231)
    github.add_account_repo("octocat/hello", {"README.md": "# hello\n"})
    github.reachable_hook_hosts.update({"127.0.0.1", "localhost"})  # as a tunnel would
    model = AnthropicStandIn(args.model_port).start()
    model.script_each_conversation(
        [
            ToolUse("Write", {"file_path": "/workspace/HELLO.md", "content": HELLO}),
            Text("Added HELLO.md, as asked (this answer comes from the scripted model)."),
        ]
    )
    service = f"http://127.0.0.1:{args.service_port}"
    if args.configure:
        write_env_file(Path(".env"), {"GITHUB_URL": github.url, "PUBLIC_URL": service})
        gateway = {"ANTHROPIC_API_KEY": "stand-in-accepts-any", "ANTHROPIC_BASE_URL": model.url}
        env_file("gateway").parent.mkdir(parents=True, exist_ok=True)
        write_env_file(env_file("gateway"), gateway)
        print(f"Wrote GITHUB_URL and PUBLIC_URL to .env, the model to {env_file('gateway')}.\n")
    print(
        f"GitHub stand-in:  {github.url}  (open it in a browser: issues, comments, pulls)\n"
        f"Model stand-in:   {model.url}  (scripted: writes HELLO.md)\n\n"
        "Point ClaudeCluster at them. In .env:\n"
        f"  GITHUB_URL={github.url}\n"
        f"  PUBLIC_URL={service}\n"
        "and in deploy/env/gateway.env:\n"
        "  ANTHROPIC_API_KEY=stand-in-accepts-any\n"
        f"  ANTHROPIC_BASE_URL={model.url}\n"
        "(--configure writes them.) Then `bash scripts/run`, open the setup link it prints,\n"
        "register and install the App,\n"
        "and comment `/claude add a greeting` on a new issue at\n"
        f"  {github.url}/octocat/hello/issues/new\n"
        f"Watch it on the dashboard, {service}/sessions: sign in as octocat on the stand-in.\n"
        "Ctrl-C stops the stand-ins (their state is not kept).",
        flush=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    model.stop()
    github.stop()


if __name__ == "__main__":
    main()
