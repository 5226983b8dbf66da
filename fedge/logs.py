"""Logging set-up for entry points: human-readable lines by default, JSON with --log-json."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and exception text)."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def add_logging_flags(parser: argparse.ArgumentParser) -> None:
    """Give a (sub)command the common -v/-q/--log-json flags."""
    group = parser.add_argument_group("logging")
    group.add_argument("-v", "--verbose", action="store_true", help="debug-level logs")
    group.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    group.add_argument("--log-json", action="store_true", help="one JSON object per log line")


def configure_logging(
    *, verbose: bool = False, quiet: bool = False, json_format: bool = False
) -> None:
    """Configure the root logger once, for an entry point (library code never calls this)."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # paho and amqtt are chatty at INFO; keep them at warnings unless debugging.
    for noisy in ("amqtt", "transitions", "paho"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        handler.addFilter(OneLineThirdPartyErrors())


class OneLineThirdPartyErrors(logging.Filter):
    """The demo's embedded broker (amqtt) logs a traceback for routine events under load (a
    client session taken over after a keep-alive timeout): one line with the exception is what
    a person can follow; ``--verbose`` keeps the whole traceback."""

    PREFIXES = ("amqtt", "transitions")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.name.startswith(self.PREFIXES):
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True
