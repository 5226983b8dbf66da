"""Log lines a person can follow: third-party tracebacks become one line unless --verbose."""

from __future__ import annotations

import io
import logging

from fedge.logs import OneLineThirdPartyErrors


def _emit(name: str, with_filter: bool) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if with_filter:
        handler.addFilter(OneLineThirdPartyErrors())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ConnectionResetError("client session take-over")
        except ConnectionResetError:
            logger.exception("error in stream_connected")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    return stream.getvalue()


def test_an_embedded_broker_traceback_becomes_one_line():
    text = _emit("amqtt.broker", with_filter=True)
    assert text == (
        "ERROR amqtt.broker: error in stream_connected "
        "(ConnectionResetError: client session take-over)\n"
    )


def test_fedge_tracebacks_and_unfiltered_ones_stay_whole():
    assert "Traceback" in _emit("fedge.orchestrator", with_filter=True)
    assert "Traceback" in _emit("amqtt.broker", with_filter=False)
