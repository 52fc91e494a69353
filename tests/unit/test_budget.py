"""The body memory budget: leases, and sizing from the unit's cgroup (a fake cgroup tree on disk)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.relay.budget import MIB, Budget, BudgetExhausted, cgroup_memory_limit, default_budget


def test_leases_share_one_limit_and_give_everything_back() -> None:
    budget = Budget(100)
    with budget.lease() as a, budget.lease() as b:
        a.grow(60)
        with pytest.raises(BudgetExhausted):
            b.grow(41)
        assert (budget.in_use, b.held, budget.refused) == (60, 0, 1)  # a refusal reserves nothing
        b.grow(40)
        a.shrink(50)
        b.grow(50)
        assert budget.in_use == 100 and budget.peak == 100
    assert budget.in_use == 0


def cgroup_tree(tmp_path: Path, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cg"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/gateway.service\n")
    return proc, root


def test_the_limit_is_the_tightest_memory_max_up_the_tree(tmp_path: Path) -> None:
    proc, root = cgroup_tree(
        tmp_path,
        {
            "system.slice/gateway.service/memory.max": "268435456\n",
            "system.slice/gateway.service/memory.high": "201326592\n",  # a throttle, not a limit
            "system.slice/memory.max": "max\n",
        },
    )
    assert cgroup_memory_limit(proc, root) == 256 * MIB
    (root / "system.slice/memory.max").write_text("134217728\n")
    assert cgroup_memory_limit(proc, root) == 128 * MIB
    assert default_budget(256 * MIB) == 64 * MIB


def test_no_limit_anywhere_means_the_fallback(tmp_path: Path) -> None:
    proc, root = cgroup_tree(tmp_path, {"system.slice/gateway.service/memory.max": "max\n"})
    assert cgroup_memory_limit(proc, root) is None
    assert cgroup_memory_limit(tmp_path / "missing", root) is None
    assert default_budget(None) == 256 * MIB
    assert default_budget(16 * MIB) == 8 * MIB  # never below the minimum
