"""The wizard's model: the token is a blind field, the review shows the pinned CA, passwords are one line."""

from __future__ import annotations

import pytest

from firstboot.errors import FirstbootError
from firstboot.system import System
from firstboot.wizard.flow import hash_password
from firstboot.wizard.model import BY_NAME, PASSWORD, PASSWORD2, WizardModel
from tests.unit.test_firstboot_settings import make_token


def test_the_join_token_is_typed_blind_and_kept() -> None:
    fields = {f.key: f for f in BY_NAME["plane"].fields}
    token = fields["gateway.join_token"]
    assert token.blind and token.masked and not token.secret_input  # masked, but the value is kept
    assert not fields["gateway.plane_url"].blind
    admin = {f.key: f for f in BY_NAME["admin"].fields}
    assert admin[PASSWORD].secret_input and not admin["admin.ssh_key"].blind


def test_review_shows_the_ca_the_token_pins_in_full() -> None:
    model = WizardModel(values={"gateway.join_token": make_token()})
    rows = model.review_rows()
    labels = [label for label, _, _ in rows]
    assert ("Plane CA (pinned)", "sha256:" + "ab" * 32, "join-token") in rows
    assert labels.index("Plane CA (pinned)") == labels.index("Plane URL") + 1
    assert ("Join token", "GWJ1.********", "wizard") in rows


@pytest.mark.parametrize(
    "password", ["first line\nsecond", "tab\there-ok?", "bell\x07bell1", "nbsp\xa0nbsp1"]
)
def test_a_password_with_a_control_character_is_refused(password: str) -> None:
    model = WizardModel()
    errors = model.validate(BY_NAME["admin"], {PASSWORD: password, PASSWORD2: password})
    assert errors[PASSWORD].startswith("admin.password: control character ")
    assert password not in errors[PASSWORD]


def test_hashing_refuses_a_second_line() -> None:
    with pytest.raises(FirstbootError, match=r"^admin.password: a password is one line$"):
        hash_password(System(), "first line\nsecond")
