"""The status console as a numbered menu, for terminals urwid cannot drive (a serial line)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from firstboot.console import no_echo
from firstboot.status.model import (
    POWER,
    current_settings,
    gather,
    keep_network,
    render,
    reregister_words,
    revert_network,
    try_network,
)
from firstboot.support import create_bundle
from firstboot.system import System
from firstboot.wizard.line import LineWizard
from firstboot.wizard.model import BY_NAME, WizardModel
from firstboot.wizard.session import Session
from gwcore.deploy import masked
from gwcore.errors import UserError


def line_console(
    system: System, inp: TextIO = sys.stdin, out: TextIO = sys.stdout, *, revert_after: float = 60.0
) -> int:
    """A numbered menu for terminals urwid cannot drive."""

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    def do_register() -> None:
        out.write("New join token: ")
        out.flush()
        # Typed blind, like the wizard's: a join token is a credential until it is used.
        with no_echo(inp):
            token = inp.readline().strip()
        say()
        if token:
            say(f"Join token: {masked('gateway.join_token', token)} ({len(token)} characters)")
            say(reregister_words(system, token))

    def do_bundle() -> None:
        say(f"Support bundle written to {create_bundle(system)}")

    def power(which: str) -> Callable[[], None]:
        def act() -> None:
            system.run(POWER[which], check=False)

        return act

    def do_network() -> None:
        old = current_settings(system)
        if old is None:
            say("No saved settings: run the wizard first.")
            return
        model = WizardModel(values=old.raw(), sources=dict.fromkeys(old.raw(), "current"))
        wizard = LineWizard(
            Session(system=system, model=model, revert_after=revert_after), inp, out, watch_done=False
        )
        wizard.ask_screen(BY_NAME["network"])
        new = model.settings()
        previous, problem = try_network(system, new)
        say("The plane is reachable." if problem is None else f"The plane is NOT reachable: {problem}")
        if wizard.confirm(
            f"Keep these network settings? [y/n] (reverting in {revert_after:g} s)", timeout=revert_after
        ):
            keep_network(system, new)
            say("Kept.")
        else:
            revert_network(system, previous)
            say("Network settings rolled back.")

    actions: dict[str, tuple[str, Callable[[], None]]] = {
        "1": ("Reconfigure network", do_network),
        "2": ("Re-register with a new join token", do_register),
        "3": ("Create a support bundle", do_bundle),
        "4": ("Reboot", power("reboot")),
        "5": ("Shut down", power("poweroff")),
    }
    while True:
        for line in render(gather(system)):
            say(line)
        say()
        for key, (label, _) in actions.items():
            say(f"  {key}) {label}")
        say("  Enter) refresh")
        out.write("Choice: ")
        out.flush()
        choice = inp.readline()
        if not choice:
            return 0
        action = actions.get(choice.strip())
        if action is not None:
            try:
                action[1]()
            except UserError as exc:
                say(f"FAILED: {exc}")
