"""gwcore.cli.run_command: how every CLI of the project ends."""

from __future__ import annotations

import argparse

import pytest

from gateway.errors import GatewayError
from gwcore.cli import run_command

ARGS = argparse.Namespace()


def raising(exc: BaseException):  # type: ignore[no-untyped-def]
    def func(args: argparse.Namespace) -> int:
        raise exc

    return func


def test_the_commands_own_code_is_returned() -> None:
    assert run_command(lambda args: 3, ARGS, GatewayError) == 3


def test_a_user_error_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    err = GatewayError("targets.yaml: targets[0].url: not a URL", "use https://host")
    assert run_command(raising(err), ARGS, GatewayError) == 1
    assert capsys.readouterr().err == "error: targets.yaml: targets[0].url: not a URL (use https://host)\n"


def test_an_os_error_names_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    err = PermissionError(13, "Permission denied", "/var/lib/gateway/key.pem")
    assert run_command(raising(err), ARGS, GatewayError) == 1
    assert capsys.readouterr().err == "error: /var/lib/gateway/key.pem: Permission denied\n"


def test_debug_shows_the_traceback() -> None:
    with pytest.raises(GatewayError):
        run_command(raising(GatewayError("bad")), ARGS, GatewayError, debug=True)
    with pytest.raises(FileNotFoundError):
        run_command(raising(FileNotFoundError(2, "No such file", "x")), ARGS, GatewayError, debug=True)


def test_other_exceptions_are_bugs_and_keep_their_traceback() -> None:
    with pytest.raises(ZeroDivisionError):
        run_command(raising(ZeroDivisionError()), ARGS, GatewayError)


def test_ctrl_c_is_130() -> None:
    assert run_command(raising(KeyboardInterrupt()), ARGS, GatewayError) == 130
