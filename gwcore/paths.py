"""Where things live on the appliance: the one list of the paths first boot writes and the gateway reads."""

from __future__ import annotations

from pathlib import Path

CONFIG = Path("/etc/gateway/gateway.yaml")
TARGETS = Path("/etc/gateway/targets.yaml")
STATE_DIR = Path("/var/lib/gateway")  # identity: key, certificate, pinned CA (0700)
# The shipped metadata policies: the image links this to the gateway package's filter/policies
# (image/mkosi.postinst.chroot); gateway.filter.policy.SHIPPED_POLICIES is the package directory.
SHIPPED_POLICY_DIR = Path("/usr/share/gateway/policies")
LOCAL_POLICY_DIR = Path("/etc/gateway/policies.d")  # an operator's own policies, read after the shipped
STATUS_FILE = Path("/run/gateway/status.json")
