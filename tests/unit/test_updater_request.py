"""The root helper's request handling: what the unprivileged gateway may ask, and every refusal."""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from updater.request import MAX_LINE, Helper, Refused, check_bundle_path, parse_request, serve, take_bundle

pytestmark = pytest.mark.unit

UPDATES = Path("/var/lib/gateway/updates")


def test_valid_requests_parse() -> None:
    r = parse_request(b'{"op": "install", "bundle": "%s/0.1.1.raucb", "downgrade": true}' % bytes(UPDATES))
    assert (r.op, r.bundle, r.downgrade) == ("install", UPDATES / "0.1.1.raucb", True)
    rc = parse_request(b'{"op": "install", "bundle": "/var/lib/gateway/updates/1.0~rc1.raucb"}')
    assert rc.downgrade is False
    assert parse_request(b'{"op": "reboot", "extra": 1}').op == "reboot"
    assert parse_request(b'{"op": "status"}').op == "status"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"", "not one line of JSON"),
        (b"\xff\xfe", "not one line of JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"install"', "not a JSON object"),
        (b'{"op": "shell", "cmd": "id"}', "op: expected one of install, reboot, status"),
        (b'{"op": null}', "op: expected one of"),
        (b'{"op": "install"}', "bundle: expected a path"),
        (b'{"op": "install", "bundle": 5}', "bundle: expected a path"),
        (b'{"op": "install", "bundle": "/var/lib/gateway/updates/a.raucb", "downgrade": "1"}', "downgrade:"),
        (b'{"op": "install", "bundle": "/var/lib/gateway/updates/a.raucb", "downgrade": 1}', "downgrade:"),
        (b"{" + b" " * MAX_LINE + b"}", "longer than"),
    ],
)
def test_bad_requests_are_refused(line: bytes, reason: str) -> None:
    with pytest.raises(Refused, match=reason):
        parse_request(line)


@pytest.mark.parametrize(
    "path",
    [
        "/etc/shadow",
        "/var/lib/gateway/key.pem",
        "/var/lib/gateway/updates/../key.pem",
        "/var/lib/gateway/updates/../../appliance/x.raucb",
        "/var/lib/gateway/updates/./0.1.1.raucb",
        "/var/lib/gateway/updates//0.1.1.raucb",
        "/var/lib/gateway/updates/sub/0.1.1.raucb",
        "var/lib/gateway/updates/0.1.1.raucb",
        "0.1.1.raucb",
        "/var/lib/gateway/updates/",
        "/var/lib/gateway/updates",
        "/var/lib/gateway/updates/0.1.1.raucb.part",
        "/var/lib/gateway/updates/.raucb",
        "/var/lib/gateway/updates/-x.raucb",
        "/var/lib/gateway/updates/a b.raucb",
        "/var/lib/gateway/updates/a\n.raucb",
        "/var/lib/gateway/updates/a\0.raucb",
        "/dev/sda",
        "/proc/self/fd/0",
        "",
    ],
)
def test_paths_outside_the_updates_directory_are_refused(path: str) -> None:
    with pytest.raises(Refused, match="^bundle: "):
        check_bundle_path(path)


def test_a_symlink_is_refused_and_left_alone(tmp_path: Path) -> None:
    updates, incoming = tmp_path / "updates", tmp_path / "incoming"
    updates.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("root's")
    (updates / "0.1.1.raucb").symlink_to(secret)
    with pytest.raises(Refused, match="without following links"):
        take_bundle(updates / "0.1.1.raucb", incoming)
    assert secret.read_text() == "root's" and (updates / "0.1.1.raucb").is_symlink()


def test_a_fifo_a_directory_and_a_hard_link_are_refused(tmp_path: Path) -> None:
    updates, incoming = tmp_path / "updates", tmp_path / "incoming"
    updates.mkdir()
    os.mkfifo(updates / "fifo.raucb")  # O_NONBLOCK: opening it must not hang the helper
    with pytest.raises(Refused, match="not a plain file"):
        take_bundle(updates / "fifo.raucb", incoming)
    (updates / "dir.raucb").mkdir()
    with pytest.raises(Refused, match="not a plain file"):
        take_bundle(updates / "dir.raucb", incoming)
    other = tmp_path / "other"
    other.write_bytes(b"x")
    os.link(other, updates / "linked.raucb")
    with pytest.raises(Refused, match="2 hard links"):
        take_bundle(updates / "linked.raucb", incoming)
    with pytest.raises(Refused, match="no such file"):
        take_bundle(updates / "missing.raucb", incoming)


