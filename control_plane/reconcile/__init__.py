"""The one writer of state: the reconciler folds events into FleetState and publishes
snapshots; its event sources (probe targets, DNS, secrets files) and the supervised
tasks that run them."""
