"""The QEMU harness boots real Debian 6.1 and 6.12 kernels and gives tests a usable node inside them.

Each guest proves the surface the agent's end-to-end tests rely on: the requested kernel is the one
running, BTF and the kprobe PMU are there, bpftool works against the guest kernel, the requested
cgroup layout is mounted, and a real memcg OOM kill (32 MiB limit) is counted exactly once.
"""
from __future__ import annotations

import json
import os
import signal

import pytest
from conftest import require

from tests.qemu import harness

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(900)]

# (kernel, cgroup layout): Debian's 6.12 is built without CONFIG_MEMCG_V1, so v1 is 6.1 only.
MATRIX = [("6.1", "v2"), ("6.1", "v1"), ("6.12", "v2")]

# Runs inside the guest as root. Prints one JSON line; writes the same to the share when given.
PROBE = r'''
import json, os, signal, subprocess, sys, time

def read(p):
    try:
        with open(p) as f:
            return f.read()
    except OSError as e:
        return "ERROR " + e.strerror

def vmstat_oom_kill():
    for line in read("/proc/vmstat").splitlines():
        k, _, v = line.partition(" ")
        if k == "oom_kill":
            return int(v)
    return -1

layout = sys.argv[1]
out = {
    "proc_version": read("/proc/version").strip(),
    "release": os.uname().release,
    "btf_vmlinux": os.path.exists("/sys/kernel/btf/vmlinux"),
    "kprobe_pmu": os.path.exists("/sys/bus/event_source/devices/kprobe"),
    "mounts": [line.split()[1:3] for line in read("/proc/mounts").splitlines()],
    "python": sys.executable,
    "env": {k: os.environ.get(k) for k in ("HOME", "PYTHONDONTWRITEBYTECODE", "CI", "OTEL_OOM_QEMU_GUEST")},
}
bpftool = subprocess.run(["bpftool", "prog", "list"], capture_output=True, text=True)
out["bpftool_rc"], out["bpftool_err"] = bpftool.returncode, bpftool.stderr.strip()[-300:]

if layout == "v2":
    root = "/sys/fs/cgroup"
    out["controllers"] = read(root + "/cgroup.controllers").split()
    out["subtree_control"] = read(root + "/cgroup.subtree_control").split()
    limit_file, limit = "memory.max", str(32 << 20)
else:
    root = "/sys/fs/cgroup/memory"
    out["controllers"] = read("/sys/fs/cgroup/unified/cgroup.controllers").split()
    out["subtree_control"] = []
    limit_file, limit = "memory.limit_in_bytes", str(32 << 20)

# A real memcg OOM kill in a throwaway cgroup with a 32 MiB limit.
cg = os.path.join(root, "smoke-oom")
os.mkdir(cg)
with open(os.path.join(cg, limit_file), "w") as f:
    f.write(limit)
before = vmstat_oom_kill()
pid = os.fork()
if pid == 0:
    with open(os.path.join(cg, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    hog = []
    while True:
        hog.append(b"\x01" * (1 << 20))  # bytes literal repeat touches every page
_, status = os.waitpid(pid, 0)
out["child_signal"] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
if layout == "v2":
    events = dict(line.split() for line in read(os.path.join(cg, "memory.events")).splitlines())
    out["memcg_oom_kill"] = int(events.get("oom_kill", -1))
else:
    events = dict(line.split() for line in read(os.path.join(cg, "memory.oom_control")).splitlines())
    out["memcg_oom_kill"] = int(events.get("oom_kill", -1))
out["vmstat_oom_kill_delta"] = vmstat_oom_kill() - before
os.rmdir(cg)

t0 = time.monotonic()
imp = subprocess.run([sys.executable, "-c", "import opentelemetry.sdk"], capture_output=True, text=True)
out["otel_import_s"] = round(time.monotonic() - t0, 2)
out["otel_import_rc"], out["otel_import_err"] = imp.returncode, imp.stderr.strip()[-300:]

line = json.dumps(out)
print(line)
if len(sys.argv) > 2:
    with open(os.path.join(sys.argv[2], "probe-%s-%s.json" % (out["release"], layout)), "w") as f:
        f.write(line)
'''



@pytest.fixture(scope="module")
def kernels() -> dict[str, harness.KernelInfo]:
    if os.environ.get("OTEL_OOM_QEMU_GUEST"):
        pytest.skip("already inside a QEMU test guest: guests are not nested")
    usable, reason = harness.qemu_usable()
    require(usable, f"QEMU cannot run here: {reason}")
    infos = {}
    for k in sorted({k for k, _ in MATRIX}):
        try:
            infos[k] = harness.prepare(k)
        except harness.PrepareError as e:
            require(False, f"cannot fetch Debian kernel {k}: {e}")
    return infos


@pytest.fixture(scope="module")
def share(tmp_path_factory):
    return str(tmp_path_factory.mktemp("qemu-share"))


@pytest.fixture(scope="module")
def guests(kernels, share) -> dict[tuple[str, str], dict]:
    """Boot the whole matrix once, two guests at a time, and keep each guest's probe result."""
    jobs = [dict(kernel=k, command=["python3", "-c", PROBE, cg, share], cgroup=cg, timeout=600,
                 share_dir=share) for k, cg in MATRIX]
    results = harness.boot_many(jobs, workers=2)
    out = {}
    for (k, cg), r in zip(MATRIX, results, strict=False):
        if isinstance(r, harness.QemuError):
            out[(k, cg)] = {"error": str(r)}
            continue
        last = r.output.strip().splitlines()[-1] if r.output.strip() else ""
        try:
            probe = json.loads(last)
        except ValueError:
            probe = {"error": f"exit {r.exit_code}, output:\n{r.output[-2000:]}"}
        probe["result"] = r
        out[(k, cg)] = probe
        print(f"\n[{k} {cg}] {r.kernel_release}: boot {r.boot_s:.2f}s (guest uptime at command start), "
              f"command {r.command_s:.1f}s, wall {r.duration_s:.1f}s, "
              f"import opentelemetry.sdk {probe.get('otel_import_s')}s")
    return out


