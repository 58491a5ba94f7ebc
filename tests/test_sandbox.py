"""The sandbox container itself: how it is created, and the limits it watches while it runs.

Real dockerd and the real agent image; the model is the Anthropic stand-in behind the real
gateway. The attacks from inside a session run end to end are in tests/e2e/test_sandbox_security.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import docker
import pytest
from docker.errors import DockerException, ImageNotFound

from jobs.common.settings import ConfigError, WorkerSettings
from jobs.gateway.backends import AnthropicApiKey
from jobs.gateway.proxy import ModelGateway
from jobs.sandbox.container import (
    CONFIG_DIR,
    CONTROL_DIR,
    LABEL,
    MAX_OUTPUT,
    PROJECTS_DIR,
    RELAY_URL,
    WORKSPACE,
    Limits,
    OutputReader,
    Sandbox,
    SandboxError,
    SandboxJob,
    conversation_dir,
    tree_usage,
)
from jobs.sandbox.host import HOST_LABEL, engine_id
from jobs.sandbox.pool import POOL_LABEL, Pool, pool_key
from tests.standins.anthropic import AnthropicStandIn, Text, ToolUse
from tests.support import CLI_STDOUT

IMAGE = os.environ.get("AGENT_IMAGE", "claudecluster/agent:latest")
MODEL_KEY = "sk-ant-api03-sandbox-test-real-key"


@pytest.fixture(scope="module")
def client():
    try:
        client = docker.from_env()
        client.images.get(IMAGE)
    except ImageNotFound:
        pytest.fail(f"agent image {IMAGE} is missing: run `bash scripts/build-images.sh`")
    except DockerException as exc:
        pytest.fail(f"the Docker engine is not reachable: {exc}")
    return client


def settings(**values: str):
    return WorkerSettings.parse(AGENT_IMAGE=IMAGE, **values)


@pytest.fixture(params=["cold", "warm"])
def session_dirs(request, tmp_path, client):
    """A session's tree and control dir: plain directories for a fresh container, or a claimed
    warm slot's (jobs/sandbox/pool.py), made with the test's `sandbox_settings` so that it fits."""
    marker = request.node.get_closest_marker("sandbox_settings")
    root = tmp_path / "workspaces"
    if request.param == "cold":
        tree, control = tmp_path / "tree", tmp_path / "control"
        tree.mkdir()
        control.mkdir(mode=0o755)
    else:
        values = marker.kwargs if marker else {}
        pool = Pool(settings(WORKSPACE_ROOT=str(root), SANDBOX_POOL_SIZE="1", **values), client)
        pool.fill()
        slot = pool.claim(f"session-unit-{tmp_path.name[-12:]}")
        tree, control = slot / "tree", slot / "control"
    (tree / "README.md").write_text("# sandbox test\n")
    if os.geteuid() == 0:
        for path in (tree, tree / "README.md"):
            os.chown(path, 1000, 1000)
    yield tree, control
    for container in client.containers.list(
        all=True, filters={"label": f"{POOL_LABEL}={pool_key(engine_id(client), root)}"}
    ):
        container.remove(force=True)


def test_sizes_are_checked_at_start_up():
    s = settings()
    assert (s.sandbox_runtime, s.sandbox_workspace_size) == ("runc", "10g")
    assert (s.sandbox_tmp_size, s.sandbox_config_size) == ("1g", "256m")
    assert settings(SANDBOX_WORKSPACE_SIZE=" 64M ").sandbox_workspace_size == "64m"
    with pytest.raises(ConfigError, match="SANDBOX_WORKSPACE_SIZE: .*such as 512m or 4g"):
        settings(SANDBOX_WORKSPACE_SIZE="lots")
    with pytest.raises(ConfigError, match="SANDBOX_TMP_SIZE"):
        settings(SANDBOX_TMP_SIZE="-1g")


def test_tree_usage_charges_sparse_and_empty_files_and_ignores_symlinks(tmp_path):
    (tmp_path / "sparse").touch()
    os.truncate(tmp_path / "sparse", 1 << 30)  # 1 GiB that takes no blocks: git would store it
    (tmp_path / "sub").mkdir()
    for i in range(10):
        (tmp_path / "sub" / f"empty{i}").touch()
    (tmp_path / "outside").symlink_to("/usr")  # not followed
    used = tree_usage(tmp_path)
    assert (1 << 30) + 10 * 4096 <= used < (1 << 30) + 20 * 4096


def test_container_is_created_locked_down(client, session_dirs):
    tree, control = session_dirs
    sandbox = Sandbox(
        settings(SANDBOX_PIDS="100", SANDBOX_MEMORY="300m", SANDBOX_WORKSPACE_SIZE="2g"), client
    )
    # A leftover of an earlier container, even a link, is not what the new one gets.
    if conversation_dir(control).is_dir():  # a warm slot's, made with the slot
        conversation_dir(control).rmdir()
    conversation_dir(control).symlink_to(tree)
    container = sandbox.create("unit-locked-down", tree, control, ["true"], {"A": "b"})
    try:
        host = container.attrs["HostConfig"]
        assert host["NetworkMode"] == "none"
        assert host["IpcMode"] == "private"
        assert host["CgroupnsMode"] == "private"
        assert host["PidMode"] == "" and host["UTSMode"] == "" and host["UsernsMode"] == ""
        assert host["Privileged"] is False
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
        assert host["SecurityOpt"] == ["no-new-privileges:true"]
        assert host["Init"] is True
        assert host["Runtime"] == "runc"
        assert host["PidsLimit"] == 100
        assert host["Memory"] == host["MemorySwap"] == 300 << 20  # and no swap
        assert not host["Devices"] and not host.get("Mounts") and not host["VolumesFrom"]
        # Exactly three host mounts: the work tree (rw), the control dir (ro) and the CLI's
        # conversation dir (rw), which is new and empty whatever was there before.
        conversation = conversation_dir(control)
        assert sorted(host["Binds"]) == sorted(
            [
                f"{tree}:{WORKSPACE}:rw",
                f"{control}:{CONTROL_DIR}:ro",
                f"{conversation}:{PROJECTS_DIR}:rw",
            ]
        )
        assert conversation.is_dir() and not conversation.is_symlink()
        assert list(conversation.iterdir()) == []
        tmpfs = host["Tmpfs"]
        assert set(tmpfs) == {"/tmp", CONFIG_DIR}
        for options in tmpfs.values():
            assert "size=" in options and "uid=1000,gid=1000" in options
        assert {u["Name"]: u["Hard"] for u in host["Ulimits"]} == {"core": 0, "fsize": 2 << 30}
        # No engine-side log to grow on the host: the worker reads the output attached.
        assert host["LogConfig"]["Type"] == "none"
        config = container.attrs["Config"]
        assert config["User"] == "1000:1000"
        assert config["Labels"][LABEL] == "unit-locked-down"
        # Its worker host, so that only this host's reaper ever removes it (docs/hosts.md).
        assert config["Labels"][HOST_LABEL] == engine_id(client)
    finally:
        container.remove(force=True)


def run_script(client, tree: Path, control: Path, turns, **values: str):
    with AnthropicStandIn(expected_api_key=MODEL_KEY) as api:
        api.script(turns)
        gateway = ModelGateway(control / "gateway.sock", AnthropicApiKey(api.url, MODEL_KEY))
        with gateway as gw:
            sandbox = Sandbox(settings(CLAUDE_MAX_RETRIES="0", **values), client)
            job = SandboxJob(
                session_id="unit-" + tree.parent.name[-12:],
                tree=tree,
                control=control,
                model_env=gw.backend.cli_env(RELAY_URL, gw.session_key),
                prompt="Follow the script.",
                limits=Limits(timeout=120, max_turns=8),
            )
            run = sandbox.run(job)
        # A warm slot's run went warm: its settings fit (see `session_dirs`).
        assert run.warm == (tree.parent / "slot-container").exists(), run.stderr_tail
        return run, api


def test_a_run_works_through_the_read_only_control_dir(client, session_dirs):
    tree, control = session_dirs
    run, api = run_script(
        client,
        tree,
        control,
        [
            ToolUse(
                "Bash", {"command": "touch /run/claudecluster/x; echo wrote > /workspace/out.txt"}
            ),
            Text("ok"),
        ],
    )
    assert run.exit_code == 0 and not run.limit, run.stderr_tail
    assert not run.outcome.is_error and run.outcome.result == "ok"
    # The gateway socket was reachable from the read-only mount; nothing could be written there.
    result = api.main_requests()[-1].tool_results()[0]["content"]
    assert "Read-only file system" in str(result)
    assert sorted(p.name for p in control.iterdir()) == ["prompt.md"]  # gateway.sock is gone
    assert (tree / "out.txt").read_text() == "wrote\n"
    assert not client.containers.list(all=True, filters={"label": LABEL + "=unit-"})


@pytest.mark.sandbox_settings(SANDBOX_WORKSPACE_SIZE="64m")
def test_a_tree_grown_past_its_limit_between_checks_still_fails_the_run(client, session_dirs):
    # The once-a-second check is pushed out of the run (SANDBOX_CHECK_INTERVAL): the check after
    # the run must catch a tree that grew past the limit just before the end. And no single file
    # may outgrow the limit (RLIMIT_FSIZE): the shell reports the signal that stops the writer.
    tree, control = session_dirs
    run, api = run_script(
        client,
        tree,
        control,
        [
            ToolUse(
                "Bash",
                {
                    "command": "head -c 40M /dev/zero > /workspace/a; "
                    "head -c 40M /dev/zero > /workspace/b; "
                    "head -c 80M /dev/zero > /workspace/c; ls -l /workspace"
                },
            ),
            Text("done, nothing to see"),
        ],
        SANDBOX_WORKSPACE_SIZE="64m",
        SANDBOX_CHECK_INTERVAL="3600",
    )
    assert run.exit_code == 0  # the CLI itself finished...
    assert run.limit == "the workspace grew past its limit of 64m (SANDBOX_WORKSPACE_SIZE)"
    assert run.outcome.is_error and run.outcome.failure == run.limit  # ...but the run failed
    listing = str(api.main_requests()[-1].tool_results()[0]["content"])
    assert "File size limit exceeded" in listing, listing
    assert f" {64 << 20} " in listing and f" {80 << 20} " not in listing, listing


@pytest.mark.sandbox_settings(SANDBOX_WORKSPACE_SIZE="64m")
def test_the_cli_conversation_dir_counts_with_the_work_tree(client, session_dirs):
    # The conversation dir is on the host like the tree, not a sized tmpfs: filling it instead
    # of the tree must reach the same limit.
    tree, control = session_dirs
    run, _ = run_script(
        client,
        tree,
        control,
        [
            ToolUse("Bash", {"command": "head -c 50M /dev/zero > ~/.claude/projects/filler"}),
            ToolUse("Bash", {"command": "head -c 50M /dev/zero > ~/.claude/projects/more"}),
            Text("done"),
        ],
        SANDBOX_WORKSPACE_SIZE="64m",
        SANDBOX_CHECK_INTERVAL="3600",
    )
    assert run.limit == "the workspace grew past its limit of 64m (SANDBOX_WORKSPACE_SIZE)"
    assert tree_usage(tree) < 1 << 20, "nothing was written to the tree"


@pytest.mark.sandbox_settings(SANDBOX_WORKSPACE_SIZE="64m")
def test_a_workspace_filler_is_stopped_soon_after_the_limit(client, session_dirs):
    # The limit is checked once a second: the tree may overshoot by what can be written in
    # about a second, and no more.
    tree, control = session_dirs
    run, _ = run_script(
        client,
        tree,
        control,
        [
            ToolUse(
                "Bash",
                {
                    "command": 'i=0; while head -c 8M /dev/zero > "/workspace/f$i"; '
                    "do i=$((i+1)); done"
                },
            ),
            Text("survived"),
        ],
        SANDBOX_WORKSPACE_SIZE="64m",
    )
    assert run.limit == "the workspace grew past its limit of 64m (SANDBOX_WORKSPACE_SIZE)"
    assert run.exit_code == 137 and run.outcome.failure == run.limit  # killed, mid-command
    used = tree_usage(tree)
    print(f"work tree at the end: {used >> 20} MiB for a limit of 64 MiB")
    assert 64 << 20 < used < 1 << 30


@pytest.mark.sandbox_settings(SANDBOX_WORKSPACE_SIZE="1m")
def test_a_checkout_over_the_limit_does_not_start(client, session_dirs):
    tree, control = session_dirs
    (tree / "big").write_bytes(b"x" * (2 << 20))
    with pytest.raises(SandboxError, match=r"checkout alone is larger .* \(1m, SANDBOX_WORK"):
        run_script(client, tree, control, [Text("never asked")], SANDBOX_WORKSPACE_SIZE="1m")


def test_output_reader_skips_an_endless_line_and_stops_at_the_total():
    lines: list[str] = []
    reader = OutputReader(lines.append, max_line=10, max_total=100)
    assert reader.feed(b'{"a":1}\n{"b"')
    assert reader.feed(b":2}\n" + b"x" * 8)
    assert reader.feed(b"y" * 8)  # the line is now longer than 10 bytes: dropped, not held
    assert len(reader._pending) == 0
    assert reader.feed(b"z" * 30 + b'\n{"c":3}\n{"d"')
    reader.close()
    assert lines == ['{"a":1}', '{"b":2}', '{"c":3}', '{"d"'] and reader.skipped == 1
    assert not reader.feed(b"w" * 50), "past the total, the run is to end"


def test_a_sandbox_that_floods_its_output_is_ended_at_the_limit(client, session_dirs):
    # The agent writes to the CLI's own stdout: a single line with no newline, longer than all
    # the output a session may print.
    tree, control = session_dirs
    flood = f"head -c {MAX_OUTPUT + (8 << 20)} /dev/zero | tr '\\0' x > $({CLI_STDOUT})"
    run, _ = run_script(
        client,
        tree,
        control,
        [
            ToolUse("Bash", {"command": flood}),
            Text("flooded"),
        ],
    )
    assert run.limit == f"the sandbox printed more than {MAX_OUTPUT >> 20} MiB of output"
    assert run.outcome.is_error and run.outcome.failure == run.limit
    assert not client.containers.list(all=True, filters={"label": LABEL + "=unit-"})
