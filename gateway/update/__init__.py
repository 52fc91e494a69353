"""The update lane: follows the plane's update offers, has bundles installed by the root helper,
and reports each step (docs/updates.md, docs/protocol.md §13.5).

Public surface (what the daemon may import): the modules in __all__.
"""

__all__ = ["agent", "helper"]
