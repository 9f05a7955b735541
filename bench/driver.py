"""Writes synthetic OOM events into a running agent's ring buffer, from inside a given memory cgroup.

    python -m bench.driver <pinned synthetic_events program> <cgroup.procs of the cgroup to join>

Each BPF_PROG_TEST_RUN of the agent's `synthetic_events` program writes 64 events with the calling
task as the victim, so joining a kubepods-shaped cgroup first gives the events the cgroup path,
container and pod of a real Kubernetes kill (the cgroup has no limit: nothing is OOM-killed).
Protocol on stdin/stdout, one line each: "<runs>" -> runs done -> "ok <events written>".
"""
from __future__ import annotations

import ctypes
import sys


def main() -> None:
    pin, procs = sys.argv[1], sys.argv[2]
    with open(procs, "w") as f:
        f.write("0")  # "0": the writing process itself
    from otel_oom import libbpf as L

    fd = L.bpf_obj_get(pin.encode())
    if fd < 0:
        sys.exit(f"cannot open the pinned program {pin}")
    opts = L.BpfTestRunOpts(sz=ctypes.sizeof(L.BpfTestRunOpts))
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        runs = int(line)
        for _ in range(runs):
            rc = L.bpf_prog_test_run_opts(fd, ctypes.byref(opts))
            if rc != 0:
                sys.exit(f"BPF_PROG_TEST_RUN failed: {rc}")
        sys.stdout.write(f"ok {runs * 64}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
