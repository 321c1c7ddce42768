"""Mutual TLS 1.3 on every link: contexts from the cluster file's ``tls`` section.

Each daemon and tool has one identity, ``<tls.dir>/<name>.crt`` and ``<name>.key``, issued by
the cluster's CA (``ftds pki``) with its role in the subject's OU and its name in the CN. Both
ends of every link present a certificate and check the other's against ``tls.ca`` (a bundle:
during a CA rotation it holds the old and the new CA) and, when given, ``tls.crl``.

The files are read again whenever they change, at the next connection: a listening port swaps
in fresh contexts from its TLS handshake callback, so renewed certificates, a rotated CA bundle
or a new revocation take effect without a restart (a connection already open keeps its keys).
"""

from __future__ import annotations

import contextlib
import os
import ssl
import threading
from dataclasses import dataclass

from .authz import CERT_ROLES
from .config import ConfigError, TlsSettings, secret_path


@dataclass(frozen=True)
class Identity:
    role: str
    name: str

    def __str__(self) -> str:
        return f"{self.role} {self.name}"


def check_identity(role: str | None, name: str | None, what: str) -> Identity:
    """The identity a subject's one OU (role) and one CN (name) state; ValueError if none."""
    roles = ", ".join(CERT_ROLES)
    if not role:
        raise ValueError(f"{what} states no role: its subject needs exactly one OU (one of "
                         f"{roles})")
    if role not in CERT_ROLES:
        raise ValueError(f"{what} states an unknown role {role!r} (OU); known: {roles}")
    if not name:
        raise ValueError(f"{what} states no name: its subject needs exactly one CN")
    return Identity(role, name)


def parse_peercert(peercert: dict | None) -> Identity:
    """check_identity for a verified peer certificate in ``ssl``'s dict form."""
    fields: dict[str, list[str]] = {}
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            fields.setdefault(key, []).append(value)

    def one(key: str) -> str | None:
        values = fields.get(key, [])
        return values[0] if len(values) == 1 else None

    return check_identity(one("organizationalUnitName"), one("commonName"),
                          "the peer's certificate")


def identity_of(peercert: dict | None) -> Identity | None:
    """parse_peercert, or None where the certificate states no ftds identity."""
    try:
        return parse_peercert(peercert)
    except ValueError:
        return None


class LinkTls:
    """The client and server contexts of one identity, refreshed when its files change."""

    def __init__(self, settings: TlsSettings, name: str, source: str) -> None:
        self.settings = settings
        self.name = name
        self.source = source
        self._lock = threading.Lock()
        self._stamp: tuple[float, ...] = ()
        self._client: ssl.SSLContext | None = None
        self._server: ssl.SSLContext | None = None
        self._refresh()
        # What listening ports are given: its handshake callback hands each new connection
        # the newest server context.
        self.listener = self._make(ssl.PROTOCOL_TLS_SERVER)
        self.listener.sni_callback = self._pick_server_context

    # -- files -----------------------------------------------------------------------------
    def _paths(self) -> tuple[str, ...]:
        s = self.settings
        key = secret_path(s.key(self.name), f"{self.name}.key")
        return tuple(p for p in (s.ca, s.crl, s.cert(self.name), key) if p)

    def _files_stamp(self) -> tuple[float, ...]:
        stamp: list[float] = []
        for path in self._paths():
            try:
                st = os.stat(path)
            except OSError:
                stamp.append(-1.0)
                continue
            stamp += [st.st_mtime_ns, st.st_size, st.st_ino]
        return tuple(stamp)

    def _make(self, protocol: int) -> ssl.SSLContext:
        s = self.settings
        ctx = ssl.SSLContext(protocol)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_REQUIRED
        cert, key = s.cert(self.name), secret_path(s.key(self.name), f"{self.name}.key")
        try:
            ctx.load_verify_locations(cafile=s.ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{self.source}: tls.ca: cannot load {s.ca}: {_why(exc)}") from exc
        if s.crl:
            try:
                ctx.load_verify_locations(cafile=s.crl)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"{self.source}: tls.crl: cannot load {s.crl}: "
                                  f"{_why(exc)}") from exc
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{self.source}: tls.dir: cannot load {self.name}'s certificate "
                              f"{cert} and key {key}: {_why(exc)} (on the CA's host: `ftds "
                              f"pki issue --ca CA_DIR --out DIR --role ROLE --name "
                              f"{self.name} --host HOST`, then copy both to {s.dir})") from exc
        if protocol == ssl.PROTOCOL_TLS_CLIENT:
            ctx.check_hostname = True  # the server's certificate must name the host dialled
        else:
            ctx.num_tickets = 0  # no ftds peer resumes a session: no tickets to make or send
        return ctx

    def _refresh(self) -> None:
        stamp = self._files_stamp()
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            client, server = self._make(ssl.PROTOCOL_TLS_CLIENT), \
                self._make(ssl.PROTOCOL_TLS_SERVER)
            self._client, self._server, self._stamp = client, server, stamp

    # -- contexts --------------------------------------------------------------------------
    def client(self) -> ssl.SSLContext:
        """The context for the next outbound connection (files read again if they changed)."""
        try:
            self._refresh()
        except ConfigError:
            if self._client is None:
                raise  # a half-written file during a renewal: keep what worked
        assert self._client is not None
        return self._client

    def _pick_server_context(self, conn: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None,
                             _ctx: ssl.SSLContext) -> None:
        with contextlib.suppress(ConfigError):  # keep serving with the last good files
            self._refresh()
        if self._server is not None:
            conn.context = self._server


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


_cache: dict[tuple[TlsSettings, str, str], LinkTls] = {}
_cache_lock = threading.Lock()


def load_link_tls(settings: TlsSettings, name: str, source: str) -> LinkTls:
    """One LinkTls per (settings, identity) in a process; a bad file is a ConfigError."""
    key = (settings, name, source)
    with _cache_lock:
        link = _cache.get(key)
        if link is None:
            link = _cache[key] = LinkTls(settings, name, source)
        return link
