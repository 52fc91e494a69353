"""The identity control messages (gwcore.identity): built by one end, checked by the other."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gwcore import identity as idm

CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
CSR = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
HASH = "sha256:" + "ab" * 32


def test_round_trips() -> None:
    assert idm.parse_renew_request(idm.renew_request(CSR)) == CSR
    assert idm.parse_renewed(idm.renewed_reply(CERT, 1.9e9)) == CERT
    update = idm.parse_ca_update(idm.ca_update([CERT, CERT], [CERT], HASH))
    assert update == idm.CaUpdate(cas=(CERT, CERT), proofs=(CERT,), renew_from=HASH)
    assert idm.parse_revoked(idm.revoked_notice("deleted", "bye")) == ("deleted", "bye")


def test_a_later_minor_revision_with_more_fields_still_reads() -> None:
    assert idm.parse_renew_request({**idm.renew_request(CSR), "hint": "new field"}) == CSR
    assert idm.parse_renew_request({"type": "renew", "csr": CSR}) == CSR  # v defaults to 1


@pytest.mark.parametrize(
    ("message", "code", "says"),
    [
        ({"type": "renew", "v": 2, "csr": CSR}, idm.UNSUPPORTED_VERSION, "version 2"),
        ({"type": "renew", "v": "1", "csr": CSR}, idm.BAD_MESSAGE, "v must be an integer"),
        ({"type": "renew", "v": True, "csr": CSR}, idm.BAD_MESSAGE, "v must be an integer"),
        ({"type": "renew", "v": 1}, idm.BAD_MESSAGE, "csr must be one PEM CERTIFICATE REQUEST"),
        ({"type": "renew", "v": 1, "csr": CERT}, idm.BAD_MESSAGE, "CERTIFICATE REQUEST"),  # wrong kind
        ({"type": "renew", "v": 1, "csr": CSR + CSR}, idm.BAD_MESSAGE, "one PEM"),  # two
        ({"type": "renew", "v": 1, "csr": CSR.replace("MIIB", "MI<script>")}, idm.BAD_MESSAGE, "one PEM"),
        ({"type": "renew", "v": 1, "csr": CSR.replace("MIIB", "A" * 20000)}, idm.BAD_MESSAGE, "one PEM"),
        ({"type": "renew", "v": 1, "csr": ["x"]}, idm.BAD_MESSAGE, "one PEM"),
    ],
)
def test_a_bad_renew_request_gets_its_code(message: dict[str, object], code: str, says: str) -> None:
    with pytest.raises(idm.MessageError, match=says) as caught:
        idm.parse_renew_request(message)
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("message", "says"),
    [
        ({"type": "ca-update", "cas": []}, "list of 1 to 4"),
        ({"type": "ca-update", "cas": [CERT] * 5}, "list of 1 to 4"),
        ({"type": "ca-update", "cas": CERT}, "list of 1 to 4"),
        ({"type": "ca-update", "cas": [CERT], "proofs": [CSR]}, "one PEM CERTIFICATE"),
        ({"type": "ca-update", "cas": [CERT], "renew_from": "sha256:AB"}, "renew_from"),
        ({"type": "ca-update", "cas": [CERT], "renew_from": 7}, "renew_from"),
    ],
)
def test_a_bad_ca_update_is_refused_whole(message: dict[str, object], says: str) -> None:
    with pytest.raises(idm.MessageError, match=says):
        idm.parse_ca_update(message)


def test_a_renewed_reply_of_another_type_is_refused() -> None:
    with pytest.raises(idm.MessageError, match="expected a renewed reply"):
        idm.parse_renewed({"type": "error", "certificate": CERT})


def test_a_revoked_notice_reads_leniently() -> None:
    assert idm.parse_revoked({"type": "revoked"}) == ("revoked", "")
    assert idm.parse_revoked({"type": "revoked", "reason": "stolen", "message": "x" * 5000}) == (
        "revoked",
        "x" * 512,
    )
    assert idm.revoked_notice("revoked", "y" * 5000)["message"] == "y" * 512


@given(
    st.dictionaries(
        st.sampled_from(["type", "v", "csr", "cas", "proofs", "renew_from"]), st.from_type(object)
    )
)
def test_the_parsers_raise_only_message_errors(message: dict[str, object]) -> None:
    for parse in (idm.parse_renew_request, idm.parse_ca_update, idm.parse_revoked):
        with contextlib.suppress(idm.MessageError):
            parse(message)  # anything else (TypeError, AttributeError) fails the test
