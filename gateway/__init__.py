"""The gateway daemon: tunnel to the management plane, relay, metadata filter."""
