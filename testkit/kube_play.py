"""The rendered k8s manifests as `podman kube play` (podman 4.3) can run them.

Each rewrite below is one thing kube play does not do as a kubelet does; the pods are
otherwise the manifests' own (images, commands, env, security contexts, ConfigMap and
emptyDir volumes, probes' commands). docs/deploy/kubernetes.md lists them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from testkit.kustomize import Obj

#: What the cluster's DNS gives a Service, and what kube play's network names instead.
SERVICE_SUFFIX = ".whisper-gateway.svc.cluster.local"


@dataclass(frozen=True)
class Play:
    """The YAML documents to play, and the files each Secret volume becomes."""

    manifests: list[Obj]
    secret_files: dict[str, dict[str, str]]  # secret name -> file name -> content


def pod_name(deployment: str) -> str:
    """kube play names a Deployment's (first) pod so, and its network resolves that name."""
    return f"{deployment}-pod-0"


def for_kube_play(
    objects: Iterable[Obj],
    deployments: Iterable[str],
    *,
    listener: tuple[str, int],
    secrets_dir: Path,
    images: dict[str, str],
) -> Play:
    """The ConfigMaps and the named Deployments (one replica each), rewritten for kube play.

    `listener` is where Envoy's port is published (host address, port); `images` maps an
    image name (before the tag) to the image to run instead; a Secret volume becomes a
    host folder under `secrets_dir`.
    """
    wanted = set(deployments)
    objs = [copy.deepcopy(o) for o in objects]
    secrets = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Secret"}
    out: list[Obj] = []
    files: dict[str, dict[str, str]] = {}
    for obj in objs:
        if obj["kind"] == "ConfigMap":
            out.append(_without_services(obj))
        elif obj["kind"] == "Deployment" and obj["metadata"]["name"] in wanted:
            obj["spec"]["replicas"] = 1
            spec = obj["spec"]["template"]["spec"]
            # kube play refuses an init container with probes or lifecycle: the native
            # sidecars run as plain containers, started beside Envoy, not before it.
            inits = spec.get("initContainers", [])
            sidecars = [c for c in inits if c.pop("restartPolicy", None) == "Always"]
            spec["initContainers"] = [c for c in inits if c not in sidecars]
            spec["containers"] = sidecars + spec["containers"]
            # Under Always, kube play restarts the one-shot init container too, so it never
            # counts as done and the pod never starts: OnFailure still restarts a crash.
            spec["restartPolicy"] = "OnFailure"
            for c in [*spec["initContainers"], *spec["containers"]]:
                c["image"] = images.get(c["image"].rsplit(":", 1)[0], c["image"])
                # kube play publishes every containerPort on all of the host's addresses:
                # only Envoy's listener is published, and only on `listener`.
                ports = c.pop("ports", [])
                if c["name"] == "envoy":
                    (http,) = [p for p in ports if p.get("name") == "http"]
                    c["ports"] = [
                        {
                            "containerPort": http["containerPort"],
                            "hostIP": listener[0],
                            "hostPort": listener[1],
                        }
                    ]
            # podman 4.3.1 panics on a secret volume: the Secret's files in a host folder.
            for vol in spec.get("volumes", []):
                secret = vol.pop("secret", None)
                if secret is None:
                    continue
                name = secret["secretName"]
                data = secrets[name].get("stringData", {})
                files[name] = dict(data)
                vol["hostPath"] = {"path": str(secrets_dir / name), "type": "Directory"}
            out.append(obj)
    missing = wanted - {o["metadata"]["name"] for o in out if o["kind"] == "Deployment"}
    assert not missing, f"no such Deployment: {sorted(missing)}"
    return Play(out, files)


def _without_services(config_map: Obj) -> Obj:
    """No Services under kube play: a backend's Service name becomes its pod's name."""
    data = config_map.get("data") or {}
    for key, text in data.items():
        while SERVICE_SUFFIX in text:
            head, _, tail = text.partition(SERVICE_SUFFIX)
            start = max(head.rfind("/"), head.rfind(" ")) + 1
            text = head[:start] + pod_name(head[start:]) + tail
        data[key] = text
    return config_map
