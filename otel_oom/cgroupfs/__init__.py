"""The cgroup filesystem, once: every room that reads it reads it through here.

hierarchy.py (which memory hierarchy, mounted where: from mountinfo; `cgroup_line`), tree.py (the
one walker, `is_under`, kernel cgroup id -> path), memcg.py (one reader per memory cgroup file:
limit, usage, events, oom_control, kill counters, oom.group, PSI, tasks), psi.py (PSI files),
host.py (/proc/pressure/memory and /proc/meminfo). Roots are parameters, so tests read fixture trees.
"""