def probe_of(guests, kernel, cgroup) -> dict:
    p = guests[(kernel, cgroup)]
    assert "error" not in p, p["error"]
    assert p["result"].exit_code == 0, p["result"].output[-2000:]
    return p


@pytest.mark.parametrize("kernel,cgroup", MATRIX)
def test_guest_runs_the_requested_debian_kernel(guests, kernels, kernel, cgroup):
    p = probe_of(guests, kernel, cgroup)
    release = kernels[kernel].release
    assert p["result"].kernel_release == release
    assert p["release"] == release
    assert release.startswith(kernel + ".")
    assert f"Linux version {release} " in p["proc_version"]
    assert "Debian" in p["proc_version"]
    # the host's Python environment (venv) runs the command, whatever the interpreter file is called
    assert os.path.dirname(p["python"]) == os.path.dirname(harness.sys.executable)
    assert p["env"]["HOME"] == "/tmp" and p["env"]["PYTHONDONTWRITEBYTECODE"] == "1"
    assert p["env"]["CI"] == os.environ.get("CI")
    assert p["otel_import_rc"] == 0, p["otel_import_err"]


@pytest.mark.parametrize("kernel,cgroup", MATRIX)
def test_guest_has_the_bpf_surface(guests, kernel, cgroup):
    p = probe_of(guests, kernel, cgroup)
    assert p["btf_vmlinux"] is True
    assert p["kprobe_pmu"] is True
    assert p["bpftool_rc"] == 0, p["bpftool_err"]
    mounts = {target: fstype for target, fstype in p["mounts"]}
    assert mounts["/sys/kernel/tracing"] == "tracefs"
    assert mounts["/sys/fs/bpf"] == "bpf"
    assert mounts["/"] == "overlay"  # host tree (9p, read-only) + guest-RAM upper layer


@pytest.mark.parametrize("kernel,cgroup", MATRIX)
def test_guest_has_the_requested_cgroup_layout(guests, kernel, cgroup):
    p = probe_of(guests, kernel, cgroup)
    mounts = {target: fstype for target, fstype in p["mounts"]}
    if cgroup == "v2":
        assert mounts["/sys/fs/cgroup"] == "cgroup2"
        assert "memory" in p["controllers"] and "memory" in p["subtree_control"]
    else:
        assert mounts["/sys/fs/cgroup"] == "tmpfs"
        assert mounts["/sys/fs/cgroup/memory"] == "cgroup"
        assert mounts["/sys/fs/cgroup/unified"] == "cgroup2"
        assert "memory" not in p["controllers"]  # bound to v1, as on the build host


@pytest.mark.parametrize("kernel,cgroup", MATRIX)
def test_real_memcg_oom_kill_is_counted_once(guests, kernel, cgroup, share):
    p = probe_of(guests, kernel, cgroup)
    assert p["child_signal"] == signal.SIGKILL
    assert p["memcg_oom_kill"] == 1
    assert p["vmstat_oom_kill_delta"] == 1
    assert "Memory cgroup out of memory: Killed process" in p["result"].console
    # The same result came out through the writable share.
    with open(os.path.join(share, f"probe-{p['release']}-{cgroup}.json")) as f:
        assert json.load(f)["memcg_oom_kill"] == 1


def test_v1_memory_controller_is_refused_on_6_12_with_a_clear_error(kernels):
    with open(kernels["6.12"].config) as f:
        assert "# CONFIG_MEMCG_V1 is not set" in f.read()
    with pytest.raises(harness.QemuError, match=r"CONFIG_MEMCG_V1 is not set\): use cgroup='v2'"):
        harness.boot("6.12", ["true"], cgroup="v1")


def test_exit_code_output_and_writes_stay_in_the_guest(kernels):
    script = ("echo out; echo err >&2; "
              "mkdir -p /var/lib/otel-oom-smoke && echo data > /var/lib/otel-oom-smoke/x && "
              "cat /var/lib/otel-oom-smoke/x; "
              "grep -c . /var/log/otel-oom-smoke-tmpfs/* 2>/dev/null || echo empty; "
              "grep -q ' / 9p ' /proc/mounts || grep ' / ' /proc/mounts | cut -d' ' -f3; exit 7")
    r = harness.boot("6.12", script, tmpfs=["/var/log/otel-oom-smoke-tmpfs"], timeout=300)
    assert r.exit_code == 7
    assert r.output == "out\nerr\ndata\nempty\noverlay\n"
    # The overlay's upper layer is guest RAM: nothing reached the host.
    assert not os.path.exists("/var/lib/otel-oom-smoke")
    assert not os.path.exists("/var/log/otel-oom-smoke-tmpfs")


def test_timeout_kills_the_guest(kernels):
    with pytest.raises(harness.GuestTimeout, match="did not finish in 10s"):
        harness.boot("6.1", "sleep 600", timeout=10)


def test_kernel_panic_is_reported_with_the_partial_output(kernels):
    with pytest.raises(harness.GuestSetupError, match="Kernel panic - not syncing: sysrq triggered crash") as e:
        harness.boot("6.12", "echo before; echo c > /proc/sysrq-trigger; sleep 60", timeout=120)
    assert e.value.output == "before\n"
    assert "sysrq triggered crash" in e.value.console
