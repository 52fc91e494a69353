"""Bad input never escapes as a traceback: any text for any key, any bytes as ovf-env.xml or answers."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firstboot.errors import FirstbootError
from firstboot.seeds import ovfenv
from firstboot.settings import build
from firstboot.wizard.model import load_answers
from gwcore.deploy import KEYS, InvalidSetting, validate_value


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(KEYS), text=st.text(max_size=200))
def test_any_text_for_any_key_is_a_value_or_one_line_error(key: str, text: str) -> None:
    try:
        value = validate_value(key, text)
    except InvalidSetting as exc:
        assert str(exc).startswith(f"{key}: ")
        assert "\n" not in str(exc)  # values are echoed with repr(), so one line always
    else:
        assert isinstance(value, str)
        assert validate_value(key, value) == value  # normalising is idempotent


@settings(max_examples=200, deadline=None)
@given(values=st.dictionaries(st.sampled_from(KEYS), st.text(max_size=60), max_size=6))
def test_build_fails_only_with_firstboot_errors(values: dict[str, str]) -> None:
    with contextlib.suppress(FirstbootError):
        build(values)


@settings(max_examples=200, deadline=None)
@given(blob=st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_any_bytes_as_ovf_env(blob: bytes) -> None:
    try:
        got = ovfenv.parse(blob, "ovf-env.xml")
    except FirstbootError as exc:
        assert str(exc).startswith("ovf-env.xml: ")
    else:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in got.items())


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_any_answers_file(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path: Path = tmp_path_factory.mktemp("answers") / "a.yaml"
    path.write_text(text)
    try:
        load_answers(path)
    except FirstbootError as exc:
        assert re.match(rf"{re.escape(str(path))}(:\d+)?: \S", str(exc)), exc  # file[:line]: problem
        assert "\n" not in str(exc)
