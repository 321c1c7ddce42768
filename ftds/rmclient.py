"""Asking the Replication Manager something: status, incidents, a budget reset, a forced primary."""

from __future__ import annotations

from typing import Any

from .config import ClusterConfig
from .wire import Conn, Message, connect


class RMUnreachable(ConnectionError):
    """The RM did not answer: whatever was asked may or may not have happened."""


class RMRefused(ConnectionError):
    """The RM answered with an error: the request is known to have failed.

    A ConnectionError still, as before, for the callers that catch those around every request.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


async def rm_request(config: ClusterConfig, key: bytes, kind: str,
                     fields: dict[str, Any] | None = None,
                     timeout: float = 3.0) -> dict[str, Any]:
    """Send ``kind`` to the RM and return its reply.

    Raises RMUnreachable when it does not answer and RMRefused on an ``error`` reply."""
    rm = config.rm
    where = f"the RM at {rm.host}:{rm.port}"
    try:
        conn = await connect(rm.host, rm.port, key, config.tunables.max_frame, "ctl",
                             timeout=timeout, label="ctl->RM", tls=config.link_tls("admin"),
                             expect="rm RM")
    except TimeoutError:
        raise RMUnreachable(f"{where} does not accept connections (waited {timeout:g}s)") \
            from None
    except OSError as exc:
        raise RMUnreachable(f"{where} does not answer ({exc.strerror or exc})") from exc
    hint = ("does it trust our certificate's CA?" if config.tls else
            "is its cluster key this one?")
    try:
        conn.send("hello", {"role": "admin"})
        welcome = await _reply(conn, where, timeout, hint)
        if welcome["t"] != "welcome":
            raise RMUnreachable(f"{where} answered hello with {welcome['t']!r}, not welcome")
        conn.send(kind, fields)
        return await _reply(conn, where, timeout, hint)
    finally:
        conn.close()


async def _reply(conn: Conn, where: str, timeout: float, hint: str) -> Message:
    try:
        msg = await conn.recv(timeout)
    except TimeoutError:
        raise RMUnreachable(f"{where} did not reply within {timeout:g}s") from None
    if msg is None:
        # An RM on another cluster key (or that refuses our certificate) drops us without a
        # word we could authenticate.
        raise RMUnreachable(f"{where} closed the connection ({hint})")
    if msg.get("t") == "error":
        raise RMRefused(str(msg.get("code")), str(msg.get("message")))
    return msg


async def reset_budgets(config: ClusterConfig, key: bytes) -> None:
    """Give every replica its full restart budget again (``ftds ctl reset-budget``, for all).

    Fault-injection runs do this before each fault: they kill replicas far more often than
    the budget allows a crash-looping replica, on purpose."""
    for replica in config.replica_ids:
        await rm_request(config, key, "reset_budget", {"replica": replica})
