"""The core every part of the appliance shares, written once: errors with hints, the CLI ending,
atomic writes, safe loading, the wire codec and mux, the status report, the enrolment contract,
the deploy-time settings and the appliance's paths. It imports nothing of ours.

Public surface: every module below (docs/architecture.md).
"""

__all__ = [
    "atomic",
    "cli",
    "enrol",
    "errors",
    "health",
    "httpwire",
    "paths",
    "pki",
    "protocol",
    "redact",
    "safeload",
    "status_file",
    "streams",
    "support_bundle",
]
