"""The deployments as shipped: which process can read which secret, read off deploy/ itself.

What each container is given is read from the files a user applies, and checked against
jobs.common.settings.SECRET_OWNERS, the same table the processes enforce when they start.
Compose also runs end to end (tests/e2e/test_compose.py); Kubernetes cannot (no cluster is
reachable from these machines), so its manifest is validated offline against the schemas of
KUBERNETES_VERSION with kubernetes-validate, which bundles them.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from dotenv import dotenv_values

from jobs.common.settings import ROLES, SECRET_OWNERS
from tests.support import ROOT

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
KUBERNETES = DEPLOY / "kubernetes" / "claudecluster.yaml"
DOCKERFILE = ROOT / "images" / "service" / "Dockerfile"
# The oldest Kubernetes release still maintained upstream when this was written.
KUBERNETES_VERSION = "1.33.0"


def procfile() -> dict[str, list[str]]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return {role: shlex.split(cmd) for role, cmd in (line.split(": ", 1) for line in lines if line)}


def role_of(command: list[str]) -> str:
    for role, line in procfile().items():
        if command == line:
            return role
    raise AssertionError(f"{command} is none of the Procfile's processes")


def image_command() -> list[str]:
    (cmd,) = re.findall(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), re.M)
    return yaml.safe_load(cmd)


def env_keys(path: Path) -> set[str]:
    """The variables an env file sets; a real one is not in git, so its example stands in."""
    example = path.with_name(path.name + ".example")
    return set(dotenv_values(path if path.exists() else example))


def secrets_in(names: set[str]) -> set[str]:
    return names & set(SECRET_OWNERS)


def foreign(role: str, names: set[str]) -> set[str]:
    return {name for name in secrets_in(names) if SECRET_OWNERS[name] != role}


# ---------------------------------------------------------------------------------- compose


def compose_readable(compose: dict) -> dict[str, set[str]]:
    """Per Procfile role: every variable its container is given (env files and environment)."""
    readable: dict[str, set[str]] = {}
    for name, service in compose["services"].items():
        if "redis" in service.get("image", ""):
            continue
        role = role_of(service.get("command") or image_command())
        names = set(service.get("environment") or {})
        files = service.get("env_file") or []
        for file in [files] if isinstance(files, str) else files:
            names |= env_keys(COMPOSE.parent / file)
        readable.setdefault(role, set()).update(names)
        for volume in service.get("volumes") or []:
            source = str(volume).split(":", 1)[0]
            assert not source.endswith((".env", "/env")), f"{name} mounts the env files"
    return readable


def test_compose_gives_each_process_only_its_own_secrets():
    readable = compose_readable(yaml.safe_load(COMPOSE.read_text()))
    assert set(readable) == set(ROLES), "every Procfile process runs in compose"
    for role, names in readable.items():
        assert not foreign(role, names), f"compose gives the {role} {foreign(role, names)}"
    owned = {name for name, owner in SECRET_OWNERS.items() if owner == "web"}
    assert owned <= readable["web"], "the web still gets its webhook secret"
    assert "ANTHROPIC_API_KEY" in readable["gateway"]
    assert {"GITHUB_APP_ID", "GITHUB_PRIVATE_KEY"} <= readable["worker"]


def test_the_check_catches_the_old_single_env_file():
    # The layout before per-role files: every service read ../.env holding every secret.
    compose = yaml.safe_load(COMPOSE.read_text())
    for service in compose["services"].values():
        if "env_file" in service:
            service["env_file"] = "env/all.env"
    everything = DEPLOY / "env" / "all.env.example"
    everything.write_text("".join(f"{name}=x\n" for name in SECRET_OWNERS))
    try:
        readable = compose_readable(compose)
    finally:
        everything.unlink()
    not_the_workers = {name for name, owner in SECRET_OWNERS.items() if owner != "worker"}
    assert foreign("worker", readable["worker"]) == not_the_workers
    assert {"ANTHROPIC_API_KEY", "GITHUB_WEBHOOK_SECRET"} <= not_the_workers
    assert "GITHUB_PRIVATE_KEY" in foreign("web", readable["web"])


def test_compose_keeps_redis_on_an_internal_network_and_the_socket_with_the_worker():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    redis = services["redis"]
    assert "ports" not in redis and redis["networks"] == ["internal"]
    assert compose["networks"]["internal"]["internal"] is True
    assert "internal" not in services["gateway"]["networks"], "the gateway needs no Redis"
    socket_holders = [
        name
        for name, service in services.items()
        if any("docker.sock" in str(v) for v in service.get("volumes") or [])
    ]
    assert socket_holders == ["worker"]


def default(value: str) -> str:
    """A compose value with its `${VAR:-default}`s resolved to their defaults."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_compose_mounts_the_workspaces_at_the_same_path_as_on_the_host():
    # The host's engine resolves a sandbox's bind mounts (its workspace, its gateway socket) on
    # the host: the path the worker names must be the host's.
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name in ("worker", "gateway", "egress"):
        root = default(services[name]["environment"]["WORKSPACE_ROOT"])
        mounts = [default(v).split(":") for v in services[name]["volumes"]]
        assert [root, root] in mounts, name
    assert services["worker"]["environment"]["WORKER_SHUTDOWN"] == "cold"


