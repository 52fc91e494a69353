"""The console wizard: model (pure), flow (apply, try-and-revert, words for errors), urwid and line views."""
