"""The bcc program, compiled for real on the build host in seconds (the QEMU matrix runs it in a 5.10
guest, where one BCC compile takes a minute): Debian BCC compiles `bpf/oomkill.bcc.c` with the shared
kill logic against Debian 11's 5.10 kernel headers (from the QEMU kernel cache), in each variant the
agent asks for, and every program in it passes this kernel's verifier. The programs are loaded, not
attached: the struct offsets are 5.10's, this kernel's differ.
"""
from __future__ import annotations

import os

import pytest
from conftest import require

pytestmark = pytest.mark.root

PROGRAMS = {"mark_victim_tp": "TRACEPOINT", "mark_oom_victim_kprobe": "KPROBE", "oom_kill_kprobe": "KPROBE",
            "oom_kill_kretprobe": "KPROBE", "signal_generate_tp": "TRACEPOINT", "reaper_wake": "TRACEPOINT",
            "reaper_start": "TRACEPOINT", "reaper_finish": "TRACEPOINT", "reaper_skip": "TRACEPOINT",
            "victim_exit": "TRACEPOINT", "victim_mm_freed": "TRACEPOINT"}


def _merged(dest: str, *trees: str) -> None:
    """One tree of symlinks over Debian's split headers (-amd64 has the build's generated files,
    -common the sources): what BCC_KERNEL_SOURCE takes, without touching /lib/modules."""
    os.makedirs(dest, exist_ok=True)
    entries: dict[str, list[str]] = {}
    for tree in trees:
        for name in os.listdir(tree):
            entries.setdefault(name, []).append(os.path.join(tree, name))
    for name, paths in entries.items():
        dirs = [p for p in paths if os.path.isdir(p)]
        if len(dirs) > 1:
            _merged(os.path.join(dest, name), *dirs)
        else:
            os.symlink(os.path.realpath(paths[0]), os.path.join(dest, name))


@pytest.fixture(scope="module")
def headers_5_10(tmp_path_factory) -> str:
    require(os.geteuid() == 0, "needs root (loads BPF programs)")
    from tests.qemu import harness

    try:
        root = harness.headers("5.10")
    except harness.PrepareError as e:
        require(False, f"cannot fetch Debian 5.10's kernel headers: {e}")
    src = os.path.join(root, "usr", "src")
    trees = sorted(os.path.join(src, n) for n in os.listdir(src))  # ...-amd64 before ...-common
    dest = str(tmp_path_factory.mktemp("bcc-headers") / "linux-5.10")
    _merged(dest, *trees)
    return dest


@pytest.mark.parametrize("buffer", ["ring", "perf"])
@pytest.mark.parametrize("rich", [False, True], ids=["pid-only", "rich"])
def test_the_bcc_program_compiles_against_5_10_and_passes_this_kernels_verifier(headers_5_10, monkeypatch,
                                                                                 buffer, rich):
    import sys

    from otel_oom.kernel.bcc import BccError, import_bcc, program_text
    from otel_oom.kernel.features import find_tracefs

    for name in [m for m in sys.modules if m == "bcc" or m.startswith("bcc.")]:
        monkeypatch.delitem(sys.modules, name)  # Debian's BCC itself, whatever another test left there
    try:
        bcc = import_bcc()
    except BccError as e:
        require(False, str(e))
    require(find_tracefs() is not None, "needs tracefs (BCC reads the mark_victim record's format there)")
    monkeypatch.setenv("BCC_KERNEL_SOURCE", headers_5_10)
    cflags = ["-DOTEL_OOM_RING_PAGES=16"] + (["-DOTEL_OOM_PERF_BUFFER"] if buffer == "perf" else []) + (
        ["-DOTEL_OOM_TP_RICH"] if rich else [])
    b = bcc.BPF(text=program_text().encode(), cflags=cflags)
    try:
        loaded = {name: b.load_func(name.encode(), getattr(bcc.BPF, kind)).fd for name, kind in PROGRAMS.items()}
        assert all(fd >= 0 for fd in loaded.values()), loaded
        for name in ("events", "stats", "contexts", "pending_victims", "killers", "victims", "victim_mms", "settings"):
            assert b[name.encode()] is not None, name  # every map of kill_types.h and the record channel
    finally:
        b.cleanup()
