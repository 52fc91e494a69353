"""What the wizard does besides asking: hash the password, apply with try-and-revert, explain failures."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from firstboot import apply as applier
from firstboot.apply import network
from firstboot.console import Progress, apply_lock, try_network
from firstboot.errors import FirstbootError, Reason
from firstboot.settings import Settings
from firstboot.system import System

log = logging.getLogger(__name__)


def hash_password(system: System, password: str) -> str:
    """A SHA-512 crypt(3) hash via openssl (Python 3.13 has no crypt module); the password goes on stdin."""
    if "\n" in password or "\r" in password:
        # openssl reads one line: the hash would be of the first line only.
        raise FirstbootError("admin.password: a password is one line")
    proc = system.run(
        ["openssl", "passwd", "-6", "-stdin"],
        input_text=password + "\n",
        always=True,
        why="hash the password",
    )
    hashed = proc.stdout.strip()
    if not hashed.startswith("$6$"):
        raise FirstbootError("openssl passwd did not return a $6$ hash")
    return hashed


@dataclass(frozen=True)
class Explained:
    words: str
    what_next: str
    screen: str  # where to send the operator
    refuse: bool = False  # possible interception: do not offer "try again"


# What the console says for each reason code: (what to do, the screen to go to). The message itself
# is shown as it is, except for an interception, which gets plain words of its own.
_ADVICE: dict[Reason, tuple[str, str]] = {
    Reason.INTERCEPTED: (
        "Do not continue. Check for a TLS-inspecting proxy or a wrong plane address; get a new token.",
        "plane",
    ),
    Reason.TOKEN: ("Create a new join token on the plane and paste it.", "plane"),
    Reason.PROXY_AUTH: ("Put user:password in the proxy URL.", "proxy"),
    Reason.PROXY: ("Check the proxy URL, or clear it for a direct connection.", "proxy"),
    Reason.DNS: ("Check the DNS servers on the Network screen.", "network"),
    Reason.UNREACHABLE: ("Check address, gateway and firewall (outbound HTTPS), or set a proxy.", "network"),
    Reason.OTHER: ("Review the settings and try again.", "review"),
}
_INTERCEPTED_WORDS = (
    "REFUSED: the plane's CA does not match the hash in the join token. Something between this "
    "appliance and the plane may be intercepting TLS."
)


def explain(message: str, reason: Reason = Reason.OTHER) -> Explained:
    """A failure from registration or apply, by its reason code: in words, what to do, where to go."""
    what_next, screen = _ADVICE[reason]
    if reason is Reason.INTERCEPTED:
        return Explained(_INTERCEPTED_WORDS, what_next, screen, refuse=True)
    return Explained(message, what_next, screen)


def explain_error(exc: BaseException) -> Explained:
    """explain() for an exception: a FirstbootError's own reason, OTHER for anything else."""
    reason = exc.reason if isinstance(exc, FirstbootError) else Reason.OTHER
    return explain(str(exc), reason)


class ApplyFlow:
    """Apply in two phases: network (try-and-revert) and the rest. Blocking: run it in a worker thread."""

    def __init__(self, system: System, settings: Settings, *, simulate_register: bool) -> None:
        self.system = system
        self.settings = settings
        self.plan = applier.steps(simulate_register=simulate_register)
        self._previous: bytes | None = None

    def try_network(self, progress: Progress) -> str | None:
        """Apply only the network step, then probe the plane; returns None if reachable, else the problem."""

        def apply_network() -> None:
            applier.apply(self.system, self.settings, plan=self.plan[:1], mark_done=False)

        self._previous, problem = try_network(self.system, self.settings, apply_network, progress)
        return problem

    def revert_network(self) -> None:
        """Roll the network back to what it was before try_network."""
        network.restore(self.system, self._previous)
        applier.forget(self.system, "network")

    def finish(self, progress: Progress) -> None:
        """Run the remaining steps (registration, config, start) and mark first boot done."""

        def report(step: applier.Step, event: str) -> None:
            labels = {"start": "...", "done": "done", "skip": "done", "fail": "FAILED"}
            if event != "start":
                progress(f"  {step.title}: {labels[event]}")

        with apply_lock(self.system):
            applier.apply(self.system, self.settings, plan=self.plan, progress=report)


def handoff(system: System, console: str | None) -> None:
    """After first boot: give the console to the status screen (tty1) or a login prompt (others)."""
    if not console:
        return
    if console == "tty1":
        unit = "firstboot-status.service"
    elif console.startswith(("ttyS", "hvc", "ttyAMA")):
        unit = f"serial-getty@{console}.service"
    else:
        unit = f"getty@{console}.service"
    system.run(["systemctl", "--no-block", "start", unit], check=False)


def dry_run_root() -> Path:
    """A scratch tree for --dry-run, with the files apply edits (an admin entry in /etc/shadow)."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="firstboot-dry-run-"))
    (root / "etc").mkdir()
    (root / "etc/shadow").write_text("root:*:20000:0:99999:7:::\nadmin:!:20000:0:99999:7:::\n")
    (root / "etc/shadow").chmod(0o640)
    return root
