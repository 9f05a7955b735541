"""Early warning: memory pressure on the host and in each memory cgroup, as `oom.pressure` episodes.

psi.py (PSI files and triggers), inotify.py (kernfs change notifications), v1_events.py (cgroup v1
eventfd notifications), cgroup_files.py (reading a memory cgroup's counters, v1 and v2), episode.py
(thresholds and hysteresis: one start and one end per episode), watcher.py (the thread that waits
for all of them and reports).
"""
