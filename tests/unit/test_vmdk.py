"""The streamOptimized VMDK writer: layout parsed back, bit-identical round trips, qemu-img agrees."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.errors import ApplianceError
from appliance.vmdk import (
    FLAGS,
    GD_AT_END,
    GRAIN,
    GTES_PER_GT,
    SECTOR,
    VmdkInfo,
    adapter_type,
    compare_with_raw,
    grain_runs,
    parse_header,
    read_footer,
    read_stream_optimized,
    walk_stream,
    write_stream_optimized,
)

MIB = 1024 * 1024
GT_SPAN = GRAIN * GTES_PER_GT  # 32 MiB of disk per grain table


def make_raw(path: Path, size: int, writes: list[tuple[int, bytes]]) -> bytes:
    """A sparse raw disk of `size` bytes with `writes` applied; returns its full contents."""
    with open(path, "wb") as fh:
        fh.truncate(size)
        for offset, data in writes:
            fh.seek(offset)
            fh.write(data)
    return path.read_bytes()


def read_back(path: Path) -> bytes:
    return b"".join(read_stream_optimized(path))


@pytest.fixture
def sample(tmp_path: Path) -> tuple[Path, bytes, Path, VmdkInfo]:
    rng = random.Random(7)
    size = GT_SPAN + 5 * MIB + 12345  # two grain tables, tail neither grain- nor sector-aligned
    writes = [
        (0, rng.randbytes(GRAIN)),  # a whole random grain
        (3 * GRAIN + 100, rng.randbytes(3000)),  # straddles nothing, partial grain
        (5 * GRAIN - 10, rng.randbytes(20)),  # straddles two grains
        (2 * MIB, bytes(4 * GRAIN)),  # written zeros: not a hole, still skipped
        (3 * MIB, b"\x01" * GRAIN),  # highly compressible
        (GT_SPAN + GRAIN, rng.randbytes(5000)),  # in the second grain table
        (size - 777, rng.randbytes(777)),  # the unaligned tail
    ]
    raw = tmp_path / "disk.raw"
    content = make_raw(raw, size, writes)
    vmdk = tmp_path / "disk.vmdk"
    info = write_stream_optimized(raw, vmdk, adapter="pvscsi")
    return raw, content, vmdk, info


def test_round_trip_is_bit_identical(sample: tuple[Path, bytes, Path, VmdkInfo]) -> None:
    _raw, content, vmdk, info = sample
    back = read_back(vmdk)
    assert info.capacity == -(-len(content) // SECTOR) * SECTOR
    assert len(back) == info.capacity
    assert back[: len(content)] == content
    assert back[len(content) :] == bytes(info.capacity - len(content))  # sector padding reads as zeros


def test_info_figures(sample: tuple[Path, bytes, Path, VmdkInfo]) -> None:
    _raw, _content, vmdk, info = sample
    # grains 0, 3, 4, 5, 48 (3 MiB), 512+1 and the tail grain; the written zeros are skipped
    assert info.grains == 7
    assert info.populated_size == 7 * GRAIN
    assert info.file_size == vmdk.stat().st_size
    assert info.sha256 == hashlib.sha256(vmdk.read_bytes()).hexdigest()
    assert info.path == vmdk


def test_header_footer_and_markers(sample: tuple[Path, bytes, Path, VmdkInfo]) -> None:
    _raw, _content, vmdk, info = sample
    data = vmdk.read_bytes()
    assert data[:4] == b"KDMV"
    assert len(data) % SECTOR == 0
    header, descriptor, records = walk_stream(vmdk)
    assert header.version == 3
    assert header.flags == FLAGS == 0x30001  # newline test, compressed grains, markers
    assert header.compress_algorithm == 1
    assert header.gd_offset == GD_AT_END
    assert header.grain_size == 128 and header.gtes_per_gt == 512
    assert header.capacity * SECTOR == info.capacity
    assert header.newline_chars == b"\n \r\n"
    assert 'createType="streamOptimized"' in descriptor
    assert f'RW {header.capacity} SPARSE "disk.vmdk"' in descriptor
    assert 'ddb.adapterType = "lsilogic"' in descriptor
    assert 'ddb.virtualHWVersion = "4"' in descriptor

    kinds = [r.kind for r in records]
    assert kinds == ["grain"] * 5 + ["gt"] + ["grain"] * 2 + ["gt", "gd", "footer", "eos"]
    assert records[0].sector == header.overhead
    tail_grain = (GT_SPAN + 5 * MIB) // GRAIN
    want_lbas = [g * 128 for g in (0, 3, 4, 5, 48, 513, tail_grain)]
    assert [r.val for r in records if r.kind == "grain"] == want_lbas
    assert all(r.val == 4 for r in records if r.kind == "gt")
    eos = records[-1]
    assert eos.val == 0 and eos.sector * SECTOR == len(data) - SECTOR
    assert data[-SECTOR:] == bytes(SECTOR)  # the EOS marker is an all-zero sector

    footer = read_footer(vmdk)
    footer_record = records[-2]
    assert footer_record.val == 1
    assert footer == parse_header(data[(footer_record.sector + 1) * SECTOR :])
    gd_record = records[-3]
    assert footer.gd_offset == gd_record.sector + 1
    # The footer is the header again with only gdOffset filled in.
    assert footer.__dict__ | {"gd_offset": GD_AT_END} == header.__dict__


def test_grain_directory_and_tables_point_at_markers(sample: tuple[Path, bytes, Path, VmdkInfo]) -> None:
    _raw, _content, vmdk, _info = sample
    _header, _descriptor, records = walk_stream(vmdk)
    footer = read_footer(vmdk)
    data = vmdk.read_bytes()
    gd = [int.from_bytes(data[footer.gd_offset * SECTOR + 4 * i :][:4], "little") for i in range(2)]
    gt_markers = [r.sector for r in records if r.kind == "gt"]
    assert gd == [s + 1 for s in gt_markers]  # each GD entry is the GT right after its marker
    grains = {r.sector: r.val for r in records if r.kind == "grain"}
    for gt_index, gt_sector in enumerate(gd):
        gt = data[gt_sector * SECTOR :][: GTES_PER_GT * 4]
        entries = [int.from_bytes(gt[4 * i : 4 * i + 4], "little") for i in range(GTES_PER_GT)]
        for i, entry in enumerate(entries):
            if entry:
                assert grains[entry] == (gt_index * GTES_PER_GT + i) * 128


def test_progress_reaches_the_total(tmp_path: Path) -> None:
    raw = tmp_path / "d.raw"
    size = 6 * MIB + 1000
    make_raw(raw, size, [(i * MIB, os.urandom(GRAIN)) for i in range(6)])
    seen: list[tuple[int, int]] = []
    write_stream_optimized(raw, tmp_path / "d.vmdk", progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (size, size)
    assert all(total == size for _, total in seen)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_output_is_deterministic(tmp_path: Path) -> None:
    raw = tmp_path / "d.raw"
    make_raw(raw, 3 * MIB, [(GRAIN, os.urandom(GRAIN))])
    a = write_stream_optimized(raw, tmp_path / "d.vmdk")
    first = a.sha256
    b = write_stream_optimized(raw, tmp_path / "d.vmdk", workers=1)
    assert b.sha256 == first


def test_same_content_same_vmdk_whatever_the_raw_files_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two builds write the same raw disk at different times: the VMDKs (CID included) must match.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    content = os.urandom(GRAIN)
    for name, mtime in (("a", 1_000_000_000), ("b", 1_800_000_000)):
        (tmp_path / name).mkdir()
        make_raw(tmp_path / name / "d.raw", 3 * MIB, [(GRAIN, content)])
        os.utime(tmp_path / name / "d.raw", (mtime, mtime))
    a = write_stream_optimized(tmp_path / "a" / "d.raw", tmp_path / "a" / "d.vmdk")
    b = write_stream_optimized(tmp_path / "b" / "d.raw", tmp_path / "b" / "d.vmdk")
    assert a.sha256 == b.sha256
    # A build of another date is another disk to VMware: its content ID changes.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000001")
    c = write_stream_optimized(tmp_path / "b" / "d.raw", tmp_path / "b" / "c.vmdk")
    assert c.sha256 != a.sha256


@pytest.mark.parametrize(
    ("controller", "ddb", "heads"),
    [
        ("pvscsi", "lsilogic", 255),
        ("lsilogic", "lsilogic", 255),
        ("lsilogicsas", "lsilogic", 255),
        ("sata", "ide", 16),
        ("ide", "ide", 16),
    ],
)
def test_adapter_type_and_geometry(tmp_path: Path, controller: str, ddb: str, heads: int) -> None:
    assert adapter_type(controller) == ddb
    raw = tmp_path / "d.raw"
    make_raw(raw, 2 * MIB, [(0, b"boot")])
    write_stream_optimized(raw, tmp_path / "d.vmdk", adapter=controller)
    _header, descriptor, _records = walk_stream(tmp_path / "d.vmdk")
    assert f'ddb.adapterType = "{ddb}"' in descriptor
    assert f'ddb.geometry.heads = "{heads}"' in descriptor


def test_all_zero_disk(tmp_path: Path) -> None:
    raw = tmp_path / "z.raw"
    make_raw(raw, 4 * MIB, [])
    info = write_stream_optimized(raw, tmp_path / "z.vmdk")
    assert info.grains == 0 and info.populated_size == 0
    assert read_back(tmp_path / "z.vmdk") == bytes(4 * MIB)
    assert [r.kind for r in walk_stream(tmp_path / "z.vmdk")[2]] == ["gd", "footer", "eos"]


def test_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(
        ApplianceError, match=r"^.*missing\.raw: cannot read the raw disk: No such file or directory$"
    ):
        write_stream_optimized(tmp_path / "missing.raw", tmp_path / "x.vmdk")
    (tmp_path / "empty.raw").touch()
    with pytest.raises(ApplianceError, match=r"empty\.raw: the raw disk is empty$"):
        write_stream_optimized(tmp_path / "empty.raw", tmp_path / "x.vmdk")
    assert not (tmp_path / "x.vmdk").exists()
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ApplianceError, match=r"unknown disk controller 'nvme'"):
        adapter_type("nvme")
    (tmp_path / "tiny.vmdk").write_bytes(b"KDMV")
    with pytest.raises(ApplianceError, match=r"tiny\.vmdk: not a valid streamOptimized VMDK: 4 bytes is not"):
        read_back(tmp_path / "tiny.vmdk")
    (tmp_path / "junk.vmdk").write_bytes(bytes(4096))
    with pytest.raises(
        ApplianceError, match=r"junk\.vmdk: not a valid streamOptimized VMDK: no footer marker"
    ):
        read_back(tmp_path / "junk.vmdk")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.integers(min_value=1, max_value=3 * MIB),
    writes=st.lists(
        st.tuples(st.integers(min_value=0, max_value=3 * MIB), st.integers(min_value=1, max_value=3 * GRAIN)),
        max_size=6,
    ),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_round_trip_property(tmp_path: Path, size: int, writes: list[tuple[int, int]], seed: int) -> None:
    rng = random.Random(seed)
    raw = tmp_path / "h.raw"
    plan = [(off % size, rng.randbytes(min(n, size - off % size))) for off, n in writes]
    content = make_raw(raw, size, plan)
    info = write_stream_optimized(raw, tmp_path / "h.vmdk")
    back = read_back(tmp_path / "h.vmdk")
    assert back[:size] == content and not any(back[size:])
    assert info.grains == sum(1 for i in range(0, size, GRAIN) if any(content[i : i + GRAIN]))


def test_grain_runs_merge_extents() -> None:
    assert grain_runs([]) == []
    assert grain_runs([(0, 1)]) == [(0, 1)]
    # extents sharing or touching a grain merge; a gap of whole grains does not
    assert grain_runs([(0, 100), (GRAIN - 1, GRAIN + 1), (5 * GRAIN, 6 * GRAIN)]) == [(0, 2), (5, 6)]
    assert grain_runs([(GRAIN, 2 * GRAIN), (2 * GRAIN, 3 * GRAIN)]) == [(1, 3)]


def test_compare_with_raw(sample: tuple[Path, bytes, Path, VmdkInfo], tmp_path: Path) -> None:
    raw, content, vmdk, info = sample
    assert compare_with_raw(vmdk, raw) == info.capacity
    changed = tmp_path / "changed.raw"
    changed.write_bytes(content[: GRAIN * 3] + b"X" + content[GRAIN * 3 + 1 :])
    with pytest.raises(
        ApplianceError, match=rf"differs from .*changed\.raw in the grain at byte {GRAIN * 3}$"
    ):
        compare_with_raw(vmdk, changed)
    longer = tmp_path / "longer.raw"
    longer.write_bytes(content + bytes(info.capacity - len(content)) + b"tail")
    with pytest.raises(ApplianceError, match="shorter than"):
        compare_with_raw(vmdk, longer)


def test_reads_a_slice_of_a_larger_file(sample: tuple[Path, bytes, Path, VmdkInfo], tmp_path: Path) -> None:
    # As inside an OVA: the VMDK sits between other bytes.
    _raw, content, vmdk, info = sample
    wrapped = tmp_path / "wrapped.bin"
    wrapped.write_bytes(os.urandom(1536) + vmdk.read_bytes() + os.urandom(1000))
    window = {"offset": 1536, "size": info.file_size}
    assert walk_stream(wrapped, **window) == walk_stream(vmdk)
    assert read_footer(wrapped, **window) == read_footer(vmdk)
    back = b"".join(read_stream_optimized(wrapped, **window))
    assert back[: len(content)] == content


@pytest.fixture(scope="module")
def small_vmdk(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    tmp = tmp_path_factory.mktemp("small")
    rng = random.Random(5)
    content = make_raw(tmp / "s.raw", 3 * GRAIN + 700, [(0, rng.randbytes(900)), (2 * GRAIN, b"ab" * 3000)])
    write_stream_optimized(tmp / "s.raw", tmp / "s.vmdk")
    return content, (tmp / "s.vmdk").read_bytes()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4))
def test_damaged_files_give_one_line_errors(
    small_vmdk: tuple[bytes, bytes], tmp_path: Path, edits: list[tuple[int, int]]
) -> None:
    content, good = small_vmdk
    data = bytearray(good)
    for position, value in edits:
        # Aim at the structures: header, markers, GT/GD and footer live in the first and last sectors.
        index = position % len(data) if position % 2 else len(data) - 1 - position % (4 * SECTOR)
        data[index] = value
    path = tmp_path / "damaged.vmdk"
    path.write_bytes(bytes(data))
    try:
        walk_stream(path)
        back = read_back(path)
    except ApplianceError as exc:
        assert str(exc).startswith(f"{path}: not a valid streamOptimized VMDK: ")
        assert "\n" not in str(exc)
    else:
        # Damage that no check catches must be damage that changes nothing (padding, unused bytes).
        assert back[: len(content)] == content and not any(back[len(content) :])
