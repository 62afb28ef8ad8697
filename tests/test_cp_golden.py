"""Golden snapshots of the translators, and the real Envoy validating each one.

`tests/golden/<case>/config.yaml` (+ `state.yaml`, + `before.yaml`) in, the full
snapshot as JSON out. `UPDATE_GOLDEN=1 pytest tests/test_cp_golden.py`
rewrites them; review the diff. A golden snapshot Envoy would NACK cannot be
committed: each one is loaded by `envoy --mode validate` from a static bootstrap.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from support.golden import GOLDEN, case_snapshot, cases, static_bootstrap, to_json, write_case

from control_plane.xds.bootstrap import ENVOY

CASES = cases()


def test_every_translator_feature_has_a_case() -> None:
    assert set(CASES) >= {
        "basic",
        "policy_round_robin",
        "limits",
        "shared_backend_limits",
        "dns_endpoints",
        "draining",
        "health_per_model",
        "tls_backend",
        "model_removed",
        "router_endpoints_public",
    }


@pytest.mark.parametrize("case", CASES)
def test_snapshot_matches_golden(case: str) -> None:
    if os.environ.get("UPDATE_GOLDEN") == "1":
        write_case(case)
    expected = json.loads((GOLDEN / case / "snapshot.json").read_text())
    got = json.loads(json.dumps(to_json(case_snapshot(case)), sort_keys=True))
    assert got == expected, f"golden {case} differs; UPDATE_GOLDEN=1 rewrites it"


@pytest.mark.parametrize("case", CASES)
def test_envoy_accepts_golden(case: str, tmp_path: Path) -> None:
    boot = tmp_path / "bootstrap.json"
    boot.write_text(json.dumps(static_bootstrap(case_snapshot(case))))
    proc = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(boot), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "OK" in proc.stdout + proc.stderr
