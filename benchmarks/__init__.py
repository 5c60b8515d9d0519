"""The gateway benchmark: ``python -m benchmarks.run`` (see benchmarks/README.md)."""
