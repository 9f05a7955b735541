"""The hostile-input suite: the real `otel-oom` process against bad flags and environment values, a
missing libbpf, credentials that must not reach a log line, a spool on a full and on a read-only
filesystem, collectors that answer garbage or never answer, SIGSTOP during kills, SIGKILL mid-burst,
thousands of cgroups, a real mark that is not a kill and cgroup names longer than the kernel side
captures. Every test asserts: no traceback, one clear line where the agent cannot run, and every
kill delivered or counted under a reason."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO, agent_env, require_root_bpf

from otel_oom.trigger import memory_hierarchy, trigger_oom
from testing.marks import mark_without_kill
from testing.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver, free_port
from testing.storm import trigger_storm

MiB = 1 << 20
DOWN = "http://127.0.0.1:9"  # discard port: nothing answers


def kill_records(recs: list[dict]) -> list[dict]:
    """The kill records (oom.kill): the records around them (pressure, reclaim) name pids and pods too."""
    return [r for r in recs if r["event_name"] == "oom.kill"]


def killed_pids(recs: list[dict]) -> set[int]:
    return {r["attributes"]["process.pid"] for r in kill_records(recs)}


def cli(*args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otel_oom", *args], cwd=REPO, env=agent_env(**env),
                          capture_output=True, text=True, timeout=timeout)


# ---- bad flags and environment values: one line, exit 2, never a traceback -----------------------


# ---- credentials never reach a log line, with the real exporters failing -----------------------

@pytest.mark.root
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_credentials_never_reach_a_log_line(protocol, start_agent):
    port = free_port()  # nothing listens: every log and metric export fails and is logged
    agent = start_agent(["--console", "--shutdown-timeout=2"], f"http://otel:s3cr3t-pw@127.0.0.1:{port}",
                        OTEL_EXPORTER_OTLP_PROTOCOL=protocol, OTEL_EXPORTER_OTLP_TIMEOUT="1",
                        OTEL_EXPORTER_OTLP_HEADERS="x-api-key=t0ken-s3cr3t", OTEL_OOM_LOG_LEVEL="debug")
    k = trigger_oom(limit_bytes=16 * MiB)
    agent.wait_stdout(lambda s: f"pid={k.victim_pid} " in s, 90)
    deadline = time.monotonic() + 90
    while "collector did not accept" not in agent.stderr and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)  # a metric export fails too (every 0.5 s here)
    assert agent.stop() == 0
    text = agent.stderr + agent.stdout
    assert "collector did not accept" in text and "***@127.0.0.1" in text
    for secret in ("s3cr3t-pw", "t0ken-s3cr3t", "b3RlbDpzM2NyM3QtcHc="):  # the last: otel:s3cr3t-pw in Basic
        assert secret not in text, secret
    assert "Traceback" not in text


# ---- the spool on a full and on a read-only filesystem ------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(fs) -> None:
    """Use up every free byte of `fs` (as root: the reserved blocks too)."""
    with open(fs / "filler", "wb", buffering=0) as f:
        for chunk in (65536, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass


def _wait_regex(agent, pattern: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, agent.stderr):
        assert time.monotonic() < deadline, f"{pattern!r} not logged; stderr:\n{agent.stderr}"
        time.sleep(0.1)


def _wait_text(agent, text: str, count: int = 1, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while agent.stderr.count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} x{count} not logged; stderr:\n{agent.stderr}"
        time.sleep(0.1)


@pytest.fixture
def ext4_fs(tmp_path):
    """A small ext4 filesystem on a loop device that can be made read-only under open files, as the
    kernel does on an I/O error (errors=remount-ro), through ext4's trigger_fs_error."""
    image, mnt = tmp_path / "fs.img", tmp_path / "ext4"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "8M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(mnt)], check=True)
    dev = os.path.basename(subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mnt)], capture_output=True,
                                          text=True, check=True).stdout.strip())

    def make_read_only() -> None:
        with open(f"/sys/fs/ext4/{dev}/trigger_fs_error", "w") as f:
            f.write("otel-oom test: make the spool's filesystem read-only\n")

    yield mnt, make_read_only
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.root
def test_a_full_then_read_only_spool_filesystem_loses_no_kill(ext4_fs, start_agent):
    require_root_bpf()
    fs, make_read_only = ext4_fs
    rx = OtlpGrpcReceiver(port=free_port())  # down at first
    # --events=none: the messages counted below count every stored record, and this test counts kills
    agent = start_agent([f"--spool-dir={fs / 'spool'}", "--spool-max-bytes=65536", "--events=none"], rx.endpoint)
    _fill(fs)
    full = trigger_oom(limit_bytes=16 * MiB)
    _wait_text(agent, "No space left on device; free disk space on that filesystem; keeping the event in memory")
    (fs / "filler").unlink()
    later = trigger_oom(limit_bytes=16 * MiB)
    # the spool takes what memory held: the first kill alone (the spool came back before the second
    # kill, which is then written to it directly) or both (and any other kill on the host meanwhile)
    _wait_regex(agent, r"\d+ OOM event\(s\) moved from memory into it")
    make_read_only()
    ro = trigger_oom(limit_bytes=16 * MiB)
    _wait_text(agent, "Read-only file system; free disk space on that filesystem; keeping the event in memory")
    rx.start()
    pids = [full.victim_pid, later.victim_pid, ro.victim_pid]
    try:
        got = rx.wait_for_logs(lambda recs: set(pids) <= killed_pids(recs), 90)
        assert [r["attributes"]["process.pid"] for r in kill_records(got) if r["attributes"]["process.pid"] in pids] == pids
        assert agent.stop() == 0
    finally:
        rx.stop()
    assert "Traceback" not in agent.stderr and "shutdown_in_memory" not in agent.stderr


