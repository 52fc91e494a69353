"""The OVA: ustar member order and headers, manifest lines and hashes, the disk and OVF inside."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from appliance.errors import ApplianceError
from appliance.ova import build_ova, check_ova, manifest_text, pack_ova, write_sha256sums, write_ustar
from appliance.ovf import validate_ovf
from appliance.spec import Spec, load_spec
from appliance.vmdk import GRAIN, read_stream_optimized

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / ".." / "shared" / "schemas" / "ovf"
MIB = 1024 * 1024
OVF_NS = {"ovf": "http://schemas.dmtf.org/ovf/envelope/1"}
OVF = "{" + OVF_NS["ovf"] + "}"
MANIFEST_LINE = re.compile(r"SHA256\(([^)]+)\)= ([0-9a-f]{64})")


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_spec(REPO / "appliance.yaml")


@pytest.fixture
def raw(tmp_path: Path) -> tuple[Path, bytes]:
    rng = random.Random(3)
    path = tmp_path / "disk.raw"
    with open(path, "wb") as fh:
        fh.truncate(6 * MIB + 4096)
        for offset in (0, GRAIN * 7, 2 * MIB + 5, 6 * MIB):
            fh.seek(offset)
            fh.write(rng.randbytes(9000))
    return path, path.read_bytes()


def members_of(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        out = {}
        for member in tar.getmembers():
            fh = tar.extractfile(member)
            assert fh is not None
            out[member.name] = fh.read()
        return out


def test_tar_layout(spec: Spec, raw: tuple[Path, bytes], tmp_path: Path) -> None:
    ova = build_ova(spec, raw[0], tmp_path / "out")
    assert ova == tmp_path / "out" / "gateway-0.1.0.ova"
    stem = spec.artifact_stem
    data = ova.read_bytes()
    assert len(data) % tarfile.RECORDSIZE == 0
    with tarfile.open(ova) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [f"{stem}.ovf", f"{stem}.mf", f"{stem}-disk1.vmdk"]
    for m in members:
        header = data[m.offset : m.offset + tarfile.BLOCKSIZE]
        assert header[257:265] == b"ustar\x0000", m.name  # POSIX ustar, not GNU or pax
        assert m.isreg() and m.mode == 0o644
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "root", "root", 0)
    assert b"PaxHeader" not in data[: members[-1].offset_data]
    assert not (tmp_path / "out" / f"{stem}-disk1.vmdk").exists()  # the intermediate is gone
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{stem}.ova"]


def test_manifest_and_contents(spec: Spec, raw: tuple[Path, bytes], tmp_path: Path) -> None:
    result = pack_ova(spec, raw[0], tmp_path)
    assert result.sha256 == hashlib.sha256(result.path.read_bytes()).hexdigest()
    files = members_of(result.path)
    stem = spec.artifact_stem
    manifest = files[f"{stem}.mf"].decode()
    assert manifest == result.manifest
    lines = manifest.splitlines()
    assert manifest.endswith("\n") and len(lines) == 2
    parsed = [MANIFEST_LINE.fullmatch(line) for line in lines]
    assert all(parsed), lines
    hashes = {m.group(1): m.group(2) for m in parsed if m}
    assert set(hashes) == {f"{stem}.ovf", f"{stem}-disk1.vmdk"}
    for name, digest in hashes.items():
        assert hashlib.sha256(files[name]).hexdigest() == digest, name

    disk = tmp_path / "extracted.vmdk"
    disk.write_bytes(files[f"{stem}-disk1.vmdk"])
    back = b"".join(read_stream_optimized(disk))
    assert back[: len(raw[1])] == raw[1]

    ovf = files[f"{stem}.ovf"].decode()
    validate_ovf(ovf, SCHEMAS)
    root = ET.fromstring(ovf)
    file_el = root.find("ovf:References/ovf:File", OVF_NS)
    assert file_el is not None
    assert file_el.get(f"{OVF}href") == f"{stem}-disk1.vmdk"
    assert file_el.get(f"{OVF}size") == str(len(files[f"{stem}-disk1.vmdk"]))
    disk_el = root.find("ovf:DiskSection/ovf:Disk", OVF_NS)
    assert disk_el is not None
    assert disk_el.get(f"{OVF}capacity") == str(-(-len(raw[1]) // 512) * 512)  # whole sectors
    assert disk_el.get(f"{OVF}populatedSize") == str(4 * GRAIN)  # grains 0, 7, 32 and 96


def test_reproducible_and_source_date_epoch(
    spec: Spec, raw: tuple[Path, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = pack_ova(spec, raw[0], tmp_path / "a").sha256
    assert pack_ova(spec, raw[0], tmp_path / "b").sha256 == first
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    ova = build_ova(spec, raw[0], tmp_path / "c")
    with tarfile.open(ova) as tar:
        assert {m.mtime for m in tar.getmembers()} == {1700000000}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "soon")
    with pytest.raises(ApplianceError, match="^SOURCE_DATE_EPOCH: expected an integer"):
        build_ova(spec, raw[0], tmp_path / "d")


def test_progress_phases(spec: Spec, raw: tuple[Path, bytes], tmp_path: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    pack_ova(spec, raw[0], tmp_path, lambda phase, done, total: seen.append((phase, done, total)))
    phases = [p for p, _, _ in seen]
    assert phases[0] == "converting disk" and phases[-1] == "packing OVA"
    assert phases == sorted(phases, key=["converting disk", "packing OVA"].index)
    assert seen[-1][1] == seen[-1][2]
    conv = [s for s in seen if s[0] == "converting disk"]
    assert conv[-1][1:] == (len(raw[1]), len(raw[1]))


def test_keep_vmdk(spec: Spec, raw: tuple[Path, bytes], tmp_path: Path) -> None:
    result = pack_ova(spec, raw[0], tmp_path, keep_vmdk=True)
    vmdk = tmp_path / result.members[2]
    assert members_of(result.path)[result.members[2]] == vmdk.read_bytes()


def test_missing_raw_is_one_line(spec: Spec, tmp_path: Path) -> None:
    with pytest.raises(
        ApplianceError, match=r"nope\.raw: cannot read the raw disk: No such file or directory$"
    ):
        build_ova(spec, tmp_path / "nope.raw", tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


def test_write_ustar_in_memory_members(tmp_path: Path) -> None:
    out = tmp_path / "x.tar"
    digest = write_ustar(out, [("b.txt", b"second"), ("a.txt", b"")])
    assert digest == hashlib.sha256(out.read_bytes()).hexdigest()
    assert list(members_of(out).items()) == [("b.txt", b"second"), ("a.txt", b"")]


def test_manifest_text() -> None:
    assert manifest_text([("a.ovf", "ab" * 32)]) == f"SHA256(a.ovf)= {'ab' * 32}\n"


def test_sha256sums(tmp_path: Path) -> None:
    files = []
    for name, content in (("a.raw", b"alpha"), ("b.qcow2", os.urandom(5000))):
        (tmp_path / name).write_bytes(content)
        files.append(tmp_path / name)
    (tmp_path / "c.ova").write_bytes(b"ova")
    known = {tmp_path / "c.ova": hashlib.sha256(b"ova").hexdigest()}
    sums = write_sha256sums([*files, tmp_path / "c.ova"], tmp_path / "SHA256SUMS", known=known)
    text = sums.read_text()
    assert text.splitlines()[0] == f"{hashlib.sha256(b'alpha').hexdigest()}  a.raw"
    assert [line.split("  ")[1] for line in text.splitlines()] == ["a.raw", "b.qcow2", "c.ova"]
    with pytest.raises(ApplianceError, match=r"gone\.raw: cannot hash"):
        write_sha256sums([tmp_path / "gone.raw"], tmp_path / "SHA256SUMS")


def test_tar_readable_as_stream(spec: Spec, raw: tuple[Path, bytes], tmp_path: Path) -> None:
    # Importers read OVAs as a stream (descriptor first, then manifest); so must tarfile's stream mode.
    ova = build_ova(spec, raw[0], tmp_path)
    with tarfile.open(fileobj=io.BytesIO(ova.read_bytes()), mode="r|") as tar:
        names = [m.name for m in tar]
    assert names[0].endswith(".ovf") and names[1].endswith(".mf")


def test_check_ova_accepts_ours(spec: Spec, raw: tuple[Path, bytes], tmp_path: Path) -> None:
    result = pack_ova(spec, raw[0], tmp_path)
    check = check_ova(result.path, schema_dir=SCHEMAS)
    assert check.members == result.members
    assert check.disk_capacity == -(-len(raw[1]) // 512) * 512
    assert check.disk_records == 4 + 1 + 3  # 4 grains, one GT, then GD, footer, EOS


def _repack(tmp_path: Path, good: Path, edit: object) -> Path:
    files = list(members_of(good).items())
    assert callable(edit)
    out = tmp_path / "bad.ova"
    write_ustar(out, edit(files))
    return out


def _flip_disk_byte(files: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    name, data = files[2]
    return [*files[:2], (name, data[:-2000] + bytes([data[-2000] ^ 1]) + data[-1999:])]


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (
            lambda f: [f[1], f[0], f[2]],
            r"members are \[.*\], expected the .ovf, then the .mf, then the disks$",
        ),
        (_flip_disk_byte, r"gateway-0.1.0-disk1.vmdk: SHA-256 [0-9a-f]{64} does not match the manifest's"),
        (
            lambda f: [f[0], (f[1][0], b"MD5(x)= 00\n"), f[2]],
            r"gateway-0.1.0.mf line 1: expected 'SHA256\(file\)= hex'",
        ),
        (lambda f: [f[0], f[1], ("other.vmdk", f[2][1])], r"gateway-0.1.0.mf lists .* the archive holds"),
    ],
    ids=["order", "tampered-disk", "manifest-line", "renamed-disk"],
)
def test_check_ova_rejects(
    spec: Spec, raw: tuple[Path, bytes], tmp_path: Path, edit: object, problem: str
) -> None:
    good = build_ova(spec, raw[0], tmp_path / "good")
    bad = _repack(tmp_path, good, edit)
    with pytest.raises(ApplianceError, match=r"bad\.ova: not a valid OVA: " + problem):
        check_ova(bad)


def test_check_ova_rejects_gnu_tar(spec: Spec, raw: tuple[Path, bytes], tmp_path: Path) -> None:
    good = build_ova(spec, raw[0], tmp_path / "good")
    gnu = tmp_path / "gnu.ova"
    with tarfile.open(gnu, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members_of(good).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ApplianceError, match=r"gateway-0.1.0.ovf is not in POSIX ustar format$"):
        check_ova(gnu)


def test_ustar_limits_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ApplianceError, match=r"^x{120}\.ovf: cannot be stored in a POSIX ustar archive: "):
        write_ustar(tmp_path / "x.ova", [("x" * 120 + ".ovf", b"")])
    assert not list(tmp_path.iterdir())
