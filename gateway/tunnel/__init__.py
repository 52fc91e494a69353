"""The tunnel lane: dial the plane (mTLS, pinned CA, CONNECT proxy), keep the link, retry by rule."""
