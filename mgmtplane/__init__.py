"""Reference management plane: registration CA, tunnel hub, relay API. Never on the image."""
