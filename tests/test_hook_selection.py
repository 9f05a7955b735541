"""Hook selection from a kernel's type information, for the mark_victim layouts no bootable kernel
here has: the pid-only prototype (4.13 to 6.8, before the 2025 stable backports).

The type information is compiled by clang into BTF (as a kernel's would describe the tracepoint)
and read back through the same libbpf path as /sys/kernel/btf/vmlinux."""
from __future__ import annotations

import subprocess

import pytest
from conftest import require_tool

from otel_oom.kernel.btf import KernelBtf
from otel_oom.kernel.features import KernelFeatures, candidate_plans, tp_btf_gets_the_task
from otel_oom.kernel.source import HookPlan

PID_ONLY = "typedef void (*btf_trace_mark_victim)(void *, int);\n"
RICH = ("struct task_struct { int pid; };\ntypedef unsigned int uid_t;\n"
        "typedef void (*btf_trace_mark_victim)(void *, struct task_struct *, uid_t);\n")


def _btf(tmp_path, name: str, decls: str) -> str:
    require_tool("clang")
    src = tmp_path / f"{name}.c"
    src.write_text(decls + "btf_trace_mark_victim keep_in_btf;\n")
    obj = tmp_path / f"{name}.o"
    subprocess.run(["clang", "-g", "-O2", "-target", "bpf", "-c", str(src), "-o", str(obj)], check=True)
    return str(obj)


@pytest.mark.parametrize("decls, args, usable", [
    (PID_ONLY, ["int"], False),
    (RICH, ["struct task_struct *", "uid_t"], True),
])
def test_the_tracepoint_prototype_decides_tp_btf(tmp_path, decls, args, usable):
    with KernelBtf(_btf(tmp_path, "k", decls)) as btf:
        assert btf.mark_victim_args() == args
    assert tp_btf_gets_the_task(args) is usable


def test_a_pid_only_kernel_falls_back_to_the_classic_tracepoint():
    features = KernelFeatures(btf=True, tp_btf=tp_btf_gets_the_task(["int"]), tracepoint=True, fentry=True,
                              kprobe_symbol="oom_kill_process", kprobe_pmu=True, mark_victim_args=["int"])
    assert candidate_plans(features) == [
        HookPlan("tracepoint", "fentry"),
        HookPlan("tracepoint", "kprobe", "oom_kill_process"),
        HookPlan("tracepoint", "none"),
    ]
    assert candidate_plans(features, victim="tp_btf") == []
