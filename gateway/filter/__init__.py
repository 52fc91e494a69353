"""The metadata filter lane: pure functions from (policies, kind, request, response) to a verdict.

Public surface (what the other rooms and the daemon may import): the modules in __all__.
"""

__all__ = ["audit", "auditfile", "metadata_filter", "policy", "policy_cli"]
