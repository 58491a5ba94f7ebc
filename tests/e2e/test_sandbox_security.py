"""The sandbox attacked from inside: real sessions whose scripted model runs probes in Bash.

Each test drives the whole service (webhook → queue → worker → real `claude` in the agent image)
and has the CLI's Bash tool run a probe; the assertions read the tool results the CLI sent back
to the model. What is checked:

1. no installation token and no real model key anywhere the sandbox can look (environment,
   process arguments, every readable file), no git state in the work tree, none in the worker's
   gitdir;
2. nothing reachable from inside but the model through the gateway: not the test's Redis, not the
   Docker socket or API, not a server on the host (not even through the docker0 bridge), not
   another session's container; no route and no interface but `lo`;
3. the container is locked down (read-only root, sized tmpfs, two host mounts, non-root, no
   capabilities, no-new-privileges, seccomp, own namespaces), and a memory hog, a fork bomb and
   a disk filler end their own session with a clear reason while the worker serves the next;
4. a whole session under gVisor (SANDBOX_RUNTIME=runsc).

Each holds for fresh containers and for warm ones from the pool (jobs/sandbox/pool.py): every
service here runs once with SANDBOX_POOL_SIZE=1 and once with 0, and a warm run is checked to be
one (the container found is a claimed pool slot's).

Probes never name a secret literally (their own command lines and the CLI's transcript would
then hold it): needles reach them base64-encoded and are decoded into shell variables.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import docker
import pytest
from docker.utils import parse_bytes

from jobs.common.settings import WorkerSettings
from jobs.sandbox.container import CONFIG_DIR as CONFIG
from jobs.sandbox.container import LABEL, POOL_ROLE, ROLE_LABEL, Sandbox
from jobs.sandbox.host import engine_id
from jobs.sandbox.pool import POOL_LABEL, claimed_name, pool_key
from jobs.sandbox.workspace import OWNER_FILE
from jobs.upkeep.leftovers import WORKSPACE_PREFIX
from tests.e2e.conftest import (
    ANY_STATE,
    FINAL,
    MODEL_KEY,
    Service,
    leftover_containers,
    run_service,
)
from tests.standins.anthropic import Text, ToolUse
from tests.support import free_port, wait_for

CONTRIBUTING = "# Contributing\n\nRun `pytest -q`.\n"


# --------------------------------------------------------------------------- helpers


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def bash(command: str, timeout_ms: int = 300_000) -> ToolUse:
    return ToolUse("Bash", {"command": command, "timeout": timeout_ms})


def tool_outputs(api) -> list[str]:
    """What each Bash call printed, in order (the CLI's last request carries them all)."""
    outputs = []
    for result in api.main_requests()[-1].tool_results():
        content = result.get("content")
        if isinstance(content, list):
            content = "".join(b.get("text", "") for b in content if isinstance(b, dict))
        outputs.append(str(content))
    return outputs


def fields(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def session_of(service: Service, number: int, timeout: float = 60) -> str:
    def posted():
        comments = service.tracking_comments(number)
        return ANY_STATE.search(comments[0].body).group(1) if comments else None

    return wait_for(posted, timeout, what=f"the tracking comment on #{number}")


POOL_SIZES = ["1", "0"]  # warm sandboxes from the pool, fresh ones
DEFAULT_POOL_SIZE = WorkerSettings.model_fields["sandbox_pool_size"].default


def pooled(svc: Service) -> bool:
    return int(svc.env.get("SANDBOX_POOL_SIZE", DEFAULT_POOL_SIZE)) > 0


def running_container(svc: Service, session_id: str, timeout: float = 60):
    """The session's running sandbox: a claimed pool slot's with the pool on, else a fresh one."""

    def found():
        running = [c for c in leftover_containers(session_id) if c.status == "running"]
        return running[0] if running else None

    container = wait_for(found, timeout, what=f"the sandbox of {session_id}")
    assert (container.labels.get(ROLE_LABEL) == POOL_ROLE) == pooled(svc), container.labels
    return container


@pytest.fixture(scope="module", params=POOL_SIZES, ids=["warm", "fresh"])
def sandboxed(request, stand_ins, tmp_path_factory):
    """The service, with warm sandboxes and without."""
    with run_service(
        f"sandboxed-{request.param}",
        10 + int(request.param),
        stand_ins,
        tmp_path_factory,
        SANDBOX_POOL_SIZE=request.param,
    ) as svc:
        yield svc
    # The worker's end drained its idle slots: nothing is left waiting for no worker.
    engine = docker.from_env()
    label = f"{POOL_LABEL}={pool_key(engine_id(engine), svc.workspace_root)}"
    assert not engine.containers.list(all=True, filters={"label": label})


# Searched for in the whole readable filesystem, excluding /proc and /sys (never through /dev's
# devices, never through symlinks).
ROOTS = "roots=$(ls -d /* | grep -vxE '/(proc|sys)')"
DECODE = 'needle() { echo "$1" | base64 -d; }'


def needle_counts(name: str) -> str:
    """Bash printing how often the needle in `$name` shows up in each place it could be."""
    pattern = f"<(printf '%s\\n' \"${name}\")"
    return "\n".join(
        [
            f'echo "{name}.env=$(env | grep -cF -f {pattern})"',
            f"echo \"{name}.environ=$(cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' "
            f'| grep -cF -f {pattern})"',
            f"echo \"{name}.cmdline=$(cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n' "
            f'| grep -cF -f {pattern})"',
            f'echo "{name}.files=$(grep -rlsF -D skip -f {pattern} $roots | wc -l)"',
        ]
    )


# --------------------------------------------------------------------------- 1. no secrets


SECRETS_PROBE = "\n".join(
    [
        DECODE,
        "t=$(needle @TOKEN@); k=$(needle @KEY@); c=$(needle @CANARY@)",
        "s=$(needle @SESSIONKEY@); m=$(needle @FLAG@)",
        ROOTS,
        'n=0; for f in /proc/[0-9]*/environ; do [ -r "$f" ] && n=$((n+1)); done',
        'echo "environ.readable=$n"',
        'echo "cmdline.readable=$(ls /proc/[0-9]*/cmdline | wc -l)"',
        'echo "files.readable=$(find $roots -type f -readable 2>/dev/null | wc -l)"',
        needle_counts("t"),
        needle_counts("k"),
        needle_counts("c"),
        needle_counts("s"),
        needle_counts("m"),
        'echo "workspace.git=$([ -e /workspace/.git ] && echo present || echo absent)"',
        'echo "workspace.git_dirs=$(find /workspace -name .git | wc -l)"',
        'echo "workspace.rev_parse=$(cd /workspace && git rev-parse --git-dir 2>&1 | head -1)"',
    ]
)


def test_no_token_and_no_model_key_anywhere_in_the_sandbox(sandboxed):
    service = sandboxed
    gh, api = service.github, service.anthropic
    canary = f"canary-{uuid.uuid4().hex}"
    number = service.new_issue("Look around the sandbox", f"Please look around. {canary}")
    # The token is minted when the session starts; the probe naming it is scripted once it is
    # known, while the first command keeps the sandbox busy.
    api.script([bash("sleep 8; echo waited")])
    mints = len(gh.token_requests)
    assert service.comment(number, "/claude look around").status_code == 202
    wait_for(api.main_requests, 120, what="the session's first model request")
    assert len(gh.token_requests) > mints
    token = gh.token_requests[-1].token
    assert token and gh.token_info(token).installation_id
    probe = (
        SECRETS_PROBE.replace("@TOKEN@", b64(token))
        .replace("@KEY@", b64(MODEL_KEY))
        .replace("@CANARY@", b64(canary))
        .replace("@SESSIONKEY@", b64("ccgw-"))
        .replace("@FLAG@", b64("--strict-mcp-config"))
    )
    api.add_turns(bash(probe), Text("Nothing to change."))

    # From the host, while it runs: neither the container's definition nor anything in the
    # session's directory (the worker's gitdir, its git home, the control dir) holds them.
    session_id = session_of(service, number)
    container = running_container(service, session_id)
    definition = json.dumps(container.attrs)
    assert token not in definition and MODEL_KEY not in definition
    if pooled(service):  # created before the session: the session's key is only in the exec
        assert "ccgw-" not in definition and container.name == claimed_name(session_id)
    else:
        assert "ANTHROPIC_API_KEY=ccgw-" in definition  # the per-session key is all it gets
    tree = next(m["Source"] for m in container.attrs["Mounts"] if m["Destination"] == "/workspace")
    session_root = Path(tree).parent
    gitdir = session_root / "git"
    assert (gitdir / "config").is_file() and (gitdir / "HEAD").is_file()
    scanned = 0
    for path in session_root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            assert token.encode() not in data and MODEL_KEY.encode() not in data, path
            scanned += 1
    assert scanned >= 5
    remote = subprocess.run(
        ["git", "--git-dir", str(gitdir), "config", "--get", "remote.origin.url"],
        capture_output=True,
        text=True,
    ).stdout
    assert remote.startswith("http") and "@" not in remote and token not in remote

    final = service.wait_final(number)
    assert "state=done" in final.body, final.body
    waited, probe_output = tool_outputs(api)
    assert waited.strip() == "waited"
    found = fields(probe_output)
    print(f"host side: {scanned} files of the session's directory scanned\n{probe_output}")
    for secret in ("t", "k"):  # the installation token, the real model key
        for where in ("env", "environ", "cmdline", "files"):
            assert found[f"{secret}.{where}"] == "0", (secret, where, probe_output)
    # The probe could see what it looked through: the per-session key in the CLI's environment,
    # the CLI's flags in its command line, the issue's canary in the prompt and the transcript.
    assert int(found["s.environ"]) >= 1, probe_output
    assert int(found["m.cmdline"]) >= 1, probe_output
    assert int(found["c.files"]) >= 1, probe_output
    assert int(found["environ.readable"]) >= 4 and int(found["files.readable"]) > 1000
    # No git state at all in the work tree.
    assert found["workspace.git"] == "absent" and found["workspace.git_dirs"] == "0"
    assert found["workspace.rev_parse"].startswith("fatal: not a git repository")
    assert not leftover_containers(session_id)
    wait_for(lambda: gh.token_info(token).revoked, 15, what="the token's revocation")


# --------------------------------------------------------------------------- 2. no way out


class TcpServer:
    """A server of the test's own on 0.0.0.0: every connection it accepts is recorded."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", self.port))
        self.sock.listen(16)
        self.peers: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer[0])
            with contextlib.suppress(OSError):
                conn.sendall(b"hello from the test's server\n")
            conn.close()

    def close(self) -> None:
        self.sock.close()


def host_addresses() -> dict[str, str]:
    """This machine's own IPv4 addresses but loopback, by interface (docker0 among them)."""
    listing = json.loads(
        subprocess.run(
            ["ip", "-j", "-4", "addr", "show"], check=True, capture_output=True, text=True
        ).stdout
    )
    return {
        info["local"]: link["ifname"]
        for link in listing
        for info in link.get("addr_info", [])
        if not info["local"].startswith("127.")
    }


NETWORK_PROBE = "\n".join(
    [
        DECODE,
        ROOTS,
        "try_tcp() {",
        '  if err=$(timeout 5 bash -c "exec 3<>/dev/tcp/$2/$3" 2>&1); then echo "$1=connected"',
        '  else echo "$1=failed: $(echo "$err" | head -1 | sed \'s/^.*: //\')"; fi',
        "}",
        "try_tcp redis 127.0.0.1 @REDIS@",
        'for a in @ADDRESSES@; do try_tcp "server.$a" "$a" @PORT@; done',
        'echo "docker.sock=$([ -e /var/run/docker.sock ] && echo present || echo absent)"',
        'echo "sockets=$(find / \\( -path /proc -o -path /sys \\) -prune -o -type s -print '
        "2>/dev/null | tr '\\n' ' ')\"",
        # The Docker API asked for through the only way out there is.
        "exec 3<>/dev/tcp/127.0.0.1/8787",
        "printf 'GET /v1.41/containers/json HTTP/1.1\\r\\nHost: docker\\r\\nConnection: close"
        "\\r\\n\\r\\n' >&3",
        "echo \"docker_api_via_gateway=$(head -1 <&3 | tr -d '\\r')\"",
        "exec 3<&-",
        "echo \"interfaces=$(ls /sys/class/net | tr '\\n' ' ')\"",
        "echo \"netdev=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')\"",
        'echo "routes4=$(tail -n +2 /proc/net/route | wc -l)"',
        "echo \"routes6_not_lo=$(grep -vc ' lo$' /proc/net/ipv6_route)\"",
        "echo \"unix_sockets_of_the_engine=$(grep -cE 'docker|containerd' /proc/net/unix)\"",
        # The other session: its file, its process.
        "v=$(needle @VICTIM@)",
        'echo "victim.files=$(grep -rlsF -D skip -f <(printf \'%s\\n\' "$v") $roots | wc -l)"',
        'echo "victim.sleep=$(grep -lx sleep /proc/[0-9]*/comm 2>/dev/null | wc -l)"',
        "echo \"processes=$(cat /proc/[0-9]*/comm 2>/dev/null | sort -u | tr '\\n' ' ')\"",
        'for n in net ipc pid uts mnt cgroup; do echo "ns.$n=$(readlink /proc/self/ns/$n)"; done',
    ]
)

NAMESPACES = ("net", "ipc", "pid", "uts", "mnt", "cgroup")


@pytest.fixture
def victim(agent_image, tmp_path):
    """Another session's sandbox, made the way the worker makes them, running beside ours."""
    mark = f"victim-secret-{uuid.uuid4().hex}"
    tree, control = tmp_path / "tree", tmp_path / "control"
    tree.mkdir()
    control.mkdir()
    os.chown(tree, 1000, 1000)
    sandbox = Sandbox(WorkerSettings.parse(AGENT_IMAGE=agent_image))
    container = sandbox.create(
        f"victim-{uuid.uuid4().hex[:8]}",
        tree,
        control,
        ["bash", "-c", 'echo "$VICTIM_MARK" > /workspace/victim.txt; exec sleep 600'],
        {"VICTIM_MARK": mark},
    )
    try:
        container.start()
        wait_for(lambda: (tree / "victim.txt").exists(), 30, what="the victim's file")
        container.reload()
        yield container, mark
    finally:
        container.remove(force=True)


def namespaces_of(container) -> dict[str, str]:
    code, out = container.exec_run(
        ["bash", "-c", f"for n in {' '.join(NAMESPACES)}; do readlink /proc/self/ns/$n; done"]
    )
    assert code == 0, out
    return dict(zip(NAMESPACES, out.decode().split(), strict=True))


def test_nothing_is_reachable_from_the_sandbox_but_the_gateway(sandboxed, victim, agent_image):
    service = sandboxed
    api = service.anthropic
    other, mark = victim
    server = TcpServer()
    client = docker.from_env()
    try:
        addresses = host_addresses()
        assert "docker0" in addresses.values(), addresses
        bridge_ip = next(a for a, name in addresses.items() if name == "docker0")
        # Controls: the server answers the host on every address, and a container that does
        # have a network (the default bridge) reaches it through docker0.
        for address in ["127.0.0.1", *addresses]:
            with socket.create_connection((address, server.port), timeout=5) as conn:
                assert conn.recv(64).startswith(b"hello")
        out = client.containers.run(
            agent_image,
            ["-c", f"exec 3<>/dev/tcp/{bridge_ip}/{server.port}; head -1 <&3"],
            entrypoint="bash",
            network_mode="bridge",
            remove=True,
        )
        assert out.startswith(b"hello"), out
        controls = len(server.peers)

        redis_port = re.search(r":(\d+)/", service.redis_url).group(1)
        probe = (
            NETWORK_PROBE.replace("@REDIS@", redis_port)
            .replace("@PORT@", str(server.port))
            .replace("@ADDRESSES@", " ".join(["127.0.0.1", *addresses]))
            .replace("@VICTIM@", b64(mark))
        )
        number = service.new_issue("Try to get out")
        api.script([bash(probe), Text("Nothing to change.")])
        assert service.comment(number, "/claude try to get out").status_code == 202
        final = service.wait_final(number)
        assert "state=done" in final.body, final.body
        found = fields(tool_outputs(api)[0])
    finally:
        server.close()
    report = json.dumps(found, indent=1)
    print(report)

    # Redis (on the host's 127.0.0.1): the sandbox's loopback is its own.
    assert found["redis"] == "failed: Connection refused", report
    # The test's server, on every address of this machine: no route to any of them.
    assert found["server.127.0.0.1"] == "failed: Connection refused", report
    for address in addresses:
        assert found[f"server.{address}"] == "failed: Network is unreachable", report
    assert len(server.peers) == controls  # nothing from the sandbox ever arrived
    # No Docker: no socket, no other Unix socket than the gateway's, and the gateway refuses
    # anything but the Messages API.
    assert found["docker.sock"] == "absent", report
    # (The CLI's own sockets, if any, live on the container's tmpfs.)
    sockets = [s for s in found["sockets"].split() if not s.startswith(("/tmp/", CONFIG))]
    assert sockets == ["/run/claudecluster/gateway.sock"], report
    assert " 403 " in found["docker_api_via_gateway"], report
    # Nothing outside (the internet, 169.254.169.254) is reachable by construction: one
    # interface, loopback, and no route at all.
    assert found["interfaces"].split() == ["lo"] and found["netdev"].split() == ["lo"], report
    assert found["routes4"] == "0" and found["routes6_not_lo"] == "0", report
    assert found["unix_sockets_of_the_engine"] == "0", report
    # The other session: no address to reach it at, its files and processes out of sight,
    # and no namespace shared with it or with the host.
    other.reload()
    networks = other.attrs["NetworkSettings"]["Networks"]
    assert list(networks) == ["none"] and not networks["none"]["IPAddress"]
    assert found["victim.files"] == "0" and found["victim.sleep"] == "0", report
    assert "sleep" not in found["processes"].split(), report
    ours = {n: found[f"ns.{n}"] for n in NAMESPACES}
    theirs = namespaces_of(other)
    host = {n: os.readlink(f"/proc/self/ns/{n}") for n in NAMESPACES}
    for n in NAMESPACES:
        assert len({ours[n], theirs[n], host[n]}) == 3, (n, ours[n], theirs[n], host[n])
    assert other.status == "running"  # and it was not disturbed


# --------------------------------------------------------------------------- 3. locked down


HARDENING_PROBE = "\n".join(
    [
        "sleep 5",  # time for the test to inspect the running container
        'echo "uid=$(id -u)"',
        "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status "
        "| tr -d '\\t' | sed 's/:/=/'",
        "for d in / /etc /usr/local/bin /home/node /var/tmp /run/claudecluster /tmp /workspace "
        "/home/node/.claude; do",
        '  if err=$(touch "$d/.probe" 2>&1); then echo "write.$d=ok"; rm -f "$d/.probe"',
        '  else echo "write.$d=$(echo "$err" | sed \'s/^.*: //\')"; fi',
        "done",
        'echo "writable_dirs=$(find / \\( -path /proc -o -path /sys \\) -prune -o -type d '
        "-writable -print 2>/dev/null | grep -vE '^/(tmp|workspace|home/node/\\.claude)/' "
        "| tr '\\n' ' ')\"",
        'echo "pids.max=$(cat /sys/fs/cgroup/pids/pids.max)"',
        'echo "memory.limit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"',
        'echo "ulimit.core=$(ulimit -c)"',
        'echo "ulimit.fsize=$(ulimit -f)"',
        'echo "setuid_files=$(find / -xdev -type f -perm /6000 2>/dev/null | wc -l)"',
        "sed 's/^/mount=/' /proc/self/mountinfo",
    ]
)

# What the engine itself mounts from the host (read-only on a read-only root).
ENGINE_FILES = {"/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/usr/sbin/docker-init"}


def test_the_container_is_locked_down(sandboxed):
    service = sandboxed
    api = service.anthropic
    expected = WorkerSettings.parse()  # what the worker runs with: conftest sets no SANDBOX_* value
    number = service.new_issue("Look at the container")
    api.script([bash(HARDENING_PROBE), Text("Nothing to change.")])
    assert service.comment(number, "/claude look at the container").status_code == 202
    container = running_container(service, session_of(service, number))
    host = container.attrs["HostConfig"]
    assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["NetworkMode"] == "none" and host["IpcMode"] == "private"
    assert host["CgroupnsMode"] == "private" and not host["Privileged"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["PidsLimit"] == expected.sandbox_pids
    final = service.wait_final(number)
    assert "state=done" in final.body, final.body
    output = tool_outputs(api)[0]
    found = fields(output)
    print(output)

    assert found["uid"] == "1000"
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert found[caps] == "0000000000000000", output
    assert found["NoNewPrivs"] == "1" and found["Seccomp"] == "2", output  # 2: a filter
    for path in ("/", "/etc", "/usr/local/bin", "/home/node", "/var/tmp", "/run/claudecluster"):
        assert found[f"write.{path}"] == "Read-only file system", (path, output)
    for path in ("/tmp", "/workspace", "/home/node/.claude"):
        assert found[f"write.{path}"] == "ok", (path, output)
    # Every directory the agent can write to is one of those three, or /dev's IPC mounts.
    writable = set(found["writable_dirs"].split())
    assert writable <= {"/tmp", "/workspace", "/home/node/.claude", "/dev/shm", "/dev/mqueue"}
    assert found["pids.max"] == str(expected.sandbox_pids)
    assert found["memory.limit"] == str(parse_bytes(expected.sandbox_memory))
    workspace_limit = parse_bytes(expected.sandbox_workspace_size)
    assert found["ulimit.core"] == "0" and found["ulimit.fsize"] == str(workspace_limit // 1024)
    assert found["setuid_files"] == "0"

    mounts = {}
    for line in output.splitlines():
        if line.startswith("mount="):
            before, after = line.removeprefix("mount=").split(" - ")
            parts = before.split()
            fstype, source, super_options = after.split()[:3]
            mounts[parts[4]] = (parts[5].split(","), fstype, source, super_options)
    from_host = {
        point
        for point, (_, fstype, source, _) in mounts.items()
        if source.startswith("/dev/") and fstype not in ("tmpfs", "devpts")
    }
    # The CLI's conversation dir (its transcripts) is the only host mount besides the tree and
    # the control dir; like the tree it is the session's own, writable and counted in its size.
    conversation = "/home/node/.claude/projects"
    assert from_host - ENGINE_FILES == {"/workspace", "/run/claudecluster", conversation}
    for point in from_host - {"/workspace", conversation}:
        assert "ro" in mounts[point][0], (point, mounts[point])
    assert "rw" in mounts["/workspace"][0] and "rw" in mounts[conversation][0]
    assert mounts["/"][0][0] == "ro"
    for point, size in (
        ("/tmp", expected.sandbox_tmp_size),
        ("/home/node/.claude", expected.sandbox_config_size),
    ):
        size = f"size={parse_bytes(size) // 1024}k"
        options, fstype, _, super_options = mounts[point]
        assert fstype == "tmpfs" and size in super_options and "uid=1000" in super_options
        assert "nosuid" in options and "nodev" in options


# --------------------------------------------------------------------------- 3. limits


@pytest.fixture(scope="module", params=POOL_SIZES, ids=["warm", "fresh"])
def limited(request, stand_ins, tmp_path_factory):
    """The service with small sandbox limits, so that attacks reach them in seconds."""
    with run_service(
        f"limited-{request.param}",
        2 if request.param == "1" else 12,
        stand_ins,
        tmp_path_factory,
        inherit_sandbox=False,
        SANDBOX_POOL_SIZE=request.param,
        WEB_CONCURRENCY="1",
        SANDBOX_MEMORY="384m",
        SANDBOX_PIDS="64",
        SANDBOX_WORKSPACE_SIZE="96m",
        SANDBOX_TMP_SIZE="16m",
        SANDBOX_CONFIG_SIZE="32m",
    ) as svc:
        yield svc


def attack(svc: Service, title: str, turns: list) -> tuple[str, str]:
    """Run one session of `turns`; its final comment and session id, once it is over."""
    svc.anthropic.script(turns)
    number = svc.new_issue(title)
    before = svc.github.branches("octo-org/hello-world")
    warm_runs = svc.tail("worker", 100_000).count("warm container ready")
    assert svc.comment(number, f"/claude {title.lower()}").status_code == 202
    final = svc.wait_final(number)
    session_id = FINAL.search(final.body).group(1)
    assert "state=failed" in final.body, final.body
    # The attack ran in a warm container exactly when the pool is on.
    ran_warm = svc.tail("worker", 100_000).count("warm container ready") - warm_runs
    assert ran_warm == (1 if pooled(svc) else 0), svc.tail("worker")
    assert not svc.pulls_for(number)
    assert svc.github.branches("octo-org/hello-world") == before
    assert not leftover_containers(session_id)
    return final.body, session_id


def session_filter(svc: Service, session_id: str) -> dict:
    """The engine's events of the session's container: a warm one by its claimed name."""
    if pooled(svc):
        return {"container": claimed_name(session_id)}
    return {"label": f"{LABEL}={session_id}"}


def test_a_memory_hog_ends_its_session_as_out_of_memory(limited):
    started = time.time()
    body, session_id = attack(
        limited,
        "Use all the memory",
        [
            bash("node -e 'const a = []; for (;;) a.push(Buffer.alloc(1 << 24, 1))'"),
            Text("survived"),
        ],
    )
    assert "the sandbox ran out of memory (its limit is 384m)" in body, body
    print(body)
    # The engine saw the kernel's OOM kill in that session's container.
    events = docker.from_env().events(
        since=int(started),
        until=int(time.time()) + 1,
        decode=True,
        filters={"event": "oom", **session_filter(limited, session_id)},
    )
    ooms = [e for e in events if e.get("Action") == "oom"]
    assert ooms
    print(f"{len(ooms)} oom event(s) for {session_id}")


def test_a_fork_bomb_ends_its_session_at_the_process_limit(limited):
    body, _ = attack(
        limited,
        "Fork forever",
        [
            bash("bomb() { bomb | bomb; }; bomb", timeout_ms=120_000),
            Text("survived"),
        ],
    )
    assert "the sandbox hit its limit of 64 processes" in body, body
    print(body)


def test_a_disk_filler_is_held_by_the_tmpfs_sizes_and_the_workspace_limit(limited):
    # The report is printed only after the fill is removed: the CLI keeps the Bash tool's
    # output in /tmp, so whatever is printed while /tmp is full is lost.
    fill_tmpfs = "\n".join(
        [
            f"r=$(dd if=/dev/zero of={d}/fill bs=1M count=128 2>&1 | grep -o 'No space left on "
            f"device'); s=$(df -k {d} | tail -1 | awk '{{print $2, $4}}'); rm -f {d}/fill; "
            f'echo "$r"; echo "{d}=$s"'
            for d in ("/tmp", "/home/node/.claude", "/dev/shm")
        ]
    )
    fill_workspace = (
        'i=0; while head -c 8M /dev/zero > "/workspace/fill-$i"; do i=$((i+1)); done; '
        'echo "stopped after $i files"'
    )
    body, _ = attack(
        limited,
        "Fill the disk",
        [
            bash(fill_tmpfs),
            bash(fill_workspace),
            Text("survived"),
        ],
    )
    assert "the workspace grew past its limit of 96m (SANDBOX_WORKSPACE_SIZE)" in body, body
    tmpfs = tool_outputs(limited.anthropic)[0]
    print(body, tmpfs, sep="\n")
    # Each tmpfs filled up to its size and no further (total and free 1K blocks).
    assert tmpfs.count("No space left on device") == 3, tmpfs
    found = fields(tmpfs)
    assert found["/tmp"].split()[0] == str(16 * 1024), tmpfs
    assert found["/home/node/.claude"].split()[0] == str(32 * 1024), tmpfs
    assert found["/dev/shm"].split()[0] == str(64 * 1024), tmpfs

    # The filled work tree went with the session. (The gateway's control socket, the repository
    # cache and idle pool slots live beside the workspaces; only the sessions' own directories
    # count, a claimed slot's among them.)
    def trees() -> list[Path]:
        root = limited.workspace_root
        return [
            p
            for p in root.iterdir()
            if p.is_dir() and (p.name.startswith(WORKSPACE_PREFIX) or (p / OWNER_FILE).exists())
        ]

    wait_for(lambda: not trees(), 30, what="the tree's removal")


def test_after_the_attacks_the_same_worker_serves_a_normal_session(limited):
    api = limited.anthropic
    number = limited.new_issue("Document the tests")
    api.script(
        [
            ToolUse("Write", {"file_path": "/workspace/CONTRIBUTING.md", "content": CONTRIBUTING}),
            Text("Added CONTRIBUTING.md."),
        ]
    )
    assert limited.comment(number, "/claude document the tests").status_code == 202
    final = limited.wait_final(number)
    assert "state=done" in final.body and "Claude opened #" in final.body, final.body
    pull = limited.pulls_for(number)[0]
    assert (
        limited.github.read_file("octo-org/hello-world", pull.head_ref, "CONTRIBUTING.md")
        == CONTRIBUTING
    )
    assert "Work-horse terminated unexpectedly" not in limited.log_text()


# --------------------------------------------------------------------------- 4. gVisor


@pytest.fixture(scope="module", params=POOL_SIZES, ids=["warm", "fresh"])
def gvisor(request, stand_ins, tmp_path_factory):
    runtimes = docker.from_env().info().get("Runtimes", {})
    if "runsc" not in runtimes:
        pytest.fail(
            "gVisor is not registered with dockerd: apt-get install runsc, add "
            '"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": '
            '["--network=none", "--host-uds=open"]}} to /etc/docker/daemon.json, then '
            "kill -HUP dockerd"
        )
    with run_service(
        f"gvisor-{request.param}",
        3 if request.param == "1" else 13,
        stand_ins,
        tmp_path_factory,
        inherit_sandbox=False,
        SANDBOX_POOL_SIZE=request.param,
        WEB_CONCURRENCY="1",
        SANDBOX_RUNTIME="runsc",
    ) as svc:
        yield svc


def processes_naming(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if text in args:
                found.append(args)
    return found


def test_a_whole_session_runs_under_gvisor(gvisor):
    api = gvisor.anthropic
    number = gvisor.new_issue("Document the tests under gVisor")
    api.script(
        [
            bash(
                'sleep 5; echo "kernel=$(uname -r)"; echo "uid=$(id -u)"; '
                'echo "routes4=$(tail -n +2 /proc/net/route | wc -l)"; '
                "grep -E '^CapEff:' /proc/self/status | tr -d '\\t' | sed 's/:/=/'; "
                "if err=$(touch /etc/x 2>&1); then echo etc=ok; else echo etc=refused; fi"
            ),
            ToolUse("Write", {"file_path": "/workspace/CONTRIBUTING.md", "content": CONTRIBUTING}),
            Text("Added CONTRIBUTING.md under gVisor."),
        ]
    )
    assert gvisor.comment(number, "/claude document the tests").status_code == 202
    container = running_container(gvisor, session_of(gvisor, number))
    assert container.attrs["HostConfig"]["Runtime"] == "runsc"
    assert processes_naming(container.id)  # gVisor's sandbox and gofer, while it runs

    final = gvisor.wait_final(number)
    assert "state=done" in final.body and "Claude opened #" in final.body, final.body
    pull = gvisor.pulls_for(number)[0]
    assert (
        gvisor.github.read_file("octo-org/hello-world", pull.head_ref, "CONTRIBUTING.md")
        == CONTRIBUTING
    )
    found = fields(tool_outputs(api)[0])
    print(found)
    assert found["kernel"] == "4.4.0"  # gVisor's own kernel, not the host's
    assert found["uid"] == "1000" and found["routes4"] == "0" and found["etc"] == "refused"
    assert found["CapEff"] == "0000000000000000"  # (gVisor's /proc does not show NoNewPrivs)
    # Nothing of the sandbox is left: no container, no runsc process, no shim.
    assert not leftover_containers(FINAL.search(final.body).group(1))
    wait_for(lambda: not processes_naming(container.id), 30, what="runsc to exit")
