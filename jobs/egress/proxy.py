"""The egress proxy: the sandbox's way to the package registries, and to nothing else.

A repository whose `.github/claude.yml` sets `network: {registries: true}` gets, for each session,
an HTTP proxy on a Unix socket in the session's control directory (beside the model gateway's).
The container still has no network: a second relay in the image exposes the socket on its
127.0.0.1, and the setup commands (and the agent) are pointed there with `HTTPS_PROXY` and
friends. The proxy lets through:

* `CONNECT host:443` to a name on the allowlist, and then tunnels the bytes both ways. It does
  NOT terminate TLS: the sandbox's TLS goes end to end to the registry, so the proxy sees only
  the name asked for (and can't see or change what is sent inside). It does read the client's
  first TLS message, and cuts the tunnel unless its server name (SNI) is the name asked for:
  registries sit on shared CDNs, whose addresses serve other sites to a handshake that names
  them. A network that intercepts TLS needs its CA in the image, as for any other client there.
* `GET`/`HEAD http://host/...` (absolute form, as proxies get it) to a name on the allowlist,
  forwarded and streamed back as it arrives: apt fetches from its mirrors over plain HTTP (its
  files are signed, not the channel).

Everything else is refused with a short plain-text reason: names not on the allowlist, IP
literals, `localhost`, ports other than 443 (tunnels) and 80 (plain HTTP), other methods, and any
name that resolves to an address on the worker's side of the world: loopback, private (10/8,
172.16/12, 192.168/16), shared/CGNAT (100.64/10, which also holds Alibaba's metadata service),
link-local (169.254/16: the cloud metadata services), multicast, reserved, and their IPv6
equivalents (unique-local fc00::/7, which holds AWS's fd00:ec2::254, link-local fe80::/10, and
IPv4 addresses wrapped in IPv6: mapped, 6to4, NAT64). A name is resolved once, every address is
checked, and the connection goes to a checked address: no second lookup an attacker's DNS could
answer differently (rebinding). Documentation ranges (192.0.2/24, 198.51.100/24, 203.0.113/24) are
not refused: they lead to nothing inside a worker's network, and some intercepting setups (this
project's own test machine) answer registry names with them.

When the worker itself must use a proxy (`HTTPS_PROXY`/`HTTP_PROXY`, honouring `NO_PROXY`, read
when the proxy is made), allowed connections go through it: `CONNECT host:443` to it for tunnels,
absolute-form requests for plain HTTP. The name is then resolved by that proxy, not here, so the
address rule is not checked (the name allowlist still is); only `http://` upstream proxies are
supported, with optional `user:password@` (sent as Basic `Proxy-Authorization`).

Bounds (`Timeouts`): a request head must arrive within `header`; a tunnel or forward that moves
no byte either way for `idle` is cut; at most `max_tunnels` connections are served at once
(each holds at most one upstream connection; more are answered 503), and connections beyond
four times that are closed on accept, so a sandbox can't tie up the worker's threads.

Each decision is logged (method, host, port; a plain request's path without its query string)
and recorded: `allowed` and `refused` list the distinct `host:port` targets in the order first
seen (plus "(malformed target)" and "(no TLS server name)" markers), for the session's final
comment; `summary()` words them. Refused names come from the sandbox: they are reduced to
hostname characters, but show them as code, not as text.

In the sandbox: a second relay listens on 127.0.0.1:8788 for `egress.sock`, and the setup
commands get `HTTPS_PROXY`/`https_proxy`/`HTTP_PROXY`/`http_proxy=http://127.0.0.1:8788` with
`NO_PROXY`/`no_proxy=127.0.0.1,localhost` (so the model gateway's relay is never proxied);
npm, yarn, pip, uv, curl and apt (`http_proxy`, or `Acquire::http::Proxy`) read those. Node's
own `fetch` ignores them before Node 24 (`NODE_USE_ENV_PROXY=1` there).

What this cannot stop: anything sent to an allowed registry inside TLS. An agent given an npm
token (say, by a prompt injection) can publish a package to registry.npmjs.org; the allowlist
narrows where data can go, it does not make the registries read-only.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import logging
import os
import re
import selectors
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

# What `network: {registries: true}` opens. Only names: no wildcard, so a registry's other
# services (uploads, web UIs, user content) stay closed.
DEFAULT_REGISTRIES: tuple[str, ...] = (
    # npm: package metadata and tarballs (`/<pkg>/-/<pkg>-<v>.tgz`) both come from here.
    "registry.npmjs.org",
    # Yarn classic's default registry: a mirror of npm's, named in yarn.lock `resolved` URLs.
    "registry.yarnpkg.com",
    # PyPI's index: the simple API (`/simple/<pkg>/`) pip and uv resolve against, and the JSON API.
    "pypi.org",
    # Where PyPI serves the wheels and sdists the index links to.
    "files.pythonhosted.org",
    # Debian's mirror network (a CDN): `debian` and, since bookworm, `debian-security` too.
    "deb.debian.org",
    # Debian security updates as older images (and some sources.list files) name them.
    "security.debian.org",
    # Ubuntu's main archive (amd64/i386; arm64 is on ports.ubuntu.com, not opened by default).
    "archive.ubuntu.com",
    # Ubuntu's security archive.
    "security.ubuntu.com",
)

CONNECT_PORT = 443  # the only port a tunnel may reach
HTTP_PORT = 80  # the only port a plain request may reach
PLAIN_METHODS = ("GET", "HEAD")  # all that fetching from a mirror over plain HTTP needs
MAX_RECORDED = 100  # distinct targets kept in `allowed` / `refused`
_CHUNK = 64 * 1024
_MAX_HEAD = 64 * 1024  # an upstream proxy's answer to CONNECT
_MAX_RECORD = 16384 + 2048  # a TLS record (RFC 8446 5.2)
_MAX_HELLO = 64 * 1024  # a ClientHello (post-quantum key shares make them ~2 KiB)

# Where a connection from the sandbox must never go. IPv4 addresses inside IPv6 ones (mapped,
# 6to4, NAT64) are unwrapped and checked as IPv4 first.
_BLOCKED: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.ip_network(net), why)
    for net, why in (
        ("0.0.0.0/8", "'this network'"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local (cloud metadata)"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/96", "unspecified, loopback or IPv4-compatible"),
        ("64:ff9b:1::/48", "local NAT64"),
        ("100::/64", "discard"),
        ("2001::/32", "Teredo"),
        ("fc00::/7", "unique-local (private)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

# Never passed on, in either direction: connection-level headers, and what we set ourselves.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_SHOWABLE = re.compile(r"[a-z0-9.*:\[\]-]{1,260}")

Address = tuple[str, int]
Resolver = Callable[[str, int], Iterable[Address]]


def resolve(host: str, port: int) -> list[Address]:
    """Every address `host` has for a TCP connection to `port` (the default resolver)."""
    found: list[Address] = []
    for *_, sockaddr in socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    ):
        address = (str(sockaddr[0]), port)
        if address not in found:
            found.append(address)
    return found


def blocked_address(address: str) -> str | None:
    """Why a connection must not go to `address` (an IP address), or None when it may."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "scoped IPv6"
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is None and ip in _NAT64:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None and (why := blocked_address(str(inner))):
            return why
    for network, why in _BLOCKED:
        if ip in network:
            return why
    return None


