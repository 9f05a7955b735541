"""Fleet simulation: many real node Collectors -> a gateway tier -> a VictoriaLogs cluster and Prometheus.

    sudo .venv/bin/python -m bench.fleet --nodes 50 --minutes 1 --kill-gateway-at 20 --kill-storage-at 35

Each simulated node is a real Collector process (collector-config/agent.yaml + node-to-gateway.yaml)
fed by a stand-in for that node's agent: the agent's own record types and OTLP encoding
(`wire.encode_batch`), its resource and its metrics code. The node Collectors forward through the
`load_balancing` exporter to two gateways (gateway.yaml), which write to a VictoriaLogs cluster
(vlinsert, vlselect, two vlstorage) and Prometheus. During the run one gateway is SIGKILLed and one
storage node killed, and both are brought back. Everything runs in a network namespace of its own
and a temporary directory (`otel-oom-fleet-*`), both gone at the end. The last line printed is one
JSON object: sent, stored_distinct, lost, duplicates, p50_ms, p99_ms, the tiers' CPU and memory
(and per 1,000 nodes), Prometheus series, the faults' timings. docs/scale.md explains the figures.
"""
