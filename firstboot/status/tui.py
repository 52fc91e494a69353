"""The urwid status console: status lines refreshed in the background, and the menu's actions."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import urwid

from firstboot.console import Countdown, UiThread
from firstboot.status import model as status
from firstboot.support import create_bundle
from firstboot.system import System
from firstboot.wizard.flow import explain_error
from firstboot.wizard.model import BY_NAME, WizardModel
from firstboot.wizard.tui import PALETTE, FormPile, FormView, buttons
from gwcore.errors import UserError

log = logging.getLogger(__name__)
REFRESH_S = 5


class StatusConsole:
    """Main screen and menu; slow work (status, network, registration) runs in threads."""

    def __init__(self, system: System, revert_after: float) -> None:
        self.system = system
        self.revert_after = revert_after
        self.header = urwid.Text(" Gateway appliance")
        self.footer = urwid.Text(" Arrows/Tab: move   Enter: choose   Esc: back to status")
        self.frame = urwid.Frame(
            urwid.SolidFill(" "),
            header=urwid.AttrMap(self.header, "header"),
            footer=urwid.AttrMap(self.footer, "footer"),
        )
        self.loop = urwid.MainLoop(self.frame, PALETTE, unhandled_input=self._unhandled, handle_mouse=False)
        self.ui = UiThread(self.loop, "status-action")
        self.info_lines: list[str] = ["Reading status ..."]
        self.message: tuple[str, str] = ("", "")
        self.on_main = True
        self._countdown: Countdown | None = None
        self._main_pile: Any = None

    # ---------------------------------------------------------------- plumbing (firstboot.console)

    def post(self, fn: Callable[[], None]) -> None:
        self.ui.post(fn)

    def background(self, work: Callable[[], None], on_error: Callable[[UserError], None]) -> None:
        self.ui.background(work, on_error)

    def _unhandled(self, key: str) -> None:
        if key == "esc":
            self.show_main()

    def _refresh(self, *_: Any) -> None:
        def work() -> None:
            lines = status.render(status.gather(self.system))
            self.post(lambda: self._set_info(lines))

        self.background(work, lambda exc: self._set_info([f"status unavailable: {exc}"]))
        self.loop.set_alarm_in(REFRESH_S, self._refresh)

    def _set_info(self, lines: list[str]) -> None:
        self.info_lines = lines
        self.header.set_text(f" {lines[0]}" if lines else " Gateway appliance")
        if self.on_main:
            self.show_main(keep_focus=True)

    def body(self, rows: list[urwid.Widget]) -> None:
        self.frame.body = urwid.Padding(urwid.Filler(FormPile(rows), valign="top"), left=2, right=2)

    def say(self, text: str, attr: str = "") -> None:
        self.message = (attr, text)
        self.show_main()

    # ---------------------------------------------------------------- screens

    def show_main(self, keep_focus: bool = False) -> None:
        pile = self._main_pile if keep_focus and self.on_main else None
        old_focus = pile.focus_position if pile is not None else None
        self.on_main = True
        rows: list[urwid.Widget] = [urwid.Text(line) for line in self.info_lines[1:]]
        if self.message[1]:
            rows += [urwid.Divider(), urwid.Text(self.message)]
        rows.append(urwid.Divider())
        first = len(rows)
        for label, action in (
            ("Reconfigure network", self.network),
            ("Re-register with a new join token", self.register),
            ("Create a support bundle", self.bundle),
            ("Reboot", lambda: self.power("reboot")),
            ("Shut down", lambda: self.power("poweroff")),
        ):
            rows.append(buttons((label, action)))
        self._main_pile = FormPile(rows)
        # A refresh must not move the operator's selection.
        self._main_pile.focus_position = old_focus if old_focus is not None and old_focus >= first else first
        self.frame.body = urwid.Padding(urwid.Filler(self._main_pile, valign="top"), left=2, right=2)

    def network(self) -> None:
        current = status.current_settings(self.system)
        if current is None:
            self.say("No saved settings to start from: run `firstboot wizard`.", "error")
            return
        self.on_main = False
        model = WizardModel(values=current.raw(), sources=dict.fromkeys(current.raw(), "current"))
        screen = BY_NAME["network"]

        def submit() -> None:
            entries = form.entries()
            errors = model.validate(screen, entries)
            form.show_errors(errors)
            if errors:
                return
            model.store(screen, entries)
            settings = model.settings()
            self.body([urwid.Text("Applying the network settings and testing the plane ...")])

            def work() -> None:
                previous, problem = status.try_network(self.system, settings)
                self.post(lambda: self.ask_keep(settings, previous, problem))

            self.background(work, lambda exc: self.say(f"FAILED: {exc}", "error"))

        form = FormView(screen, model.entries(screen), submit, self.show_main)
        self.frame.body = urwid.Padding(form.widget, left=2, right=2)

    def ask_keep(self, settings: Any, previous: bytes | None, problem: str | None) -> None:
        verdict = (
            ("ok", "The plane is reachable.") if problem is None else ("error", f"NOT reachable: {problem}")
        )
        countdown = urwid.Text("")

        def finish(keep: bool) -> None:
            if self._countdown is not None:
                self._countdown.stop()
                self._countdown = None
            if keep:
                status.keep_network(self.system, settings)
                self.say("Network settings kept.", "ok")
            else:
                status.revert_network(self.system, previous)
                self.say("Network settings rolled back.", "error")

        self.body(
            [
                urwid.Text(verdict),
                countdown,
                buttons(("Revert", lambda: finish(False)), ("Keep", lambda: finish(True))),
            ]
        )
        self._countdown = Countdown(self.loop, self.revert_after, countdown.set_text, lambda: finish(False))
        self._countdown.start()

    def register(self) -> None:
        self.on_main = False
        model = WizardModel()
        screen = BY_NAME["plane"]

        def submit() -> None:
            entries = form.entries()
            errors = model.validate(screen, entries)
            form.show_errors(errors)
            if errors:
                return
            token = entries["gateway.join_token"].strip()
            self.body([urwid.Text("Registering ...")])

            def work() -> None:
                words = status.reregister_words(self.system, token)
                self.post(lambda: self.say(f"{words}; the gateway restarts.", "ok"))

            def failed(exc: UserError) -> None:
                why = explain_error(exc)
                self.say(f"FAILED: {why.words} What to do: {why.what_next}", "error")

            self.background(work, failed)

        form = FormView(screen, {}, submit, self.show_main)
        self.frame.body = urwid.Padding(form.widget, left=2, right=2)

    def bundle(self) -> None:
        self.say("Creating a support bundle ...")

        def work() -> None:
            path = create_bundle(self.system)
            self.post(lambda: self.say(f"Support bundle written to {path}", "ok"))

        self.background(work, lambda exc: self.say(f"FAILED: {exc}", "error"))

    def power(self, which: str) -> None:
        self.on_main = False
        label = {"reboot": "Reboot", "poweroff": "Shut down"}[which]

        def yes() -> None:
            self.system.run(status.POWER[which], check=False)
            self.say(f"{label} requested.")

        self.body(
            [
                urwid.Text(f"{label} the appliance now?"),
                urwid.Divider(),
                buttons(("No", self.show_main), ("Yes", yes), focus=0),
            ]
        )

    def run(self) -> int:
        self.show_main()
        self._refresh()
        self.loop.run()
        self.ui.close()
        return 0


def run_status_tui(system: System, *, revert_after: float = 60.0) -> int:
    """Run the status console until it is stopped (systemd restarts it)."""
    return StatusConsole(system, revert_after).run()
