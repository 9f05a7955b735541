"""The pressure source: the kernel's memory notifications as events, on a thread of its own; calls nobody.

source.py (the thread: waits, sweeps, submits), notifier.py (one epoll; disarm until the next
tick), discovery.py (the cgroup tree and inotify), registry.py (per limited cgroup: v1 eventfds or
v2 PSI trigger and memory.events.local watch, and what each one means), events.py (the values it
submits), thresholds.py (start and clear levels), psi_trigger.py, v1_events.py, inotify.py (the
kernel interfaces). What the events become (`oom.pressure`, `oom.no_kill`) is decided around the
kill (`around/`), on the worker thread.
"""
