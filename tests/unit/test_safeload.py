"""JSON and YAML from outside: malformed or deeply nested input is a one-line error, never a traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from firstboot.errors import FirstbootError
from firstboot.wizard.model import load_answers
from gateway.config import load_config
from gateway.errors import GatewayError
from gateway.filter.policy import load_policies
from gateway.relay.targets import load_targets
from gwcore.enrol import TOKEN_PREFIX, InvalidToken, parse_token
from gwcore.errors import UserError
from gwcore.redact import redact_file
from gwcore.safeload import ParseError, compose_yaml, loads_json, loads_yaml, read_yaml_file

# Past the interpreter's recursion limit (1000 frames): json takes one frame a level, PyYAML's
# composer two. PyYAML's scanner is quadratic in nesting depth, so its input stays small.
DEEP_JSON = "[" * 1500 + "]" * 1500
DEEP_FLOW = "[" * 700 + "]" * 700
DEEP_YAML = "targets: " + DEEP_FLOW + "\n"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("parse", "text"),
    [(loads_json, DEEP_JSON), (loads_yaml, DEEP_FLOW), (compose_yaml, DEEP_FLOW)],
    ids=["json", "yaml", "compose"],
)
def test_deep_nesting_is_a_parse_error(parse: Callable[[str], object], text: str) -> None:
    with pytest.raises(ParseError, match="^nested too deeply$"):
        parse(text)


@pytest.mark.unit
def test_parse_errors_are_value_errors_with_one_line_and_a_line_number() -> None:
    with pytest.raises(ValueError) as info:
        loads_json('{"a": 1,\n "b": }')
    assert "\n" not in str(info.value)
    with pytest.raises(ParseError) as yinfo:
        loads_yaml("a: 1\nb: [1, 2\nc: 3\n")
    assert yinfo.value.line is not None and yinfo.value.line >= 2
    assert "\n" not in str(yinfo.value)
    with pytest.raises(ParseError):
        loads_json(b"\xff\xfe")  # not UTF-8
    assert loads_json('{"a": [1]}') == {"a": [1]} and loads_yaml("a: [1]") == {"a": [1]}


@pytest.mark.unit
def test_read_yaml_file_names_the_file_and_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(UserError) as info:
        read_yaml_file(missing, "create it")
    assert str(info.value) == f"{missing}: file not found (create it)"
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\nb: [\n")
    with pytest.raises(UserError, match=rf"^{bad}:\d+: "):
        read_yaml_file(bad)
    deep = tmp_path / "deep.yaml"
    deep.write_text(DEEP_YAML)
    with pytest.raises(UserError) as info:
        read_yaml_file(deep)
    assert str(info.value) == f"{deep}: nested too deeply"


@pytest.mark.unit
def test_gateway_config_targets_and_policies_refuse_deep_nesting(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text(DEEP_YAML)
    for load in (load_targets, load_config):
        with pytest.raises(GatewayError, match="nested too deeply"):
            load(deep)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "deep.yaml").write_text("kind: json\nrules: " + DEEP_FLOW + "\n")
    with pytest.raises(GatewayError, match=r"deep\.yaml:1: invalid YAML: nested too deeply"):
        load_policies([policies])


@pytest.mark.unit
def test_firstboot_inputs_refuse_deep_nesting(tmp_path: Path) -> None:
    import base64

    token = TOKEN_PREFIX + base64.urlsafe_b64encode(DEEP_JSON.encode()).decode().rstrip("=")
    with pytest.raises(InvalidToken, match="join token: not valid base64url JSON"):
        parse_token(token)
    answers = tmp_path / "answers.yaml"
    answers.write_text(DEEP_YAML)
    with pytest.raises(FirstbootError, match="answers.yaml: not valid YAML: nested too deeply"):
        load_answers(answers)
    # The support bundle falls back to redacting such a file as text.
    assert redact_file("gateway.yaml", DEEP_YAML.encode()) == DEEP_YAML.encode()


# Duplicate keys: PyYAML and json silently keep the last one, so a second `plane_url:` or a
# second target entry key overrode the first without a word. Every loader refuses them now.
@pytest.mark.parametrize(
    ("name", "text", "load"),
    [
        (
            "gateway.yaml",
            "plane_url: https://a.example\nplane_url: https://b.example\n",
            lambda p: load_config(p),
        ),
        (
            "targets.yaml",
            "targets:\n  - name: a\n    url: https://10.0.0.1\n    url: https://10.0.0.2\n    kind: x\n",
            lambda p: load_targets(p),
        ),
    ],
)
def test_gateway_yaml_and_targets_yaml_refuse_duplicate_keys(
    tmp_path: Path, name: str, text: str, load: Callable[[Path], object]
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(GatewayError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}:") and "duplicate key" in message and "\n" not in message


def test_loads_yaml_and_loads_json_refuse_duplicate_keys() -> None:
    with pytest.raises(ParseError, match="duplicate key 'a'") as info:
        loads_yaml("x: 1\nnested:\n  a: 1\n  a: 2\n")
    assert info.value.line == 4
    with pytest.raises(ParseError, match="duplicate key 'a'"):
        loads_json('{"a": 1, "b": {"a": 1, "a": 2}}')
    assert loads_yaml("a: 1\nb: {a: 2}\n") == {"a": 1, "b": {"a": 2}}
    assert loads_json('{"a": 1, "b": {"a": 2}}') == {"a": 1, "b": {"a": 2}}
