#!/usr/bin/env python3
"""Static checks of Dockerfile, docker-compose.yaml and .dockerignore: no Docker engine and
no Compose client run on CI. The Compose Specification's JSON schema stands in for
`docker compose config`: .ci/compose-spec.json is schema/compose-spec.json of
compose-spec/compose-spec at a08f8d5 (Apache-2.0), the schema Docker Compose loads files
with.

The command lines themselves are parsed with the real clap definition by the Rust test
`docs::docker_compose_command_lines_parse`, and the python profile's model is run by
`usage14::compose_python_model_pipes_rows`; this checks the structure around them. Every
check is also run on broken copies (self_test), so none passes for want of trying.

Usage: check_docker.py [--compose FILE] [--dockerfile FILE]   (default: the repository's)
"""
import copy
import json
import pathlib
import re
import sys

import yaml

root = pathlib.Path(__file__).resolve().parent.parent

# Host ports a RabbitMQ installed on the machine listens on: epmd, AMQPS, AMQP, management
# (TLS and plain), Prometheus, Erlang distribution. Compose must leave them to it.
LOCAL_BROKER_PORTS = {"4369", "5671", "5672", "15671", "15672", "15692", "25672"}
VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")


def interpolate(text):
    """`text` with ${NAME:-default} as its default (unset variables); the names used."""
    names = [m.group(1) or m.group(3) for m in VAR.finditer(text)]
    return VAR.sub(lambda m: m.group(2) or "", text), names


def depends(svc):
    deps = svc.get("depends_on") or {}
    return {d: {} for d in deps} if isinstance(deps, list) else deps


def depends_healthy(svc, broker):
    return (depends(svc).get(broker) or {}).get("condition") == "service_healthy"


def build_of(svc):
    """(context, target) of a service's build: section."""
    build = svc["build"]
    if isinstance(build, str):
        return build, None
    return build.get("context", "."), build.get("target")


def ports(svc):
    """(entry, host_ip, host_port) of each published port, defaults interpolated."""
    for entry in svc.get("ports", []):
        if isinstance(entry, dict):
            yield entry, str(entry.get("host_ip", "")), str(entry.get("published", ""))
            continue
        parts = interpolate(str(entry))[0].split(":")
        ip = parts[0] if len(parts) == 3 else ""
        yield entry, ip, parts[-2] if len(parts) >= 2 else ""


def check_ports(services, errors):
    seen = {}
    for name, svc in services.items():
        for entry, ip, host in ports(svc):
            if not isinstance(entry, (str, dict)):
                errors.append(f"compose: {name} port {entry!r} must be quoted (YAML reads 5672:5672 as a number)")
            if not host:
                continue
            if host in LOCAL_BROKER_PORTS:
                errors.append(
                    f"compose: {name} publishes host port {host}, which a RabbitMQ installed on this "
                    f"machine holds: publish another host port (docs/docker.md, Ports) or none"
                )
            if ip != "127.0.0.1":
                errors.append(
                    f"compose: {name} publishes {host} on every interface: bind it to 127.0.0.1 "
                    "(the broker's guest/guest would be open to the network)"
                )
            if host in seen:
                errors.append(f"compose: host port {host} is published twice ({seen[host]}, {name})")
            seen[host] = name


