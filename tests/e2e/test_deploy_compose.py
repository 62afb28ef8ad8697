"""The Docker Compose deployment (compose/, images/): valid, and its CPU services serve.

There is no Docker engine on the build machine. What is checked instead:

1. compose/docker-compose.yml against the official compose-spec JSON schema
   (tests/schemas/compose-spec.json, source in tests/schemas/README.md), and the
   mounted compose/gateway.yaml with the control plane's own loader;
2. what ties the files together: Envoy's command is `envoy_command()`'s, every backend
   URL names a service on the port its command listens on, the images' Dockerfiles
   carry the commands and healthchecks the services use (and the gateway image what
   the splitter imports), and the build context (.dockerignore + COPY) holds every
   file `pip install .` installs; the splitter in Envoy's network namespace;
3. the cpu-profile services' own commands, arguments, environment and healthchecks,
   read from the compose file and started as local processes with the mounted config
   (envoy-bootstrap first; then control-plane and the backends, one process per
   service, not per replica; Envoy, then the splitter, once their `depends_on`
   conditions hold), then the README's requests through Envoy's listener, with the
   client key from compose/.env (and without it: 401, while /health and /version still
   answer), and one long upload split into pieces by the splitter.

In 3, this is the only rewriting, all of it mechanical:
- addresses: each service gets its own loopback address (127.0.0.x). A service name
  (`--xds-host control-plane`, a backend URL's host) becomes that address, and so does
  a service's own address inside its container (0.0.0.0 / 127.0.0.1 in the config,
  `--host`, healthchecks). A service with `network_mode: service:X` (the splitter, in
  Envoy's namespace) has X's address and ports: 127.0.0.1 in it means X's;
- ports: each (service, port inside its container) becomes a free port, in the same
  places. Both are applied to a rewritten copy of compose/gateway.yaml, which is what
  the services get at the config's mount path;
- paths: a mount target becomes the local file, or a temporary folder for a named volume;
- environment: `${VAR}`, `${VAR:?message}` and `${VAR:-default}` are interpolated from
  compose/.env, as `docker compose` does (nothing is taken from this shell);
- programs: `python` -> this venv's python, `whisper-backend` -> the venv's
  whisper-backend, `envoy` -> control_plane.xds.bootstrap.ENVOY (`bash` stays bash);
Host names of services outside the cpu profile (vllm-small) are left as they are: they
do not resolve, as under `docker compose up` without `--profile gpu`.
"""

from __future__ import annotations

import ast
import copy
import importlib.metadata
import io
import itertools
import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

from control_plane.config.parse import load_config, parse_config
from control_plane.ir.security import load_security
from control_plane.xds.bootstrap import ENVOY, envoy_command
from testkit.clips import make_clip
from testkit.procs import FIXTURES, PYTHON, ROOT, Proc, free_port

COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"
TINY = "openai/whisper-tiny.en"
BASE = "openai/whisper-base"
PROGRAMS = {
    "python": PYTHON,
    "whisper-backend": str(Path(PYTHON).with_name("whisper-backend")),
    "envoy": ENVOY,
}
CONTAINER_LOCAL = ("0.0.0.0", "127.0.0.1")


# ------------------------------------------------------------------ reading compose


def compose() -> dict[str, Any]:
    """The compose file as `docker compose` reads it with none of its variables set:
    `${VAR:-default}` is the default (`${VAR:?message}` stays: those must be set)."""
    text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", COMPOSE_FILE.read_text())
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


#: Profile monitoring: official images, checked in test_deploy_monitoring.py.
MONITORING = ("prometheus", "grafana")


def cpu_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What `docker compose up` starts with COMPOSE_PROFILES=cpu."""
    return {
        name: svc
        for name, svc in doc["services"].items()
        if not svc.get("profiles") or "cpu" in svc["profiles"]
    }


def argv_of(svc: dict[str, Any]) -> list[str]:
    entry, command = svc.get("entrypoint") or [], svc["command"]
    assert isinstance(entry, list) and isinstance(command, list), "use the exec (list) form"
    return [str(a) for a in (*entry, *command)]


def mounts(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each short-syntax volume; source is a path or a volume name."""
    out = []
    for spec in svc.get("volumes", []):
        source, target, *_ = str(spec).split(":")
        out.append((source, target))
    return out


