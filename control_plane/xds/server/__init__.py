"""The xDS server: state-of-the-world ADS on grpc.aio, its per-stream protocol state, and
CSDS on the same port."""
