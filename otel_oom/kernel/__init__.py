"""The kernel side: everything that touches libbpf, BTF or tracefs, and the event's wire format.

source.py (the seam the agent depends on), features.py (what this kernel offers), probe.py (load,
attach, poll), btf.py, libbpf.py (ctypes declarations), wire.py (ring-buffer bytes -> OomEvent).
Importing this package imports nothing; libbpf is loaded by the modules that need it.
"""
