"""The admin layer: the control plane's HTTP API (reads through the read model, writes as
reconciler events), where each plane may listen, and what it must never show."""