@pytest.mark.root
def test_a_read_only_spool_at_start_is_one_line(small_fs):
    require_root_bpf()
    (small_fs / "spool").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    r = cli("run", f"--spool-dir={small_fs / 'spool'}", "--oom-score-adj=keep", OTEL_EXPORTER_OTLP_ENDPOINT=DOWN)
    assert "Traceback" not in r.stderr and r.returncode == 1, r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert "Read-only file system" in line and "--spool-dir" in line


@pytest.mark.root
def test_kills_in_memory_at_shutdown_are_recovered_at_the_next_start(small_fs, start_agent):
    # the spool cannot write, the collector is down, the agent stops: the kills only it knew are
    # gone from it, counted, and the next start recovers them from the kernel log
    require_root_bpf()
    rx = OtlpGrpcReceiver(port=free_port())
    spool = small_fs / "spool"
    first = start_agent([f"--spool-dir={spool}", "--shutdown-timeout=1"], rx.endpoint)
    _fill(small_fs)  # the spool cannot take an event; the state record is overwritten in place
    kills = [trigger_oom(limit_bytes=16 * MiB) for _ in range(2)]
    _wait_text(first, "keeping the event in memory", 2)
    assert first.stop() == 0
    m = re.search(r"stopping with (\d+) OOM event\(s\) held in memory only", first.stderr)
    assert m and int(m.group(1)) >= 2, first.stderr
    # (the other events held with them are the records around the kills: reclaim, pressure)
    m = re.search(r"the next start recovers the (\d+) kernel OOM kill\(s\) among them", first.stderr)
    assert m and int(m.group(1)) >= 2, first.stderr
    (small_fs / "filler").unlink()
    rx.start()
    try:
        second = start_agent([f"--spool-dir={spool}"], rx.endpoint)
        got = rx.wait_for_logs(lambda recs: {k.victim_pid for k in kills} <= {r["attributes"]["process.pid"]
                                                                                for r in kill_records(recs)}, 60)
        for k in kills:
            (rec,) = [r for r in kill_records(got) if r["attributes"]["process.pid"] == k.victim_pid]
            assert rec["attributes"]["oom.recovered"] is True and rec["attributes"]["oom.hook"] == "kmsg"
        assert second.stop() == 0
    finally:
        rx.stop()