def check_images(services, stages, errors):
    """One service builds each image (pull_policy: build, context .); the services that run it
    wait for that build and never pull it."""
    builders = {}
    for name, svc in services.items():
        if "build" not in svc:
            continue
        image = svc.get("image")
        if not image:
            errors.append(f"compose: {name} builds an image without a name (image:) the others can run")
            continue
        builders.setdefault(image, []).append(name)
        context, target = build_of(svc)
        if context != ".":
            errors.append(f"compose: {name} must build this repository (context .)")
        if target is not None and target not in stages:
            errors.append(f"compose: {name} builds target {target}, which the Dockerfile lacks")
        if svc.get("pull_policy") != "build":
            errors.append(
                f"compose: {name} builds {image}: give it pull_policy: build (otherwise Compose first "
                "tries to pull it from a registry, and runs a stale image after a source change)"
            )
    for image, names in builders.items():
        if len(names) > 1:
            errors.append(
                f"compose: {image} is built by {len(names)} services ({', '.join(sorted(names))}): "
                f"build it in one, the others run image: {image} with pull_policy: never"
            )
    for name, svc in services.items():
        image = str(svc.get("image", ""))
        if "build" in svc or not image.startswith("mqdemo"):
            continue
        if image not in builders:
            errors.append(f"compose: {name} runs {image}, which no service here builds")
            continue
        builder = builders[image][0]
        if svc.get("pull_policy") != "never":
            errors.append(f"compose: {name} runs {image} (built by {builder}): it needs pull_policy: never")
        if (depends(svc).get(builder) or {}).get("condition") != "service_completed_successfully":
            errors.append(
                f"compose: {name} must depend on {builder} (condition: service_completed_successfully), "
                f"so that `docker compose up {name}` builds {image} first"
            )
        if services[builder].get("profiles"):
            errors.append(f"compose: {builder} builds {image} for every profile: it takes no profiles")
    return builders


def check_worker(name, svc, volumes, errors):
    if not str(svc.get("command", "")).startswith("mqdemo "):
        errors.append(f"compose: {name} command must start with mqdemo")
    for vol in svc.get("volumes", []):
        src = vol.split(":")[0]
        if src not in volumes:
            errors.append(f"compose: {name} uses undeclared volume {src}")
    for path in re.findall(r"(/data/\S+)", str(svc.get("command", ""))):
        if not (root / "examples/data" / path[len("/data/"):]).exists():
            errors.append(f"compose: {name} reads {path}, which examples/data lacks")


def check_default(compose, services, builders, stages, errors):
    broker = services.get("rabbitmq")
    if not broker or not str(broker.get("image", "")).startswith("rabbitmq:3-management"):
        errors.append("compose: service rabbitmq must use rabbitmq:3-management")
    elif "healthcheck" not in broker:
        errors.append("compose: rabbitmq needs a healthcheck")
    # Services in a profile are checked apart from the default set; a service that only
    # builds (no depends_on) is no worker.
    default = {n: s for n, s in services.items() if not s.get("profiles")}
    workers = {n: s for n, s in default.items() if n != "rabbitmq" and depends(s)}
    for kind in ("tabular", "image", "text"):
        for role in ("produce", "consume"):
            if f"{role}-{kind}" not in workers:
                errors.append(f"compose: missing service {role}-{kind}")
    images = {str(s.get("image")) for s in workers.values()}
    if len(images) != 1:
        errors.append(f"compose: the default services must share one image, they run {sorted(images)}")
    for image in images & set(builders):
        target = build_of(services[builders[image][0]])[1]
        if target not in (None, stages[-1]):
            errors.append(f"compose: {image} must be the Dockerfile's default target, not {target}")
    for name, svc in workers.items():
        if not depends_healthy(svc, "rabbitmq"):
            errors.append(f"compose: {name} must wait for rabbitmq to be healthy")
        check_worker(name, svc, compose.get("volumes") or {}, errors)


def check_python(compose, services, builders, errors):
    """The python profile: a pipe whose image is the Dockerfile's python target runs a model
    it mounts from an inline config (valid Python, nothing for Compose to interpolate)."""
    profile = {n: s for n, s in services.items() if "python" in (s.get("profiles") or [])}
    pipes = {n: s for n, s in profile.items() if " pipe " in str(s.get("command", ""))}
    if not pipes:
        errors.append("compose: the python profile needs a pipe service")
    configs = compose.get("configs") or {}
    for name, svc in pipes.items():
        image = svc.get("image")
        if image not in builders or build_of(services[builders[image][0]])[1] != "python":
            errors.append(f"compose: {name} must run the image built from the Dockerfile's python target")
        mounted = {c.get("target"): c.get("source") for c in svc.get("configs", []) if isinstance(c, dict)}
        model = re.search(r"--exec '?python3 (\S+?)'?(\s|$)", str(svc.get("command", "")))
        if not model or model.group(1) not in mounted:
            errors.append(f"compose: {name} must --exec 'python3 FILE' with FILE a config it mounts")
            continue
        text = str((configs.get(mounted[model.group(1)]) or {}).get("content", ""))
        try:
            compile(text, model.group(1), "exec")
        except SyntaxError as e:
            errors.append(f"compose: the model {model.group(1)} is not valid Python: {e}")
    for name, svc in profile.items():
        if name not in builders.get(svc.get("image"), []):
            check_worker(name, svc, compose.get("volumes") or {}, errors)
    for name, config in configs.items():
        if "$" in str(config.get("content", "")):
            errors.append(f"compose: config {name} holds a $, which Compose interpolates (write $$)")


