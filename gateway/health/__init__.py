"""The operate lane on the appliance: the health record (facts, target probes, clock), the
support bundle over the tunnel, and self-repair (a re-dial when the control channel is stuck).

Public surface (what the daemon may import): the modules in __all__.
"""

__all__ = ["certs", "clock", "facts", "probes", "record", "service", "support"]