def test_a_plain_file_is_copied_out_of_the_gateways_reach(tmp_path: Path) -> None:
    updates, incoming = tmp_path / "updates", tmp_path / "incoming"
    updates.mkdir()
    (updates / "0.1.1.raucb").write_bytes(b"bundle")
    taken = take_bundle(updates / "0.1.1.raucb", incoming)
    assert taken == incoming / "0.1.1.raucb" and taken.read_bytes() == b"bundle"
    assert not (updates / "0.1.1.raucb").exists()
    assert (incoming.stat().st_mode & 0o777) == 0o700 and (taken.stat().st_mode & 0o777) == 0o600
    (incoming / "stale.raucb").write_bytes(b"old")  # a power cut's leftover goes with the next one
    (updates / "0.1.2.raucb").write_bytes(b"x" * (3 * 1024 * 1024 + 5))
    assert take_bundle(updates / "0.1.2.raucb", incoming).read_bytes() == b"x" * (3 * 1024 * 1024 + 5)
    assert sorted(p.name for p in incoming.iterdir()) == ["0.1.2.raucb"]


class Recorder:
    def __init__(self, code: int = 0, out: str = "", err: str = "") -> None:
        self.calls: list[list[str]] = []
        self.seen: list[bytes] = []
        self.result = (code, out, err)

    def __call__(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        if len(argv) > 1 and Path(argv[1]).is_file():
            self.seen.append(Path(argv[1]).read_bytes())
        code, out, err = self.result
        return subprocess.CompletedProcess(list(argv), code, out, err)


def _helper(tmp_path: Path, run: Recorder) -> Helper:
    (tmp_path / "updates").mkdir(exist_ok=True)
    return Helper(updates_dir=tmp_path / "updates", incoming_dir=tmp_path / "incoming",
                  install_command=("update-install",), run=run)  # fmt: skip


def _serve(helper: Helper, request: object) -> tuple[int, dict[str, object]]:
    out = io.BytesIO()
    code = serve(helper, io.BytesIO(json.dumps(request).encode() + b"\n"), out)
    assert out.getvalue().count(b"\n") == 1
    return code, json.loads(out.getvalue())


def test_install_runs_the_entry_point_with_the_flag_and_consumes_the_file(tmp_path: Path) -> None:
    done = "installed 0.1.1 into slot B in 72 s; the next boot tries it once"
    run = Recorder(err=done + "\n")
    helper = _helper(tmp_path, run)
    (tmp_path / "updates" / "0.1.1.raucb").write_bytes(b"signed")
    bundle = str(tmp_path / "updates" / "0.1.1.raucb")
    code, reply = _serve(helper, {"op": "install", "bundle": bundle, "downgrade": True})
    assert code == 0 and reply == {"ok": True, "reason": done}
    assert run.calls == [["update-install", str(tmp_path / "incoming" / "0.1.1.raucb"), "--allow-downgrade"]]
    assert run.seen == [b"signed"]
    assert list((tmp_path / "incoming").iterdir()) == [] and not Path(bundle).exists()


def test_a_failed_install_answers_the_updaters_reason_with_the_gateways_path(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming" / "0.1.1.raucb"
    run = Recorder(code=1, err=f"some noise\n{incoming}: refused: signature verification failed: bad\n")
    helper = _helper(tmp_path, run)
    (tmp_path / "updates" / "0.1.1.raucb").write_bytes(b"forged")
    bundle = str(tmp_path / "updates" / "0.1.1.raucb")
    code, reply = _serve(helper, {"op": "install", "bundle": bundle, "downgrade": False})
    assert code == 1
    assert reply == {"ok": False, "reason": f"{bundle}: refused: signature verification failed: bad"}
    assert run.calls == [["update-install", str(incoming)]]


def test_refusals_run_nothing(tmp_path: Path) -> None:
    run = Recorder()
    helper = _helper(tmp_path, run)
    for request in ({"op": "install", "bundle": "/etc/shadow"}, {"op": "exec"}, ["reboot"]):
        code, reply = _serve(helper, request)
        assert code == 1 and reply["ok"] is False and str(reply["reason"]).startswith("refused: ")
    assert run.calls == []


def test_reboot_replies_first_then_reboots(tmp_path: Path) -> None:
    run = Recorder()
    code, reply = _serve(_helper(tmp_path, run), {"op": "reboot"})
    assert code == 0 and reply == {"ok": True, "reason": "rebooting"}
    assert run.calls == [["systemctl", "reboot"]]


def test_status_is_the_updaters_json(tmp_path: Path) -> None:
    status = {"booted": "B", "version": "0.1.1", "state": {"last": {"result": "installed"}}}
    code, reply = _serve(_helper(tmp_path, Recorder(out=json.dumps(status))), {"op": "status"})
    assert code == 0 and reply == {"ok": True, "reason": "", "status": status}
    code, reply = _serve(_helper(tmp_path, Recorder(out="not json")), {"op": "status"})
    assert reply == {"ok": False, "reason": "updater status: output is not JSON"}
