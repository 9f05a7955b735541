"""Helpers shared by tests/ and bench/, never shipped: real OTLP receivers, a real Prometheus, a
running agent process, OOM storms. See each module's docstring."""
