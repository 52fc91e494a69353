"""The urwid wizard: views (forms, info, progress) and a controller; slow work runs in threads."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

import urwid

from firstboot import apply as applier
from firstboot.console import Countdown, UiThread
from firstboot.wizard.flow import ApplyFlow, Explained, explain, explain_error, handoff
from firstboot.wizard.model import BY_NAME, PASSWORD, PASSWORD2, SCREENS, Screen, plane_summary
from firstboot.wizard.session import Session, appliance_info
from gwcore.errors import UserError

log = logging.getLogger(__name__)

PALETTE = [
    ("header", "white,bold", "dark blue"),
    ("footer", "black", "light gray"),
    ("error", "light red,bold", ""),
    ("ok", "light green", ""),
    ("help", "dark cyan", ""),
    ("button", "", ""),
    ("focus", "black", "light gray"),
]
FORM_SCREENS = [s.name for s in SCREENS if s.fields]
STEP_NAMES = [s.name for s in SCREENS]


class FormPile(urwid.Pile):  # type: ignore[misc]
    """A pile where Tab/Enter move to the next field and Shift-Tab to the previous one."""

    def _move(self, delta: int) -> bool:
        idx: int = self.focus_position  # type: ignore[has-type]
        while 0 <= idx + delta < len(self.contents):
            idx += delta
            if self.contents[idx][0].selectable():
                self.focus_position = idx
                return True
        return False

    def keypress(self, size: tuple[int, ...], key: str) -> str | None:
        focus = self.focus.base_widget if self.focus is not None else None
        inner = focus.focus if isinstance(focus, urwid.Columns) else None
        if key == "enter" and isinstance(inner, urwid.RadioButton):
            inner.set_state(True)  # Enter picks the choice and moves on, like in the text fields
            return None if self._move(+1) else key
        if key == "tab" or (key == "enter" and isinstance(focus, urwid.Edit)):
            return None if self._move(+1) else key
        if key == "ctrl u" and isinstance(focus, urwid.Edit):
            focus.set_edit_text("")  # readline's kill-line: the quick way to retype a value
            return None
        if key == "shift tab":
            return None if self._move(-1) else key
        result: str | None = super().keypress(size, key)
        return result


def button(label: str, on_press: Callable[[], None]) -> urwid.Widget:
    """A button that calls on_press() (no widget argument)."""
    b = urwid.Button(label, on_press=lambda _w: on_press())
    return urwid.AttrMap(b, "button", focus_map="focus")


def buttons(*items: tuple[str, Callable[[], None]], focus: int = -1) -> urwid.Widget:
    """A row of buttons, focus on the last (the forward action) by default."""
    cols = urwid.Columns([(len(label) + 4, button(label, fn)) for label, fn in items], dividechars=2)
    cols.focus_position = focus % len(items)
    return cols


class FormView:
    """One screen of fields with an inline error line under each."""

    def __init__(
        self,
        screen: Screen,
        entries: dict[str, str],
        on_next: Callable[[], None],
        on_back: Callable[[], None],
    ):
        self.screen = screen
        self.edits: dict[str, urwid.Edit] = {}
        self.errors: dict[str, urwid.Text] = {}
        self.radios: list[urwid.RadioButton] = []
        self.extra = urwid.Text("", wrap="any")
        rows: list[urwid.Widget] = []
        width = max(len(f.label) for f in screen.fields) + 2
        for f in screen.fields:
            if f.key == "network.mode":
                group: list[urwid.RadioButton] = []
                static = entries.get(f.key) == "static"
                self.radios = [
                    urwid.RadioButton(group, "DHCP", not static),
                    urwid.RadioButton(group, "Static", static),
                ]
                cols = urwid.Columns(
                    [(width + 2, urwid.Text(f.label + ":")), (10, self.radios[0]), (12, self.radios[1])]
                )
                cols.focus_position = 2 if static else 1  # Enter keeps the current choice
                rows.append(cols)
            else:
                edit = urwid.Edit(
                    f"{f.label + ':':<{width}} ",
                    "" if f.secret_input else entries.get(f.key, ""),
                    mask="*" if f.blind else None,
                    wrap="any",
                )
                self.edits[f.key] = edit
                rows.append(urwid.AttrMap(edit, None, focus_map="focus"))
            if f.help:
                rows.append(urwid.AttrMap(urwid.Text(" " * (width + 1) + f.help), "help"))
            err = urwid.Text("", wrap="space")
            self.errors[f.key] = err
            rows.append(urwid.AttrMap(err, "error"))
        if screen.name == "plane":
            edit = self.edits["gateway.join_token"]
            urwid.connect_signal(edit, "postchange", lambda *_: self._show_plane())
            rows.append(self.extra)
            self._show_plane()
        rows += [urwid.Divider(), buttons(("Back", on_back), ("Next", on_next))]
        self.pile = FormPile(rows)
        self.widget = urwid.Filler(self.pile, valign="top")

    def _show_plane(self) -> None:
        ok, line = plane_summary(self.edits["gateway.join_token"].edit_text)
        self.extra.set_text(("ok" if ok else "help", line))

    def entries(self) -> dict[str, str]:
        """What the operator typed."""
        out = {key: edit.edit_text for key, edit in self.edits.items()}
        if self.radios:
            out["network.mode"] = "static" if self.radios[1].state else "dhcp"
        return out

    def fill(self, values: dict[str, str]) -> None:
        """Put answers into the fields (unattended runs)."""
        for key, value in values.items():
            if key in self.edits:
                self.edits[key].set_edit_text(value)
            elif key == "network.mode" and self.radios:
                self.radios[1 if value.lower() == "static" else 0].set_state(True)

    def show_errors(self, errors: dict[str, str]) -> None:
        """Inline messages; focus the first bad field."""
        for key, text in self.errors.items():
            text.set_text(errors.get(key, ""))
        keys = [f.key for f in self.screen.fields if f.key in errors]
        if keys and keys[0] in self.edits:
            target = self.edits[keys[0]]
            for idx, (w, _) in enumerate(self.pile.contents):
                if w.base_widget is target:
                    self.pile.focus_position = idx


class TuiController:
    """Drives the screens; the only place that touches the main loop."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self.header = urwid.Text("")
        self.footer = urwid.Text(
            " Tab/Enter: next field   Shift-Tab: previous   Ctrl-U: clear field   Esc: back"
        )
        self.frame = urwid.Frame(
            urwid.SolidFill(" "),
            header=urwid.AttrMap(self.header, "header"),
            footer=urwid.AttrMap(self.footer, "footer"),
        )
        self.loop = urwid.MainLoop(
            urwid.Padding(self.frame, left=1, right=1),
            PALETTE,
            unhandled_input=self._unhandled,
            handle_mouse=False,
        )
        self.ui = UiThread(self.loop, "firstboot-apply")
        # The screens, by name: the special ones, and a form for every screen with fields.
        self.screens: dict[str, Callable[[], None]] = {
            "welcome": self.show_welcome,
            "review": self.show_review,
            "apply": self.start_apply,
        }
        for screen in SCREENS:
            if screen.fields:
                self.screens[screen.name] = functools.partial(self.show_form, screen)
        self.current = "welcome"
        self.form: FormView | None = None
        self.busy = False
        self.result = 0
        self.flow: ApplyFlow | None = None
        self._countdown: Countdown | None = None
        self.message: str | None = None  # printed after the screen is restored

    # ---------------------------------------------------------------- plumbing (firstboot.console)

    def post(self, fn: Callable[[], None]) -> None:
        """Run fn on the UI thread (called from workers)."""
        self.ui.post(fn)

    def background(self, work: Callable[[], None]) -> None:
        """Run blocking work off the UI thread; its failure comes back explained by its reason code."""
        self.ui.background(work, lambda exc: self.failed(explain_error(exc)))

    def _unhandled(self, key: str) -> None:
        log.debug("unhandled key %r on %s", key, self.current)
        if key == "esc" and not self.busy:
            self.back()

    def _watch_other_console(self, *_: Any) -> None:
        # Both tty1 and the serial console run a wizard: when one finishes, the other steps aside.
        if not self.busy and applier.is_done(self.s.system):
            self.finish(0)
            return
        self.loop.set_alarm_in(2, self._watch_other_console)

    def finish(self, code: int) -> None:
        self.result = code
        raise urwid.ExitMainLoop()

    def set_body(self, widget: urwid.Widget, title: str) -> None:
        idx = STEP_NAMES.index(self.current) + 1 if self.current in STEP_NAMES else 0
        self.header.set_text(
            f" Gateway appliance setup  {idx}/{len(STEP_NAMES)}: {title}   v{self.s.model.version}"
        )
        self.frame.body = urwid.Padding(widget, left=1, right=1)

    # ---------------------------------------------------------------- screens

    def show(self, name: str) -> None:
        """Go to a screen by name (the table in __init__)."""
        self.current = name
        self.form = None
        self.screens[name]()

    def show_form(self, screen: Screen) -> None:
        self.form = FormView(screen, self.s.model.entries(screen), self.submit, self.back)
        self.set_body(self.form.widget, screen.title)
        if self.s.answers is not None:
            given = {f.key: v for f in screen.fields if (v := self.s.answer(f.key)) is not None}
            if PASSWORD in given:
                given[PASSWORD2] = given[PASSWORD]
            self.form.fill(given)
            self.loop.set_alarm_in(0.2, lambda *_: self.submit())

    def show_welcome(self) -> None:
        m = self.s.model
        rows: list[urwid.Widget] = [
            urwid.Text(f"Welcome. This appliance (version {m.version}) needs a few settings to join"),
            urwid.Text("your management plane. Nothing is changed until you confirm on the Review screen."),
            urwid.Divider(),
        ]
        rows += [urwid.Text(line) for line in appliance_info(self.s.system)]
        seeded = sorted(k for k, src in m.sources.items() if src != "wizard")
        if seeded:
            rows.append(urwid.Text(f"Pre-set by seeds: {', '.join(seeded)}"))
        if m.last_error:
            why = explain(m.last_error, m.last_reason)
            rows += [
                urwid.Divider(),
                urwid.AttrMap(urwid.Text(f"Last attempt failed: {m.last_error}"), "error"),
            ]
            rows.append(urwid.Text(f"What to do: {why.what_next}"))
        rows += [urwid.Divider(), buttons(("Start", lambda: self.show("network")))]
        self.set_body(urwid.Filler(FormPile(rows), valign="top"), "Welcome")
        if self.s.answers is not None:
            self.loop.set_alarm_in(0.2, lambda *_: self.show("network"))

    def submit(self) -> None:
        if self.form is None:
            return
        screen = self.form.screen
        entries = self.form.entries()
        errors = self.s.model.validate(screen, entries)
        self.form.show_errors(errors)
        if errors:
            if self.s.answers is not None:
                # Unattended: say what is wrong and stop instead of waiting for a person.
                self.message = f"answers file: {next(iter(errors.values()))}"
                self.loop.set_alarm_in(1.0, lambda *_: self.finish(1))
            return
        try:
            self.s.commit(screen, entries)
        except UserError as exc:
            self.form.show_errors({screen.fields[-1].key: str(exc)})
            return
        self.show(STEP_NAMES[STEP_NAMES.index(screen.name) + 1])

    def back(self) -> None:
        idx = STEP_NAMES.index(self.current)
        if idx > 0 and self.current != "apply":
            self.show(STEP_NAMES[idx - 1])

    def show_review(self) -> None:
        rows: list[urwid.Widget] = [urwid.Text("Check the settings, then choose Apply."), urwid.Divider()]
        for label, value, source in self.s.model.review_rows():
            note = f"   ({source})" if source and source != "wizard" else ""
            rows.append(urwid.Text(f"{label + ':':<24}{value}{note}", wrap="any"))
        rows += [urwid.Divider(), buttons(("Back", self.back), ("Apply", lambda: self.show("apply")))]
        self.set_body(urwid.Filler(FormPile(rows), valign="top"), "Review")
        if self.s.answers is not None:
            self.loop.set_alarm_in(0.2, lambda *_: self.show("apply"))

    # ---------------------------------------------------------------- apply

    def start_apply(self) -> None:
        self.log_lines: list[urwid.Widget] = []
        self.apply_pile = urwid.Pile([])
        self.set_confirm([])
        self.set_body(urwid.Filler(self.apply_pile, valign="top"), "Apply")
        self.busy = True
        self.flow = ApplyFlow(
            self.s.system, self.s.model.settings(), simulate_register=self.s.simulate_register
        )
        flow = self.flow

        def work() -> None:
            problem = flow.try_network(self.progress)
            self.post(lambda: self.ask_keep(problem))

        self.background(work)

    def progress(self, line: str) -> None:
        """Thread-safe: append a progress line."""

        def add() -> None:
            self.log_lines.append(urwid.Text(line))
            self.set_confirm(self.confirm_widgets)

        self.post(add)

    def set_confirm(self, widgets: list[urwid.Widget]) -> None:
        """Redraw the apply screen: log lines, then the question or result; focus its button row.

        One flat pile, because a pile does not notice when a nested pile becomes selectable.
        """
        self.confirm_widgets = widgets
        items = [*self.log_lines, urwid.Divider(), *widgets]
        self.apply_pile.contents[:] = [(w, self.apply_pile.options()) for w in items]
        if widgets and widgets[-1].selectable():
            self.apply_pile.focus_position = len(items) - 1

    def ask_keep(self, problem: str | None) -> None:
        self.busy = False
        verdict = (
            ("ok", "The plane is reachable.") if problem is None else ("error", f"NOT reachable: {problem}")
        )
        countdown_text = urwid.Text("")
        self.set_confirm(
            [urwid.Text(verdict), countdown_text, buttons(("Revert", self.revert), ("Keep", self.keep))]
        )
        self._countdown = Countdown(self.loop, self.s.revert_after, countdown_text.set_text, self.revert)
        self._countdown.start()
        if self.s.answers is not None:
            keep = self.s.answers.confirm_network
            self.loop.set_alarm_in(0.3, lambda *_: self.keep() if keep else self.revert())

    def _stop_countdown(self) -> None:
        if self._countdown is not None:
            self._countdown.stop()
            self._countdown = None

    def revert(self) -> None:
        self._stop_countdown()
        self.set_confirm([])
        self.progress("Reverting the network settings ...")
        flow = self.flow
        assert flow is not None
        self.busy = True

        def work() -> None:
            flow.revert_network()
            self.post(lambda: self.after_revert())

        self.background(work)

    def after_revert(self) -> None:
        self.busy = False
        self.show("network")
        if self.form is not None:
            self.form.show_errors(
                {"network.mode": "Network settings were rolled back; check them and try again."}
            )

    def keep(self) -> None:
        self._stop_countdown()
        self.set_confirm([])
        self.busy = True
        flow = self.flow
        assert flow is not None

        def work() -> None:
            flow.finish(self.progress)
            self.post(self.done)

        self.background(work)

    def done(self) -> None:
        self.busy = False
        lines = [("ok", "First boot complete. The gateway is starting.")]
        if self.s.dry_run_root is not None:
            lines.append(("", f"Dry run: files written under {self.s.dry_run_root}"))
        self.set_confirm([*(urwid.Text(t) for t in lines), buttons(("Finish", lambda: self.finish(0)))])
        if self.s.answers is not None:
            self.loop.set_alarm_in(0.5, lambda *_: self.finish(0))

    def failed(self, why: Explained) -> None:
        self.busy = False
        self._stop_countdown()
        go = f"Go to {BY_NAME[why.screen].title}"
        self.set_confirm(
            [
                urwid.AttrMap(urwid.Text(f"FAILED: {why.words}"), "error"),
                urwid.Text(f"What to do: {why.what_next}"),
                buttons((go, lambda: self.show(why.screen))),
            ]
        )
        if self.s.answers is not None:
            self.message = f"{why.words} ({why.what_next})"
            self.loop.set_alarm_in(1.0, lambda *_: self.finish(1))

    # ---------------------------------------------------------------- run

    def run(self) -> int:
        self.show("welcome")
        if self.s.system.live:
            self.loop.set_alarm_in(2, self._watch_other_console)
        self.loop.run()
        self.ui.close()
        return self.result


def run_tui(session: Session) -> int:
    """Run the urwid wizard; returns the exit code."""
    controller = TuiController(session)
    code = controller.run()
    if controller.message:
        print(f"error: {controller.message}", file=sys.stderr)
    if code == 0 and (session.system.record_only or applier.is_done(session.system)):
        if session.dry_run_root is not None:
            print(f"Dry run: files written under {session.dry_run_root}")
        handoff(session.system, session.console)
    return code
