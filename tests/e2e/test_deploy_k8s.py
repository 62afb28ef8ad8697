"""The Kubernetes deployment (k8s/): valid, consistent with the code, and its pods serve.

There is no cluster on the build machine. What is checked instead:

1. schema: every manifest file and each rendered kustomization (envoy-admin, base,
   overlays/cpu, overlays/gpu, sidecar) against the Kubernetes 1.37 OpenAPI schema,
   strict (unknown fields refused), with kubernetes-validate. The rendering is
   testkit/kustomize.py (no kustomize binary comes from this project's
   registries); when a real kustomize is on PATH (`kustomize` or `kubectl
   kustomize`) its output must be identical;
2. what ties the files to the code: each ConfigMap's gateway.yaml passes
   `parse_config`; Envoy's args are `envoy_command(config, bootstrap)[1:]`; ports,
   probes' ports, the bootstrap path and the mounted config path agree; every backend
   URL is `<headless Service>.<namespace>.svc.cluster.local` on the Service's port,
   whose Deployment serves that model on that port; the gateway pod's order (init,
   native sidecars control-plane and splitter, Envoy), security context, drain and
   grace period; the splitter where the config's long_audio says, probed by exec;
3. the cpu overlay's pods as local processes: the gateway Deployment's containers
   with their own command, args and env (the bootstrap init container to completion,
   then the control-plane sidecar until its startupProbe passes, then the splitter
   sidecar and Envoy until their readinessProbes pass), one process per backend
   Deployment (until its readinessProbe passes); then the README's requests through
   Envoy's listener with the Secret's client key (without it: 401; /health and
   /version need none), Prometheus's scrape of /metrics with its own key, a key
   rotated by updating the Secret volume as the kubelet does (no restart), one long
   upload split by the splitter, and the preStop drain with a request in flight. The
   sidecar variant's bootstrap init container and splitter sidecar run too.

In 3, this is the only rewriting, all of it mechanical:
- addresses: each backend's headless Service name becomes its own loopback address
  (127.0.0.10, .11, ...), which its pod binds instead of 0.0.0.0 (`--host`); the
  gateway pod's 0.0.0.0 listener becomes 127.0.0.1;
- ports: each port becomes a free port: in a rewritten copy of the ConfigMap's
  gateway.yaml (listener, envoy_admin, xds, admin, long_audio.splitter, backend
  URLs), the backends' `--port`, and the env values that name the config's ports
  (ENVOY_ADMIN_PORT, ADMIN_HEALTHZ, SPLITTER_HEALTH);
- paths: a volume's mount path becomes a temporary folder (a ConfigMap volume holds
  the ConfigMap's files, mode included; a Secret volume its files laid out as the
  kubelet's atomic writer does, `..data` symlinks included; an emptyDir starts
  empty), in argv, env and the config's api_keys.file;
- programs: `python` -> this venv's python, `whisper-backend` -> the venv's
  whisper-backend, `envoy` -> control_plane.xds.bootstrap.ENVOY (`/bin/bash` stays);
"""

from __future__ import annotations

import base64
import copy
import functools
import http.client
import itertools
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from control_plane.config.parse import parse_config
from control_plane.config.schema import ApiKeysConfig, GatewayConfig
from control_plane.ir.security import load_clients
from control_plane.names import XDS_CLUSTER
from control_plane.xds.bootstrap import ENVOY, envoy_command
from testkit import kustomize
from testkit.clips import make_clip
from testkit.procs import FIXTURES, PYTHON, ROOT, Proc, free_port, wait_http

K8S = ROOT / "k8s"
K8S_VERSION = "1.37.0"  # the newest kubernetes-validate 1.37 knows; native sidecars: >= 1.29
KUSTOMIZATIONS = {
    "envoy-admin": K8S / "envoy-admin",
    "base": K8S / "base",
    "cpu": K8S / "overlays" / "cpu",
    "gpu": K8S / "overlays" / "gpu",
    "sidecar": K8S / "sidecar",
}
PROGRAMS = {
    "python": PYTHON,
    "whisper-backend": str(Path(PYTHON).with_name("whisper-backend")),
    "envoy": ENVOY,
}
CLUSTER_DOMAIN = "svc.cluster.local"
SCRAPE_FILE = K8S / "monitoring" / "prometheus-scrape.yaml"
TINY = "openai/whisper-tiny.en"
BASE = "openai/whisper-base"

Obj = dict[str, Any]


# ---------------------------------------------------------------- reading the manifests


@functools.cache
def _render(name: str) -> tuple[Obj, ...]:
    return tuple(kustomize.build(KUSTOMIZATIONS[name]))


def render(name: str) -> list[Obj]:
    return copy.deepcopy(list(_render(name)))


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objs: list[Obj], kind: str, name: str) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_spec(deployment: Obj) -> Obj:
    spec: Obj = deployment["spec"]["template"]["spec"]
    return spec


def container(spec: Obj, name: str) -> Obj:
    for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name}")


def argv_of(c: Obj) -> list[str]:
    return [str(a) for a in [*c.get("command", []), *c.get("args", [])]]


