"""The tunnel lane: dial the plane (mTLS, pinned CA, CONNECT proxy), keep the link, retry by rule.

Public surface (what the other rooms and the daemon may import): the modules in __all__.
"""

__all__ = ["backoff", "client", "proxy", "retry_policy"]
