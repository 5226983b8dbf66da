"""Run the dashboard under uvicorn; decide whether a token is needed and make one."""

from __future__ import annotations

import ipaddress
import logging
import secrets
import socket
from collections.abc import Callable
from pathlib import Path

from fedge.protocol.errors import FedgeError

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16


class DashboardError(FedgeError):
    """The dashboard cannot start: a missing extra, a bad token or address."""


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(host: str, token: str | None) -> tuple[str | None, bool]:
    """(the token to require, whether it was generated here). A loopback bind needs none
    unless one is given; any other address always gets one."""
    if token:
        if len(token) < MIN_TOKEN_CHARS:
            raise DashboardError(
                f"the dashboard token is {len(token)} characters; use at least "
                f"{MIN_TOKEN_CHARS} (or leave it out to have one generated)"
            )
        return token, False
    if is_loopback(host):
        return None, False
    return secrets.token_urlsafe(24), True


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port (port 0: any free one), or a clear error."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        raise DashboardError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): pick another --port, "
            "or a --host this machine has"
        ) from None
    return sock


def serve(
    database: str | Path,
    *,
    host: str,
    port: int,
    token: str | None,
    run_id: str | None,
    poll_seconds: float,
    on_listening: Callable[[int], None] = lambda port: None,
) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM: uvicorn stops gracefully).
    ``on_listening(port)`` runs once the socket is bound (the port matters for port 0)."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        raise DashboardError(
            f"the dashboard needs starlette and uvicorn ({exc.name} is missing): "
            "pip install 'fedge[dashboard]'"
        ) from None
    app = create_app(database, token=token, run_id=run_id, poll_seconds=poll_seconds)
    sock = bind(host, port)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    on_listening(sock.getsockname()[1])
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