def flag(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


def env_of(c: Obj) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def config_map_of(objs: list[Obj], deployment: Obj, volume: str) -> Obj:
    (vol,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == volume]
    return one(objs, "ConfigMap", vol["configMap"]["name"])


def mount_path(c: Obj, volume: str) -> str:
    (path,) = [m["mountPath"] for m in c.get("volumeMounts", []) if m["name"] == volume]
    return str(path)


def selects(service: Obj, deployment: Obj) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"].get("selector") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def service_for(objs: list[Obj], deployment: Obj) -> Obj:
    (svc,) = [s for s in find(objs, "Service") if selects(s, deployment)]
    return svc


def named_port(c: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == port]
    return int(number)


def generator_files() -> set[Path]:
    out: set[Path] = set()
    for root in KUSTOMIZATIONS.values():
        k = yaml.safe_load((root / "kustomization.yaml").read_text())
        for gen in k.get("configMapGenerator") or []:
            out |= {(root / f.rpartition("=")[2]).resolve() for f in gen["files"]}
    return out


def manifest_files() -> list[Path]:
    skip = generator_files()
    return sorted(
        p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml" and p.resolve() not in skip
    )


def gateway_config(cm: Obj) -> GatewayConfig:
    return parse_config(yaml.safe_load(cm["data"]["gateway.yaml"]))


def secret_files(secret: Obj) -> dict[str, str]:
    """A Secret's files as mounted: `data` decoded, `stringData` as written (it wins)."""
    out = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    out.update(secret.get("stringData") or {})
    return out


def api_keys_secret(objs: list[Obj], deployment: Obj, cfg: GatewayConfig) -> tuple[Obj, Obj]:
    """The Secret volume holding the config's api_keys.file, and that Secret."""
    assert cfg.api_keys is not None and cfg.api_keys.file is not None, "API keys are off"
    folder = str(Path(cfg.api_keys.file).parent)
    sidecar = container(pod_spec(deployment), "control-plane")
    (name,) = [m["name"] for m in sidecar["volumeMounts"] if m["mountPath"] == folder]
    (vol,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == name]
    return vol, one(objs, "Secret", vol["secret"]["secretName"])


def client_keys(objs: list[Obj], deployment: Obj, cfg: GatewayConfig, tmp: Path) -> dict[str, str]:
    """Client name -> key, read from the Secret by the control plane's own loader."""
    _, secret = api_keys_secret(objs, deployment, cfg)
    assert cfg.api_keys is not None and cfg.api_keys.file is not None
    name = Path(cfg.api_keys.file).name
    (tmp / name).write_text(secret_files(secret)[name])
    clients = load_clients(ApiKeysConfig(file=str(tmp / name)), set(cfg.models))
    return {c.name: c.key for c in clients}


def write_atomically(folder: Path, files: dict[str, str], mode: int) -> None:
    """Write a Secret or ConfigMap volume as the kubelet's AtomicWriter does: the files
    in a new timestamped folder, `..data` renamed onto a symlink to it, each file a
    symlink through `..data`. An update swaps every file at once; nothing is edited
    in place, so a reader must follow the new symlink, as the control plane's watch does."""
    stamp = f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{uuid.uuid4().hex[:9]}"
    (folder / stamp).mkdir(mode=0o755)
    for key, text in files.items():
        (folder / stamp / key).write_text(text)
        (folder / stamp / key).chmod(mode)
    data = folder / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    (folder / "..data_tmp").symlink_to(stamp)
    os.replace(folder / "..data_tmp", data)
    for key in files:
        if not (folder / key).is_symlink():
            (folder / key).symlink_to(f"..data/{key}")
    if old:
        shutil.rmtree(folder / old)


def scrape_jobs() -> list[Obj]:
    """The scrape_configs of k8s/monitoring/prometheus-scrape.yaml's ConfigMap."""
    cm = yaml.safe_load(SCRAPE_FILE.read_text())
    (text,) = cm["data"].values()
    jobs: list[Obj] = yaml.safe_load(text)["scrape_configs"]
    return jobs


def _meta_name(label: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def scrape_targets(job: Obj, objs: list[Obj]) -> list[tuple[str, str, int, dict[str, str]]]:
    """What Prometheus's kubernetes_sd `role: pod` finds for `job` among the
    Deployments' pods (one target per declared container port, a port-less one per
    container without), through its relabel_configs (keep, drop, replace): each kept
    target as (Deployment, container, port, its labels)."""
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["role"] == "pod"
    names = set(sd.get("namespaces", {}).get("names") or [])
    kept = []
    for dep in find(objs, "Deployment"):
        ns = dep["metadata"]["namespace"]
        if names and ns not in names:
            continue
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        pod = f"{dep['metadata']['name']}-5d8f7b9c4-x2x7q"
        for c in kustomize.pod_containers(dep):
            for port in c.get("ports") or [{}]:
                labels = {
                    "__meta_kubernetes_namespace": ns,
                    "__meta_kubernetes_pod_name": pod,
                    "__meta_kubernetes_pod_container_name": c["name"],
                    "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                    "__meta_kubernetes_pod_container_port_number": str(
                        port.get("containerPort", "")
                    ),
                    **{
                        f"__meta_kubernetes_pod_label_{_meta_name(k)}": v
                        for k, v in pod_labels.items()
                    },
                }
                for rule in job.get("relabel_configs") or []:
                    value = rule.get("separator", ";").join(
                        labels.get(n, "") for n in rule.get("source_labels", [])
                    )
                    m = re.fullmatch(rule.get("regex", "(.*)"), value)
                    action = rule.get("action", "replace")
                    assert action in ("keep", "drop", "replace"), action
                    if (action == "keep" and not m) or (action == "drop" and m):
                        break
                    if action == "replace" and m:
                        labels[rule["target_label"]] = m.expand(rule.get("replacement", r"\1"))
                else:
                    target = {k: v for k, v in labels.items() if not k.startswith("__")}
                    kept.append(
                        (dep["metadata"]["name"], c["name"], port.get("containerPort", 0), target)
                    )
    return kept


def validate(obj: Obj, where: str) -> None:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        return
    except Exception as e:  # ValidationError, SchemaNotFoundError, ...
        path = "/".join(str(p) for p in getattr(e, "path", []))
        message = getattr(e, "message", None) or str(e).splitlines()[0]
    what = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    pytest.fail(f"{where}: {what}: {message} (at {path or '-'}; Kubernetes {K8S_VERSION})")


# ---------------------------------------------------------------- 1. schema


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_file_is_valid(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs, f"{path}: no object"
    for doc in docs:
        validate(doc, str(path.relative_to(ROOT)))


def test_manifest_files_are_found() -> None:
    names = {str(p.relative_to(K8S)) for p in manifest_files()}
    assert names >= {
        "base/whisper-gateway.yaml",
        "overlays/cpu/hpa.yaml",
        "sidecar/whisper-xds.yaml",
    }
    assert not any(n.endswith("config/gateway.yaml") for n in names)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_each_rendering_is_valid(name: str) -> None:
    objs = render(name)
    assert objs
    for obj in objs:
        validate(obj, f"kustomize build {KUSTOMIZATIONS[name].relative_to(ROOT)}")


def _real_kustomize(directory: Path) -> tuple[list[str], str] | None:
    """The command rendering `directory` with a real kustomize, and its version."""
    if exe := shutil.which("kustomize"):
        out = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=30)
        return [exe, "build", str(directory)], out.stdout
    if exe := shutil.which("kubectl"):
        out = subprocess.run(
            [exe, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30
        )
        try:
            version = str(json.loads(out.stdout).get("kustomizeVersion", ""))
        except ValueError:
            version = ""
        return [exe, "kustomize", str(directory)], version
    return None


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_rendering_equals_real_kustomize(name: str) -> None:
    found = _real_kustomize(KUSTOMIZATIONS[name])
    if found is None:
        pytest.skip("no kustomize or kubectl on PATH to compare the renderer with")
    cmd, version = found
    m = re.search(r"v(\d+)\.(\d+)", version)
    if not m or (int(m[1]), int(m[2])) < (4, 1):  # `labels` came in kustomize 4.1
        pytest.skip(f"{cmd[0]}: kustomize {version.strip() or '?'} predates `labels`")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    real = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert kustomize.by_id(render(name)) == kustomize.by_id(real)


# ---------------------------------------------------------------- 2. manifests <-> code


def check_backends(cfg: GatewayConfig, objs: list[Obj]) -> None:
    """Each backend URL: a headless Service, on its port, whose pods serve the models."""
    for b in cfg.backends:
        m = re.fullmatch(rf"([a-z0-9-]+)\.([a-z0-9-]+)\.{re.escape(CLUSTER_DOMAIN)}", b.host)
        assert m, f"{b.url}: not <service>.<namespace>.{CLUSTER_DOMAIN}"
        svc_name, ns = m.groups()
        svc = one(objs, "Service", svc_name)
        assert svc["metadata"]["namespace"] == ns, b.url
        assert svc["spec"].get("clusterIP") == "None", f"{svc_name} is not headless"
        (port,) = [p for p in svc["spec"]["ports"] if p["port"] == b.port]
        (dep,) = [d for d in find(objs, "Deployment") if selects(svc, d)]
        (c,) = pod_spec(dep)["containers"]
        argv = argv_of(c)
        assert named_port(c, port["targetPort"]) == int(flag(argv, "--port")), b.url
        assert flag(argv, "--host") == "0.0.0.0", "a headless Service dials the pod IP"
        if argv[0] == "whisper-backend":
            assert [flag(argv, "--model")] == list(b.models)
        else:
            assert argv[:2] == ["vllm", "serve"] and [argv[2]] == list(b.models)
            res = c["resources"]
            assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == 1
            assert pod_spec(dep)["tolerations"] and pod_spec(dep)["nodeSelector"]
        assert c["readinessProbe"]["httpGet"]["path"] == "/health"
        assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > (
            c["lifecycle"]["preStop"]["sleep"]["seconds"] + cfg.dns_refresh_s
        )


def check_splitter(spec: Obj, c: Obj, config_volume: str, cfg: GatewayConfig) -> None:
    """The long-audio splitter: a native sidecar of Envoy's pod, reading the mounted
    config, probed by exec on the config's long_audio.splitter (loopback: an httpGet
    probe dials the pod IP)."""
    assert cfg.long_audio is not None, "a splitter container, but no long_audio in the config"
    assert set(cfg.long_audio.models) <= set(cfg.models)
    where = cfg.long_audio.splitter
    assert where.address == "127.0.0.1", "Envoy's cluster for it is a static IP in the pod"
    assert c["restartPolicy"] == "Always", "a native sidecar: it stops after Envoy"
    config_path = f"{mount_path(c, config_volume)}/gateway.yaml"
    assert argv_of(c) == ["python", "-m", "long_audio", "--config", config_path]
    assert env_of(c)["SPLITTER_HEALTH"] == f"http://{where.address}:{where.port}/health"
    for probe in ("readinessProbe", "livenessProbe"):
        command = c[probe]["exec"]["command"]
        assert command[:2] == ["python", "-c"] and "SPLITTER_HEALTH" in command[2], probe
    assert "startupProbe" not in c, "Envoy need not wait for it"
    # Its temporary folder (the spool) is an emptyDir of its own, not the pod's small /tmp.
    (spool,) = [m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
    (vol,) = [v for v in spec["volumes"] if v["name"] == spool]
    assert "emptyDir" in vol and quantity_bytes(vol["emptyDir"]["sizeLimit"]) >= 2**30
    others = [o for o in [*spec["initContainers"], *spec["containers"]] if o is not c]
    assert not any(spool in {m["name"] for m in o.get("volumeMounts", [])} for o in others)


def quantity_bytes(q: str) -> int:
    """A Kubernetes quantity with a binary suffix (as the manifests write them), in bytes."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)", q)
    assert m, q
    return int(m[1]) * {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m[2]]


def check_restricted(spec: Obj, where: str) -> None:
    assert spec["securityContext"]["runAsNonRoot"] is True, where
    assert spec["securityContext"]["runAsUser"] != 0, where
    writable = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, f"{where}/{c['name']}"
        assert sc["allowPrivilegeEscalation"] is False, f"{where}/{c['name']}"
        assert sc["capabilities"]["drop"] == ["ALL"], f"{where}/{c['name']}"
        assert c["resources"]["requests"] and c["resources"]["limits"], f"{where}/{c['name']}"
        for m in c.get("volumeMounts", []):
            assert m.get("readOnly") or m["name"] in writable, f"{where}/{c['name']} {m}"


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_gateway_pod_matches_the_code(overlay: str, tmp_path: Path) -> None:
    objs = render(overlay)
    dep = one(objs, "Deployment", "whisper-gateway")
    spec = pod_spec(dep)
    cm = config_map_of(objs, dep, "config")
    # The checksum of the config: kustomize's hash suffix, so a new config rolls the pods.
    assert re.fullmatch(r"gateway-config-[a-z0-9]{10}", cm["metadata"]["name"])
    assert cm["metadata"]["name"].endswith(kustomize.config_map_hash(cm["data"]))
    cfg = gateway_config(cm)

    # Order: a plain init container, then the control plane and the splitter as native
    # sidecars (they stop after Envoy, in reverse: the splitter first), then Envoy.
    init, sidecar, splitter = spec["initContainers"]
    (envoy,) = spec["containers"]
    names = (init["name"], sidecar["name"], splitter["name"], envoy["name"])
    assert names == ("bootstrap", "control-plane", "splitter", "envoy")
    assert "restartPolicy" not in init and sidecar["restartPolicy"] == "Always"
    check_splitter(spec, splitter, "config", cfg)
    assert mount_path(splitter, "config") == mount_path(sidecar, "config")

    config_path = f"{mount_path(sidecar, 'config')}/gateway.yaml"
    assert argv_of(init) == [
        "python",
        "-m",
        "control_plane",
        "bootstrap",
        "--config",
        config_path,
        "--output",
        f"{mount_path(init, 'envoy-bootstrap')}/bootstrap.json",
    ]
    assert argv_of(sidecar) == ["python", "-m", "control_plane", "--config", config_path]
    bootstrap = Path(flag(argv_of(init), "--output"))
    assert str(bootstrap.parent) == mount_path(envoy, "envoy-bootstrap")
    assert envoy["command"] == ["envoy"]
    assert envoy["args"] == envoy_command(cfg, bootstrap)[1:]
    assert envoy["args"] == [
        "-c",
        "/etc/envoy/bootstrap.json",
        "--log-level",
        "warn",
        "--drain-time-s",
        "30",
        "--concurrency",
        "1",
        "--use-dynamic-base-id",
    ]

    # xDS and both admin APIs on loopback inside the pod; the listener on the pod IP.
    assert cfg.xds.address == cfg.envoy_admin.address == cfg.admin.address == "127.0.0.1"
    assert cfg.listener.address == "0.0.0.0"
    assert named_port(envoy, "http") == cfg.listener.port
    assert env_of(envoy)["ENVOY_ADMIN_PORT"] == str(cfg.envoy_admin.port)
    assert env_of(sidecar)["ADMIN_HEALTHZ"] == (
        f"http://{cfg.admin.address}:{cfg.admin.port}/healthz"
    )
    script = f"{mount_path(envoy, 'envoy-admin')}/envoy-admin.sh"
    assert envoy["readinessProbe"]["exec"]["command"] == ["/bin/bash", script, "ready"]
    assert envoy["lifecycle"]["preStop"]["exec"]["command"] == ["/bin/bash", script, "drain"]
    svc = one(objs, "Service", "whisper-gateway")
    assert selects(svc, dep) and svc["spec"]["ports"][0]["targetPort"] == "http"

    # Drain: above the longest job, a budget that keeps a pod up.
    assert spec["terminationGracePeriodSeconds"] > cfg.limits.idle_timeout_s
    assert int(env_of(envoy)["DRAIN_MIN_S"]) < spec["terminationGracePeriodSeconds"]
    pdb = one(objs, "PodDisruptionBudget", "whisper-gateway")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < dep["spec"]["replicas"]
    check_restricted(spec, f"{overlay}/whisper-gateway")
    check_backends(cfg, objs)

    # API keys on: a file from a Secret volume mounted (whole, so the kubelet's updates
    # reach it) into the control plane alone; placeholder keys that say to replace them.
    assert cfg.api_keys is not None and cfg.api_keys.env == ()
    vol, _ = api_keys_secret(objs, dep, cfg)
    assert vol["secret"]["defaultMode"] == 0o440
    for c in (init, splitter, envoy):
        assert vol["name"] not in {m["name"] for m in c.get("volumeMounts", [])}, c["name"]
    (mount,) = [m for m in sidecar["volumeMounts"] if m["name"] == vol["name"]]
    assert "subPath" not in mount and mount["readOnly"] is True
    keys = client_keys(objs, dep, cfg, tmp_path)
    assert set(keys) == {"demo", "prometheus"}
    assert all("REPLACE-ME" in k for k in keys.values())
    # What checks the pod without a key asks the admin APIs (exec), never the listener;
    # an httpGet there would need /health or /version, the only routes without a key.
    for c in (init, sidecar, splitter, envoy):
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            action = c.get(probe) or {}
            assert "tcpSocket" not in action, f"{c['name']} {probe}"
            if "httpGet" in action:
                assert action["httpGet"]["path"] in ("/health", "/version"), c["name"]
    assert "exec" in envoy["lifecycle"]["preStop"]
    assert not dep["spec"]["template"]["metadata"].get("annotations"), (
        "prometheus.io/* annotations would have Prometheus scrape /metrics without a key"
    )
    for backend in find(objs, "Deployment"):
        check_restricted(pod_spec(backend), f"{overlay}/{backend['metadata']['name']}")


def test_hpa_scales_a_backend_named_by_its_service() -> None:
    objs = render("cpu")
    cfg = gateway_config(config_map_of(objs, one(objs, "Deployment", "whisper-gateway"), "config"))
    (hpa,) = find(objs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = one(objs, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
    assert "replicas" not in target["spec"], "an apply would reset what the HPA set"
    svc = service_for(objs, target)
    ns = svc["metadata"]["namespace"]
    assert f"{svc['metadata']['name']}.{ns}.{CLUSTER_DOMAIN}" in {b.host for b in cfg.backends}
    (c,) = pod_spec(target)["containers"]
    assert c["resources"]["requests"]["cpu"], "CPU utilisation needs a CPU request"
    # The queue metric is one the prometheus-adapter rules export, from the gateway's
    # own /metrics, which Prometheus scrapes on the listener.
    from testkit.promql import ADAPTER_FILE, adapter_rules

    external = [m["external"]["metric"]["name"] for m in hpa["spec"]["metrics"] if "external" in m]
    assert external == ["vllm_num_requests_waiting"]
    assert external[0] in {r["name"]["as"] for r in adapter_rules()}
    assert cfg.public_router_endpoints, "the gateway's /metrics is on the scraped port"
    adapter = yaml.safe_load(ADAPTER_FILE.read_text())
    validate(adapter, str(ADAPTER_FILE.relative_to(ROOT)))


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_prometheus_scrapes_the_listener_with_its_own_key(overlay: str) -> None:
    """With keys on, /metrics on the listener needs one: the scrape job sends a bearer
    token (a file Prometheus holds), and its relabelling keeps the gateway pods'
    listener port alone, labelled with the namespace the adapter's rules sum by."""
    objs = render(overlay)
    gw = one(objs, "Deployment", "whisper-gateway")
    cfg = gateway_config(config_map_of(objs, gw, "config"))
    (job,) = scrape_jobs()
    assert job["metrics_path"] == "/metrics" and job.get("scheme", "http") == "http"
    assert job["authorization"]["type"] == "Bearer"
    assert Path(job["authorization"]["credentials_file"]).is_absolute()
    targets = scrape_targets(job, objs)
    assert [(d, c, p) for d, c, p, _ in targets] == [
        ("whisper-gateway", "envoy", cfg.listener.port)
    ]
    from testkit.promql import adapter_rules

    by = {k for r in adapter_rules() for k in r["resources"]["overrides"]}
    assert by <= set(targets[0][3]), "the adapter's rules need these target labels"
    assert targets[0][3]["namespace"] == gw["metadata"]["namespace"]


def test_sidecar_variant(tmp_path: Path) -> None:
    objs = render("sidecar")
    xds = one(objs, "Deployment", "whisper-xds")
    cfg = gateway_config(config_map_of(objs, xds, "config"))
    (cp,) = pod_spec(xds)["containers"]
    assert argv_of(cp) == [
        "python",
        "-m",
        "control_plane",
        "--config",
        f"{mount_path(cp, 'config')}/gateway.yaml",
    ]
    assert cfg.xds.address == "0.0.0.0" and named_port(cp, "xds") == cfg.xds.port
    assert cfg.listener.address == "127.0.0.1", "each client's Envoy listens on its own pod"
    svc = service_for(objs, xds)
    (port,) = svc["spec"]["ports"]
    assert named_port(cp, port["targetPort"]) == cfg.xds.port
    check_restricted(pod_spec(xds), "sidecar/whisper-xds")
    # The backends it names are the cpu overlay's headless Services.
    check_backends(cfg, render("cpu"))

    client = one(objs, "Deployment", "example-client")
    spec = pod_spec(client)
    check_restricted(spec, "sidecar/example-client")
    # The splitter before Envoy, so it stops after it (sidecars stop in reverse).
    init, splitter, envoy = spec["initContainers"]
    assert (init["name"], splitter["name"], envoy["name"]) == (
        "envoy-bootstrap",
        "splitter",
        "envoy",
    )
    assert "restartPolicy" not in init and envoy["restartPolicy"] == "Always"
    assert config_map_of(objs, client, "gateway-config") == config_map_of(objs, xds, "config")
    check_splitter(spec, splitter, "gateway-config", cfg)
    xds_host = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.{CLUSTER_DOMAIN}"
    assert flag(argv_of(init), "--xds-host") == xds_host
    bootstrap = Path(flag(argv_of(init), "--output"))
    assert envoy["command"] == ["envoy"]
    assert envoy["args"] == envoy_command(cfg, bootstrap)[1:]
    assert env_of(envoy)["ENVOY_ADMIN_PORT"] == str(cfg.envoy_admin.port)

    # Its bootstrap init container, run: Envoy dials the Service by name (STRICT_DNS).
    pod = Pod(tmp_path, client, objs, field_refs={"metadata.name": "example-client-7d9f-x2"})
    proc = pod.proc(init, "envoy-bootstrap").start()
    assert proc.popen is not None and proc.popen.wait(60) == 0, proc.log_tail()
    boot = json.loads(Path(pod.local(init, str(bootstrap))).read_text())
    assert boot["node"]["id"] == "example-client-7d9f-x2"
    (cluster,) = boot["static_resources"]["clusters"]
    assert cluster["name"] == XDS_CLUSTER and cluster["type"] == "STRICT_DNS"
    (ep,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert ep["endpoint"]["address"]["socket_address"] == {
        "address": xds_host,
        "port_value": port["port"],
    }

    # Its splitter sidecar, run: up and answering its probes (on a free port here).
    assert cfg.long_audio is not None
    free, old = free_port(), cfg.long_audio.splitter.port
    config_file = Path(pod.local(splitter, flag(argv_of(splitter), "--config")))
    doc = yaml.safe_load(config_file.read_text())
    doc["long_audio"]["splitter"]["port"] = free
    config_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    pod.env_rewrites[env_of(splitter)["SPLITTER_HEALTH"]] = f"http://127.0.0.1:{free}/health"
    assert str(old) in env_of(splitter)["SPLITTER_HEALTH"]
    proc = pod.proc(splitter, "splitter").start()
    try:
        pod.wait_exec(splitter, splitter["readinessProbe"], proc, timeout=30)
        assert pod.run_exec(splitter, splitter["livenessProbe"]).returncode == 0
    finally:
        proc.stop()


# ---------------------------------------------------------------- 3. pods as processes


@dataclass
class Pod:
    """A Deployment's pod template on this machine: volumes as folders, containers as Procs."""

    tmp: Path
    deployment: Obj
    objs: list[Obj]
    field_refs: dict[str, str] = field(default_factory=dict)
    env_rewrites: dict[str, str] = field(default_factory=dict)  # value in the pod -> here
    flag_rewrites: dict[str, str] = field(default_factory=dict)  # `--flag X` -> `--flag Y`
    volumes: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        name = self.deployment["metadata"]["name"]
        for vol in pod_spec(self.deployment).get("volumes", []):
            folder = self.tmp / name / vol["name"]
            folder.mkdir(parents=True)
            if "configMap" in vol:
                cm = one(self.objs, "ConfigMap", vol["configMap"]["name"])
                for key, text in cm["data"].items():
                    (folder / key).write_text(text)
                    (folder / key).chmod(vol["configMap"].get("defaultMode", 0o644))
            elif "secret" in vol:
                secret = one(self.objs, "Secret", vol["secret"]["secretName"])
                mode = vol["secret"].get("defaultMode", 0o644)
                write_atomically(folder, secret_files(secret), mode)
            else:
                assert "emptyDir" in vol, f"{name}: volume {vol} has no local stand-in"
            self.volumes[vol["name"]] = folder

    def update_secret(self, volume: str, files: dict[str, str]) -> None:
        """The Secret behind `volume` changed: rewrite its files as the kubelet does."""
        (vol,) = [v for v in pod_spec(self.deployment)["volumes"] if v["name"] == volume]
        write_atomically(self.volumes[volume], files, vol["secret"].get("defaultMode", 0o644))

    def local(self, c: Obj, value: str) -> str:
        """A path under one of the container's mount paths -> the same under its folder."""
        for m in sorted(c.get("volumeMounts", []), key=lambda m: -len(m["mountPath"])):
            assert "subPath" not in m
            target = m["mountPath"]
            if value == target or value.startswith(target + "/"):
                return str(self.volumes[m["name"]]) + value[len(target) :]
        return value

    def env(self, c: Obj) -> dict[str, str]:
        out: dict[str, str] = {}
        for e in c.get("env", []):
            if "value" in e:
                value = self.env_rewrites.get(e["value"], e["value"])
                out[e["name"]] = self.local(c, value)
            else:
                out[e["name"]] = self.field_refs[e["valueFrom"]["fieldRef"]["fieldPath"]]
        return out

    def argv(self, c: Obj, argv: list[str]) -> list[str]:
        env = self.env(c)
        # Kubernetes expands $(VAR) in command and args from the container's env.
        argv = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), a) for a in argv]
        head = PROGRAMS.get(argv[0], argv[0])
        assert Path(head).is_absolute() and Path(head).exists(), f"no local {argv[0]}"
        out = [head]
        for prev, arg in itertools.pairwise(argv):
            out.append(self.flag_rewrites.get(prev, self.local(c, arg)))
        return out

    def proc(self, c: Obj, name: str) -> Proc:
        return Proc(name, self.argv(c, argv_of(c)), self.tmp / "logs" / f"{name}.log", self.env(c))

    def run_exec(self, c: Obj, probe: Obj, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        """An exec probe or hook of container `c`, with the container's env."""
        return subprocess.run(
            self.argv(c, [str(a) for a in probe["exec"]["command"]]),
            env={**os.environ, **self.env(c)},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def wait_exec(self, c: Obj, probe: Obj, proc: Proc, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.alive(), f"{proc.name} exited:\n{proc.log_tail()}"
            got = self.run_exec(c, probe)
            if got.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{proc.name}: probe failing: {got}\n{proc.log_tail()}")
            time.sleep(min(float(probe.get("periodSeconds", 1)), 0.5))


def multipart(fields: dict[str, str], upload: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    )
    body += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{upload.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    body += upload.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def transcribe(
    url: str, model: str, upload: Path, headers: dict[str, str], timeout: float = 60
) -> tuple[int, Any]:
    body, ctype = multipart({"model": model, "response_format": "json", "language": "en"}, upload)
    req = urllib.request.Request(
        f"{url}/v1/audio/transcriptions", data=body, headers={"Content-Type": ctype, **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def connection_header(url: str, headers: dict[str, str]) -> str | None:
    """GET /v1/models on a keep-alive connection: Envoy's Connection header, if any."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=5)
    try:
        conn.request("GET", "/v1/models", headers=headers)
        r = conn.getresponse()
        r.read()
        assert r.status == 200
        return r.getheader("Connection")
    finally:
        conn.close()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """GET: the status and body text, error statuses included."""
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers or {}), timeout=5
        ) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def openai_error(body: str, status: int) -> dict[str, Any]:
    """The gateway's error body: OpenAI's `{"error": {...}}`, code = the status."""
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["code"] == status, err
    return dict(err)


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in reversed(started):  # Envoy first, as the kubelet does after preStop
        p.stop()
    for folder in tmp_path.iterdir():  # the volumes (whisper-base's model: 145 MB); logs stay
        if folder.is_dir() and folder.name != "logs":
            shutil.rmtree(folder, ignore_errors=True)


def test_cpu_overlay_pods_run_as_processes(tmp_path: Path, procs: list[Proc]) -> None:
    objs = render("cpu")
    gateway = one(objs, "Deployment", "whisper-gateway")
    backends = [d for d in find(objs, "Deployment") if d is not gateway]
    assert {d["metadata"]["name"] for d in backends} == {"whisper-tiny", "whisper-base"}

    # Backends: one process per Deployment, on its Service's own loopback address.
    where: dict[str, tuple[str, int, int]] = {}  # Service DNS name -> (ip, port, Service port)
    waits = []
    for i, dep in enumerate(backends):
        svc = service_for(objs, dep)
        ip = f"127.0.0.{10 + i}"
        port = free_port(ip)
        host = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.{CLUSTER_DOMAIN}"
        where[host] = (ip, port, svc["spec"]["ports"][0]["port"])
        pod = Pod(tmp_path, dep, objs, flag_rewrites={"--host": ip, "--port": str(port)})
        (c,) = pod_spec(dep)["containers"]
        p = pod.proc(c, dep["metadata"]["name"]).start()
        procs.append(p)
        probe = c["readinessProbe"]["httpGet"]
        assert named_port(c, probe["port"]) == int(flag(argv_of(c), "--port"))
        waits.append((f"http://{ip}:{port}{probe['path']}", p))

    # The gateway pod, its config rewritten (addresses and ports only).
    cm = config_map_of(objs, gateway, "config")
    doc = yaml.safe_load(cm["data"]["gateway.yaml"])
    keys = client_keys(objs, gateway, gateway_config(cm), tmp_path)
    env_rewrites: dict[str, str] = {}
    for key in ("listener", "envoy_admin", "xds", "admin"):
        old, new = doc[key]["port"], free_port()
        doc[key] = {"address": "127.0.0.1", "port": new}
        env_rewrites[str(old)] = str(new)
        env_rewrites[f"http://127.0.0.1:{old}/healthz"] = f"http://127.0.0.1:{new}/healthz"
    old, new = doc["long_audio"]["splitter"]["port"], free_port()
    doc["long_audio"]["splitter"] = {"address": "127.0.0.1", "port": new}
    env_rewrites[f"http://127.0.0.1:{old}/health"] = f"http://127.0.0.1:{new}/health"
    for b in doc["backends"]:
        u = urlsplit(b["url"])
        assert u.hostname is not None
        ip, port, svc_port = where[u.hostname]
        assert u.port == svc_port
        b["url"] = f"http://{ip}:{port}"
    pod = Pod(tmp_path, gateway, objs, env_rewrites=env_rewrites)
    spec = pod_spec(gateway)
    init, sidecar, splitter = spec["initContainers"]
    (envoy,) = spec["containers"]
    # The key file: the Secret volume's folder, as mounted into the control plane.
    doc["api_keys"]["file"] = pod.local(sidecar, doc["api_keys"]["file"])
    cfg = parse_config(doc)
    config_file = Path(pod.local(sidecar, flag(argv_of(sidecar), "--config")))
    config_file.write_text(yaml.safe_dump(doc, sort_keys=False))

    for url, p in waits:
        wait_http(url, timeout=120, proc=p)

    boot = pod.proc(init, "bootstrap").start()
    assert boot.popen is not None and boot.popen.wait(60) == 0, boot.log_tail()
    cp = pod.proc(sidecar, "control-plane").start()
    procs.append(cp)
    pod.wait_exec(sidecar, sidecar["startupProbe"], cp, timeout=60)
    split = pod.proc(splitter, "splitter").start()  # no startupProbe: Envoy follows at once
    procs.append(split)
    proxy = pod.proc(envoy, "envoy").start()
    procs.append(proxy)
    pod.wait_exec(envoy, envoy["readinessProbe"], proxy, timeout=60)
    pod.wait_exec(splitter, splitter["readinessProbe"], split, timeout=30)
    assert pod.run_exec(splitter, splitter["livenessProbe"]).returncode == 0

    admin = f"http://127.0.0.1:{cfg.admin.port}"
    deadline = time.monotonic() + 30
    while {e["health"] for e in get_json(f"{admin}/backends")} != {"HEALTHY"}:
        assert time.monotonic() < deadline, get_json(f"{admin}/backends")
        time.sleep(0.2)

    # The README's requests, through the listener, with the Secret's `demo` key.
    url = f"http://127.0.0.1:{cfg.listener.port}"
    auth = bearer(keys["demo"])
    status, body = transcribe(url, TINY, FIXTURES / "hello.wav", auth)
    assert status == 200, body
    assert "world" in body["text"].lower()
    status, body = transcribe(url, BASE, FIXTURES / "hello.wav", auth)
    assert status == 200 and body["text"].strip(), body
    status, text = get(f"{url}/v1/models", auth)
    assert status == 200, text
    assert {m["id"] for m in json.loads(text)["data"]} == {TINY, BASE}
    assert connection_header(url, auth) is None

    # Without a key, or with a wrong one: 401 in OpenAI's shape. /health and /version
    # (what a load balancer or an uptime check may ask) need none.
    for wrong in ({}, bearer("sk-not-a-key-of-this-gateway")):
        status, body = transcribe(url, TINY, FIXTURES / "hello.wav", wrong)
        assert status == 401, body
        assert "API key" in openai_error(body, 401)["message"]
        status, text = get(f"{url}/v1/models", wrong)
        assert status == 401, text
        openai_error(text, 401)
    for path in ("/health", "/version"):
        status, text = get(f"{url}{path}")
        assert status == 200, (path, text)

    # Prometheus's scrape: the job's path with its own key (the `prometheus` client).
    (scrape,) = scrape_jobs()
    for _ in range(3):  # its tiny transcription bucket does not apply to /metrics
        status, text = get(f"{url}{scrape['metrics_path']}", bearer(keys["prometheus"]))
        assert status == 200, text
        assert "vllm:num_requests_waiting" in text
    status, text = get(f"{url}{scrape['metrics_path']}")
    assert status == 401, text

    # Key rotation: the Secret updated in place reaches the pod without a restart.
    # The kubelet swaps the volume's files; the control plane's watch reloads them.
    (keys_volume, secret) = api_keys_secret(objs, gateway, gateway_config(cm))
    files = secret_files(secret)
    name = Path(doc["api_keys"]["file"]).name
    rotated = "sk-rotated-demo-" + uuid.uuid4().hex
    assert files[name].count(keys["demo"]) == 1
    pod.update_secret(
        keys_volume["name"], {**files, name: files[name].replace(keys["demo"], rotated)}
    )
    wait_for(
        lambda: get(f"{url}/v1/models", bearer(rotated))[0] == 200,
        15,
        f"the rotated key is not accepted:\n{cp.log_tail()}",
    )
    assert get(f"{url}/v1/models", auth)[0] == 401, "the replaced key still works"
    assert cp.alive() and proxy.alive()
    auth = bearer(rotated)

    # Long audio: 90 s (2.9 MB, above min_upload_mb) asked to split goes to the splitter
    # sidecar, whose pieces come back through Envoy's listener with the client's key.
    body, ctype = multipart(
        {"model": TINY, "response_format": "json", "language": "en"},
        make_clip(tmp_path / "long.wav", 90),
    )
    req = urllib.request.Request(
        f"{url}/v1/audio/transcriptions",
        data=body,
        headers={"Content-Type": ctype, "x-long-audio": "split", **auth},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            pieces, text = r.headers.get("x-long-audio-pieces"), json.loads(r.read())["text"]
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{e.code}: {e.read()[:500]!r}\n{split.log_tail()}") from e
    assert pieces is not None and int(pieces) >= 3, pieces
    assert len(text.split()) > 100, text

    # preStop with a request in flight: readiness fails at once, responses close their
    # connections, the request completes, the hook returns once nothing is in flight.
    result: dict[str, Any] = {}
    job = threading.Thread(
        target=lambda: result.update(r=transcribe(url, TINY, FIXTURES / "long_en.ogg", auth, 120))
    )
    job.start()
    active_cmd = {"exec": {"command": [*envoy["readinessProbe"]["exec"]["command"][:2], "active"]}}
    deadline = time.monotonic() + 10
    while pod.run_exec(envoy, active_cmd).stdout.strip() in ("", "0"):
        assert time.monotonic() < deadline and job.is_alive(), "the request never was in flight"
        time.sleep(0.05)
    hook = subprocess.Popen(
        pod.argv(envoy, envoy["lifecycle"]["preStop"]["exec"]["command"]),
        env={**os.environ, **pod.env(envoy)},
    )
    try:
        deadline = time.monotonic() + 5
        while pod.run_exec(envoy, envoy["readinessProbe"]).returncode == 0:
            assert time.monotonic() < deadline, "readiness still passes while draining"
            time.sleep(0.1)
        assert pod.run_exec(envoy, envoy["livenessProbe"]).returncode == 0, "draining is alive"
        assert connection_header(url, auth) == "close"  # clients reconnect to a ready pod
        job.join(120)
        status, body = result["r"]
        assert status == 200 and len(body["text"]) > 200, body
        assert hook.wait(30) == 0
        assert pod.run_exec(envoy, active_cmd).stdout.strip() == "0"
    finally:
        if hook.poll() is None:
            hook.kill()
            hook.wait()