def check_cluster(compose, services, errors):
    """The `cluster` profile: three brokers sharing an Erlang cookie, clustered at boot by
    classic_config peer discovery (from a config that names every node), and mqdemo workers
    that name all three nodes and use a quorum queue."""
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
        if not depends(svc):
            seed = seed or name
    for name, svc in nodes.items():
        if name != seed and not depends_healthy(svc, seed):
            errors.append(f"compose: cluster node {name} must start after {seed} is healthy, then join it")
    cluster_workers = {n: s for n, s in cluster.items() if n not in nodes}
    for role in ("produce", "consume"):
        if not any(f" {role} " in str(s.get("command", "")) for s in cluster_workers.values()):
            errors.append(f"compose: the cluster profile needs a {role} service")
    for name, svc in cluster_workers.items():
        check_worker(name, svc, compose.get("volumes") or {}, errors)
        command = str(svc.get("command", ""))
        if "--queue-type quorum" not in command:
            errors.append(f"compose: {name} must use --queue-type quorum (replicated)")
        for node, host in hosts.items():
            if f"@{host}:" not in command:
                errors.append(f"compose: {name} --url must name every node; {host} is missing")
            if not depends_healthy(svc, node):
                errors.append(f"compose: {name} must wait for {node} to be healthy")


def check_schema(compose, errors):
    try:
        import jsonschema
    except ImportError:
        errors.append("compose: python3 -m pip install jsonschema (the schema check needs it)")
        return
    schema = json.loads((root / ".ci/compose-spec.json").read_text())
    for e in jsonschema.Draft7Validator(schema).iter_errors(compose):
        errors.append(f"compose: {e.json_path}: {e.message} (Compose Specification)")


def check_compose(compose, stages, docs):
    errors = []
    check_schema(compose, errors)
    services = compose.get("services") or {}
    builders = check_images(services, stages, errors)
    check_ports(services, errors)
    check_default(compose, services, builders, stages, errors)
    check_python(compose, services, builders, errors)
    check_cluster(compose, services, errors)
    for _, text, names in walk_strings(compose):
        for name in names:
            if name not in docs:
                errors.append(f"compose: the override {name} ({text}) is not documented in docs/docker.md")
    return errors


def walk_strings(node):
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, list):
        for item in node:
            yield from walk_strings(item)
    elif isinstance(node, str):
        yield node, node, interpolate(node)[1]


def stages_of(lines):
    """[(name, base, [instructions])] of a Dockerfile, ARG defaults substituted in FROM."""
    args, stages = {}, []
    for line in lines:
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "ARG" and not stages and "=" in words[1]:
            key, value = words[1].split("=", 1)
            args[key] = value
        elif words[0] == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), words[1])
            name = words[3] if len(words) > 3 and words[2].upper() == "AS" else str(len(stages))
            stages.append((name, base, []))
        elif stages:
            stages[-1][2].append(line)
    return stages


def effective(stages, name, instruction):
    """The last value of `instruction` (USER, ENV ...) in stage `name` or the stages it is built on."""
    by_name = {n: (base, body) for n, base, body in stages}
    values = []
    while name in by_name:
        base, body = by_name[name]
        values = [line.split(None, 1)[1] for line in body if line.startswith(instruction + " ")] + values
        name = base
    return values


