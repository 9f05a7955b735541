"""Around the kill: what happens before, instead of and after an OOM kill, all on the worker thread.

wiring.py (the one entry point for agent.py: `build()` from the configuration), room.py (`Around`:
what the pipeline calls), pressure.py (`oom.pressure` episodes), no_kill.py (`oom.no_kill`),
reclaim.py (`oom.reclaim`), episodes.py (--traces: trace ids and the span per episode). Their
input from the kernel's memory notifications comes from the pressure source (`pressure/`) as events.
"""
