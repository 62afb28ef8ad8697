"""The command line: argument parsing (ours and the vLLM router's flags), logging, the
tools (`check`, `bootstrap`, `status`, `backends`) and `serve`, the top of the stack."""
