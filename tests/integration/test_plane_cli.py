"""The `mgmtplane` command line as users run it: one-line errors, IPv6, advertised URLs, token list."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest
from cryptography import x509

from firstboot.register.client import load_identity
from gwcore.enrol import parse_token
from tests.integration.plane_helpers import free_port, register, run, running_plane


def _one_line_error(result, text: str) -> None:
    assert result.returncode == 1, result
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert text in result.stderr
    assert "Traceback" not in result.stderr


def test_token_create_before_first_start(tmp_path: Path) -> None:
    result = run("mgmtplane", "token", "create", "--state-dir", str(tmp_path / "new"))
    _one_line_error(result, "no plane CA here (run 'mgmtplane serve --state-dir' once to create it)")


def test_bad_listen_and_busy_port(tmp_path: Path) -> None:
    _one_line_error(
        run("mgmtplane", "serve", "--listen", "nonsense", "--state-dir", str(tmp_path)), "--listen"
    )
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run("mgmtplane", "serve", "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path))
    _one_line_error(result, f"--listen: cannot bind 127.0.0.1:{port}")


def test_token_errors_and_list(tmp_path: Path) -> None:
    state = tmp_path / "plane"
    with running_plane(state) as plane:
        _one_line_error(
            run("mgmtplane", "token", "create", "--state-dir", str(state), "--ttl", "soon"), "--ttl"
        )
        _one_line_error(
            run("mgmtplane", "token", "create", "--state-dir", str(state), "--url", "http://x"),
            "--advertise-url",
        )
        token = plane.token()
        assert register(token, tmp_path / "gw").returncode == 0
        plane.token()
        listing = run("mgmtplane", "token", "list", "--state-dir", str(state)).stdout.splitlines()
    identity = load_identity(tmp_path / "gw")
    assert identity is not None
    assert len(listing) == 2
    assert any("used" in line and identity.gateway_id in line for line in listing)
    assert any("valid" in line for line in listing)
    (state / "tokens.json").write_text("{broken")
    _one_line_error(
        run("mgmtplane", "token", "create", "--state-dir", str(state)), "tokens.json: invalid JSON"
    )
    assert parse_token(token).plane_url == plane.url


def test_advertise_url_goes_into_tokens(tmp_path: Path) -> None:
    port = free_port()
    with running_plane(
        tmp_path / "plane", listen=f"127.0.0.1:{port}", advertise_url=f"https://localhost:{port}"
    ) as plane:
        token = plane.token()
        assert parse_token(token).plane_url == f"https://localhost:{port}"
        # The server certificate covers the advertised name, so pinned TLS with hostname checks passes.
        result = register(token, tmp_path / "gw")
    assert result.returncode == 0, result.stderr


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_listen_and_register(tmp_path: Path) -> None:
    with running_plane(tmp_path / "plane", listen="[::1]:0") as plane:
        assert plane.url.startswith("https://[::1]:")
        result = register(plane.token(), tmp_path / "gw")
    assert result.returncode == 0, result.stderr
    identity = load_identity(tmp_path / "gw")
    assert identity is not None and identity.plane_url == plane.url


def test_extra_sans(tmp_path: Path) -> None:
    with running_plane(tmp_path / "plane", extra=["--san", "plane.test", "--san", "192.0.2.10"]):
        cert = x509.load_pem_x509_certificate((tmp_path / "plane" / "server.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "plane.test" in sans.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("192.0.2.10") in sans.get_values_for_type(x509.IPAddress)


def test_token_for_a_name_the_cert_lacks_warns(tmp_path: Path) -> None:
    state = tmp_path / "plane"
    with running_plane(state, extra=["--san", "plane.test"]):
        ok = run(
            "mgmtplane", "token", "create", "--state-dir", str(state), "--url", "https://plane.test:8443"
        )
        odd = run(
            "mgmtplane", "token", "create", "--state-dir", str(state), "--url", "https://other.test:8443"
        )
    assert ok.returncode == 0 and "warning" not in ok.stderr
    assert odd.returncode == 0 and odd.stdout.startswith("GWJ1.")
    assert "warning: the plane's server certificate does not name other.test" in odd.stderr
