"""The control plane's start command refuses a config whose secrets cannot be read,
before it serves anything (exit 2, the field named)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml


def test_start_refuses_a_missing_key_file(tmp_path: Path) -> None:
    bad = tmp_path / "gw.yaml"
    doc = {
        "backends": [{"url": "http://127.0.0.1:9", "models": ["m"]}],
        "api_keys": {"file": "missing-keys.yaml"},
    }
    bad.write_text(yaml.safe_dump(doc))
    proc = subprocess.run(
        [sys.executable, "-m", "control_plane", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "config error at api_keys.file: cannot read" in proc.stderr
