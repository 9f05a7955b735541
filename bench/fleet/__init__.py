"""Fleet simulation: many real node Collectors -> a gateway tier -> a VictoriaLogs cluster holding every
record twice, and Prometheus.

    sudo .venv/bin/python -m bench.fleet --nodes 50 --minutes 1 --kill-gateway-at 20 --kill-storage-at 35 \
         --down-seconds 10 --restart-agents-at 40 --kill-node-collectors-at 50

Each simulated node is a real Collector process (collector-config/agent.yaml + node-to-gateway.yaml)
fed by a stand-in for that node's agent: the agent's own record types, spool, send loop and OTLP
exporter (`otel_oom.otlp.export.OtlpExport` over HTTP), resource and metrics code. The node
Collectors forward through the `load_balancing` exporter to two gateways (gateway.yaml), which
write every record to two copies (vlinsert-a -> vlstorage-1, vlinsert-b -> vlstorage-2; one
vlselect reads both) and the metrics to Prometheus. During the run (faults.py) a gateway and a
storage node are SIGKILLed, agents and node Collectors crash where at-least-once delivery makes
duplicates, and all are brought back.
Everything runs in a network namespace of its own and a temporary directory (`otel-oom-fleet-*`),
both gone at the end. The last line printed is one JSON object: sent, stored_distinct, lost,
in_one_copy_only, duplicates (and by hop), the docs' kill counts checked, p50_ms, p99_ms, the
tiers' CPU and memory (and per 1,000 nodes), Prometheus series, the faults' timings.
docs/scale.md explains the figures.
"""