# ---- collectors that answer garbage, or never -------------------------------------------------

class GarbageServer:
    """Accepts connections and answers every one with bytes that are neither HTTP/2 nor HTTP/1."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.served = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                conn.settimeout(1)
                conn.recv(65536)
                conn.sendall(b"\x00\xff\x13GARBAGE\r\n\r\n" * 8)
            except OSError:
                pass
            finally:
                conn.close()
                self.served += 1

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept(), which holds the socket
        except OSError:
            pass
        self.sock.close()


@pytest.mark.root
@pytest.mark.parametrize("cls, protocol", [(OtlpGrpcReceiver, "grpc"), (OtlpHttpReceiver, "http/protobuf")])
def test_a_collector_answering_garbage_keeps_the_kill_until_a_real_one_answers(cls, protocol, start_agent):
    garbage = GarbageServer()
    port = garbage.port
    agent = start_agent(["--console"], f"http://127.0.0.1:{port}", OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
                        OTEL_EXPORTER_OTLP_TIMEOUT="1")
    k = trigger_oom(limit_bytes=16 * MiB)
    deadline = time.monotonic() + 90
    while "collector did not accept" not in agent.stderr and time.monotonic() < deadline:
        time.sleep(0.1)
    assert garbage.served > 0 and "collector did not accept" in agent.stderr
    garbage.close()
    with cls(port=port) as rx:
        rx.wait_for_logs(lambda recs: k.victim_pid in killed_pids(recs), 60)
        assert agent.stop() == 0
    assert "Traceback" not in agent.stderr


@pytest.mark.root
def test_shutdown_with_a_collector_that_never_answers_keeps_its_time(start_agent):
    with OtlpGrpcReceiver() as rx:
        rx.delay(60)
        port = free_port()
        agent = start_agent(["--shutdown-timeout=3", "--prometheus", f"--listen=127.0.0.1:{port}"], rx.endpoint,
                            OTEL_EXPORTER_OTLP_TIMEOUT="30")
        trigger_oom(limit_bytes=16 * MiB)
        time.sleep(1.0)  # the log export and a metric export are in flight, never answered
        t0 = time.monotonic()
        assert agent.stop(signal.SIGTERM) == 0
        took = time.monotonic() - t0
    print(f"\nSIGTERM with a collector that never answers: exit 0 after {took:.1f} s (--shutdown-timeout=3)")
    # behaviour, not speed: bounded by --shutdown-timeout, not held for the in-flight export's own 30 s
    # (nor the collector's 60 s); the margin is for a loaded machine
    assert took < 25, agent.stderr
    assert "Traceback" not in agent.stderr and "stay in the spool" in agent.stderr


@pytest.mark.root
def test_sighup_stops_cleanly(start_agent):
    agent = start_agent(["--no-otlp"])
    assert agent.stop(signal.SIGHUP) == 0
    assert "received SIGHUP: stopping" in agent.stderr and "Traceback" not in agent.stderr


# ---- the agent stopped or killed while kills happen --------------------------------------------

def _delivered(rx, pids) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in kill_records(rx.log_records()):
        if r["attributes"]["process.pid"] in pids:
            out.setdefault(r["attributes"]["process.pid"], []).append(r)
    return out


@pytest.mark.root
def test_sigstop_for_15_s_during_30_kills_loses_none(start_agent):
    with OtlpGrpcReceiver() as rx:
        agent = start_agent([], rx.endpoint)
        agent.proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            storm = trigger_storm(cgroups=2, kills=30)
            while time.monotonic() - stopped < 15:
                time.sleep(0.2)
        finally:
            agent.proc.send_signal(signal.SIGCONT)
        victims = set(storm.victim_pids)
        assert len(victims) == 30
        rx.wait_for_logs(lambda recs: victims <= killed_pids(recs), 60)
        got = _delivered(rx, victims)
        assert all(len({r["attributes"]["oom.event.id"] for r in got[p]}) == 1 for p in victims)
        assert agent.stop() == 0
    print("\nSIGSTOP 15 s during 30 kills: 30/30 delivered")
    assert "Traceback" not in agent.stderr


@pytest.mark.root
def test_sigkill_mid_burst_then_restart_delivers_every_kill_once(start_agent, tmp_path):
    with OtlpGrpcReceiver() as rx:
        spool = tmp_path / "spool"
        first = start_agent([f"--spool-dir={spool}"], rx.endpoint)
        result: dict = {}
        burst = threading.Thread(target=lambda: result.setdefault("storm", trigger_storm(cgroups=1, kills=40)))
        burst.start()
        deadline = time.monotonic() + 30
        while rx.log_count() < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        first.proc.kill()  # mid-burst
        first.proc.wait()
        state_after_kill = (spool / "ack").read_bytes()[:64].hex()  # the floor and the ledger
        segs = sorted(p.name for p in spool.iterdir())
        burst.join(120)
        victims = set(result["storm"].victim_pids)
        assert len(victims) == 40
        second = start_agent([f"--spool-dir={spool}"], rx.endpoint)
        try:
            rx.wait_for_logs(lambda recs: victims <= killed_pids(recs), 30)
        except AssertionError:
            missing = sorted(victims - {r["attributes"]["process.pid"] for r in kill_records(rx.log_records())})
            raise AssertionError(f"missing {missing} of {sorted(victims)}; state after the SIGKILL {state_after_kill}, "
                                 f"spool files {segs}; second agent:\n{second.stderr}") from None
        got = _delivered(rx, victims)
        live = {p for p in victims if any(not r["attributes"]["oom.recovered"] for r in got[p])}
        recovered = {p for p in victims if any(r["attributes"]["oom.recovered"] for r in got[p])}
        assert not live & recovered, "a kill was reported live and again as recovered"
        assert all(len({r["attributes"]["oom.event.id"] for r in got[p]}) == 1 for p in victims)
        assert second.stop() == 0
    print(f"\nSIGKILL mid-burst: 40/40 delivered ({len(live)} live, {len(recovered)} recovered from the kernel log)")
    assert "Traceback" not in second.stderr


# ---- many cgroups, a real mark without a kill, names longer than captured ------------------------

@pytest.mark.root
def test_2200_cgroups_every_kill_attributed(start_agent):
    require_root_bpf()
    mount, version = memory_hierarchy()
    base = os.path.join(mount, f"otel-oom-many-{os.getpid()}")
    dirs = [os.path.join(base, f"team-{i // 100}", f"app-{i}") for i in range(2200)]
    for d in dirs:
        os.makedirs(d)
    try:
        with OtlpGrpcReceiver() as rx:
            agent = start_agent([], rx.endpoint)
            rel = base[len(mount):]
            kills = [trigger_oom(limit_bytes=16 * MiB, cgroup=f"{rel}/team-{i}/app-{i * 100 + 7}/victim")
                     for i in (0, 9, 21)]
            got = rx.wait_for_logs(lambda recs: {k.victim_pid for k in kills} <= {r["attributes"]["process.pid"]
                                                                                    for r in kill_records(recs)}, 60)
            for k in kills:
                (rec,) = [r for r in kill_records(got) if r["attributes"]["process.pid"] == k.victim_pid]
                assert rec["attributes"]["oom.victim.cgroup.path"] == k.cgroup_path
                assert rec["attributes"]["oom.victim.killed"] is True
            assert agent.stop() == 0
    finally:
        _rmdirs(base)
    assert "Traceback" not in agent.stderr


def _rmdirs(base: str) -> None:
    for root, subdirs, _ in os.walk(base, topdown=False):
        for s in subdirs:
            os.rmdir(os.path.join(root, s))
    os.rmdir(base)


@pytest.mark.root
def test_a_real_mark_of_an_exiting_task_is_reported_as_no_kill(start_agent):
    with OtlpGrpcReceiver() as rx:
        agent = start_agent(["--json"], rx.endpoint)
        mark = mark_without_kill()
        assert mark.finisher_exit == 0 and mark.memcg_oom_kills == 0  # the kernel killed nobody there
        got = rx.wait_for_logs(lambda recs: mark.pid in killed_pids(recs), 30)
        (rec,) = [r for r in kill_records(got) if r["attributes"]["process.pid"] == mark.pid]
        assert rec["attributes"]["oom.victim.killed"] is False
        assert rec["attributes"]["oom.victim.cgroup.path"] == mark.cgroup_path
        assert rec["body"].startswith(f"Memory cgroup out of memory: Marked exiting process {mark.pid} ")
        assert agent.stop() == 0
    print(f"\nmark without a kill: pid {mark.pid} in {mark.cgroup_path}, oom.victim.killed=false")


@pytest.mark.root
def test_a_cgroup_name_longer_than_captured_is_resolved_not_cut(start_agent):
    require_root_bpf()
    mount, _ = memory_hierarchy()
    long_name = f"otel-oom-long-{os.getpid()}-" + "n" * 200  # the kernel side captures 127 bytes
    os.mkdir(os.path.join(mount, long_name))
    try:
        with OtlpGrpcReceiver() as rx:
            agent = start_agent([], rx.endpoint)
            k = trigger_oom(limit_bytes=16 * MiB, cgroup=f"/{long_name}/leaf")
            got = rx.wait_for_logs(lambda recs: k.victim_pid in killed_pids(recs), 30)
            (rec,) = [r for r in kill_records(got) if r["attributes"]["process.pid"] == k.victim_pid]
            assert rec["attributes"]["oom.victim.cgroup.path"] == f"/{long_name}/leaf"
            assert "oom.victim.cgroup.truncated" not in rec["attributes"]
            assert agent.stop() == 0
    finally:
        os.rmdir(os.path.join(mount, long_name))


@pytest.mark.root
def test_kills_leave_no_file_descriptor_behind(start_agent):
    # the 10-minute version with RSS is bench/soak.py; an fd leak shows after a hundred kills already
    with OtlpGrpcReceiver() as rx:
        agent = start_agent(["--prometheus", f"--listen=127.0.0.1:{free_port()}"], rx.endpoint)
        warm = trigger_storm(cgroups=2, kills=20)  # first kills open what stays open (segments, sockets)
        rx.wait_for_logs(lambda recs: set(warm.victim_pids) <= killed_pids(recs), 60)
        time.sleep(1.5)
        fds = len(os.listdir(f"/proc/{agent.proc.pid}/fd"))
        storm = trigger_storm(cgroups=4, kills=100)
        rx.wait_for_logs(lambda recs: set(storm.victim_pids) <= killed_pids(recs), 60)
        time.sleep(1.5)
        after = len(os.listdir(f"/proc/{agent.proc.pid}/fd"))
        assert after <= fds + 1, (fds, after)  # +1: a spool segment may be open at either moment
        assert agent.stop() == 0


@pytest.mark.root
def test_kernel_side_counters_keep_their_last_value_after_close():
    # the final metric export runs after the probe is closed: before, the counters then read as
    # absent (0), a counter reset for every increase() alert on ringbuf_full
    require_root_bpf()
    from otel_oom.kernel.probe import open_probe

    probe = open_probe(lambda raw: None)
    trigger_oom(limit_bytes=16 * MiB)
    probe.poll(200)
    before = probe.stats()
    assert before["submitted"] >= 1 and "ringbuf_full" in before
    probe.close()
    assert probe.stats() == before
