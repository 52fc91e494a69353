"""The relay lane: one tunnel stream -> one request to an allowed target, framed, budgeted, filtered.

Public surface (what the other rooms and the daemon may import): the modules in __all__.
"""

__all__ = ["budget", "relay", "ssrf", "targets"]
