"""The metadata filter lane: pure functions from (policies, kind, request, response) to a verdict."""