def dotenv() -> dict[str, str]:
    """compose/.env's `NAME=value` lines (the subset it uses: no quotes, no `export`)."""
    out = {}
    for raw in (COMPOSE_DIR / ".env").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), f".env: {raw!r}"
            out[name] = value
    return out


_VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:[?-])([^}]*))?\}|\$(\w+)")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's interpolation of `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR:?error}`."""

    def one(m: re.Match[str]) -> str:
        if m[0] == "$$":
            return "$"
        name = m[1] or m[4]
        got = variables.get(name, "")
        if m[2] == ":?" and not got:
            raise AssertionError(f"docker compose would stop: {name}: {m[3]}")
        return got or (m[3] if m[2] == ":-" else "")

    return _VAR.sub(one, value)


def environment(svc: dict[str, Any]) -> dict[str, str]:
    """The container's environment as compose sets it, interpolated from compose/.env."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    variables = dotenv()
    return {str(k): interpolate(str(v), variables) for k, v in env.items()}


def role(svc: dict[str, Any]) -> str:
    if "command" not in svc:  # an image run as its own entrypoint has it (grafana)
        return str(svc["image"]).split(":")[0]
    argv = argv_of(svc)
    if argv[0] == "envoy":
        return "envoy"
    if argv[:3] == ["python", "-m", "control_plane"]:
        return "bootstrap" if "bootstrap" in argv else "control-plane"
    if argv[:3] == ["python", "-m", "long_audio"]:
        return "splitter"
    return argv[0]


def service_with(doc: dict[str, Any], wanted: str) -> str:
    (name,) = [n for n, s in doc["services"].items() if role(s) == wanted]
    return name


def netns(name: str, svc: dict[str, Any]) -> str:
    """The service whose network namespace `name` runs in: its own, or X's for
    `network_mode: service:X`."""
    mode = svc.get("network_mode")
    if mode is None:
        return name
    assert mode.startswith("service:"), f"{name}: network_mode {mode}"
    return str(mode.removeprefix("service:"))


def config_source(svc: dict[str, Any]) -> tuple[Path, str]:
    """The local file mounted at the service's --config path, and that path."""
    argv = argv_of(svc)
    target = argv[argv.index("--config") + 1]
    (source,) = [s for s, t in mounts(svc) if t == target]
    return (COMPOSE_DIR / source).resolve(), target


def arg_after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


# ------------------------------------------------------------------ reading Dockerfiles


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        instruction, _, rest = (buf + line).partition(" ")
        out.append((instruction.upper(), " ".join(rest.split())))
        buf = ""
    return out


def preamble(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """What comes before the first FROM (the ARGs that FROM lines may use)."""
    return list(itertools.takewhile(lambda ins: ins[0] != "FROM", instructions))


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions:
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list)
    return [str(v) for v in value]


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (negated, regex): `*` within a segment, `**` across them."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        rx, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pattern[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pattern[i] == "?":
                rx, i = rx + "[^/]", i + 1
            else:
                rx, i = rx + re.escape(pattern[i]), i + 1
        rules.append((negated, re.compile(rx + r"\Z")))
    return rules


