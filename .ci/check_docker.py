#!/usr/bin/env python3
"""Static checks of Dockerfile and docker-compose.yaml (no Docker engine runs on CI).

The command lines themselves are parsed with the real clap definition by the Rust test
`docs::docker_compose_command_lines_parse`; this checks the structure around them.
"""
import pathlib
import re
import sys

import yaml

root = pathlib.Path(__file__).resolve().parent.parent
errors = []

compose = yaml.safe_load((root / "docker-compose.yaml").read_text())
services = compose.get("services", {})
broker = services.get("rabbitmq")
if not broker or not str(broker.get("image", "")).startswith("rabbitmq:3-management"):
    errors.append("compose: service rabbitmq must use rabbitmq:3-management")
elif "healthcheck" not in broker:
    errors.append("compose: rabbitmq needs a healthcheck")
# Services in a profile (the optional cluster) are checked apart from the default set.
default = {n: s for n, s in services.items() if not s.get("profiles")}
workers = {n: s for n, s in default.items() if n != "rabbitmq"}
for kind in ("tabular", "image", "text"):
    for role in ("produce", "consume"):
        if f"{role}-{kind}" not in workers:
            errors.append(f"compose: missing service {role}-{kind}")


def depends_healthy(svc, broker):
    return (svc.get("depends_on") or {}).get(broker, {}).get("condition") == "service_healthy"


def check_worker(name, svc):
    if not str(svc.get("command", "")).startswith("mqdemo "):
        errors.append(f"compose: {name} command must start with mqdemo")
    if svc.get("build") != ".":
        errors.append(f"compose: {name} must build this repository")
    for vol in svc.get("volumes", []):
        src = vol.split(":")[0]
        if src not in (compose.get("volumes") or {}):
            errors.append(f"compose: {name} uses undeclared volume {src}")
    for path in re.findall(r"(/data/\S+)", str(svc.get("command", ""))):
        if not (root / "examples/data" / path[len("/data/"):]).exists():
            errors.append(f"compose: {name} reads {path}, which examples/data lacks")


for name, svc in workers.items():
    if not depends_healthy(svc, "rabbitmq"):
        errors.append(f"compose: {name} must wait for rabbitmq to be healthy")
    check_worker(name, svc)

# The `cluster` profile: three brokers sharing an Erlang cookie, clustered at boot by
# classic_config peer discovery (from a config that names every node), and mqdemo workers
# that name all three nodes and use a quorum queue.
cluster = {n: s for n, s in services.items() if "cluster" in (s.get("profiles") or [])}
nodes = {n: s for n, s in cluster.items() if str(s.get("image", "")).startswith("rabbitmq:")}
if len(nodes) != 3:
    errors.append(f"compose: the cluster profile needs 3 rabbitmq services, has {sorted(nodes)}")
hosts = {n: s.get("hostname") for n, s in nodes.items()}
cookies = {str((s.get("environment") or {}).get("RABBITMQ_ERLANG_COOKIE", "")) for s in nodes.values()}
if len(cookies) != 1 or "" in cookies:
    errors.append("compose: cluster nodes must share one non-empty RABBITMQ_ERLANG_COOKIE")
configs = compose.get("configs") or {}
checked_configs = set()
seed = None
for name, svc in nodes.items():
    if not hosts[name]:
        errors.append(f"compose: cluster node {name} needs a hostname (its node is rabbit@HOSTNAME)")
    if "healthcheck" not in svc:
        errors.append(f"compose: cluster node {name} needs a healthcheck")
    mounted = [c for c in svc.get("configs", []) if isinstance(c, dict)]
    if not any(str(c.get("target", "")).startswith("/etc/rabbitmq/conf.d/") for c in mounted):
        errors.append(f"compose: cluster node {name} must mount the cluster config into conf.d")
    for c in mounted:
        if c.get("source") in checked_configs:
            continue
        checked_configs.add(c.get("source"))
        text = str((configs.get(c.get("source")) or {}).get("content", ""))
        if "cluster_formation.peer_discovery_backend = classic_config" not in text:
            errors.append(f"compose: config {c.get('source')} must use classic_config discovery")
        for other in hosts.values():
            if f"= rabbit@{other}" not in text:
                errors.append(f"compose: config {c.get('source')} does not list rabbit@{other}")
    if not svc.get("depends_on"):
        seed = seed or name
for name, svc in nodes.items():
    if name != seed and not depends_healthy(svc, seed):
        errors.append(f"compose: cluster node {name} must start after {seed} is healthy, then join it")
cluster_workers = {n: s for n, s in cluster.items() if n not in nodes}
for role in ("produce", "consume"):
    if not any(f" {role} " in str(s.get("command", "")) for s in cluster_workers.values()):
        errors.append(f"compose: the cluster profile needs a {role} service")
for name, svc in cluster_workers.items():
    check_worker(name, svc)
    command = str(svc.get("command", ""))
    if "--queue-type quorum" not in command:
        errors.append(f"compose: {name} must use --queue-type quorum (replicated)")
    for node, host in hosts.items():
        if f"@{host}:" not in command:
            errors.append(f"compose: {name} --url must name every node; {host} is missing")
        if not depends_healthy(svc, node):
            errors.append(f"compose: {name} must wait for {node} to be healthy")

published = [str(p).rsplit(":", 1)[0] for s in services.values() for p in s.get("ports", [])]
for port in {p for p in published if published.count(p) > 1}:
    errors.append(f"compose: host port {port} is published twice")

dockerfile = (root / "Dockerfile").read_text().splitlines()
froms = [l for l in dockerfile if l.startswith("FROM ")]
if len(froms) < 2:
    errors.append("Dockerfile: must be multi-stage")
users = [l.split()[1] for l in dockerfile if l.startswith("USER ")]
if not users or users[-1] in ("root", "0"):
    errors.append("Dockerfile: must run as a non-root USER")
for line in dockerfile:
    if line.startswith("COPY ") and "--from=" not in line:
        for src in line.split()[1:-1]:
            if not (root / src).exists():
                errors.append(f"Dockerfile: COPY source {src} does not exist")

# Every explicit target path in Cargo.toml must exist when the dependency-caching step runs
# (cargo refuses to build otherwise): the Dockerfile's stub RUN must create it.
cargo = (root / "Cargo.toml").read_text()
stub_run = "\n".join(dockerfile)
for path in re.findall(r'^path\s*=\s*"([^"]+)"', cargo, re.M):
    if path not in stub_run and path not in ("src/main.rs",):
        errors.append(f"Dockerfile: the dependency step does not create {path} (named in Cargo.toml)")
for name in re.findall(r'^\[\[bench\]\]\s*\nname\s*=\s*"([^"]+)"', cargo, re.M):
    if f"benches/{name}.rs" not in stub_run:
        errors.append(f"Dockerfile: the dependency step does not create benches/{name}.rs")

for e in errors:
    print(e, file=sys.stderr)
print(f"docker checks: {len(errors)} problem(s)")
sys.exit(1 if errors else 0)
