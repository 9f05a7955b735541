"""CPU and memory of every process of the run, per tier: sampled from /proc each second, summed over
restarts, and scaled to 1,000 nodes."""
from __future__ import annotations

import threading

from .procs import read_usage
from .stack import Stack

TIERS = ("node", "gateway", "vlinsert", "vlselect", "vlstorage", "prometheus")


class Sampler:
    """CPU and memory of every process each second; per tier the peak of the summed RSS."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.peak_rss: dict[str, int] = {t: 0 for t in TIERS}
        self.prom_cpu = self.prom_hwm = self.prom_rss = 0.0

    def sample(self) -> None:
        rss: dict[str, int] = {t: 0 for t in TIERS}
        for p in self.stack.processes:
            p.sample()
            rss[p.tier] += p.rss_now
        pid = self.stack.prometheus_pid()
        usage = read_usage(pid) if pid else None
        if usage:
            self.prom_cpu, self.prom_rss, hwm = usage
            self.prom_hwm = max(self.prom_hwm, hwm)
            rss["prometheus"] = int(self.prom_rss)
        for t in TIERS:
            self.peak_rss[t] = max(self.peak_rss[t], rss[t])

    def cpu(self) -> dict[str, float]:
        out = {t: 0.0 for t in TIERS}
        for p in self.stack.processes:
            out[p.tier] += p.cpu_s
        out["prometheus"] = self.prom_cpu
        return out

    def idle(self) -> tuple[dict[str, float], dict[str, int]]:
        """CPU seconds and RSS per tier now (before the load)."""
        self.sample()
        rss = {t: 0 for t in TIERS}
        for p in self.stack.processes:
            rss[p.tier] += p.rss_now
        rss["prometheus"] = int(self.prom_rss)
        return self.cpu(), rss

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(1.0):
            self.sample()


def tiers(stack: Stack, cpu: dict, idle_cpu: dict, idle_rss: dict, sampler: Sampler, run_s: float,
           n_nodes: int) -> dict:
    count = {t: 0 for t in TIERS}
    hwm = {t: 0 for t in TIERS}
    for p in stack.processes:
        count[p.tier] += 1
        hwm[p.tier] = max(hwm[p.tier], p.hwm)
    count["prometheus"], hwm["prometheus"] = 1, int(sampler.prom_hwm)
    out = {}
    for t in TIERS:
        busy = cpu[t] - idle_cpu[t]
        cores = busy / run_s if run_s else 0.0
        mib = sampler.peak_rss[t] / 2**20
        out[t] = {"processes": count[t], "cpu_s": round(busy, 2), "cores": round(cores, 4),
                  "idle_rss_mib": round(idle_rss[t] / 2**20, 1), "peak_rss_mib": round(mib, 1),
                  "max_process_peak_rss_mib": round(hwm[t] / 2**20, 1),
                  "per_1000_nodes": {"cpu_s": round(busy * 1000 / n_nodes, 1), "cores": round(cores * 1000 / n_nodes, 3),
                                     "peak_rss_mib": round(mib * 1000 / n_nodes, 1)}}
    return out
