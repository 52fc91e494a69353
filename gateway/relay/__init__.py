"""The relay lane: one tunnel stream -> one request to an allowed target, framed, budgeted, filtered."""
