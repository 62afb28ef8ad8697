"""The observers: Envoy's access log service and the request stats it feeds, each
backend's own queue, Envoy's admin, the router's /metrics and ours. They read fleet
state only through the read model (read_model.FleetReader)."""