def version(text):
    return tuple(int(x) for x in text.split("."))


def check_dockerfile(text, cargo):
    errors = []
    lines = text.splitlines()
    stages = stages_of(lines)
    names = [n for n, _, _ in stages]
    if len(stages) < 2:
        errors.append("Dockerfile: must be multi-stage")
        return errors
    for target in (names[-1], "python"):
        if target not in names:
            errors.append(f"Dockerfile: the {target} target is missing")
            continue
        users = effective(stages, target, "USER")
        if not users or users[-1] in ("root", "0"):
            errors.append(f"Dockerfile: the {target} target must run as a non-root USER")
    if "python" in names:
        stage = next(body for n, _, body in stages if n == "python")
        if not any(line.startswith("RUN ") and "python3" in line for line in continued(stage)):
            errors.append("Dockerfile: the python target must install python3")
        if "PYTHONUNBUFFERED=1" not in effective(stages, "python", "ENV"):
            errors.append("Dockerfile: the python target must set ENV PYTHONUNBUFFERED=1")
    check_bases(stages, cargo, errors)
    for line in continued(lines):
        if "cargo build" in line and "--locked" not in line:
            errors.append(f"Dockerfile: cargo build without --locked: {line.strip()}")
        if line.startswith("COPY ") and "--from=" not in line:
            for src in line.split()[1:-1]:
                if not (root / src).exists():
                    errors.append(f"Dockerfile: COPY source {src} does not exist")
        for src in re.findall(r"--from=(\S+)", line):
            if src not in names:
                errors.append(f"Dockerfile: COPY --from={src} names no stage")
    # Every explicit target path in Cargo.toml must exist when the dependency-caching step
    # runs (cargo refuses to build otherwise): the Dockerfile's stub RUN must create it.
    for path in re.findall(r'^path\s*=\s*"([^"]+)"', cargo, re.M):
        if path not in text and path not in ("src/main.rs",):
            errors.append(f"Dockerfile: the dependency step does not create {path} (named in Cargo.toml)")
    for name in re.findall(r'^\[\[bench\]\]\s*\nname\s*=\s*"([^"]+)"', cargo, re.M):
        if f"benches/{name}.rs" not in text:
            errors.append(f"Dockerfile: the dependency step does not create benches/{name}.rs")
    return errors


def continued(lines):
    """Lines with their `\\` continuations joined."""
    out, pending = [], ""
    for line in lines:
        pending += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            out.append(pending)
            pending = ""
    return out


def check_bases(stages, cargo, errors):
    """The Rust image satisfies Cargo.toml (rust-version, edition 2024 needs 1.85), and every
    Debian-based stage is the Rust image's Debian release (the binary's glibc and libssl3)."""
    need = max(version(m) for m in re.findall(r'^rust-version\s*=\s*"([\d.]+)"', cargo, re.M) or ["1.0"])
    if re.search(r'^edition\s*=\s*"2024"', cargo, re.M):
        need = max(need, (1, 85))
    rust = [base for _, base, _ in stages if base.startswith("rust:")]
    if len(rust) != 1:
        errors.append(f"Dockerfile: one stage builds FROM rust:..., not {rust}")
        return
    tag = rust[0].split(":", 1)[1]
    release = tag.split("-", 1)[1] if "-" in tag else ""
    pinned = tag.split("-", 1)[0]
    if not re.fullmatch(r"1(\.\d+){0,2}", pinned):
        errors.append(f"Dockerfile: rust:{tag} is no Rust 1.x release tag")
    elif pinned != "1" and version(pinned)[:2] < need:
        errors.append(f"Dockerfile: rust:{tag} is older than Cargo.toml needs ({'.'.join(map(str, need))})")
    if not release:
        errors.append(f"Dockerfile: rust:{tag} names no Debian release (e.g. rust:1-bookworm)")
    for name, base, _ in stages:
        if base.startswith("debian:") and base.split(":", 1)[1].split("-")[0] != release:
            errors.append(f"Dockerfile: stage {name} is {base}, the binary is built on {release}")