def test_compose_keeps_redis_data_on_a_volume():
    compose = yaml.safe_load(COMPOSE.read_text())
    redis = compose["services"]["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    (volume,) = redis["volumes"]
    assert volume.split(":")[0] in compose["volumes"]


def test_the_service_image_does_not_run_as_root():
    users = re.findall(r"^USER (\S+)$", DOCKERFILE.read_text(), re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")


# ------------------------------------------------------------------------------- kubernetes


def secret_files() -> dict[str, Path]:
    """Secret name -> the env file it is created from, as the manifest's header says."""
    made = re.findall(
        r"kubectl create secret generic (\S+) --from-env-file=(\S+)", KUBERNETES.read_text()
    )
    return {name: ROOT / path for name, path in made}


def kubernetes_docs() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(KUBERNETES.read_text()) if doc]


def kubernetes_containers() -> list[tuple[dict, dict]]:
    found = []
    for doc in kubernetes_docs():
        if doc["kind"] in ("Deployment", "DaemonSet"):
            pod = doc["spec"]["template"]["spec"]
            found += [(pod, container) for container in pod["containers"]]
    return found


def test_kubernetes_gives_each_container_only_its_own_secrets():
    files = secret_files()
    assert set(files) == {f"claudecluster-{role}" for role in set(SECRET_OWNERS.values())}
    seen = set()
    for _pod, container in kubernetes_containers():
        if container["name"] == "redis":
            continue
        role = role_of(container.get("command") or image_command())
        seen.add(role)
        names = {entry["name"] for entry in container.get("env") or []}
        for source in container.get("envFrom") or []:
            names |= env_keys(files[source["secretRef"]["name"]])
        keyed = {
            entry["valueFrom"]["secretKeyRef"]["key"]
            for entry in container.get("env") or []
            if "secretKeyRef" in entry.get("valueFrom", {})
        }
        names |= keyed
        assert not foreign(role, names), f"Kubernetes gives the {role} {foreign(role, names)}"
        assert "volumeMounts" not in container or all(
            "env" not in m["mountPath"] for m in container["volumeMounts"]
        )
    assert seen == set(ROLES)


def test_kubernetes_redis_has_a_password_and_answers_only_the_web_and_the_worker():
    docs = [doc for doc in yaml.safe_load_all(KUBERNETES.read_text()) if doc]
    (redis,) = [c for _pod, c in kubernetes_containers() if c["name"] == "redis"]
    assert "--requirepass" in redis["args"]
    for _pod, container in kubernetes_containers():
        url = next((e["value"] for e in container.get("env") or [] if e["name"] == "REDIS_URL"), "")
        assert not url or url.startswith("redis://:$(REDIS_PASSWORD)@"), container["name"]
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"]["role"] == "redis"
    allowed = {
        p["podSelector"]["matchLabels"]["role"] for p in policy["spec"]["ingress"][0]["from"]
    }
    assert allowed == {"web", "worker"}


def test_kubernetes_pods_run_as_non_root_without_privileges():
    for pod, container in kubernetes_containers():
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["limits"]["memory"]


def test_the_manifest_is_valid_for_kubernetes():
    docs = kubernetes_docs()
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "DaemonSet", "Service", "NetworkPolicy"} <= kinds


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        (("spec", "template", "spec", "containers", 0, "resources", "limits"), "2Gi"),
        (("spec", "template", "spec", "securityContext", "runAsNonRoot"), "yes"),
        (("spec", "template", "spec", "containers", 0, "readinessProbe", "httpGet"), {"url": "/"}),
    ],
)
def test_the_validation_rejects_a_broken_manifest(path, bad):
    (worker,) = [d for d in kubernetes_docs() if d["kind"] == "DaemonSet"]
    node = worker
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, KUBERNETES_VERSION, strict=True)


def test_kubernetes_probes_health_and_readiness_and_keeps_redis_data():
    for _pod, container in kubernetes_containers():
        if container["name"] in ("web", "worker"):
            assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["resources"]["limits"]["cpu"]
    (redis,) = [
        d
        for d in kubernetes_docs()
        if d["metadata"]["name"] == "claudecluster-redis" and d["kind"] == "Deployment"
    ]
    (data,) = redis["spec"]["template"]["spec"]["volumes"]
    claim = data["persistentVolumeClaim"]["claimName"]
    assert any(
        d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim
        for d in kubernetes_docs()
    )


def test_kubernetes_workers_run_where_a_docker_engine_is():
    (worker,) = [d for d in kubernetes_docs() if d["kind"] == "DaemonSet"]
    pod = worker["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"claudecluster.io/docker": "true"}
    sockets = [v for v in pod["volumes"] if v.get("hostPath", {}).get("type") == "Socket"]
    assert [v["hostPath"]["path"] for v in sockets] == ["/var/run/docker.sock"]
