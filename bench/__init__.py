"""otel-oom benchmarks: figures, not pass/fail. `python -m bench` runs them all and writes a report."""
