"""OpenTelemetry: the only code that imports `opentelemetry.*` (resource, metrics, requests, transport, export).

env.py (OTEL_* validation), encode.py (records -> protobuf) and spooled.py (the spool's payloads)
import no OpenTelemetry, so the worker encodes records before the SDK is loaded and a console-only
agent never pays for it. Importing this package imports nothing.
"""
