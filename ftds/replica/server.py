"""The replica daemon: its two listening ports and who may say what on each.

- the **client port** takes client hellos and requests, nothing else;
- the **control port** takes the LFD (heartbeats), the RM and operators (views, leases, status)
  and the other replicas (the ordered stream). Heartbeats never share the client port;
- the **metrics port** (``metrics_port``, 0 = off) serves Prometheus ``/metrics`` over HTTP.

Anything malformed, unauthenticated or of an unknown type closes that one connection with an
error message; the state and every other connection are untouched.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from .. import faults
from ..config import ConfigError, Tunables, describe_changes, load_config
from ..gate import Gate
from ..metrics import Exporter, ReplicaCollector, Snapshot
from ..sdnotify import nobody_listens
from ..wire import Conn, Message, WireError, listen, require
from .core import _NO_CONN, Replica

log = logging.getLogger("ftds.replica")

CONTROL_ROLES = ("lfd", "rm", "admin", "member")


class ReplicaDaemon:
    def __init__(self, config_path: str, replica_id: str) -> None:
        self.config_path = config_path
        config = load_config(config_path)
        self.replica = Replica(config, replica_id, config.read_key())
        self.replica.tls = config.link_tls(replica_id)
        self.name = replica_id
        self.status_changed: Callable[[], None] = nobody_listens  # the run loop sets it
        self.replica.status_changed = self._status_changed
        self._servers: list[asyncio.base_events.Server] = []
        self._conns: set[Conn] = set()
        self._hb_count = 0
        spec = self.replica.spec
        self.client_gate = Gate(f"{replica_id} client port {spec.host}:{spec.port}",
                                self._tunables, "replica_client")
        self.control_gate = Gate(f"{replica_id} control port {spec.host}:{spec.control_port}",
                                 self._tunables, "replica_control")
        index = config.replica_ids.index(replica_id)
        self.metrics = Exporter(replica_id, self._metrics_snapshot, self._tunables,
                                setting=f"replicas[{index}].metrics", logger=log)
        self.metrics.registry.register(ReplicaCollector(replica_id, lambda: self.metrics.latest))

    @property
    def config(self):
        return self.replica.config

    def _tunables(self) -> Tunables:
        return self.config.tunables  # read at each use: a reload replaces the config

    def status_line(self) -> str:
        return self.replica.status_line()

    def _status_changed(self) -> None:
        self.status_changed()
        self.metrics.changed()  # a role or view change shows at the next scrape

    async def _metrics_snapshot(self) -> Snapshot:
        # The light status: the digest would hash the whole store once a second.
        status = self.replica.status(light=True)
        status["latency"] = self.replica.replies.latency()
        return status

    # ====================================================================== lifecycle ====
    async def start(self) -> None:
        spec = self.replica.spec
        self.replica.start()
        self._servers = [
            await listen(self._client_conn, spec.host, spec.port, tls=self.replica.tls),
            await listen(self._control_conn, spec.host, spec.control_port,
                         tls=self.replica.tls),
        ]
        if spec.metrics_port:  # logged and skipped when it cannot bind: metrics are optional
            await self.metrics.start(spec.host, spec.metrics_port)
        if faults.ACTIVE:
            log.critical("%s: PLANTED BUGS ON (FTDS_FAULT=%s): this replica is broken on "
                         "purpose, for testing the tests", spec.id, ",".join(sorted(faults.ACTIVE)))
        log.info("%s: serving clients on %s:%d, control on %s:%d (%s mode, pid %d); "
                 "i_am_ready = 0 until a view makes it ready", spec.id, spec.host, spec.port,
                 spec.host, spec.control_port, self.config.mode, os.getpid())

    async def stop(self) -> None:
        # Stop answering clients first, then the control side (the LFD sees us go last).
        await self.metrics.close()
        for server in self._servers:
            server.close()
        for conn in list(self.replica.client_links):
            conn.close()
        await self.replica.stop()
        for conn in list(self._conns):
            conn.close()
        for server in self._servers:
            await server.wait_closed()
        self.client_gate.close()
        self.control_gate.close()

    def reload(self) -> None:
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("%s: reload refused, keeping the running configuration: %s", self.name, exc)
            return
        old = self.config
        changes = describe_changes(old, new)
        fixed = [c for c in changes if c.split(":")[0] in ("mode", "replication", "key_file")]
        if fixed:
            log.error("%s: reload refused: %s need a restart; keeping the running configuration",
                      self.name, ", ".join(fixed))
            return
        if new.replica(self.name) != old.replica(self.name):
            log.error("%s: reload refused: my own address changed (needs a restart)", self.name)
            return
        if new.replica(self.name).metrics_port != old.replica(self.name).metrics_port:
            log.warning("%s: the metrics port changed: that takes a restart", self.name)
        self.replica.reconfigured(new)
        log.info("%s: configuration reloaded: %s", self.name,
                 "; ".join(changes) if changes else "no change")

    # ==================================================================== connections ====
    def _new_conn(self, on_message: Any, label: str, gate: Gate) -> Conn:
        r = self.replica
        conn = Conn(r.key, self.config.tunables.max_frame, r.id, lambda: r.epoch, on_message,
                    self._closed, label, gate)
        self._conns.add(conn)
        return conn

    def _closed(self, conn: Conn) -> None:
        self._conns.discard(conn)
        if conn.role == "client":
            self.replica.on_client_closed(conn)
        elif conn.role == "rm":
            self.replica.rm_conns.discard(conn)
        elif conn.role == "lfd":
            log.warning("%s: %s disconnected", self.name, conn.peer_id)

    def _client_conn(self) -> Conn:
        return self._new_conn(self._on_client_message, "client", self.client_gate)

    def _control_conn(self) -> Conn:
        return self._new_conn(self._on_control_message, "control", self.control_gate)

    def _on_client_message(self, conn: Conn, msg: Message) -> None:
        kind = msg["t"]
        if conn.role is None:
            if kind != "hello":
                raise WireError("protocol", f"expected hello first, got {kind!r}")
            conn.claim("client")
            self.replica.on_client_hello(conn, msg)
            conn.label = f"client {conn.peer_id}"
        elif kind == "req":
            try:
                self.replica.on_client_requests(conn, msg)
            except WireError:
                self.replica.stats.rejected_frames += 1  # refused before the applier saw it
                raise
        else:
            raise WireError("unknown_type", f"{kind!r} is not a client message")

    def _on_control_message(self, conn: Conn, msg: Message) -> None:
        kind = msg["t"]
        r = self.replica
        role = conn.role
        if role is None:
            if kind != "hello":
                raise WireError("protocol", f"expected hello first, got {kind!r}")
            self._control_hello(conn, msg)
        elif role == "lfd" and kind == "hb":
            self._heartbeat(conn, msg)
        elif role in ("rm", "admin") and kind == "view":
            r.on_view(conn, msg)
        elif role in ("rm", "admin") and kind == "status_req":
            conn.send("status", r.status())
        elif role == "rm" and kind == "lease":
            r.on_lease(conn, msg)
        elif role == "admin" and kind == "checkpoint_now":
            r.submit(r._send_checkpoint, _NO_CONN, {})
            conn.send("ok", {})
        elif role == "member" and kind == "ack":
            r.on_member_ack(conn, msg)
        elif role == "member" and kind in ("fetched", "cp_part"):
            r.on_fetched(conn, msg)
        else:
            raise WireError("unknown_type", f"{kind!r} is not accepted from a {role} connection")

    def _control_hello(self, conn: Conn, msg: Message) -> None:
        r = self.replica
        role = require(msg, "role", str)
        if role not in CONTROL_ROLES:
            raise WireError("protocol", f"unknown role {role!r}")
        # The name a certificate must carry for that role here (None: any of that role).
        names = {"member": msg.get("id"), "lfd": r.spec.lfd_id, "rm": "RM"}
        conn.claim(role, names.get(role))
        if role == "member":
            r.on_member_hello(conn, msg)
            return
        conn.peer_id = str(msg.get("id") or msg.get("from") or role)[:64]
        conn.label = f"{role} {conn.peer_id}"
        if role == "lfd":
            log.info("%s: registered with %s", r.id, conn.peer_id, extra={"kind": "membership"})
        elif role == "rm":
            r.rm_conns.add(conn)
        conn.send("welcome", r.status())

    def _heartbeat(self, conn: Conn, msg: Message) -> None:
        r = self.replica
        n = require(msg, "n", int)
        if r.config.trace.heartbeats:
            log.info("[%d] %s receives heartbeat from %s", n, r.id, conn.peer_id,
                     extra={"kind": "heartbeat"})
        conn.send("hb_ack", {"n": n, "i_am_ready": int(r.ready), "seq": r.sm.seq,
                             "stalled": r.applier_stalled(),
                             "role": r.role_name, "pid": os.getpid()})
