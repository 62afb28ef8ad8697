"""The xDS layers: resource type names, the snapshot cache, the translator (IR ->
snapshot), the ADS/CSDS server, and Envoy's bootstrap."""
