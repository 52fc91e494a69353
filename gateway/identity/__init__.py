"""The identity lane: the gateway's certificate renewed, its CA set followed, its revocation obeyed.

Public surface (what the other rooms and the daemon may import): the modules in __all__.
"""

__all__ = ["manager", "store"]
