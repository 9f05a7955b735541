"""The host paths a guest needs bound back over its fresh /tmp: the harness's own logic, on the host
(no QEMU). The matrix and the smoke tests run it for real from a checkout wherever it lies."""
from __future__ import annotations

import os
import tempfile

from tests.qemu.harness import _hidden_but_needed


def test_a_symlinked_venv_under_tmp_is_bound_where_it_really_is():
    # a checkout under /tmp whose .venv links elsewhere (as a worktree's often does): binding the link
    # would resolve it inside the initramfs, where its target does not exist
    with tempfile.TemporaryDirectory(prefix="otel-oom-harness-paths-", dir="/tmp") as checkout, \
            tempfile.TemporaryDirectory(prefix="otel-oom-harness-paths-venv-", dir="/var/cache") as venv:
        os.symlink(venv, os.path.join(checkout, ".venv"))
        keep = _hidden_but_needed([checkout, os.path.join(checkout, ".venv"), os.path.join(checkout, ".venv", "bin")])
        assert keep == [os.path.realpath(checkout)]  # /var/cache is the host's own in the guest

        inner = os.path.join(checkout, "real-venv")
        os.mkdir(inner)
        os.remove(os.path.join(checkout, ".venv"))
        os.symlink(inner, os.path.join(checkout, ".venv"))
        assert _hidden_but_needed([checkout, os.path.join(checkout, ".venv")]) == [
            os.path.realpath(checkout), os.path.realpath(inner)]
