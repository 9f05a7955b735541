"""trigger_oom / trigger_storm cause real OOM kills, only inside cgroups they create, and clean up."""
from __future__ import annotations

import pytest

from otel_oom.trigger import trigger_oom

MiB = 2**20




@pytest.mark.parametrize("limit, why", [(1 * MiB, "below 4 MiB"), (2 * 2**30, "above 1 GiB")])
def test_limits_outside_4mib_to_1gib_are_refused(limit, why):
    with pytest.raises(ValueError, match=why):
        trigger_oom(limit_bytes=limit)


@pytest.mark.parametrize("comm", [b"x" * 16, b"", b"a\0b"])
def test_comm_must_fit_the_kernel_task_name(comm):
    with pytest.raises(ValueError, match="1-15 bytes"):
        trigger_oom(comm=comm)


@pytest.mark.parametrize("path", ["/", "", "/a/../b", "./x"])
def test_cgroup_must_be_a_plain_path_below_the_root(path):
    with pytest.raises(ValueError):
        trigger_oom(cgroup=path)
