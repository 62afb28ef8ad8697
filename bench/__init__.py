"""The benchmarks: each scenario a module (`python -m bench.NAME`), run_all runs them all."""