def in_context(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for negated, rx in rules:
        if any(rx.match(p) for p in prefixes):
            excluded = not negated
    return not excluded


# ------------------------------------------------------------------ 1. schema and config


def test_compose_file_passes_the_compose_spec_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    doc = compose()
    errors = [
        f"{e.json_path}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(doc)
    ]
    assert not errors, "\n".join(errors)
    assert "version" not in doc, "the compose spec dropped `version:`"
    env = dotenv()
    assert env["COMPOSE_PROFILES"] == "cpu", "plain `docker compose up` must bring the CPU stack"


def test_api_keys_come_from_compose_env() -> None:
    """Keys on: one client whose key is compose/.env's GATEWAY_API_KEY, given to the
    control plane only (it reads keys; Envoy gets them over xDS), and refused by
    `docker compose up` when unset instead of starting a gateway no one can call."""
    doc = compose()
    services = doc["services"]
    cp = service_with(doc, "control-plane")
    config = load_config(config_source(services[cp])[0])
    assert config.api_keys is not None and config.api_keys.file is None
    ((client, var),) = config.api_keys.env
    assert re.fullmatch(rf"\$\{{{var}:\?[^}}]+\}}", services[cp]["environment"][var])
    holders = [n for n, s in services.items() if var in (s.get("environment") or {})]
    assert holders == [cp], "the key is in the control plane's environment only"
    key = environment(services[cp])[var]
    assert "CHANGE-ME" in key, "the example key says to replace it"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(var, key)
        (got,) = load_security(config).clients or ()
    assert (got.name, got.key, got.models) == (client, key, ())
    with pytest.raises(AssertionError, match=f"would stop: {var}"):
        interpolate(services[cp]["environment"][var], {})


def test_gateway_config_loads_and_names_the_services() -> None:
    doc = compose()
    services = doc["services"]
    cp_name = service_with(doc, "control-plane")
    path, target = config_source(services[cp_name])
    assert path == COMPOSE_DIR / "gateway.yaml"
    config = load_config(path)
    boot = services[service_with(doc, "bootstrap")]
    splitter = services[service_with(doc, "splitter")]
    for svc in (boot, splitter):
        assert config_source(svc) == (path, target), "the gateway services read one config"
    for svc in (services[cp_name], boot, splitter):
        assert f"./gateway.yaml:{target}:ro" in svc["volumes"], "mounted read-only"

    # Reachable from the other containers; Envoy's admin only inside its own.
    assert config.xds.address == config.admin.address == config.listener.address == "0.0.0.0"
    assert config.envoy_admin.address == "127.0.0.1"
    envoy = services[service_with(doc, "envoy")]
    # Published on loopback unless GATEWAY_PUBLISH says otherwise.
    assert envoy["ports"] == [f"127.0.0.1:{config.listener.port}:{config.listener.port}"]
    published = [n for n, s in services.items() if s.get("ports") and n not in MONITORING]
    assert published == [service_with(doc, "envoy")], "only the listener is published"
    # (Prometheus and Grafana publish on loopback only: test_deploy_monitoring.py.)
    assert arg_after(argv_of(boot), "--xds-host") == cp_name

    profile = {n: (s.get("profiles") or [None])[0] for n, s in services.items()}
    hosts = {}
    for b in config.backends:
        assert b.host in services, f"{b.url}: no such service"
        argv = argv_of(services[b.host])
        port = int(arg_after(argv, "--port"))
        assert b.port == port, f"{b.url}: {b.host} listens on {port}"
        assert arg_after(argv, "--host") == "0.0.0.0"
        hosts[b.models] = (b.host, profile[b.host])
    assert hosts == {
        (TINY,): ("whisper-tiny", "cpu"),
        (BASE,): ("whisper-base", "cpu"),
        ("openai/whisper-small",): ("vllm-small", "gpu"),
    }
    assert services["whisper-tiny"]["deploy"]["replicas"] == 2
    assert argv_of(services["vllm-small"])[:3] == ["vllm", "serve", "openai/whisper-small"]
    gpu = services["vllm-small"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu[0]["capabilities"] == ["gpu"]


def test_splitter_shares_envoys_network() -> None:
    """Long audio is on for the cpu profile's models. The splitter listens where the
    config says (Envoy's cluster for it is a static IP) and sends pieces to the
    listener on 127.0.0.1: both hold only in Envoy's network namespace."""
    doc = compose()
    services = doc["services"]
    config = load_config(config_source(services[service_with(doc, "control-plane")])[0])
    envoy_name, name = service_with(doc, "envoy"), service_with(doc, "splitter")
    splitter = services[name]
    assert config.long_audio is not None
    cpu_models = {
        m
        for b in config.backends
        if "cpu" in services[b.host].get("profiles", [])
        for m in b.models
    }
    assert set(config.long_audio.models) == cpu_models == {TINY, BASE}
    where = config.long_audio.splitter
    assert where.address == "127.0.0.1", "loopback of Envoy's namespace, not published"
    assert argv_of(splitter) == [
        "python",
        "-m",
        "long_audio",
        "--config",
        config_source(splitter)[1],
    ]
    assert netns(name, splitter) == envoy_name
    assert splitter["depends_on"] == {envoy_name: {"condition": "service_started", "restart": True}}
    assert "ports" not in splitter and "expose" not in splitter and "networks" not in splitter
    # Up whenever the gateway services are: the config's split route names it.
    assert "profiles" not in splitter and "profiles" not in services[envoy_name]
    # Its healthcheck asks its own /health and the listener, both on Envoy's loopback.
    check = " ".join(str(a) for a in splitter["healthcheck"]["test"])
    assert f"http://127.0.0.1:{where.port}/health" in check
    assert f"http://127.0.0.1:{config.listener.port}/version" in check


def test_envoy_command_and_dependencies_are_the_codes() -> None:
    doc = compose()
    services = doc["services"]
    config = load_config(config_source(services[service_with(doc, "control-plane")])[0])
    envoy = services[service_with(doc, "envoy")]
    argv = argv_of(envoy)
    bootstrap = Path(arg_after(argv, "-c"))
    assert argv[0] == "envoy"
    assert argv[1:] == envoy_command(config, bootstrap)[1:]
    boot_name = service_with(doc, "bootstrap")
    boot = services[boot_name]
    assert arg_after(argv_of(boot), "--output") == str(bootstrap)
    # The bootstrap travels in one named volume, written by one, read by the other.
    (shared,) = {s for s, t in mounts(boot) if str(bootstrap).startswith(t + "/")}
    assert shared in doc["volumes"]
    assert any(s == shared for s, _ in mounts(envoy))
    assert envoy["depends_on"] == {
        service_with(doc, "control-plane"): {"condition": "service_healthy"},
        boot_name: {"condition": "service_completed_successfully"},
    }
    assert boot["restart"] == "no"
    for name, svc in services.items():
        if name != boot_name:
            assert svc["restart"] == "unless-stopped", name
        if name not in (boot_name, *MONITORING):  # their images' own (test_deploy_monitoring)
            assert svc["healthcheck"]["test"][0] == "CMD", name


# ------------------------------------------------------------------ 2. images


def test_dockerfiles_carry_what_the_services_run() -> None:
    doc = compose()
    services = doc["services"]
    built = {s["image"]: s["build"] for s in services.values() if "build" in s}
    gateway, backend = built["whisper-gateway:0.1.0"], built["whisper-backend:0.1.0"]
    for name, svc in services.items():
        if name in MONITORING:
            continue  # official images, run as they are
        assert svc["image"] in built or svc["image"].startswith("envoyproxy/envoy:"), name
    files = {}
    for image, build in built.items():
        assert (COMPOSE_DIR / build["context"]).resolve() == ROOT
        assert (ROOT / build["dockerfile"]).is_file()
        files[image] = stages(dockerfile(ROOT / build["dockerfile"]))
    assert gateway["dockerfile"] == "images/gateway.Dockerfile"
    assert backend["dockerfile"] == "images/backend.Dockerfile"

    for image in ("whisper-gateway:0.1.0", "whisper-backend:0.1.0"):
        *build_stages, final = files[image]
        # The base is a build argument, python:3.11-slim unless one is given.
        assert final[0] == ("FROM", "${PYTHON_IMAGE}"), image
        args = preamble(dockerfile(ROOT / built[image]["dockerfile"]))
        assert ("ARG", "PYTHON_IMAGE=python:3.11-slim") in args, image
        runs = [a for st in build_stages for i, a in st if i == "RUN"]
        # The gateway without the ML stack (the splitter's decoder only), the backend
        # with its extra.
        want = (
            'pip install --no-deps --no-build-isolation ".[splitter]"'
            if image.startswith("whisper-gateway")
            else "pip install --no-deps --no-build-isolation '.[backend]'"
        )
        assert want in runs, f"{image}: a regular, non-editable install ({want})"
        assert not any("-e" in r.split() for r in runs if "pip install" in r)
        users = [a for i, a in final if i == "USER"]
        assert users and users[-1].split(":")[0] == "10001", f"{image}: runs as uid 10001"

    final = files["whisper-gateway:0.1.0"][-1]
    (cmd,) = [exec_form(a) for i, a in final if i == "CMD"]
    assert cmd == argv_of(services["control-plane"])

    final = files["whisper-backend:0.1.0"][-1]
    (cmd,) = [exec_form(a) for i, a in final if i == "CMD"]
    assert cmd == argv_of(services["whisper-tiny"])
    (check,) = [a for i, a in final if i == "HEALTHCHECK"]
    for name in ("whisper-tiny", "whisper-base"):
        assert exec_form(check.split(" CMD ", 1)[1]) == services[name]["healthcheck"]["test"][1:]
    # Models prepared at build, as the runtime user, into the cache the server reads.
    index = [k for k, (i, a) in enumerate(final) if i == "RUN" and "locate(" in a]
    user_at = max(k for k, (i, _) in enumerate(final) if i == "USER")
    assert index and index[0] > user_at
    envs = " ".join(a for i, a in final if i == "ENV")
    assert "WHISPER_GATEWAY_CACHE=" in envs and "HF_HUB_OFFLINE=1" in envs


def installed_by(runs: list[str]) -> set[str]:
    """The distributions `pip install .` / `pip install '.[extra]'` in `runs` brings:
    pyproject's requirements and theirs, read from this venv's metadata."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {
        e.strip()
        for r in runs
        for group in re.findall(r"\.\[([^\]]+)\]", r)
        for e in group.split(",")
    }
    todo = [
        *project["dependencies"],
        *(d for e in extras for d in project["optional-dependencies"][e]),
    ]
    seen: set[str] = set()
    while todo:
        req = Requirement(todo.pop())
        name = req.name.lower().replace("_", "-")
        if name in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        todo.extend(importlib.metadata.requires(req.name) or [])
    return seen


def test_gateway_image_carries_the_splitter() -> None:
    """The splitter service runs `python -m long_audio` in the gateway image: its build
    context and COPY must hold the package, and its `pip install` must bring every
    distribution the package imports."""
    doc = compose()
    services = doc["services"]
    splitter = services[service_with(doc, "splitter")]
    (build,) = [
        s["build"] for s in services.values() if s["image"] == splitter["image"] and "build" in s
    ]
    *build_stages, _ = stages(dockerfile(ROOT / build["dockerfile"]))
    copied = {a.split()[0] for st in build_stages for i, a in st if i == "COPY"}
    runs = [a for st in build_stages for i, a in st if i == "RUN" and "pip install" in a]
    missing = []
    if "long_audio" not in copied or not in_context("long_audio/__main__.py", dockerignore_rules()):
        missing.append(f"the long_audio package (COPY in {build['dockerfile']}, .dockerignore)")
    modules = set()
    for path in (ROOT / "long_audio").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    dists = importlib.metadata.packages_distributions()
    have = installed_by(runs)
    for module in sorted(modules - set(sys.stdlib_module_names) - {"long_audio", "control_plane"}):
        names = {d.lower().replace("_", "-") for d in dists[module]}
        if not names & have:
            missing.append(f"{'/'.join(sorted(names))} (long_audio imports {module})")
    assert not missing, f"{splitter['image']} cannot run the splitter; it lacks: " + "; ".join(
        missing
    )


@pytest.mark.parametrize("name", ["gateway.Dockerfile", "backend.Dockerfile"])
def test_build_context_holds_every_installed_file(name: str, tmp_path: Path) -> None:
    """COPY through .dockerignore, then setuptools' build_py: the files `pip install .`
    installs from the image's context are those it installs from the checkout."""
    rules = dockerignore_rules()
    build_stage = stages(dockerfile(ROOT / "images" / name))[0]
    context = tmp_path / "src"
    for instruction, args in build_stage:
        if instruction != "COPY":
            continue
        source, dest = args.split()
        assert not source.startswith("--"), args
        copied = 0
        paths = [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*")
        for path in paths:
            rel = path.relative_to(ROOT).as_posix()
            if path.is_file() and in_context(rel, rules):
                inner = Path(rel).relative_to(source) if path != ROOT / source else Path()
                out = context / dest / (Path(source).name if dest.endswith("/") else "") / inner
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, out)
                copied += 1
        assert copied, f"COPY {source}: nothing of it is in the build context"

    def installed(src: Path, out: Path) -> set[str]:
        subprocess.run(
            [PYTHON, "-c", "from setuptools import setup; setup()", "-q", "build_py", "-d", out],
            cwd=src,
            check=True,
            capture_output=True,
        )
        return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}

    from_context = installed(context, tmp_path / "lib")
    # Every package the wheel has (setuptools' include list), not a list of our own.
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = [p.rstrip("*") for p in include["packages"]["find"]["include"]]
    in_checkout = {
        p.relative_to(ROOT).as_posix()
        for pkg in packages
        for p in (ROOT / pkg).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert from_context == in_checkout
    assert "control_plane/xds/filters/route_by_model.lua" in from_context


def test_compose_bootstrap_passes_envoy_validation(tmp_path: Path) -> None:
    """The bootstrap as compose writes it (xds host `control-plane`, a DNS name: a
    STRICT_DNS cluster), checked by Envoy itself with the envoy service's command line
    and `--mode validate`. Only paths and programs are mapped here."""
    doc = compose()
    services = doc["services"]
    boot_name, envoy_name = service_with(doc, "bootstrap"), service_with(doc, "envoy")
    config = load_config(config_source(services[service_with(doc, "control-plane")])[0])
    volumes = volume_dirs(doc, tmp_path)
    net = Net({})
    boot = services[boot_name]
    done = subprocess.run(
        local_argv(boot_name, boot, net, local_paths(boot, volumes, {})),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (written,) = [p for v in volumes.values() for p in v.glob("*.json")]
    (cluster,) = json.loads(written.read_text())["static_resources"]["clusters"]
    assert cluster["type"] == "STRICT_DNS"
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {
        "address": service_with(doc, "control-plane"),
        "port_value": config.xds.port,
    }
    envoy = services[envoy_name]
    argv = local_argv(envoy_name, envoy, net, local_paths(envoy, volumes, {}))
    done = subprocess.run(
        [*argv, "--mode", "validate"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "OK" in done.stdout + done.stderr, done.stderr[-2000:]


# ------------------------------------------------------------------ 3. the services, run


@dataclass
class Net:
    """Loopback addresses for services, free ports for (service, container port)."""

    ip: dict[str, str]
    ports: dict[tuple[str, int], int] = field(default_factory=dict)

    def port(self, service: str, port: int) -> int:
        if (service, port) not in self.ports:
            self.ports[(service, port)] = free_port(self.ip[service])
        return self.ports[(service, port)]

    def own(self, service: str, address: str) -> str:
        assert address in CONTAINER_LOCAL, f"{service}: {address} is not its own address"
        return self.ip[service]

    def url(self, service: str, port: int) -> str:
        return f"http://{self.ip[service]}:{self.port(service, port)}"


def local_config(raw: dict[str, Any], net: Net, envoy: str, cp: str) -> dict[str, Any]:
    cfg = copy.deepcopy(raw)
    for key, owner in (("listener", envoy), ("envoy_admin", envoy), ("xds", cp), ("admin", cp)):
        hp = cfg[key]
        cfg[key] = {"address": net.own(owner, hp["address"]), "port": net.port(owner, hp["port"])}
    if "long_audio" in cfg:  # the splitter, in Envoy's namespace
        hp = cfg["long_audio"]["splitter"]
        hp.update(address=net.own(envoy, hp["address"]), port=net.port(envoy, hp["port"]))
    for backend in cfg["backends"]:
        url = urlsplit(backend["url"])
        if url.hostname in net.ip:
            backend["url"] = net.url(url.hostname, url.port or 80)
    return cfg


def volume_dirs(doc: dict[str, Any], root: Path) -> dict[str, Path]:
    """A folder per named volume."""
    out = {name: root / name for name in doc.get("volumes", {})}
    for path in out.values():
        path.mkdir(parents=True)
    return out


def local_paths(
    svc: dict[str, Any], volumes: dict[str, Path], files: dict[str, Path]
) -> dict[str, Path]:
    """Mount target -> local path: a volume's folder, a file given in `files`, else the
    bind mount's own source."""
    out = {}
    for source, target in mounts(svc):
        if source in volumes:
            out[target] = volumes[source]
        else:
            out[target] = files.get(target) or (COMPOSE_DIR / source).resolve()
    return out


def local_argv(name: str, svc: dict[str, Any], net: Net, paths: dict[str, Path]) -> list[str]:
    argv, name = argv_of(svc), netns(name, svc)
    out = [PROGRAMS[argv[0]]]
    for prev, arg in itertools.pairwise(argv):
        if prev == "--host":
            out.append(net.own(name, arg))
        elif prev == "--port":
            out.append(str(net.port(name, int(arg))))
        elif arg in net.ip:
            out.append(net.ip[arg])
        else:
            target = next((t for t in paths if arg == t or arg.startswith(t + "/")), None)
            out.append(arg if target is None else str(paths[target]) + arg[len(target) :])
    return out


def local_healthcheck(name: str, svc: dict[str, Any], net: Net) -> list[str]:
    test = [str(a) for a in svc["healthcheck"]["test"]]
    assert test[0] == "CMD"
    program = PROGRAMS.get(test[1]) or shutil.which(test[1])
    assert program, f"{name}: healthcheck program {test[1]} not found"
    own = re.compile(r"127\.0\.0\.1([:/])(\d+)")
    name = netns(name, svc)
    return [program] + [
        own.sub(lambda m: f"{net.ip[name]}{m[1]}{net.port(name, int(m[2]))}", a) for a in test[2:]
    ]


def wait_healthy(name: str, argv: list[str], proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise AssertionError(f"{name} exited:\n{proc.log_tail()}")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        if done.returncode == 0:
            return
        last = (done.stdout + done.stderr)[-500:]
        time.sleep(0.2)
    raise AssertionError(
        f"{name}: healthcheck not passing after {timeout}s: {last}\n{proc.log_tail()}"
    )


def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
        return json.loads(r.read())


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET: the status and body, error statuses included."""
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers or {}), timeout=5
        ) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def openai_error(body: bytes, status: int) -> dict[str, Any]:
    """The gateway's error body: OpenAI's `{"error": {...}}`, code = the status."""
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["code"] == status, err
    return dict(err)


def post_form(
    url: str, audio: Path, headers: dict[str, str] | None = None, **fields: str
) -> tuple[int, dict[str, str], bytes]:
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for key, value in fields.items():
        body.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
            f"{value}\r\n".encode()
        )
    body.write(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{audio.name}"\r\nContent-Type: audio/wav\r\n\r\n'.encode()
    )
    body.write(audio.read_bytes() + f"\r\n--{boundary}--\r\n".encode())
    request = urllib.request.Request(
        url,
        data=body.getvalue(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def wait_routable(admin: str, urls: set[str], timeout: float) -> None:
    """Every endpoint of `urls` HEALTHY, and every Envoy SYNCED on the result."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = get_json(f"{admin}/backends")
        ready = {b["backend_url"] for b in last if b["health"] == "HEALTHY"}
        if urls <= ready:
            status = get_json(f"{admin}/status")
            types = [t for p in status["proxies"] for t in p["types"].values()]
            if types and all(t["state"] == "SYNCED" for t in types):
                return
        time.sleep(0.2)
    raise AssertionError(f"backends not routable after {timeout}s: {json.dumps(last)[:2000]}")


def test_cpu_services_run_as_processes_and_serve(tmp_path: Path) -> None:
    doc = compose()
    services = cpu_services(doc)
    cp, envoy = service_with(doc, "control-plane"), service_with(doc, "envoy")
    splitter = service_with(doc, "splitter")
    assert set(services) == {"envoy-bootstrap", cp, envoy, splitter, "whisper-tiny", "whisper-base"}
    own_net = sorted(n for n, s in services.items() if netns(n, s) == n)
    net = Net({name: f"127.0.0.{21 + i}" for i, name in enumerate(own_net)})

    config_file, config_target = config_source(services[cp])
    config = load_config(config_file)
    local = local_config(yaml.safe_load(config_file.read_text()), net, envoy, cp)
    parse_config(local)
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(local, sort_keys=False))
    volumes = volume_dirs(doc, tmp_path / "volumes")
    local_file = {config_target: tmp_path / "gateway.yaml"}

    procs: dict[str, Proc] = {}

    def start(name: str) -> Proc:
        svc = services[name]
        procs[name] = Proc(
            name,
            local_argv(name, svc, net, local_paths(svc, volumes, local_file)),
            tmp_path / f"{name}.log",
            env=environment(svc),
        ).start()
        return procs[name]

    def logs() -> str:
        return "\n".join(f"--- {n}\n{p.log_tail(15)}" for n, p in procs.items())

    one_shots = [n for n, s in services.items() if s.get("restart") == "no"]
    waiting = [n for n, s in services.items() if s.get("depends_on")]
    rest = [n for n in services if n not in one_shots and n not in waiting]
    try:
        for name in one_shots:
            proc = start(name)
            assert proc.popen is not None
            assert proc.popen.wait(60) == 0, f"{name} failed:\n{proc.log_tail()}"
        for name in rest:
            start(name)
        for name in rest:
            wait_healthy(name, local_healthcheck(name, services[name], net), procs[name], 120)
        for name in waiting:  # in the file's order: Envoy, then the splitter
            for dep, cond in services[name]["depends_on"].items():
                assert cond["condition"] in (
                    "service_healthy",
                    "service_completed_successfully",
                    "service_started",
                )
                assert dep in procs, f"{name} waits for {dep}, not started yet"
            start(name)
            wait_healthy(name, local_healthcheck(name, services[name], net), procs[name], 60)

        cpu_urls = {net.url(b.host, b.port) for b in config.backends if b.host in services}
        assert len(cpu_urls) == 2
        wait_routable(net.url(cp, config.admin.port), cpu_urls, 60)
        listener = net.url(envoy, config.listener.port)
        # The README's requests carry the key of compose/.env, as a client's would.
        assert config.api_keys is not None
        ((_, var),) = config.api_keys.env
        auth = {"Authorization": f"Bearer {environment(services[cp])[var]}"}

        # Without it, or with another: 401 in OpenAI's shape, before any backend works.
        for wrong in ({}, {"Authorization": "Bearer sk-not-the-compose-key-0000"}):
            status, headers, body = post_form(
                f"{listener}/v1/audio/transcriptions", FIXTURES / "hello.wav", wrong, model=TINY
            )
            assert status == 401, body[:500]
            assert "API key" in openai_error(body, 401)["message"]
            assert "x-gateway-model" not in headers
            status, body = get(f"{listener}/v1/models", wrong)
            assert status == 401, body[:500]
            openai_error(body, 401)
        # Liveness-style checks need no key.
        for path in ("/health", "/version"):
            status, body = get(f"{listener}{path}")
            assert status == 200, (path, body[:500])

        status, headers, body = post_form(
            f"{listener}/v1/audio/transcriptions",
            FIXTURES / "hello.wav",
            auth,
            model=TINY,
            response_format="json",
            language="en",
        )
        assert status == 200, body[:500]
        assert "world" in json.loads(body)["text"].lower()
        assert headers.get("x-gateway-model") == TINY

        status, headers, body = post_form(
            f"{listener}/v1/audio/transcriptions",
            FIXTURES / "hello.wav",
            auth,
            model=TINY,
            response_format="json",
            language="en",
            stream="true",
        )
        assert status == 200, body[:500]
        assert headers["content-type"].startswith("text/event-stream")
        events = [ln for ln in body.decode().splitlines() if ln.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        # OpenAI's events (the config's default stream format): deltas, then done.
        done = json.loads(events[-2][6:])
        assert done["type"] == "transcript.text.done"
        assert "world" in done["text"].lower()

        status, headers, body = post_form(
            f"{listener}/v1/audio/translations", FIXTURES / "cafe_fr.wav", auth, model=BASE
        )
        assert status == 200, body[:500]
        assert json.loads(body)["text"].strip()
        assert headers.get("x-gateway-model") == BASE

        models = {m["id"] for m in get_json(f"{listener}/v1/models", auth)["data"]}
        assert {TINY, BASE} <= models

        # Long audio: 90 s (2.9 MB, above min_upload_mb) asked to split goes to the
        # splitter, whose pieces come back through the listener to whisper-tiny.
        status, headers, body = post_form(
            f"{listener}/v1/audio/transcriptions",
            make_clip(tmp_path / "long.wav", 90),
            {**auth, "x-long-audio": "split"},
            model=TINY,
            response_format="json",
            language="en",
        )
        assert status == 200, body[:500]
        assert int(headers["x-long-audio-pieces"]) >= 3, headers
        assert len(json.loads(body)["text"].split()) > 100
    except Exception as e:
        raise AssertionError(f"{e}\n{logs()}") from e
    finally:
        for proc in reversed(list(procs.values())):
            proc.stop()
