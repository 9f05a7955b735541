"""Writes synthetic OOM events into a running agent's ring buffer, from inside a given memory cgroup.

    python -m bench.driver <agent pid> <cgroup.procs of the cgroup to join>

Each run of the bench-only `synthetic_events` program (bench/synthetic.py) writes 64 events with
the calling task as the victim, so joining a kubepods-shaped cgroup first gives the events the
cgroup path, container and pod of a real Kubernetes kill (the cgroup has no limit: nothing is
OOM-killed). Protocol on stdin/stdout, one line each: "<runs>" -> runs done -> "ok <events written>".
"""
from __future__ import annotations

import sys


def main() -> None:
    pid, procs = int(sys.argv[1]), sys.argv[2]
    with open(procs, "w") as f:
        f.write("0")  # "0": the writing process itself
    from .synthetic import SyntheticProgram, agent_maps

    with SyntheticProgram(agent_maps(pid)) as prog:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        for line in sys.stdin:
            written = prog.run(int(line))
            sys.stdout.write(f"ok {written}\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
