"""Health probes for Whisper backends: real speech in, health events out.

Knows nothing of xDS or Envoy: the control plane turns HealthEvents into EDS
health_status. Public API:

    monitor = HealthMonitor(on_event=callback)
    await monitor.start()
    await monitor.set_targets([ProbeTarget(key, base_url, models, api_key, HealthSettings())])
    monitor.snapshot()  # {key: TargetState}
    await monitor.close()
"""

from health.load import BackendLoad, fetch_load, parse_load
from health.monitor import HealthMonitor, OnEvent
from health.probe import ProbeResult, load_clip, probe_model, probe_target
from health.settings import HealthSettings, ProbeTarget, default_clip_path
from health.state import HealthEvent, HealthStatus, TargetState, apply_result, next_status

__all__ = [
    "BackendLoad",
    "HealthEvent",
    "HealthMonitor",
    "HealthSettings",
    "HealthStatus",
    "OnEvent",
    "ProbeResult",
    "ProbeTarget",
    "TargetState",
    "apply_result",
    "default_clip_path",
    "fetch_load",
    "load_clip",
    "next_status",
    "parse_load",
    "probe_model",
    "probe_target",
]
