"""Outputs for people: console.py (--console, --json) and webhook.py (chat notifications)."""
