"""The input layer: the YAML schema with every default and bound, its validation (a bad
value is refused at start naming its field), the embedded default config, the vLLM
router's flags read into the same schema, and the self-signed certificate it may ask for."""
