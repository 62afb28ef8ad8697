"""testkit.kube_play: the rendered cpu overlay, rewritten only where kube play differs."""

from __future__ import annotations

from pathlib import Path

import yaml

from testkit import kustomize
from testkit.kube_play import Play, for_kube_play
from testkit.procs import ROOT


def play(tmp_path: Path) -> Play:
    return for_kube_play(
        kustomize.build(ROOT / "k8s" / "overlays" / "cpu"),
        ["whisper-gateway", "whisper-tiny"],
        listener=("127.0.0.1", 18080),
        secrets_dir=tmp_path,
        images={"envoyproxy/envoy": "whisper-gateway-envoy:1.40.0"},
    )


def test_sidecars_become_containers_and_the_init_container_stays(tmp_path: Path) -> None:
    objs = {o["metadata"]["name"]: o for o in play(tmp_path).manifests}
    spec = objs["whisper-gateway"]["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["bootstrap"]
    assert [c["name"] for c in spec["containers"]] == ["control-plane", "splitter", "envoy"]
    assert all("restartPolicy" not in c for c in spec["containers"])
    assert spec["restartPolicy"] == "OnFailure"
    assert objs["whisper-gateway"]["spec"]["replicas"] == 1
    # Everything else of a container is the manifest's own.
    assert spec["containers"][0]["startupProbe"]["exec"]["command"][0] == "python"


def test_only_the_listener_is_published_and_only_where_asked(tmp_path: Path) -> None:
    objs = {o["metadata"]["name"]: o for o in play(tmp_path).manifests}
    for name in ("whisper-gateway", "whisper-tiny"):
        for c in objs[name]["spec"]["template"]["spec"]["containers"]:
            want = [{"containerPort": 8000, "hostIP": "127.0.0.1", "hostPort": 18080}]
            assert c.get("ports", []) == (want if c["name"] == "envoy" else []), c["name"]


def test_secrets_become_host_folders_and_services_pod_names(tmp_path: Path) -> None:
    result = play(tmp_path)
    objs = {o["metadata"]["name"]: o for o in result.manifests}
    assert "Secret" not in {o["kind"] for o in result.manifests}
    keys = yaml.safe_load(result.secret_files["gateway-api-keys"]["keys.yaml"])
    assert keys["clients"][0]["key"].startswith("sk-")
    volumes = objs["whisper-gateway"]["spec"]["template"]["spec"]["volumes"]
    (api_keys,) = [v for v in volumes if v["name"] == "api-keys"]
    assert api_keys == {
        "name": "api-keys",
        "hostPath": {"path": str(tmp_path / "gateway-api-keys"), "type": "Directory"},
    }
    (config,) = [o for o in result.manifests if o["metadata"]["name"].startswith("gateway-config")]
    gateway = yaml.safe_load(config["data"]["gateway.yaml"])
    assert [b["url"] for b in gateway["backends"]] == [
        "http://whisper-tiny-pod-0:8000",
        "http://whisper-base-pod-0:8000",
    ]


def test_images_are_swapped_by_name(tmp_path: Path) -> None:
    objs = {o["metadata"]["name"]: o for o in play(tmp_path).manifests}
    spec = objs["whisper-gateway"]["spec"]["template"]["spec"]
    images = {c["name"]: c["image"] for c in [*spec["initContainers"], *spec["containers"]]}
    assert images["envoy"] == "whisper-gateway-envoy:1.40.0"
    assert images["control-plane"] == images["bootstrap"] == "whisper-gateway:0.1.0"
