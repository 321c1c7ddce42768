"""Operator commands on the replicas' control ports: status, views, promotion, checkpoints.

These are what the Replication Manager does automatically; ``ftds ctl`` lets an operator (and the
tests) do it by hand: bootstrap epoch 1, promote a backup / move the sequencer with epoch + 1,
force a checkpoint, read every replica's status and digest.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from .config import ClusterConfig, ReplicaSpec
from .view import View
from .wire import Conn, connect


class CtlError(RuntimeError):
    """An operator command that cannot be carried out; the message says why, ``todo`` what
    to do instead."""

    def __init__(self, message: str, todo: str = "see ftds ctl status") -> None:
        super().__init__(message)
        self.todo = todo


async def refuse_past_a_running_rm(config: ClusterConfig, key: bytes) -> None:
    """Views by hand are for a cluster without a running RM. Past one, a view escapes its
    record (it could issue that epoch again, different) and its rules (who may lead)."""
    from .rmclient import RMRefused, RMUnreachable, rm_request

    try:
        status = await rm_request(config, key, "status_req", timeout=1.0)
    except RMUnreachable:
        return
    except RMRefused:
        status = {}
    role = "sequencer" if config.mode == "active" else "primary"
    raise CtlError(
        f"the RM manages this cluster's views (epoch {status.get('epoch', '?')}, {role} "
        f"{status.get('primary') or '-'}): a view sent past it could reuse an epoch the RM "
        "issues, or make a replica that lacks the data lead",
        "let the RM choose; 'ftds ctl force-primary ID --accept-data-loss' overrides it "
        "loudly; to send views by hand, stop the RM first (systemctl stop ftds-rm)")


async def admin_conn(config: ClusterConfig, key: bytes, spec: ReplicaSpec,
                     timeout: float = 2.0) -> Conn:
    conn = await connect(spec.host, spec.control_port, key, config.tunables.max_frame, "ctl",
                         timeout=timeout, label=f"ctl->{spec.id}",
                         tls=config.link_tls("admin"), expect=f"replica {spec.id}")
    try:
        await conn.request("hello", {"role": "admin", "id": "ctl"}, timeout=timeout,
                           expect=("welcome",))
    except BaseException:
        conn.close()
        raise
    return conn


async def _ask(config: ClusterConfig, key: bytes, spec: ReplicaSpec, kind: str,
               fields: dict[str, Any] | None, timeout: float) -> dict[str, Any] | None:
    try:
        conn = await admin_conn(config, key, spec, timeout)
    except (OSError, TimeoutError, ConnectionError):
        return None
    try:
        return await conn.request(kind, fields, timeout=timeout)
    except (OSError, TimeoutError, ConnectionError):
        return None
    finally:
        conn.close()


async def statuses(config: ClusterConfig, key: bytes,
                   timeout: float = 2.0) -> dict[str, dict[str, Any] | None]:
    """Each replica's status (None where it does not answer)."""
    results = await asyncio.gather(
        *(_ask(config, key, spec, "status_req", None, timeout) for spec in config.replicas))
    return {spec.id: result for spec, result in zip(config.replicas, results, strict=True)}


async def send_view(config: ClusterConfig, key: bytes, view: View,
                    targets: list[str] | None = None,
                    timeout: float = 2.0) -> dict[str, dict[str, Any] | None]:
    specs = [s for s in config.replicas if targets is None or s.id in targets]
    results = await asyncio.gather(
        *(_ask(config, key, spec, "view", {"view": view.to_wire()}, timeout) for spec in specs))
    return {spec.id: result for spec, result in zip(specs, results, strict=True)}


def current_view(status: dict[str, dict[str, Any] | None]) -> View | None:
    views = [View.from_wire(s["view"]) for s in status.values() if s and s.get("view")]
    return max(views, key=lambda v: v.key, default=None)


async def bootstrap(config: ClusterConfig, key: bytes, lease: float = 0.0) -> View:
    """Epoch 1 over every reachable fresh replica, the lowest id ordering."""
    status = await statuses(config, key)
    if current_view(status) is not None:
        raise CtlError("the cluster already has a view; use promote")
    fresh = [rid for rid, s in status.items() if s is not None and s["seq"] == 0]
    if not fresh:
        raise CtlError("no replica answers on its control port (are they running?)")
    view = View(1, 0, fresh[0], tuple(fresh), lease)
    await send_view(config, key, view, fresh)
    return view


def _current_view_or_why(status: dict[str, dict[str, Any] | None]) -> View:
    view = current_view(status)
    if view is not None:
        return view
    if not any(status.values()):
        raise CtlError("no replica answers on its control port (are they running?)")
    raise CtlError("no replica has a view yet; bootstrap first")


async def promote(config: ClusterConfig, key: bytes, primary: str | None = None,
                  exclude: tuple[str, ...] = (), lease: float = 0.0) -> View:
    """Epoch + 1 with a new primary/sequencer among the ready replicas that answer.

    Without ``primary`` the ready replica with the highest applied sequence is chosen.
    """
    status = await statuses(config, key, timeout=1.0)
    view = _current_view_or_why(status)
    ready = [rid for rid, s in status.items()
             if s is not None and rid in view.members and rid not in exclude
             and (s["i_am_ready"] or s["caught_up"])]
    if primary is None:
        if not ready:
            raise CtlError("no ready replica to promote")
        primary = max(ready, key=lambda rid: (status[rid]["seq"], -int(rid[1:])))  # type: ignore[index]
    elif primary not in ready:
        raise CtlError(f"{primary} is not a ready replica of {view.describe()}")
    new = View(view.epoch + 1, 0, primary, tuple(ready), lease)
    await send_view(config, key, new, [rid for rid, s in status.items() if s is not None])
    return new


async def set_members(config: ClusterConfig, key: bytes, members: list[str],
                      lease: float = 0.0) -> View:
    """Same epoch, new ready set (e.g. admit a caught-up newborn, drop a failed backup)."""
    status = await statuses(config, key, timeout=1.0)
    view = _current_view_or_why(status)
    if view.primary not in members:
        members = [view.primary, *members]
    new = View(view.epoch, view.version + 1, view.primary, tuple(members), lease)
    # The primary first: it must count a new member before anyone calls it ready.
    await send_view(config, key, new, [view.primary])
    await send_view(config, key, new, [r for r, s in status.items() if s and r != view.primary])
    return new


async def checkpoint_now(config: ClusterConfig, key: bytes) -> bool:
    status = await statuses(config, key, timeout=1.0)
    view = current_view(status)
    if view is None:
        return False
    return await _ask(config, key, config.replica(view.primary), "checkpoint_now", None,
                      2.0) is not None


async def force_primary(config: ClusterConfig, key: bytes, replica: str,
                        timeout: float = 10.0) -> dict[str, Any]:
    """Ask the RM to make ``replica`` the primary of a new epoch with whatever it holds.

    The RM's reply: ``{"replica", "epoch", "message"}``; an RM refusal raises RMRefused."""
    from .rmclient import rm_request

    return await rm_request(config, key, "force_primary",
                            {"replica": replica, "accept_data_loss": True}, timeout=timeout)


async def wait_for(predicate: Any, timeout: float, interval: float = 0.02) -> Any:
    """Poll ``predicate()`` (sync or async) until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise TimeoutError("condition not reached in time")
        await asyncio.sleep(interval)


def close_quietly(conn: Conn | None) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()
