"""otel-oom: every Linux OOM kill, caught in the kernel with eBPF, shipped as OpenTelemetry."""

__version__ = "0.1.0"
