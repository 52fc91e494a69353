"""The pair on disk (gateway.identity.store): switched in one rename, never out of step.

A crash is simulated at every rename, link and replace that a commit makes, from plain files (the
first renewal) and from links (every later one): whatever was done, the names resolve to one
matching pair, the old or the new, and the next commit completes from there.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.identity.store import IdentityChanged, PairStore


def make_pair(n: int) -> tuple[bytes, bytes]:
    """A key and a (self-signed) certificate that belong together; `n` only tells pairs apart."""
    import datetime as dt

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"pair-{n}")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(n + 1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def matching(pair: tuple[bytes, bytes]) -> bool:
    key = serialization.load_pem_private_key(pair[0], None)
    return key.public_key() == x509.load_pem_x509_certificate(pair[1]).public_key()


def enrolled(tmp_path: Path, pair: tuple[bytes, bytes]) -> Path:
    """An identity dir as registration leaves it: plain key.pem (0600), cert.pem, ca.pem."""
    state = tmp_path / "gateway"
    state.mkdir(mode=0o700)
    (state / "key.pem").write_bytes(pair[0])
    os.chmod(state / "key.pem", 0o600)
    (state / "cert.pem").write_bytes(pair[1])
    (state / "ca.pem").write_bytes(pair[1])
    return state


PAIRS = [make_pair(n) for n in range(4)]


def test_the_first_commit_links_both_names_through_one_pointer(tmp_path: Path) -> None:
    store = PairStore(enrolled(tmp_path, PAIRS[0]))
    assert store.load() == PAIRS[0] and store.generation() is None
    generation = store.commit(*PAIRS[1], PAIRS[0])
    state = store.state_dir
    assert os.readlink(state / "key.pem") == "pairs/current/key.pem"
    assert os.readlink(state / "cert.pem") == "pairs/current/cert.pem"
    assert os.readlink(state / "pairs/current") == generation.name
    assert store.load() == PAIRS[1] == ((state / "key.pem").read_bytes(), (state / "cert.pem").read_bytes())
    assert stat.S_IMODE((generation / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "pairs").stat().st_mode) == 0o700


def test_old_generations_are_pruned_to_two(tmp_path: Path) -> None:
    store = PairStore(enrolled(tmp_path, PAIRS[0]))
    in_use = PAIRS[0]
    for pair in PAIRS[1:]:
        store.commit(*pair, in_use)
        in_use = pair
    names = sorted(p.name for p in (store.state_dir / "pairs").iterdir())
    assert names == ["current", "g-000003", "g-000004"] and store.load() == PAIRS[3]


def test_a_pair_changed_on_disk_meanwhile_is_never_overwritten(tmp_path: Path) -> None:
    store = PairStore(enrolled(tmp_path, PAIRS[0]))
    with pytest.raises(IdentityChanged):
        store.commit(*PAIRS[2], PAIRS[1])  # we think we use PAIRS[1]; the disk says otherwise
    assert store.load() == PAIRS[0] and not (store.state_dir / "pairs").exists()


def test_a_re_registration_over_the_links_starts_over(tmp_path: Path) -> None:
    store = PairStore(enrolled(tmp_path, PAIRS[0]))
    store.commit(*PAIRS[1], PAIRS[0])
    state = store.state_dir
    for name, data in (("key.pem", PAIRS[2][0]), ("cert.pem", PAIRS[2][1])):  # firstboot register --force
        tmp = state / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, state / name)
    assert store.load() == PAIRS[2]
    store.commit(*PAIRS[3], PAIRS[2])
    assert store.load() == PAIRS[3]
    assert [p.name for p in (state / "pairs").iterdir() if p.name.startswith("g-")] == [
        "g-000001",
        "g-000002",
    ]


class Crash(Exception):
    pass


def crash_at(k: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the k-th rename, replace or link raise (a power cut just before it); returns the log."""
    done: list[str] = []

    def wrap(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def step(*args: Any, **kwargs: Any) -> Any:
            if len(done) + 1 == k:
                raise Crash(f"{name}{args}")
            done.append(f"{name} {args[-1]}")
            return real(*args, **kwargs)

        return step

    for name in ("replace", "rename", "symlink"):
        monkeypatch.setattr(os, name, wrap(name, getattr(os, name)))
    return done


@pytest.mark.parametrize("linked", [False, True], ids=["first-renewal", "later-renewal"])
def test_a_crash_at_any_step_leaves_one_whole_pair(tmp_path: Path, linked: bool) -> None:
    before, after, next_one = PAIRS[1], PAIRS[2], PAIRS[3]
    k = 1
    while True:
        root = tmp_path / f"k{k}"
        root.mkdir()
        if linked:
            store = PairStore(enrolled(root, PAIRS[0]))
            store.commit(*before, PAIRS[0])
        else:
            store = PairStore(enrolled(root, before))
        with pytest.MonkeyPatch.context() as mp:
            steps = crash_at(k, mp)
            try:
                store.commit(*after, before)
            except Crash:
                crashed = True
            else:
                crashed = False
        on_disk = store.load()
        assert on_disk in (before, after), (k, steps)
        assert matching(on_disk)
        # What the next boot's daemon finds, it can renew from.
        store.commit(*next_one, on_disk)
        assert store.load() == next_one
        if not crashed:
            break
        k += 1
    assert k - 1 >= (5 if linked else 14)  # each step of the commit (14 from plain files) was cut once
