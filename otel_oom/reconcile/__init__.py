"""Holding the agent to the kernel's own record: kcounters.py (kill counters), kmsg.py (the kernel
log), oom_report.py (what the OOM killer printed), recovery.py (unobserved and missed kills)."""
