"""On the appliance: installs signed update bundles into the other root slot and judges new slots.

`python3 -m updater install BUNDLE` (also /usr/libexec/appliance/update-install) is the entry point
an update agent calls; `python3 -m updater health` runs at every boot (appliance-slot-health) and
marks the booted slot good, or rolls a new slot back. See docs/updates.md.
"""
