"""What every record otel-oom reports looks like, once, for every output (pure: no OpenTelemetry).

- `records.py`: the record types (`OomKill`, `OomPressure`, `OomNoKill`, `OomReclaim`, the episode
  `OomEpisode`), their fields and JSON (`record_fields` is also the webhook's `oom` object).
- `mapping.py`: a kill's attributes (semconv names, then `oom.*`), its body in the kernel's words,
  and the bounded attributes of the `oom.kills` metric.
- `log_records.py`: `log_record(record)`, any record but the episode as an OTLP log record: time,
  trace, event name, severity, body, attributes.
- `spans.py`: `episode_span(episode)`, the episode as a span: name, kind, times, status,
  attributes, events.

The OTLP encoder (`otlp/encode.py`), `--console` and `--json` (`sinks/console.py`) and the webhook
(`sinks/webhook.py`) all take records through these functions.
"""