def check_dockerignore(text):
    entries = {line.strip().strip("/") for line in text.splitlines()}
    return [f".dockerignore: must exclude {e}" for e in ("target", ".git") if e not in entries]


def check_docs(text):
    """docs/docker.md tells what the compose file and the Dockerfile offer."""
    needs = ["docker build --target python", "docker compose cp", "--profile python", "pull_policy"]
    return [f"docs/docker.md: says nothing of `{n}`" for n in needs if n not in text]


def self_test(compose, dockerfile, cargo, docs):
    """Each check fails on a copy broken the way it guards against."""
    stages = [n for n, _, _ in stages_of(dockerfile.splitlines())]

    def broken(edit, expect):
        bad = copy.deepcopy(compose)
        edit(bad["services"])
        found = check_compose(bad, stages, docs)
        if not any(expect in e for e in found):
            yield f"self-test: no error with {expect!r} for a broken compose file: {found[:3]}"

    def old_style(services):  # every worker built on its own, the broker on 5672 and 15672
        for svc in services.values():
            if svc.get("image") == "mqdemo:local":
                svc.update(build=".")
                svc.pop("pull_policy", None)
        services["rabbitmq"]["ports"] = ["5672:5672", "15672:15672"]

    yield from broken(old_style, "mqdemo:local is built by")
    yield from broken(old_style, "publishes host port 5672")
    yield from broken(old_style, "publishes host port 15672")
    yield from broken(lambda s: s["rabbitmq"].update(ports=["5673:5672"]), "on every interface")
    yield from broken(lambda s: s["consume-text"].pop("pull_policy"), "consume-text runs mqdemo:local")
    yield from broken(lambda s: s["produce-text"].pop("depends_on"), "must depend on mqdemo-image")
    yield from broken(lambda s: s["mqdemo-image"].update(pull_policy="bulid"), "Compose Specification")
    yield from broken(lambda s: s["python-pipe"]["build"].update(target="pyton"), "lacks")

    def bad_dockerfile(old, new, expect):
        found = check_dockerfile(dockerfile.replace(old, new), cargo)
        if old not in dockerfile or not any(expect in e for e in found):
            yield f"self-test: no error with {expect!r} for a Dockerfile without {old!r}: {found[:3]}"

    yield from bad_dockerfile("--locked", "", "without --locked")
    yield from bad_dockerfile("ENV PYTHONUNBUFFERED=1", "", "PYTHONUNBUFFERED")
    yield from bad_dockerfile("ARG RUST_VERSION=1\n", "ARG RUST_VERSION=1.80\n", "older than")
    yield from bad_dockerfile("debian:bookworm-slim", "debian:trixie-slim", "built on bookworm")
    yield from bad_dockerfile("FROM runtime AS default", "FROM runtime AS default\nUSER root", "non-root")


def main(argv):
    compose_path = root / "docker-compose.yaml"
    dockerfile_path = root / "Dockerfile"
    for flag, value in zip(argv[::2], argv[1::2]):
        if flag == "--compose":
            compose_path = pathlib.Path(value)
        elif flag == "--dockerfile":
            dockerfile_path = pathlib.Path(value)
    compose = yaml.safe_load(compose_path.read_text())
    dockerfile = dockerfile_path.read_text()
    cargo = (root / "Cargo.toml").read_text()
    docs_path = root / "docs/docker.md"
    docs = docs_path.read_text() if docs_path.exists() else ""
    stages = [n for n, _, _ in stages_of(dockerfile.splitlines())]
    errors = check_compose(compose, stages, docs) + check_dockerfile(dockerfile, cargo)
    errors += check_dockerignore((root / ".dockerignore").read_text()) + check_docs(docs)
    if not argv:
        errors += list(self_test(compose, dockerfile, cargo, docs))
    for e in errors:
        print(e, file=sys.stderr)
    print(f"docker checks: {len(errors)} problem(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
