"""`make kube-up` / `make kube-down`: python -m testing.kube up|down [NAME] (NAME: dev).

up: builds what is missing (cached), starts the node, installs the chart with the node-local
Collector, waits until the agent's pod is Ready, and prints the admin kubeconfig's path as the last
line (kubectl is beside it). A node already up with the chart Ready is left as it is (`make
kube-down kube-up` starts afresh, e.g. with a rebuilt image). down: stops the node and removes every
trace of it. Both idempotent.
"""
from __future__ import annotations

import argparse
import sys
import time

from . import chart, images, tools
from .cluster import Cluster
from .layout import Node


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m testing.kube")
    p.add_argument("action", choices=["up", "down"])
    p.add_argument("name", nargs="?", default="dev", help="the node's name (default dev); tests use their own")
    args = p.parse_args(argv)
    node = Node(args.name)
    try:
        if args.action == "down":
            Cluster(node).down()
            print(f"kube-down: {node.node_name} stopped, nothing left", file=sys.stderr)
            return 0
        start = time.monotonic()
        found = tools.find(build=True)
        built = time.monotonic()
        cluster = Cluster(node, found)
        if cluster.running() and chart.installed(cluster):
            chart.wait_ready(cluster)
            print(f"kube-up: {node.node_name} already up", file=sys.stderr)
            print(node.admin_kubeconfig)
            return 0
        cluster.up()
        chart.install(cluster)
        if images.BUSYBOX_IMAGE not in images.images(node):
            raise RuntimeError(f"{images.BUSYBOX_IMAGE} is not on the node")
        done = time.monotonic()
    except tools.MissingTool as e:
        print(f"kube-up: {e}", file=sys.stderr)
        return 1
    except (RuntimeError, TimeoutError) as e:
        print(f"kube-up: {e}\nkube-up: `make kube-down` removes what started", file=sys.stderr)
        return 1
    steps = ", ".join(f"{what} {t:.1f} s" for what, t in cluster.timings.items())
    print(f"kube-up: tools checked in {built - start:.1f} s; then {steps}, the agent's pod Ready {done - built:.1f} s "
          f"after the start; kubectl: {node.state / 'kubectl'}", file=sys.stderr)
    print(node.admin_kubeconfig)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
