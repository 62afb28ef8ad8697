"""Golden snapshots of the translators, and the real Envoy validating each one.

Two kinds of input: `tests/golden/config/<case>/config.yaml` (+ `state.yaml`, +
`before.yaml`) through the reconciler's own pipeline, and `tests/golden/ir/<case>/
model.yaml`, a GatewayModel through the translators alone. Out: one file per xDS type
(cds.json, eds.json, lds.json, rds.json, sds.json), the Lua filters' source as its
digest (the Lua has tests of its own). `UPDATE_GOLDEN=1 pytest tests/unit/test_cp_golden.py`
rewrites them; review the diff. A golden snapshot Envoy would NACK cannot be committed:
each one is loaded by `envoy --mode validate` from a static bootstrap.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from control_plane.xds.bootstrap import ENVOY
from testkit.golden import case_snapshot, cases, read_case, static_bootstrap, to_json, write_case

CASES = cases()


def test_every_translator_feature_has_a_case() -> None:
    assert set(CASES) >= {
        "config/basic",
        "config/policy_round_robin",
        "config/limits",
        "config/shared_backend_limits",
        "config/dns_endpoints",
        "config/draining",
        "config/health_per_model",
        "config/tls_backend",
        "config/model_removed",
        "config/router_endpoints_public",
        "ir/mixed_fleet",
        "ir/no_healthy_backend",
    }


@pytest.mark.parametrize("case", CASES)
def test_snapshot_matches_golden(case: str) -> None:
    if os.environ.get("UPDATE_GOLDEN") == "1":
        write_case(case)
    expected = read_case(case)
    got = to_json(case_snapshot(case))
    for xds_type, doc in expected.items():
        assert got[xds_type] == doc, f"golden {case} {xds_type} differs; UPDATE_GOLDEN=1 rewrites"


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