def normal_host(raw: str) -> str | None:
    """`raw` as a lower-case DNS name (no trailing dot), or None when it is not a plain name."""
    host = raw.lower()
    host = host[:-1] if host.endswith(".") else host
    if not host or len(host) > 253:
        return None
    labels = host.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return None
    return host


def _is_ip_like(host: str) -> bool:
    # Names getaddrinfo would read as an address: dotted quads, and the shorthands inet_aton
    # accepts (127.1, 2130706433, 0x7f.1) all end in a numeric label, which no real TLD does.
    last = host.rsplit(".", 1)[-1]
    return last.isdigit() or bool(re.fullmatch(r"0x[0-9a-f]*", last))


class Allowlist:
    """Exact host names and `*.suffix` patterns (which match below the suffix, not the suffix)."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.exact: frozenset[str]
        self.suffixes: tuple[str, ...]
        exact, suffixes = set(), []
        for entry in entries:
            wildcard = entry.startswith("*.")
            host = normal_host(entry[2:] if wildcard else entry)
            if host is None or _is_ip_like(host) or (wildcard and "." not in host):
                raise ValueError(f"not a host name or *.domain pattern: {entry!r}")
            if wildcard:
                suffixes.append("." + host)
            else:
                exact.add(host)
        self.exact = frozenset(exact)
        self.suffixes = tuple(suffixes)

    def __contains__(self, host: str) -> bool:
        return host in self.exact or host.endswith(self.suffixes)

    def __repr__(self) -> str:
        return f"Allowlist({sorted(self.exact) + ['*' + s for s in self.suffixes]!r})"


@dataclass(frozen=True)
class UpstreamProxy:
    """An `http://[user:password@]host:port` proxy that the worker's own traffic must use."""

    host: str
    port: int
    authorization: str | None = None

    @classmethod
    def parse(cls, url: str) -> UpstreamProxy:
        if "://" not in url:
            url = "http://" + url  # curl's reading of a bare host:port
        parts = urlsplit(url)
        if parts.scheme.lower() != "http" or not parts.hostname:
            raise ValueError("only http:// upstream proxies are supported")
        try:
            port = parts.port or 80
        except ValueError:
            raise ValueError("bad port in the upstream proxy's URL") from None
        authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(pair.encode()).decode()
        return cls(parts.hostname, port, authorization)

    def __repr__(self) -> str:  # never the credentials
        return f"UpstreamProxy({self.host!r}, {self.port})"


