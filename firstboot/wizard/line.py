"""Line mode: one question per line, for dumb and serial terminals (drivable by pexpect)."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections.abc import Callable
from typing import TextIO

from firstboot import apply as applier
from firstboot.console import no_echo
from firstboot.errors import FirstbootError
from firstboot.wizard.flow import ApplyFlow, explain, explain_error, handoff
from firstboot.wizard.model import BY_NAME, PASSWORD, PASSWORD2, SCREENS, Field, Screen, plane_summary
from firstboot.wizard.session import Session, appliance_info
from gwcore.deploy import masked
from gwcore.errors import UserError

CLEAR = "-"


class OtherConsoleFinished(Exception):
    """First boot was completed on the other console while this one waited for input."""


class LineReader:
    """Lines straight from the file descriptor, so select() timeouts see all input (no hidden buffer)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        try:
            self.fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self.fd = None
        self.buf = b""

    def readline(self, timeout: float | None = None, poll: Callable[[], bool] | None = None) -> str | None:
        """A line ('' at EOF) or None on timeout; poll() is asked every second and may end the wait."""
        if self.fd is None:
            return self.stream.readline()
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buf:
            wait = 1.0 if poll is not None else None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                wait = left if wait is None else min(wait, left)
            ready, _, _ = select.select([self.fd], [], [], wait)
            if not ready:
                if poll is not None and poll():
                    raise OtherConsoleFinished
                continue
            chunk = os.read(self.fd, 4096)
            if not chunk:
                rest, self.buf = self.buf, b""
                return rest.decode("utf-8", "replace")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode("utf-8", "replace") + "\n"


