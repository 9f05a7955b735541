"""The agent's integration surfaces, for real: a Prometheus server scraping /metrics, the health
endpoints a DaemonSet probes, and the webhook, each around real OOM kills."""
from __future__ import annotations

import zipfile

import pytest
from conftest import REPO, require_tool

MiB = 1 << 20
pytestmark = pytest.mark.root




def test_the_wheel_ships_the_bpf_object(tmp_path):
    require_tool("clang")
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("otel_oom-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        # both architectures' objects (the loader picks by uname -m) and the bcc backend's source
        for machine in ("x86_64", "aarch64"):
            assert z.getinfo(f"otel_oom/bpf/oomkill.{machine}.bpf.o").file_size > 10_000
        for source in ("oomkill.bcc.c", "access_bcc.h", "kill_logic.h", "kill_types.h", "oomkill.h"):
            assert f"otel_oom/bpf/{source}" in names, source  # what BCC compiles at start
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        assert "otel-oom = otel_oom.cli:main" in z.read(entry).decode()
