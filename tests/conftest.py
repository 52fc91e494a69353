"""Shared test configuration: each layer's marker is applied from its directory."""

from __future__ import annotations

from pathlib import Path

import pytest

_LAYERS = {"unit": pytest.mark.unit, "integration": pytest.mark.integration, "vm": pytest.mark.vm}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        layer = Path(str(item.fspath)).parent.name
        if layer in _LAYERS:
            item.add_marker(_LAYERS[layer])
