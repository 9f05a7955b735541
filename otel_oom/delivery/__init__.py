"""Durable hand-off to the collector: spool.py (on disk), store.py (spool or memory), sender.py (loop)."""
