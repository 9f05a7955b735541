"""OpenTelemetry: the only code that imports `opentelemetry.*` (in resource, exporters, logs, metrics).

mapping.py (OomKill -> attributes, pure) and env.py (OTEL_* validation) import no SDK, so a
console-only agent never pays for it. Importing this package imports nothing.
"""
