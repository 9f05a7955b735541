"""Command line for the QEMU harness: fetch kernels ahead of time (CI), check QEMU, run one command.

    python3 -m tests.qemu check
    python3 -m tests.qemu prepare [5.10 6.1 6.12 6.12-rt sid 6.1-arm64 ...]
    python3 -m tests.qemu run 6.12 [--cgroup v1|v2] [--memory MB] [--timeout S] [--share DIR] -- CMD ...
"""
from __future__ import annotations

import argparse
import sys
import time

from . import harness


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tests.qemu", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check", help="can QEMU run a TCG guest here?")
    p = sub.add_parser("prepare", help=f"fetch and cache kernels (cache: ${harness.CACHE_ENV}, "
                                       f"default {harness.DEFAULT_CACHE})")
    p.add_argument("kernels", nargs="*", help="default: all of " + " ".join(harness.available_kernels()))
    p.add_argument("--refresh", action="store_true", help="re-fetch the newest package even when cached")
    r = sub.add_parser("run", help="boot a kernel and run one command in it")
    r.add_argument("kernel", choices=harness.available_kernels())
    r.add_argument("--cgroup", choices=("v1", "v2"), default="v2")
    r.add_argument("--memory", type=int, default=1024, help="guest RAM in MiB")
    r.add_argument("--timeout", type=float, default=300)
    r.add_argument("--share", help="host directory mounted read-write at the same path in the guest")
    r.add_argument("--console", action="store_true", help="print the kernel console afterwards")
    r.add_argument("command", nargs="+")
    args = ap.parse_args(argv)

    try:
        if args.cmd == "check":
            ok, reason = harness.qemu_usable()
            print(reason if ok else f"QEMU unusable: {reason}")
            return 0 if ok else 1
        if args.cmd == "prepare":
            for k in args.kernels or harness.available_kernels():
                t = time.monotonic()
                info = harness.prepare(k, refresh=args.refresh)
                harness.initramfs(k)
                if harness.KERNELS[k].headers:
                    harness.headers(k)
                print(f"{k}: {info.package} {info.version} ({info.release}) in {info.directory} "
                      f"[{time.monotonic() - t:.1f}s]")
            return 0
        res = harness.boot(args.kernel, args.command, cgroup=args.cgroup, memory_mb=args.memory,
                           timeout=args.timeout, share_dir=args.share)
    except harness.QemuError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(res.output)
    if args.console:
        sys.stdout.write(res.console)
    print(f"[{res.kernel_release}: exit {res.exit_code}, boot {res.boot_s:.2f}s, command {res.command_s:.2f}s, "
          f"wall {res.duration_s:.2f}s]", file=sys.stderr)
    return res.exit_code


if __name__ == "__main__":
    sys.exit(main())
