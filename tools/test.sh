#!/usr/bin/env bash
# `make test`'s run of pytest. With no arguments, the tests that boot QEMU guests (marker `qemu`:
# their own kernels, so they see none of the host's kills and the host tests none of theirs) run in
# a second pytest beside the host's tests: the guests are CPU-bound emulation, most host tests wait
# on the kernel, a Collector or a cluster, so the two overlap instead of adding up. The host-kernel
# tests in tests/qemu (no marker) stay in the host's run: beside other host tests, the kernel's
# rate limit on its OOM reports would eat the log lines they compare with. Either failing fails the
# run; the guests' output follows the host's. With arguments: one pytest with exactly those.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python
if [ $# -gt 0 ]; then
  exec "$PY" -m pytest -q -ra "$@"
fi
qlog=$(mktemp /tmp/otel-oom-qemu-tests-XXXXXX.log)
"$PY" -m pytest -q -ra -p no:cacheprovider --basetemp=/tmp/otel-oom-qemu-pytest -m qemu tests/qemu > "$qlog" 2>&1 &
qemu=$!
trap 'kill $qemu 2>/dev/null; rm -f "$qlog"' EXIT
start=$(date +%s)
"$PY" -m pytest -q -ra -m "not qemu"
host=$?
echo "host tests: exit $host after $(( $(date +%s) - start )) s; waiting for the QEMU guests"
wait $qemu
guests=$?
echo "---- tests/qemu (run beside the host tests) ----"
cat "$qlog"
echo "QEMU tests: exit $guests after $(( $(date +%s) - start )) s"
[ $host -eq 0 ] && [ $guests -eq 0 ]