class LineWizard:
    """The wizard as a sequence of prompts."""

    def __init__(
        self, session: Session, inp: TextIO = sys.stdin, out: TextIO = sys.stdout, *, watch_done: bool = True
    ) -> None:
        self.s = session
        self.inp = inp
        self.out = out
        self.reader = LineReader(inp)
        # Unconfigured, tty1 and the serial console both run a wizard: notice when the other one finishes.
        self.poll: Callable[[], bool] | None = (
            (lambda: applier.is_done(session.system)) if watch_done else None
        )

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def _readline(self, prompt: str, *, secret: bool = False, timeout: float | None = None) -> str | None:
        """One line of input; None on timeout. EOF is an error (nobody is there to answer)."""
        self.out.write(prompt)
        self.out.flush()
        with no_echo(self.inp) if secret else contextlib.nullcontext():
            line = self.reader.readline(timeout, self.poll)
        if line is None:
            self.say()
            return None
        if secret:
            self.say()
        if not line:
            raise FirstbootError("console input closed before the wizard finished")
        return line.rstrip("\r\n")

    def _shown(self, f: Field, value: str) -> str:
        if f.secret_input:
            return "********" if value else ""
        return masked(f.key, value) if f.masked and value else value

    def ask_field(self, f: Field, current: str) -> str:
        """Ask one field; Enter keeps the current value, '-' clears it. Blind fields are not echoed."""
        hint = f" ({f.help})" if f.help else ""
        prompt = f"{f.label}{hint} [{'' if f.secret_input else self._shown(f, current)}]: "
        answer = self.s.answer(f.key)
        if answer is not None:
            self.say(f"{prompt}{self._shown(f, answer)}   (from answers)")
            return answer
        got = self._readline(prompt, secret=f.blind) or ""
        if got.strip() == CLEAR:
            return ""
        if f.masked and got.strip():
            # Typed blind: say what arrived, masked, so a paste that went wrong is noticed.
            self.say(f"  {f.label}: {self._shown(f, got.strip())} ({len(got.strip())} characters)")
        return got if got.strip() else current

    def ask_screen(self, screen: Screen) -> None:
        """Ask a screen's fields until the screen validates, then store it."""
        self.say(f"== {screen.title} ==")
        entries = self.s.model.entries(screen)
        todo = list(screen.fields)
        while True:
            for f in todo:
                if (
                    f.key in ("network.address", "network.gateway")
                    and entries.get("network.mode") != "static"
                ):
                    entries[f.key] = ""
                    continue
                entries[f.key] = self.ask_field(f, entries.get(f.key, ""))
                if f.key == "gateway.join_token":
                    # What the token points at, before anything else is asked or applied.
                    self.say("  " + plane_summary(entries[f.key])[1])
            errors = self.s.model.validate(screen, entries)
            if not errors:
                self.s.commit(screen, entries)
                return
            for message in errors.values():
                self.say(f"  ! {message}")
            if self.s.answers is not None:
                raise FirstbootError(f"answers file: {next(iter(errors.values()))}")
            # A rejected password is typed again together with its repetition.
            bad = set(errors) | ({PASSWORD2} if PASSWORD in errors else set())
            todo = [f for f in screen.fields if f.key in bad]

    def confirm(self, prompt: str, *, timeout: float | None = None, answer: bool | None = None) -> bool:
        """A yes/no question; a timeout means no."""
        if answer is not None:
            self.say(f"{prompt} {'y' if answer else 'n'}   (from answers)")
            return answer
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            got = self._readline(prompt + " ", timeout=left)
            if got is None:
                return False
            if got.strip().lower() in ("y", "yes"):
                return True
            if got.strip().lower() in ("n", "no"):
                return False

    def review(self) -> str:
        """Show the settings; returns 'apply', 'back' or 'restart'."""
        self.say("== Review ==")
        for label, value, source in self.s.model.review_rows():
            self.say(f"  {label:<22} {value}" + (f"   ({source})" if source and source != "wizard" else ""))
        if self.s.answers is not None:
            self.say("Apply these settings? [y]es / [b]ack / [r]estart: y   (from answers)")
            return "apply"
        while True:
            got = (self._readline("Apply these settings? [y]es / [b]ack / [r]estart: ") or "").strip().lower()
            for word in ("apply", "back", "restart"):
                if got and (word.startswith(got) or (got == "y" and word == "apply")):
                    return word

    def apply(self) -> str | None:
        """Apply with try-and-revert; returns None when done, else the screen to go back to."""
        self.say("== Apply ==")
        flow = ApplyFlow(self.s.system, self.s.model.settings(), simulate_register=self.s.simulate_register)
        try:
            problem = flow.try_network(self.say)
            if problem:
                self.say(f"  The plane is NOT reachable: {problem}")
            keep = self.confirm(
                f"Keep these network settings? [y/n] (reverting in {self.s.revert_after:g} s)",
                timeout=self.s.revert_after,
                answer=None if self.s.answers is None else self.s.answers.confirm_network,
            )
            if not keep:
                flow.revert_network()
                self.say("Network settings rolled back.")
                return "network"
            flow.finish(self.say)
        except UserError as exc:
            why = explain_error(exc)
            self.say(f"FAILED: {why.words}")
            self.say(f"What to do: {why.what_next}")
            if self.s.answers is not None:
                raise FirstbootError(f"{why.words} ({why.what_next})") from None
            return why.screen
        return None

    def run(self) -> int:
        """The whole wizard; returns the exit code."""
        try:
            return self._run()
        except OtherConsoleFinished:
            self.say()
            self.say("First boot was completed on another console.")
            handoff(self.s.system, self.s.console)
            return 0

    def _run(self) -> int:
        m = self.s.model
        self.say(f"Gateway appliance setup - version {m.version}")
        for line in appliance_info(self.s.system):
            self.say(line)
        if m.last_error:
            self.say(f"Last attempt failed: {m.last_error}")
            self.say(f"What to do: {explain(m.last_error, m.last_reason).what_next}")
        self.say("Enter keeps the value in [brackets]; '-' clears it.")
        names = [s.name for s in SCREENS]
        i = names.index("network")
        while True:
            name = names[i]
            if name == "review":
                choice = self.review()
                i = {"apply": i + 1, "back": i - 1, "restart": names.index("network")}[choice]
                continue
            if name == "apply":
                back = self.apply()
                if back is None:
                    break
                i = names.index(back)
                continue
            self.ask_screen(BY_NAME[name])
            i += 1
        self.say("First boot complete. The gateway is starting.")
        if self.s.dry_run_root is not None:
            self.say(f"Dry run: files written under {self.s.dry_run_root}")
        handoff(self.s.system, self.s.console)
        return 0
