"""`python -m bench.fleet`: see the package docstring."""
from __future__ import annotations

import argparse
import sys

from .run import main_entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    ap.add_argument("--nodes", type=int, default=50, help="simulated nodes, each a node Collector (default 50)")
    ap.add_argument("--minutes", type=float, default=1.0, help="how long records are fed (default 1)")
    ap.add_argument("--kill-gateway-at", type=float, metavar="S",
                    help="SIGKILL the first gateway S seconds into the run, while vlinsert-a is stalled (its "
                         "unanswered requests are sent again after the restart: duplicates in copy A), and "
                         "restart it --down-seconds later")
    ap.add_argument("--kill-storage-at", type=float, metavar="S",
                    help="kill the second vlstorage node (copy B) S seconds into the run (and restart it)")
    ap.add_argument("--storage-signal", choices=("KILL", "TERM"), default="KILL",
                    help="how the storage node is killed: KILL (a crash: its copy loses what it acknowledged "
                         "since its last flush to disk; the other copy has it; default) or TERM (stopped and "
                         "restarted, as in an upgrade)")
    ap.add_argument("--restart-agents-at", type=float, metavar="S",
                    help="from S seconds into the run, the agents of --agents nodes crash right after their node "
                         "Collector accepted a kill, before their spool's acknowledgement, and send it again")
    ap.add_argument("--agents", type=int, default=5, help="how many agents --restart-agents-at restarts (5)")
    ap.add_argument("--kill-node-collectors-at", type=float, metavar="S",
                    help="stall both gateways at S seconds, SIGKILL up to --node-collectors node Collectors that "
                         "dispatched a record to them meanwhile, restart them 5 s later (they send it again)")
    ap.add_argument("--node-collectors", type=int, default=5, help="at most this many node Collectors (5)")
    ap.add_argument("--resolver", choices=("static", "dns"), default="static",
                    help="how node Collectors find the gateways: static (both addresses; a dead gateway's nodes "
                         "wait for it) or dns (the shipped resolver; the dead gateway leaves the name's records "
                         "and its nodes move to the other)")
    ap.add_argument("--down-seconds", type=float, default=15.0,
                    help="how long a killed gateway or storage node stays down (15)")
    args = ap.parse_args(argv)
    if args.nodes < 1 or args.minutes <= 0:
        ap.error("--nodes must be at least 1 and --minutes positive")
    for flag in ("kill_gateway_at", "kill_storage_at", "restart_agents_at", "kill_node_collectors_at"):
        at = getattr(args, flag)
        if at is not None and not 0 <= at < args.minutes * 60:
            ap.error(f"--{flag.replace('_', '-')} must be within the run (0 to {args.minutes * 60:.0f} s)")
    return main_entry(args)


if __name__ == "__main__":
    sys.exit(main())
