"""The fault-injection lane: killed runs, corrupt caches (default lane)."""
