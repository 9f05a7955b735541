"""The kernel's own record of real kills on this host (root): /dev/kmsg and the kill counters."""
from __future__ import annotations

import os
import secrets

from conftest import after_the_oom_report_rate_limit, as_nobody, require

from otel_oom.reconcile.kcounters import memcg_oom_kills, vmstat_oom_kills
from otel_oom.reconcile.kmsg import read_kmsg
from otel_oom.reconcile.oom_report import recovered_kills, to_oom_kill
from otel_oom.trigger import TriggerError, memory_hierarchy, trigger_oom


def test_kmsg_without_privilege_says_what_to_do():
    require(os.geteuid() == 0, "needs root to drop privileges for the check")
    with open("/proc/sys/kernel/dmesg_restrict") as f:
        require(f.read().strip() == "1", "kernel.dmesg_restrict=0 lets anyone read the log")
    out = as_nobody(read_kmsg)
    assert out == ("KmsgError: cannot read /dev/kmsg: permission denied; run as root or grant "
                   "CAP_SYSLOG (kernel.dmesg_restrict is set)")


def test_a_real_kill_is_found_in_the_real_kernel_log():
    require(os.geteuid() == 0, "needs root for OOM kills and /dev/kmsg")
    require(os.path.exists("/dev/kmsg"), "needs /dev/kmsg")
    after_the_oom_report_rate_limit()
    comm = b"\x1b[31mk(m) s\n"
    path = f"/otel-oom-kmsg-{os.getpid()}-{secrets.token_hex(2)}/pod x/\udcfe,c"
    r = trigger_oom(limit_bytes=16 * 2**20, cgroup=path, comm=comm)
    mine = [k for k in recovered_kills(read_kmsg()) if k.pid == r.victim_pid]
    assert len(mine) == 1
    k = mine[0]
    assert k.comm == comm.decode("utf-8", "surrogateescape")
    assert k.constraint == "memcg"
    assert k.oom_memcg == k.task_memcg == path
    assert k.memcg_limit_kb == 16 * 1024
    assert (k.trigger_tid, k.trigger_comm) == (r.victim_pid, k.comm)
    o = to_oom_kill(k, "boot", 0)
    assert o.victim_pid == r.victim_pid and o.recovered


def test_real_counters_move_with_a_real_kill():
    require(os.geteuid() == 0, "needs root to cause an OOM kill")
    try:
        mount, version = memory_hierarchy()
    except TriggerError as e:
        require(False, str(e))
        raise
    v0 = vmstat_oom_kills()
    assert isinstance(v0, int)
    r = trigger_oom(limit_bytes=8 * 2**20, keep_cgroup=True)
    try:
        assert vmstat_oom_kills() == v0 + 1
        counts = memcg_oom_kills(mount, version)
        assert counts[r.cgroup_path] == 1 == r.memcg_oom_kills
    finally:
        os.rmdir(mount + r.cgroup_path)
