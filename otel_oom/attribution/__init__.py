"""OomEvent -> OomKill: the victim's cgroup path, container and pod, the OOMing memcg, time and id.

Pure functions over strings and injectable roots (/proc, /sys/fs/cgroup); no BPF needed.
"""
