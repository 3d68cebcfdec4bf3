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
workers = {n: s for n, s in services.items() if n != "rabbitmq"}
for kind in ("tabular", "image", "text"):
    for role in ("produce", "consume"):
        if f"{role}-{kind}" not in workers:
            errors.append(f"compose: missing service {role}-{kind}")
for name, svc in workers.items():
    cond = (svc.get("depends_on") or {}).get("rabbitmq", {}).get("condition")
    if cond != "service_healthy":
        errors.append(f"compose: {name} must wait for rabbitmq to be healthy")
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
