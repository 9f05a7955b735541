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


PID_ONLY_FEATURES = dict(btf=True, tp_btf=False, tracepoint=True, fentry=True, kprobe_symbol="oom_kill_process",
                         kprobe_pmu=True, mark_victim_args=["int"], task_fentry=True,
                         task_kprobe_symbol="mark_oom_victim")


def test_a_pid_only_kernel_with_mark_oom_victim_gets_the_task_hook_first():
    plans = candidate_plans(KernelFeatures(**PID_ONLY_FEATURES))
    assert [(p.context, p.task) for p in plans] == [(c, t) for c in ("fentry", "kprobe", "none")
                                                    for t in ("fentry", "kprobe", "none")]
    assert plans[0] == HookPlan("tracepoint", "fentry", None, "fentry")
    assert plans[1].task_symbol == "mark_oom_victim" and plans[1].describe() == (
        "victim=tracepoint context=fentry task=kprobe:mark_oom_victim")
    # asking for a task hook narrows to the classic tracepoint; tp_btf never takes one
    assert {p.task for p in candidate_plans(KernelFeatures(**PID_ONLY_FEATURES), task="kprobe")} == {"kprobe"}
    rich = KernelFeatures(**{**PID_ONLY_FEATURES, "tp_btf": True, "task_fentry": False, "task_kprobe_symbol": None,
                             "mark_victim_args": ["struct task_struct *", "uid_t"]})
    assert {p.task for p in candidate_plans(rich)} == {"none"}
    assert candidate_plans(rich, task="fentry") == []


def test_kprobe_symbols_are_found_in_one_pass_clones_included(tmp_path):
    from otel_oom.kernel.features import find_kprobe_symbols

    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text("ffffffff81226fd0 t mark_oom_victim\n"
                        "ffffffff81227c40 t __oom_kill_process\n"
                        "ffffffff818d67df t oom_kill_process.cold\n"
                        "ffffffff81227fa0 t oom_kill_process.constprop.0\n"
                        "ffffffffc0001000 t mark_oom_victim_helper\t[some_module]\n")
    assert find_kprobe_symbols(str(kallsyms)) == {"oom_kill_process": "oom_kill_process.constprop.0",
                                                  "mark_oom_victim": "mark_oom_victim"}
    assert find_kprobe_symbols(str(tmp_path / "missing")) == {"oom_kill_process": None, "mark_oom_victim": None}


def test_check_says_when_no_task_hook_completes_the_victims():
    import io

    from otel_oom.check import _Report, _victims_line

    for victim, task, expected in (("tp_btf", "none", "every victim read from its task_struct (oom.victim.source=task)"),
                                   ("tracepoint", "kprobe", "through the task hook (kprobe)"),
                                   ("tracepoint", "none", "NO task hook: a victim other than the trigger or oc->chosen")):
        r = _Report(io.StringIO())
        _victims_line(r, victim, task)
        assert expected in r.out.getvalue()


def test_bcc_plans_use_the_tracepoint_and_kprobes_only():
    from otel_oom.kernel.bcc import BccFeatures, bcc_plans, no_bcc_plan_reason

    f = BccFeatures("5.10.0-32-amd64", "/lib/modules/x/build", True, False, "oom_kill_process", "mark_oom_victim", True)
    assert [(p.context, p.task, p.backend) for p in bcc_plans(f)] == [
        ("kprobe", "kprobe", "bcc"), ("kprobe", "none", "bcc"), ("none", "kprobe", "bcc"), ("none", "none", "bcc")]
    assert bcc_plans(f, victim="tp_btf") == [] and bcc_plans(f, context="fentry") == []
    assert "need kernel BTF" in no_bcc_plan_reason(f, "tp_btf", "auto", "auto")


def test_bcc_is_imported_from_debian_without_the_rest_of_dist_packages(tmp_path, monkeypatch):
    import sys

    from otel_oom.kernel.bcc import BccError, import_bcc

    monkeypatch.delitem(sys.modules, "bcc", raising=False)
    pkg = tmp_path / "dist-packages" / "bcc"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .version import __version__\n")
    (pkg / "version.py").write_text("__version__ = '0.26.0'\n")
    (tmp_path / "dist-packages" / "unrelated.py").write_text("raise SystemExit('must not be importable')\n")
    monkeypatch.setattr("sys.path", [p for p in sys.path if "dist-packages" not in p])
    bcc = import_bcc((str(tmp_path / "nowhere"), str(tmp_path / "dist-packages")))
    assert bcc.__version__ == "0.26.0" and bcc.__file__ == str(pkg / "__init__.py")
    assert str(tmp_path / "dist-packages") not in sys.path
    monkeypatch.delitem(sys.modules, "bcc")
    with pytest.raises(BccError, match="apt-get install python3-bpfcc"):
        import_bcc((str(tmp_path / "nowhere"),))


def test_the_backend_follows_the_kernel_btf(monkeypatch, tmp_path):
    from otel_oom.kernel import backends

    monkeypatch.setattr(backends, "VMLINUX_BTF", str(tmp_path / "vmlinux"))
    assert backends.choose_backend()[0] == "bcc"
    (tmp_path / "vmlinux").write_bytes(b"")
    assert backends.choose_backend()[0] == "libbpf"
    assert backends.choose_backend("bcc") == ("bcc", "asked for")
