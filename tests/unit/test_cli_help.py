"""Every command (and sub-command) has --help with an example."""

from __future__ import annotations

import argparse

from fedge.cli import build_parser


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,), sub
                yield from _commands(sub, prefix + (name,))


def test_every_command_help_has_an_example():
    commands = list(_commands(build_parser()))
    assert len(commands) >= 20
    missing = [" ".join(path) for path, sub in commands if "Example:" not in sub.format_help()]
    assert not missing, f"commands without an Example: in --help: {missing}"
