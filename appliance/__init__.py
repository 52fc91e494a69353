"""Build system for the gateway appliance: spec -> mkosi image -> raw, qcow2, OVA."""
