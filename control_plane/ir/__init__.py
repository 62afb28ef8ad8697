"""The intermediate representation: what Envoy must do, free of YAML and of protobuf. The
spec from the config (from_config), the secrets it names (security), the fleet's state
and its read-only views (fleet), and the model the translators take (model)."""