@dataclass(frozen=True)
class Upstreams:
    """The worker's proxies from its environment: for tunnels, for plain HTTP, and exceptions."""

    https: UpstreamProxy | None = None
    http: UpstreamProxy | None = None
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Upstreams:
        env = os.environ if environ is None else environ

        def get(name: str) -> str:
            return (env.get(name.lower()) or env.get(name.upper()) or "").strip()

        https, plain = get("https_proxy"), get("http_proxy")
        no_proxy = tuple(
            entry.strip().lower().lstrip("*").lstrip(".").split(":")[0] or "*"
            for entry in get("no_proxy").split(",")
            if entry.strip()
        )
        return cls(
            UpstreamProxy.parse(https) if https else None,
            UpstreamProxy.parse(plain) if plain else None,
            no_proxy,
        )

    def for_target(self, host: str, tunnel: bool) -> UpstreamProxy | None:
        proxy = self.https if tunnel else self.http
        if proxy is None:
            return None
        for entry in self.no_proxy:
            if entry == "*" or host == entry or host.endswith("." + entry):
                return None
        return proxy


class _Refused(Exception):
    def __init__(self, status: int, message: str, target: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.target = status, message, target


class _Failed(Exception):
    """An allowed connection that could not be made (502)."""


def _show(host: str, port: int | None = None) -> str:
    """A sandbox-chosen target as it may appear in a log or a comment."""
    text = host if port is None else f"{host}:{port}"
    return text if _SHOWABLE.fullmatch(text) else "(malformed target)"


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False  # `close` cuts every connection; it need not wait for their threads
    # A full Unix-socket backlog refuses at once (no SYN retry as with TCP), and package managers
    # open many connections together (npm: 15 by default, more with `maxsockets`).
    request_queue_size = 1024
    proxy: EgressProxy

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.proxy._admit_connection():
            log.warning("egress: too many connections; one closed on accept")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.proxy._release_connection()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.proxy._release_connection()

    def handle_error(self, request: object, client_address: object) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError | TimeoutError):
            log.debug("egress: connection failed: %s", type(exc).__name__)
            return
        log.error("egress: request failed\n%s", traceback.format_exc())


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive for plain requests (apt sends many on one)
    # Unbuffered: nothing past a request's head is read into a buffer, so a tunnel's first bytes
    # (or a pipelined next request) stay in the socket for whoever reads next.
    rbufsize = 0
    _slot = False

    def setup(self) -> None:
        super().setup()
        proxy = self.server.proxy
        proxy._track(self.connection, True)
        self._slot = proxy._take_slot()

    def finish(self) -> None:
        proxy = self.server.proxy
        try:
            super().finish()
        finally:
            if self._slot:
                proxy._give_slot()
            proxy._track(self.connection, False)

    def handle_one_request(self) -> None:
        self.connection.settimeout(self.server.proxy.timeouts.header)
        super().handle_one_request()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # decisions are logged by `_record`; the stdlib's lines would carry query strings

    def address_string(self) -> str:
        return "sandbox"

    # -- answering -----------------------------------------------------------------------

    def _refuse(self, status: int, message: str) -> None:
        body = f"egress proxy: {message}\n".encode()
        self.close_connection = True
        try:
            self.send_response_only(status)
            self.send_header("content-type", "text/plain; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.send_header("x-claudecluster-egress", "refused")
            self.send_header("connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            _drain(self.connection)
        except OSError:
            pass  # the sandbox hung up

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The stdlib's page echoes the request back: answer plainly, and with a status line even
        # when the request line was too broken to say which HTTP it speaks.
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = self.protocol_version
        self._refuse(code, HTTPStatus(code).phrase.lower())

    # -- tunnels -------------------------------------------------------------------------

    def do_CONNECT(self) -> None:  # noqa: N802 - stdlib naming
        proxy = self.server.proxy
        self.close_connection = True
        try:
            host, port = _connect_target(self.path)
            host, upstream = proxy._open("CONNECT", host, port, self._slot)
        except _Refused as refusal:
            return self._refuse(refusal.status, refusal.message)
        except _Failed as failure:
            return self._refuse(502, str(failure))
        with proxy._holding(upstream):
            try:
                self.send_response_only(200, "Connection established")
                self.end_headers()
                self.connection.settimeout(proxy.timeouts.header)
                hello, sni = _client_hello(self.connection)
            except (OSError, EOFError):
                return
            # The tunnel is for the name asked for: a TLS handshake naming another host would
            # reach whatever else the registry's CDN serves on the same addresses.
            if sni is None or normal_host(sni) != host:
                name = normal_host(sni) if sni else None
                shown = _show(name, port) if name else "(no TLS server name)"
                reason = f"the TLS handshake in a tunnel to {host} names another host"
                proxy._record(False, shown, reason, "CONNECT")
                return
            try:
                upstream.sendall(hello)
            except OSError:
                return
            proxy._splice(self.connection, upstream)

    # -- plain HTTP ----------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        proxy = self.server.proxy
        if self.request_version == "HTTP/0.9":
            self.close_connection = True
            return
        try:
            host, port, path = _absolute_target(self.path)
            if self.command not in PLAIN_METHODS:
                raise _Refused(
                    405,
                    f"only {' and '.join(PLAIN_METHODS)} are forwarded over plain HTTP",
                    _show(host, port),
                )
            length = self.headers.get("content-length", "0").strip()
            if length != "0" or "transfer-encoding" in self.headers:
                raise _Refused(400, "requests with a body are not forwarded", _show(host, port))
            host, upstream = proxy._open(self.command, host, port, self._slot, path=path)
        except _Refused as refusal:
            if refusal.target:
                proxy._record(False, refusal.target, refusal.message, self.command)
            return self._refuse(refusal.status, refusal.message)
        except _Failed as failure:
            return self._refuse(502, str(failure))
        with proxy._holding(upstream):
            self._forward(upstream, host, port, path)

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_GET  # noqa: N815

    def _forward(self, upstream: socket.socket, host: str, port: int, path: str) -> None:
        proxy = self.server.proxy
        via = proxy.upstreams.for_target(host, tunnel=False)
        conn = _Connected(upstream)
        target = f"http://{host}{'' if port == HTTP_PORT else f':{port}'}{path}" if via else path
        try:
            conn.putrequest(self.command, target, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host if port == HTTP_PORT else f"{host}:{port}")
            dropped = _hop_by_hop(self.headers) | {"content-length"}
            for key, value in self.headers.items():
                if key.lower() not in dropped:
                    conn.putheader(key, value)
            if via is not None and via.authorization:
                conn.putheader("Proxy-Authorization", via.authorization)
            conn.putheader("Connection", "close")
            conn.endheaders()
            response = conn.getresponse()
        except (OSError, ValueError, http.client.HTTPException) as exc:
            log.warning("egress: %s %s failed: %s", self.command, host, type(exc).__name__)
            return self._refuse(502, f"{host} could not be reached")
        self.connection.settimeout(proxy.timeouts.idle)
        try:
            self._relay_response(response)
        except (OSError, http.client.HTTPException) as exc:
            # Mid-body: the framing promised can no longer be kept; the client sees a short body.
            log.info("egress: %s %s cut: %s", self.command, host, type(exc).__name__)
            self.close_connection = True
        finally:
            response.close()

    def _relay_response(self, response: http.client.HTTPResponse) -> None:
        bodiless = self.command == "HEAD" or response.status in (204, 304) or response.status < 200
        self.send_response_only(response.status, response.reason)
        dropped = _hop_by_hop(response.msg)
        for key, value in response.getheaders():
            lower = key.lower()
            if lower in dropped or (lower == "content-length" and not bodiless):
                continue
            self.send_header(key, value)
        if bodiless:
            framing = None
        elif response.length is not None:
            framing = "length"
            self.send_header("content-length", str(response.length))
        elif response.chunked and self.request_version == "HTTP/1.1":
            framing = "chunked"
            self.send_header("transfer-encoding", "chunked")
        else:
            framing = "close"
            self.close_connection = True
        if self.close_connection:
            self.send_header("connection", "close")
        self.end_headers()
        if framing is None:
            return
        while chunk := response.read1(_CHUNK):
            self.wfile.write(
                b"%x\r\n%s\r\n" % (len(chunk), chunk) if framing == "chunked" else chunk
            )
        if framing == "chunked":
            self.wfile.write(b"0\r\n\r\n")
        elif framing == "length" and response.length:
            raise http.client.IncompleteRead(b"", response.length)  # the upstream closed early


def _hop_by_hop(headers: Message) -> set[str]:
    """The headers that end at this hop: the standard ones, and those `Connection` names."""
    named = {
        name.strip().lower()
        for value in headers.get_all("connection") or ()
        for name in value.split(",")
    }
    return named | _HOP_BY_HOP


class _Connected(http.client.HTTPConnection):
    """An `HTTPConnection` over a socket already connected (to a checked address)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__("egress.invalid")
        self.sock = sock

    def connect(self) -> None:
        raise http.client.NotConnected("the connection was closed")


def _connect_target(target: str) -> tuple[str, int]:
    raw, sep, port_text = target.rpartition(":")
    if not sep or not port_text.isdigit() or len(port_text) > 5:
        raise _Refused(400, "CONNECT needs host:port")
    return raw, int(port_text)


def _absolute_target(target: str) -> tuple[str, int, str]:
    try:
        parts = urlsplit(target)
        port = parts.port
    except ValueError:
        raise _Refused(400, "malformed URL") from None
    if parts.scheme.lower() != "http" or not parts.netloc:
        raise _Refused(400, "this is a proxy: send absolute http:// URLs, or CONNECT for https")
    if "@" in parts.netloc:
        raise _Refused(400, "credentials in the URL are not forwarded")
    host = parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return host, HTTP_PORT if port is None else port, path


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        piece = sock.recv(size - len(data))
        if not piece:
            raise EOFError("the client hung up")
        data += piece
    return bytes(data)


def _client_hello(sock: socket.socket) -> tuple[bytes, str | None]:
    """The first TLS handshake message a client sends, as read, and the server name it holds.

    Reads whole records until the ClientHello is complete (it may span several); returns what
    it read so far and None as soon as the bytes are not a TLS handshake.
    """
    data = bytearray()
    handshake = bytearray()
    while True:
        header = _recv_exactly(sock, 5)
        data += header
        length = int.from_bytes(header[3:5], "big")
        if header[0] != 0x16 or header[1] != 3 or length > _MAX_RECORD:
            return bytes(data), None
        body = _recv_exactly(sock, length)
        data += body
        handshake += body
        if len(handshake) >= 4:
            need = 4 + int.from_bytes(handshake[1:4], "big")
            if handshake[0] != 1 or need > _MAX_HELLO:
                return bytes(data), None
            if len(handshake) >= need:
                return bytes(data), _server_name(bytes(handshake[:need]))


def _server_name(hello: bytes) -> str | None:
    """The host name of a ClientHello's server_name extension (RFC 6066), if it has one."""

    def u16(at: int) -> int:
        if at + 2 > len(hello):
            raise IndexError(at)
        return int.from_bytes(hello[at : at + 2], "big")

    try:
        at = 4 + 2 + 32  # handshake header, legacy_version, random
        at += 1 + hello[at]  # legacy_session_id
        at += 2 + u16(at)  # cipher_suites
        at += 1 + hello[at]  # legacy_compression_methods
        end = min(len(hello), at + 2 + u16(at))
        at += 2
        while at + 4 <= end:
            kind, size = u16(at), u16(at + 2)
            at += 4
            if kind == 0:  # server_name: a list of (type, name); type 0 is host_name
                item, stop = at + 2, min(end, at + size)
                while item + 3 <= stop:
                    name_type, name_size = hello[item], u16(item + 1)
                    item += 3
                    if name_type == 0:
                        return hello[item : item + name_size].decode("ascii")
                    item += name_size
                return None
            at += size
    except (IndexError, UnicodeDecodeError):
        return None
    return None


def _drain(connection: socket.socket) -> None:
    """Read what the client already sent (briefly), so closing does not reset our answer away."""
    deadline = time.monotonic() + 2
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_WR)
        taken = 0
        while taken < 1 << 20 and (left := deadline - time.monotonic()) > 0:
            connection.settimeout(left)
            if not (data := connection.recv(_CHUNK)):
                break
            taken += len(data)


def _cut(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


@dataclass(frozen=True)
class Timeouts:
    """Seconds the proxy waits: for a request head, on a connection that moves no byte either
    way, and for an upstream connection to open."""

    idle: float = 120
    header: float = 30
    connect: float = 15


TIMEOUTS = Timeouts()


class EgressProxy:
    """Serve the egress proxy for one session on `socket_path` until closed.

    `allow` holds exact host names and `*.domain` patterns (default: `DEFAULT_REGISTRIES`).
    `resolver(host, port)` gives the addresses to connect to (default: `resolve`, the system's
    resolver); `upstreams` the worker's own proxies (default: `Upstreams.from_env()`; pass
    `Upstreams()` for direct connections).

    `allow_private_addresses_for_tests` lifts the address rule alone (names, ports and methods
    are still checked), so that tests can point an allowed name at a server on 127.0.0.1 through
    their own resolver. Never set it anywhere else: it opens the worker's networks to the
    sandbox.
    """

    def __init__(
        self,
        socket_path: Path,
        allow: Iterable[str] = DEFAULT_REGISTRIES,
        *,
        resolver: Resolver | None = None,
        upstreams: Upstreams | None = None,
        timeouts: Timeouts = TIMEOUTS,
        max_tunnels: int = 64,
        allow_private_addresses_for_tests: bool = False,
    ) -> None:
        if max_tunnels < 1:
            raise ValueError("max_tunnels must be at least 1")
        self.socket_path = socket_path
        self.allowlist = Allowlist(allow)
        self.resolver: Resolver = resolver or resolve
        self.upstreams = Upstreams.from_env() if upstreams is None else upstreams
        self.timeouts = timeouts
        self.max_tunnels = max_tunnels
        self.max_connections = 4 * max_tunnels
        self._private_ok = allow_private_addresses_for_tests
        if self._private_ok:
            log.warning("egress: the private-address rule is lifted (test mode)")
        # Distinct `host:port` targets, first seen first; for the session's final comment.
        self.allowed: list[str] = []
        self.refused: list[str] = []
        self.refusal_reasons: dict[str, str] = {}
        self.allowed_count = 0
        self.refused_count = 0
        self._lock = threading.Lock()
        self._closed = False
        self._sockets: set[socket.socket] = set()
        self._active_connections = 0
        self._slots = threading.BoundedSemaphore(max_tunnels)
        self._server = _Server(str(socket_path), _Handler)
        self._server.proxy = self
        # The sandbox user must be able to connect; the directory around it is per session.
        os.chmod(socket_path, 0o666)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    def __repr__(self) -> str:
        return f"EgressProxy({str(self.socket_path)!r}, {self.allowlist!r})"

    def __enter__(self) -> EgressProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def summary(self) -> str:
        """One line for the session's final comment."""
        with self._lock:
            allowed, refused = list(self.allowed), list(self.refused)
            allowed_count, refused_count = self.allowed_count, self.refused_count
        if not allowed_count and not refused_count:
            return "Network: no connections to package registries."
        text = f"Network: {allowed_count} allowed"
        if allowed:
            text += " (" + ", ".join(f"`{t}`" for t in allowed) + ")"
        text += f", {refused_count} refused"
        if refused:
            text += " (" + ", ".join(f"`{t}`" for t in refused) + ")"
        return text + "."

    # -- the decision --------------------------------------------------------------------

    def _check(self, host_raw: str, port: int, tunnel: bool) -> tuple[str, list[Address] | None]:
        """The normalised host and where to connect (None: through the upstream proxy).

        Raises `_Refused`; the resolver is only asked about names the allowlist holds.
        """
        if host_raw.startswith("["):
            raise _Refused(
                403,
                "IP addresses are not allowed, only registry names",
                _show(host_raw.lower(), port),
            )
        host = normal_host(host_raw)
        if host is None:
            raise _Refused(400, "not a host name", _show(host_raw))
        shown = _show(host, port)
        if _is_ip_like(host):
            raise _Refused(403, "IP addresses are not allowed, only registry names", shown)
        if host == "localhost" or host.endswith(".localhost"):
            raise _Refused(403, "localhost is not allowed", shown)
        wanted = CONNECT_PORT if tunnel else HTTP_PORT
        if port != wanted:
            how = "tunnels (CONNECT)" if tunnel else "plain HTTP requests"
            raise _Refused(403, f"{how} may only reach port {wanted}", shown)
        if host not in self.allowlist:
            raise _Refused(
                403, f"{host} is not on this session's allowlist (package registries)", shown
            )
        if self.upstreams.for_target(host, tunnel) is not None:
            return host, None  # the upstream proxy resolves it
        try:
            addresses = list(self.resolver(host, port))
        except OSError:
            raise _Failed(f"{host} could not be resolved") from None
        if not addresses:
            raise _Failed(f"{host} could not be resolved")
        if not self._private_ok:
            for address, _ in addresses:
                if why := blocked_address(address):
                    raise _Refused(403, f"{host} resolves to a {why} address", shown)
        return host, addresses

    def _open(
        self, method: str, host_raw: str, port: int, slot: bool, path: str = ""
    ) -> tuple[str, socket.socket]:
        """The host (normalised) and a connection for an allowed request, recorded either way.

        Raises `_Refused` (recorded) or `_Failed`.
        """
        tunnel = method == "CONNECT"
        if self._closed:
            raise _Refused(503, "the session is over")
        try:
            host, addresses = self._check(host_raw, port, tunnel)
        except _Refused as refusal:
            self._record(False, refusal.target, refusal.message, method, path)
            raise _Refused(refusal.status, refusal.message) from None
        if not slot:
            log.warning("egress: %s %s refused: too many connections", method, _show(host, port))
            raise _Refused(503, f"too many connections at once (at most {self.max_tunnels})")
        self._record(True, _show(host, port), "", method, path)
        via = self.upstreams.for_target(host, tunnel)
        try:
            if via is not None:
                upstream = socket.create_connection((via.host, via.port), self.timeouts.connect)
                if tunnel:
                    self._tunnel_through(upstream, via, host, port)
            else:
                upstream = self._connect(addresses or [])
        except OSError as exc:
            log.warning("egress: %s %s failed: %s", method, _show(host, port), exc)
            raise _Failed(f"{host} could not be reached") from None
        upstream.settimeout(self.timeouts.idle)
        self._track(upstream, True)
        return host, upstream

    @contextlib.contextmanager
    def _holding(self, upstream: socket.socket) -> Iterator[socket.socket]:
        try:
            yield upstream
        finally:
            self._track(upstream, False)
            upstream.close()

    def _connect(self, addresses: Sequence[Address]) -> socket.socket:
        error: OSError = OSError("no address")
        for address in addresses:  # each one was checked: no second lookup
            try:
                return socket.create_connection(address, self.timeouts.connect)
            except OSError as exc:
                error = exc
        raise error

    def _tunnel_through(
        self, upstream: socket.socket, via: UpstreamProxy, host: str, port: int
    ) -> None:
        try:
            head = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            if via.authorization:
                head += f"Proxy-Authorization: {via.authorization}\r\n"
            upstream.sendall((head + "\r\n").encode())
            answer = bytearray()
            while not answer.endswith(b"\r\n\r\n"):  # byte by byte: nothing past the head
                byte = upstream.recv(1)
                if not byte or len(answer) > _MAX_HEAD:
                    raise OSError("the upstream proxy did not answer")
                answer += byte
            status = answer.split(b"\r\n", 1)[0].split()
            if len(status) < 2 or not status[0].startswith(b"HTTP/") or status[1] != b"200":
                code = status[1].decode("ascii", "replace") if len(status) > 1 else "?"
                raise OSError(f"the upstream proxy answered {code}")
        except BaseException:
            upstream.close()
            raise

    def _record(self, allowed: bool, target: str, reason: str, method: str, path: str = "") -> None:
        target = target or "(malformed target)"
        where = f"{method} {target}"
        if path:
            where += f" {path.split('?', 1)[0][:200]!r}"
        if allowed:
            log.info("egress: allowed %s", where)
        else:
            log.info("egress: refused %s: %s", where, reason)
        with self._lock:
            if allowed:
                self.allowed_count += 1
                if target not in self.allowed and len(self.allowed) < MAX_RECORDED:
                    self.allowed.append(target)
            else:
                self.refused_count += 1
                if target not in self.refused and len(self.refused) < MAX_RECORDED:
                    self.refused.append(target)
                    self.refusal_reasons[target] = reason

    # -- moving bytes --------------------------------------------------------------------

    def _splice(self, client: socket.socket, upstream: socket.socket) -> None:
        """Bytes both ways as they come, half-closes passed on, until both ends are done or idle."""
        other = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as selector:
            for sock in other:
                sock.settimeout(self.timeouts.idle)  # bounds a send to a peer that stops reading
                selector.register(sock, selectors.EVENT_READ)
            reading = 2
            while reading:
                events = selector.select(timeout=self.timeouts.idle)
                if not events:
                    log.info("egress: tunnel idle for %ss; closed", self.timeouts.idle)
                    return
                for key, _ in events:
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = source.recv(_CHUNK)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        return
                    if not data:
                        selector.unregister(source)
                        reading -= 1
                        with contextlib.suppress(OSError):
                            other[source].shutdown(socket.SHUT_WR)
                        continue
                    try:
                        other[source].sendall(data)
                    except OSError:
                        return

    # -- bookkeeping ---------------------------------------------------------------------

    def _admit_connection(self) -> bool:
        with self._lock:
            if self._active_connections >= self.max_connections:
                return False
            self._active_connections += 1
            return True

    def _release_connection(self) -> None:
        with self._lock:
            self._active_connections -= 1

    def _take_slot(self) -> bool:
        return self._slots.acquire(blocking=False)

    def _give_slot(self) -> None:
        self._slots.release()

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._sockets.add(sock)
            else:
                self._sockets.discard(sock)
            closed = self._closed
        if add and closed:
            _cut(sock)

    # -- the end -------------------------------------------------------------------------

    def close(self) -> None:
        """No new connection; every open one (tunnels included) is cut."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sockets = list(self._sockets)
        self.socket_path.unlink(missing_ok=True)
        if self._thread.is_alive():
            self._server.shutdown()
        for sock in sockets:
            _cut(sock)
        self._server.server_close()
