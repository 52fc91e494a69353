"""Benchmark: first-boot paths on the host (figures printed only, nothing asserted).

- `firstboot plan` and `firstboot run --dry-run` from a credentials dir (process start included);
- the line-mode wizard's good path typed through pexpect (dry run, no registration);
- the urwid wizard driven by an answers file in tmux (dry run);
- the line-mode wizard registering with a real `mgmtplane serve` on loopback.
Bounded: RUNS per figure, every child has a timeout.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pexpect  # noqa: E402
import yaml  # noqa: E402

from tests.integration.plane_helpers import running_plane  # noqa: E402
from tests.integration.wizard_helpers import Tmux, env, fake_token, make_root  # noqa: E402

RUNS = int(os.environ.get("FIRSTBOOT_BENCH_RUNS", "3"))


def timed(fn: Callable[[Path], None]) -> list[float]:
    out = []
    for _ in range(RUNS):
        with tempfile.TemporaryDirectory(prefix="fb-bench-") as tmp:
            started = time.monotonic()
            fn(Path(tmp))
            out.append(time.monotonic() - started)
    return out


def report(name: str, seconds: list[float]) -> None:
    spread = f"(min {min(seconds):.2f}, max {max(seconds):.2f}, n={len(seconds)})"
    print(f"{name:<52} median {statistics.median(seconds):6.2f} s  {spread}")


def cli(tmp: Path, *args: str, creds: dict[str, str]) -> None:
    d = tmp / "creds"
    d.mkdir(exist_ok=True)
    for key, value in creds.items():
        (d / key).write_text(value)
    root = make_root(tmp / "root") if not (tmp / "root").exists() else tmp / "root"
    subprocess.run(
        [sys.executable, "-m", "firstboot", "--root", str(root), *args],
        env=env(CREDENTIALS_DIRECTORY=str(d)),
        capture_output=True,
        check=True,
        timeout=60,
    )


def line_wizard(tmp: Path, token: str, *, dry_run: bool) -> None:
    root = make_root(tmp / "root")
    args = ["-m", "firstboot", "--root", str(root), "wizard", "--line"] + (["--dry-run"] if dry_run else [])
    child = pexpect.spawn(sys.executable, args, env=env(TERM="vt220"), encoding="utf-8", timeout=60)
    answers = {
        "Network mode": "",
        "DNS servers": "",
        "Host name": "gw-bench",
        "NTP servers": "",
        "Outbound proxy": "",
    }
    for prompt, value in answers.items():
        child.expect_exact(prompt)
        child.expect(r"\]: ")
        child.sendline(value)
    child.expect_exact("Join token")
    child.expect(r"\]: ")
    child.sendline(token)
    child.expect_exact("Plane URL")
    child.expect(r"\]: ")
    child.sendline("")
    for prompt in ("Admin SSH key", "Console password", "Repeat password"):
        child.expect_exact(prompt)
        child.expect(r"\]: ")
        child.sendline("benchpassword" if "assword" in prompt else "")
    child.expect_exact("[r]estart: ")
    child.sendline("y")
    child.expect_exact("Keep these network settings?")
    child.sendline("y")
    child.expect_exact("First boot complete.")
    child.expect(pexpect.EOF)
    child.close()
    if child.exitstatus != 0:
        raise RuntimeError(f"wizard exited {child.exitstatus}")


def tui_answers(tmp: Path) -> None:
    root = make_root(tmp / "root")
    answers = tmp / "answers.yaml"
    answers.write_text(yaml.safe_dump({"gateway.join_token": fake_token(), "network.hostname": "gw-bench"}))
    t = Tmux(tmp, ["--root", str(root), "wizard", "--dry-run", "--answers", str(answers)])
    try:
        if t.exit_code(timeout=60) != 0:
            raise RuntimeError(t.err_file.read_text())
    finally:
        t.close()


def main() -> int:
    creds = {"gateway.join_token": fake_token(), "network.hostname": "gw-bench"}
    report("firstboot plan (credentials)", timed(lambda t: cli(t, "plan", creds=creds)))
    report(
        "firstboot run --dry-run (credentials, all steps)",
        timed(lambda t: cli(t, "run", "--dry-run", creds=creds)),
    )
    report(
        "line wizard good path, typed via pexpect (dry run)",
        timed(lambda t: line_wizard(t, fake_token(), dry_run=True)),
    )
    if shutil.which("tmux"):
        report("urwid wizard driven by --answers in tmux (dry run)", timed(tui_answers))
    with (
        tempfile.TemporaryDirectory(prefix="fb-bench-plane-") as tmp,
        running_plane(Path(tmp) / "plane") as plane,
    ):
        report(
            "line wizard + real registration (loopback plane)",
            timed(lambda t: line_wizard(t, plane.token(), dry_run=False)),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
