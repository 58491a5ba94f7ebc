"""The egress proxy on its Unix socket: what it lets through, what it refuses, and how.

No traffic leaves this machine except to the package registries (pypi.org, files.pythonhosted.org,
registry.npmjs.org) in the tests marked as such below. Everything else runs against servers on
127.0.0.1: the proxy reaches them only through a resolver the test injects, which maps an allowed
registry name to 127.0.0.1, and only with `allow_private_addresses_for_tests=True` (without it,
that very mapping is refused, as the first of those tests shows).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.client
import logging
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from jobs.egress.proxy import (
    DEFAULT_REGISTRIES,
    Allowlist,
    EgressProxy,
    Timeouts,
    UpstreamProxy,
    Upstreams,
    _server_name,
    blocked_address,
)
from tests.support import wait_for

NPM_HOST = "registry.npmjs.org"
APT_HOST = "deb.debian.org"
TIMEOUT = 15
APT_HELPER = "/usr/lib/apt/apt-helper"


# --------------------------------------------------------------------------- helpers


class Resolver:
    """A resolver the test controls, which remembers every question it was asked."""

    def __init__(self, table: dict[str, list[tuple[str, int]]] | None = None) -> None:
        self.table = table or {}
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[tuple[str, int]]:
        self.calls.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "unknown in this test")
        return self.table[host]


def read_head(sock: socket.socket) -> bytes:
    head = bytearray()
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise EOFError(f"connection closed mid-head: {bytes(head)!r}")
        head += byte
    return bytes(head)


def read_all(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def unix(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(TIMEOUT)
    sock.connect(str(path))
    return sock


def connect(proxy: EgressProxy, target: str) -> tuple[int, socket.socket]:
    """CONNECT `target` through the proxy: the status, and the socket (the tunnel if 200)."""
    sock = unix(proxy.socket_path)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    return status_of(read_head(sock)), sock


def refusal(proxy: EgressProxy, target: str) -> tuple[int, str]:
    status, sock = connect(proxy, target)
    with sock:
        return status, read_all(sock).decode()


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client to the proxy's socket; absolute-form URLs go out as they are given."""

    def __init__(self, path: Path) -> None:
        super().__init__("egress-proxy", timeout=TIMEOUT)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = unix(self.socket_path)


def get(proxy: EgressProxy, url: str, method: str = "GET", **headers: str):
    conn = UnixHTTPConnection(proxy.socket_path)
    conn.request(method, url, headers={"Host": url.split("/")[2], **headers})
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


class TcpShim:
    """127.0.0.1:<port> -> the proxy's socket, as the relay in the sandbox image does it."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._join, args=(conn,), daemon=True).start()

    def _join(self, conn: socket.socket) -> None:
        proxy = socket.socket(socket.AF_UNIX)
        try:
            proxy.connect(str(self.socket_path))
        except OSError:
            conn.close()
            return
        threading.Thread(target=self._pipe, args=(proxy, conn), daemon=True).start()
        self._pipe(conn, proxy)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for s in (src, dst):
                s.close()

    def close(self) -> None:
        # A close alone leaves the port listening while accept() blocks in its thread.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


# --------------------------------------------------------------------------- local servers


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for the registry names the local TLS server pretends to be."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NPM_HOST)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in (NPM_HOST, "pypi.org")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("cert")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class TlsServer:
    """A TLS server on 127.0.0.1 that answers each line with `hello <line>`; counts what it saw.

    With a barrier, it answers the first line of a connection only once that many connections
    are waiting together: proof that they are all open at the same time.
    """

    def __init__(self, cert: tuple[Path, Path], barrier: threading.Barrier | None = None) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(*cert)
        self.server_names: list[str | None] = []
        self.context.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
        self.barrier = barrier
        self.accepted = 0
        self.handshakes = 0
        self.bytes_before_handshake = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        with contextlib.suppress(OSError, threading.BrokenBarrierError):
            if not conn.recv(1, socket.MSG_PEEK):
                conn.close()
                return
            with self.context.wrap_socket(conn, server_side=True) as tls:
                self.handshakes += 1
                file = tls.makefile("rb")
                first = True
                while line := file.readline():
                    if first and self.barrier is not None:
                        self.barrier.wait()
                    first = False
                    tls.sendall(b"hello " + line)

    def close(self) -> None:
        # A close alone leaves the port listening while accept() blocks in its thread.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


@pytest.fixture
def tls_server(cert):
    server = TlsServer(cert)
    yield server
    server.close()


def client_context(cert: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert[0]))


def tls_hello(sock: socket.socket, cert, server_hostname: str = NPM_HOST) -> bytes:
    """A TLS session over the tunnel `sock`: one line out, the answer back."""
    tls = client_context(cert).wrap_socket(sock, server_hostname=server_hostname)
    tls.sendall(b"registry\n")
    return tls.makefile("rb").readline()


class Mirror(BaseHTTPRequestHandler):
    """A plain-HTTP apt mirror stand-in on 127.0.0.1."""

    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.server.seen.append((self.command, self.path, self.headers))  # type: ignore[attr-defined]
        body = b"Origin: Debian\n" * 100
        if self.path.startswith("/debian/stream"):
            # Streamed: the second half waits until the test has read the first through the proxy.
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for piece in (b"first half\n", b"second half\n"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
                self.server.release.wait(TIMEOUT)  # type: ignore[attr-defined]
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path.startswith("/debian/until-close"):
            self.send_response(200)
            self.send_header("connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("content-type", "application/octet-stream")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-mirror", "yes")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET  # noqa: N815


@pytest.fixture
def mirror():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    server.seen = []  # type: ignore[attr-defined]
    server.release = threading.Event()  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


class FakeUpstreamProxy:
    """A corporate proxy stand-in on 127.0.0.1: records each request head; CONNECTs anything to
    `tunnel_to`, answers plain requests itself (or answers everything with `status`)."""

    def __init__(self, tunnel_to: int | None = None, status: int = 200) -> None:
        self.tunnel_to = tunnel_to
        self.status = status
        self.heads: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT)
        with conn, contextlib.suppress(OSError, EOFError):
            head = read_head(conn)
            self.heads.append(head)
            if self.status != 200:
                conn.sendall(b"HTTP/1.1 %d No\r\ncontent-length: 0\r\n\r\n" % self.status)
            elif head.startswith(b"CONNECT "):
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                assert self.tunnel_to is not None
                with socket.create_connection(("127.0.0.1", self.tunnel_to)) as far:
                    threading.Thread(target=TcpShim._pipe, args=(far, conn), daemon=True).start()
                    TcpShim._pipe(conn, far)
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\n")
                conn.sendall(b"from corp")

    def close(self) -> None:
        # A close alone leaves the port listening while accept() blocks in its thread.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


# --------------------------------------------------------------------------- the proxy


@pytest.fixture
def make_proxy(tmp_path):
    """An egress proxy (direct: no upstream proxy) with options; closed after the test."""
    made: list[EgressProxy] = []

    def make(**options) -> EgressProxy:
        options.setdefault("upstreams", Upstreams())
        proxy = EgressProxy(tmp_path / f"e{len(made)}.sock", **options).__enter__()
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


@pytest.fixture
def egress_log(caplog):
    caplog.set_level(logging.DEBUG, logger="jobs.egress.proxy")
    return caplog


def test_socket_is_open_to_the_sandbox_user_and_gone_after_close(make_proxy):
    proxy = make_proxy()
    assert stat.S_IMODE(proxy.socket_path.stat().st_mode) == 0o666
    proxy.close()
    assert not proxy.socket_path.exists()
    with pytest.raises(OSError):
        unix(proxy.socket_path)


# --------------------------------------------------------------------------- refusals by name


def test_a_name_not_on_the_allowlist_is_refused_without_a_lookup(make_proxy, egress_log):
    resolver = Resolver()
    proxy = make_proxy(resolver=resolver)
    status, body = refusal(proxy, "evil.example:443")
    assert status == 403
    assert (
        body == "egress proxy: evil.example is not on this session's allowlist "
        "(package registries)\n"
    )
    assert resolver.calls == []  # never looked up, so never connected to
    assert proxy.refused == ["evil.example:443"]
    assert proxy.allowed == []
    assert "egress: refused CONNECT evil.example:443" in egress_log.text


def test_a_refused_name_never_reaches_the_upstream_proxy_either(make_proxy):
    corp = FakeUpstreamProxy()
    try:
        proxy = make_proxy(upstreams=Upstreams(https=UpstreamProxy("127.0.0.1", corp.port)))
        assert refusal(proxy, "github.com:443")[0] == 403
        assert refusal(proxy, "pypi.org.evil.example:443")[0] == 403
        time.sleep(0.2)
        assert corp.heads == []
    finally:
        corp.close()


@pytest.mark.parametrize(
    "target",
    [
        "127.0.0.1:443",
        "169.254.169.254:443",
        "10.0.0.1:443",
        "[::1]:443",
        "[fd00:ec2::254]:443",
        "2130706433:443",  # 127.0.0.1 as one number
        "127.1:443",
        "0x7f.1:443",
        "localhost:443",
        "LOCALHOST.:443",
        "metadata.localhost:443",
    ],
)
def test_ip_literals_and_localhost_are_refused(make_proxy, target):
    resolver = Resolver()
    # Even in test mode: it lifts the address rule only, never the rules on names.
    proxy = make_proxy(resolver=resolver, allow_private_addresses_for_tests=True)
    status, body = refusal(proxy, target)
    assert status == 403, body
    assert "not allowed" in body
    assert resolver.calls == []
    assert len(proxy.refused) == 1
    assert proxy.refused[0].startswith(target.lower().split(":")[0].rstrip("."))


def test_an_ip_literal_url_is_refused_for_plain_http_too(make_proxy):
    proxy = make_proxy(resolver=Resolver())
    status, _, body = get(proxy, "http://169.254.169.254/latest/meta-data/")
    assert status == 403
    assert b"IP addresses are not allowed" in body


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.1.1",
        "169.254.169.254",
        "100.100.100.200",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fd00:ec2::254",
        "fe80::1",
        "fec0::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "2002:7f00:1::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    ],
)
def test_a_name_resolving_to_an_internal_address_is_refused(make_proxy, address):
    resolver = Resolver({NPM_HOST: [(address, 443)]})
    proxy = make_proxy(resolver=resolver)
    status, body = refusal(proxy, f"{NPM_HOST}:443")
    assert status == 403
    assert body.startswith(f"egress proxy: {NPM_HOST} resolves to a ")
    assert resolver.calls == [(NPM_HOST, 443)]
    assert proxy.refused == [f"{NPM_HOST}:443"]


def test_every_address_is_checked_and_none_is_connected_to(make_proxy, tls_server):
    # One public address and one loopback one (the rebinding shape): all refused, and the
    # loopback server the name points at never sees a connection.
    resolver = Resolver({NPM_HOST: [("151.101.0.223", 443), ("127.0.0.1", tls_server.port)]})
    proxy = make_proxy(resolver=resolver)
    status, body = refusal(proxy, f"{NPM_HOST}:443")
    assert status == 403
    assert "resolves to a loopback address" in body
    assert tls_server.accepted == 0


@pytest.mark.parametrize(
    ("address", "blocked"),
    [
        ("151.101.0.223", False),  # PyPI's CDN
        ("104.16.0.35", False),  # npm's CDN
        ("2a04:4e42::223", False),
        ("::ffff:151.101.0.223", False),
        ("203.0.113.80", False),  # documentation range: not refused (see the module's notes)
        ("172.32.0.1", False),  # just past 172.16/12
        ("100.128.0.1", False),  # just past 100.64/10
        ("169.254.169.254", True),
        ("fe80::1%eth0", True),
        ("not an address", True),
    ],
)
def test_blocked_address(address, blocked):
    assert (blocked_address(address) is not None) is blocked


# --------------------------------------------------------------------------- ports


@pytest.mark.parametrize("port", [22, 80, 8080, 8443, 0, 65535])
def test_tunnels_reach_port_443_only(make_proxy, port):
    resolver = Resolver()
    proxy = make_proxy(resolver=resolver)
    status, body = refusal(proxy, f"{NPM_HOST}:{port}")
    assert status == 403
    assert body == "egress proxy: tunnels (CONNECT) may only reach port 443\n"
    assert resolver.calls == []


@pytest.mark.parametrize("port", [22, 443, 8080])
def test_plain_requests_reach_port_80_only(make_proxy, port):
    resolver = Resolver()
    proxy = make_proxy(resolver=resolver)
    status, _, body = get(proxy, f"http://{APT_HOST}:{port}/debian/")
    assert status == 403
    assert body == b"egress proxy: plain HTTP requests may only reach port 80\n"
    assert resolver.calls == []


def test_a_malformed_connect_is_refused(make_proxy):
    proxy = make_proxy(resolver=Resolver())
    for target in (NPM_HOST, f"{NPM_HOST}:https", f"{NPM_HOST}:99999", "bad_name!:443", ":443"):
        status, body = refusal(proxy, target)
        assert status in (400, 403), (target, body)


def test_garbage_is_answered_without_echoing_it(make_proxy):
    proxy = make_proxy()
    with unix(proxy.socket_path) as sock:
        sock.sendall(b"BREW coffee:443 HTCPCP/1.0 secret-token\r\n\r\n")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"secret" not in answer


# --------------------------------------------------------------------------- tunnels


def test_without_the_test_flag_a_name_pointed_at_loopback_is_refused(make_proxy, tls_server):
    proxy = make_proxy(resolver=Resolver({NPM_HOST: [("127.0.0.1", tls_server.port)]}))
    assert refusal(proxy, f"{NPM_HOST}:443")[0] == 403
    assert tls_server.accepted == 0


def test_an_allowed_name_is_tunnelled_end_to_end(make_proxy, tls_server, cert, egress_log):
    resolver = Resolver({NPM_HOST: [("127.0.0.1", tls_server.port)]})
    proxy = make_proxy(resolver=resolver, allow_private_addresses_for_tests=True)
    status, sock = connect(proxy, f"{NPM_HOST.upper()}.:443")  # case and root dot normalised
    with sock:
        assert status == 200
        # The TLS session is the client's own, verified against the server's certificate:
        # the proxy only moves bytes.
        assert tls_hello(sock, cert) == b"hello registry\n"
    assert tls_server.server_names == [NPM_HOST]
    assert resolver.calls == [(NPM_HOST, 443)]  # resolved once
    assert proxy.allowed == [f"{NPM_HOST}:443"]
    assert proxy.refused == []
    assert f"egress: allowed CONNECT {NPM_HOST}:443" in egress_log.text


def test_wildcard_entries_allow_names_below_them(make_proxy, tls_server, cert):
    resolver = Resolver({NPM_HOST: [("127.0.0.1", tls_server.port)]})
    proxy = make_proxy(
        allow=["*.npmjs.org"], resolver=resolver, allow_private_addresses_for_tests=True
    )
    status, sock = connect(proxy, f"{NPM_HOST}:443")
    with sock:
        assert status == 200
        assert tls_hello(sock, cert) == b"hello registry\n"
    assert refusal(proxy, "npmjs.org:443")[0] == 403
    assert refusal(proxy, "pypi.org:443")[0] == 403


def test_a_tls_handshake_naming_another_host_is_cut(make_proxy, tls_server, cert, egress_log):
    # Registries sit on shared CDNs: a tunnel opened for an allowed name must not carry a
    # handshake for another site on the same addresses.
    resolver = Resolver({NPM_HOST: [("127.0.0.1", tls_server.port)]})
    proxy = make_proxy(resolver=resolver, allow_private_addresses_for_tests=True)
    status, sock = connect(proxy, f"{NPM_HOST}:443")
    assert status == 200
    context = client_context(cert)
    context.check_hostname = False
    with pytest.raises((ssl.SSLError, OSError)):
        tls_hello(sock, cert, server_hostname="exfil.global.ssl.fastly.net")
    sock.close()
    wait_for(lambda: "TLS handshake" in egress_log.text, 5, what="the refusal")
    assert tls_server.handshakes == 0
    assert tls_server.server_names == []
    assert proxy.refused == ["exfil.global.ssl.fastly.net:443"]


def test_a_tunnel_that_does_not_start_with_tls_is_cut(make_proxy, tls_server):
    resolver = Resolver({NPM_HOST: [("127.0.0.1", tls_server.port)]})
    proxy = make_proxy(resolver=resolver, allow_private_addresses_for_tests=True)
    status, sock = connect(proxy, f"{NPM_HOST}:443")
    with sock:
        assert status == 200
        sock.sendall(b"GET / HTTP/1.1\r\nHost: internal\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):  # cut with our bytes unread
            assert read_all(sock) == b""
    assert tls_server.handshakes == 0
    assert proxy.refused == ["(no TLS server name)"]


def test_a_name_that_does_not_resolve_is_a_502(make_proxy):
    proxy = make_proxy(resolver=Resolver())
    status, body = refusal(proxy, f"{NPM_HOST}:443")
    assert status == 502
    assert body == f"egress proxy: {NPM_HOST} could not be resolved\n"


def test_ten_tunnels_at_once(make_proxy, cert):
    server = TlsServer(cert, barrier=threading.Barrier(10, timeout=TIMEOUT))
    try:
        resolver = Resolver({NPM_HOST: [("127.0.0.1", server.port)]})
        proxy = make_proxy(resolver=resolver, allow_private_addresses_for_tests=True)

        def one(_: int) -> bytes:
            status, sock = connect(proxy, f"{NPM_HOST}:443")
            with sock:
                assert status == 200
                return tls_hello(sock, cert)

        # The server answers no one until all ten are waiting: this passes only if the proxy
        # holds the ten tunnels open together.
        with ThreadPoolExecutor(10) as pool:
            assert list(pool.map(one, range(10))) == [b"hello registry\n"] * 10
        assert proxy.allowed_count == 10
        assert proxy.allowed == [f"{NPM_HOST}:443"]
    finally:
        server.close()


def test_connections_beyond_max_tunnels_are_refused(make_proxy, tls_server, cert):
    resolver = Resolver({NPM_HOST: [("127.0.0.1", tls_server.port)]})
    proxy = make_proxy(resolver=resolver, allow_private_addresses_for_tests=True, max_tunnels=2)
    held = [connect(proxy, f"{NPM_HOST}:443") for _ in range(2)]
    assert [status for status, _ in held] == [200, 200]
    status, body = refusal(proxy, f"{NPM_HOST}:443")
    assert status == 503
    assert "too many connections" in body
    held[0][1].close()

    def freed() -> bool:
        status, sock = connect(proxy, f"{NPM_HOST}:443")
        with sock:
            return status == 200 and tls_hello(sock, cert) == b"hello registry\n"

    wait_for(freed, 5, what="a freed slot")
    held[1][1].close()


def test_an_idle_tunnel_is_closed(make_proxy, tls_server, cert):
    resolver = Resolver({NPM_HOST: [("127.0.0.1", tls_server.port)]})
    proxy = make_proxy(
        resolver=resolver, allow_private_addresses_for_tests=True, timeouts=Timeouts(idle=0.5)
    )
    status, sock = connect(proxy, f"{NPM_HOST}:443")
    assert status == 200
    tls = client_context(cert).wrap_socket(sock, server_hostname=NPM_HOST)
    tls.sendall(b"one\n")
    assert tls.recv(100) == b"hello one\n"
    started = time.monotonic()
    with contextlib.suppress(ssl.SSLError, OSError):
        assert tls.recv(100) == b""  # silence on both sides: the proxy hangs up
    assert time.monotonic() - started < 5
    tls.close()


def test_a_silent_client_is_dropped_after_the_header_timeout(make_proxy):
    proxy = make_proxy(timeouts=Timeouts(header=0.3))
    with unix(proxy.socket_path) as sock:
        started = time.monotonic()
        assert read_all(sock) == b""
        assert time.monotonic() - started < 5


def test_connections_far_beyond_max_tunnels_are_closed_on_accept(make_proxy):
    proxy = make_proxy(max_tunnels=1, timeouts=Timeouts(header=30))  # 4 connections served at most
    idle = [unix(proxy.socket_path) for _ in range(4)]
    with unix(proxy.socket_path) as extra:
        started = time.monotonic()
        assert read_all(extra) == b""  # closed at once, not after the header timeout
        assert time.monotonic() - started < 5
    for sock in idle:
        sock.close()


def test_close_cuts_open_tunnels(make_proxy, tls_server, cert):
    resolver = Resolver({NPM_HOST: [("127.0.0.1", tls_server.port)]})
    proxy = make_proxy(resolver=resolver, allow_private_addresses_for_tests=True)
    status, sock = connect(proxy, f"{NPM_HOST}:443")
    assert status == 200
    tls = client_context(cert).wrap_socket(sock, server_hostname=NPM_HOST)
    tls.sendall(b"one\n")
    assert tls.recv(100) == b"hello one\n"
    proxy.close()
    with contextlib.suppress(ssl.SSLError, OSError):
        assert tls.recv(100) == b""
    tls.close()


# --------------------------------------------------------------------------- plain HTTP


@pytest.fixture
def apt_proxy(make_proxy, mirror):
    resolver = Resolver({APT_HOST: [("127.0.0.1", mirror.server_address[1])]})
    return make_proxy(resolver=resolver, allow_private_addresses_for_tests=True)


def test_plain_get_is_forwarded(apt_proxy, mirror, egress_log):
    status, headers, body = get(
        apt_proxy,
        f"http://{APT_HOST}/debian/dists/bookworm/Release?token=s3cret",
        **{
            "Proxy-Authorization": "Basic c2FuZGJveA==",
            "User-Agent": "Debian APT-HTTP/1.3",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "this hop only",
        },
    )
    assert status == 200
    assert body == b"Origin: Debian\n" * 100
    assert headers["x-mirror"] == "yes"
    method, path, sent = mirror.seen[0]
    assert (method, path) == ("GET", "/debian/dists/bookworm/Release?token=s3cret")
    assert sent["Host"] == APT_HOST
    assert sent["User-Agent"] == "Debian APT-HTTP/1.3"
    assert "Proxy-Authorization" not in sent
    assert "X-Hop" not in sent
    assert apt_proxy.allowed == [f"{APT_HOST}:80"]
    assert "allowed GET deb.debian.org:80 '/debian/dists/bookworm/Release'" in egress_log.text
    assert "s3cret" not in egress_log.text  # no query strings in the log


def test_plain_requests_keep_the_connection_alive(apt_proxy, mirror):
    conn = UnixHTTPConnection(apt_proxy.socket_path)
    for name in ("InRelease", "Release", "Release.gpg"):
        conn.request("GET", f"http://{APT_HOST}/debian/dists/bookworm/{name}")
        response = conn.getresponse()
        assert response.status == 200
        assert response.read() == b"Origin: Debian\n" * 100
    conn.request("HEAD", f"http://{APT_HOST}/debian/dists/bookworm/Release")
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"")
    assert response.getheader("content-length") == str(len(b"Origin: Debian\n" * 100))
    conn.close()
    assert [seen[:2] for seen in mirror.seen][-1] == ("HEAD", "/debian/dists/bookworm/Release")
    assert len(mirror.seen) == 4


def test_plain_answers_stream(apt_proxy, mirror):
    conn = UnixHTTPConnection(apt_proxy.socket_path)
    conn.request("GET", f"http://{APT_HOST}/debian/stream")
    response = conn.getresponse()
    assert response.status == 200
    # The mirror holds back the second half until we have read the first through the proxy.
    assert response.readline() == b"first half\n"
    mirror.release.set()
    assert response.read() == b"second half\n"
    conn.close()


def test_plain_answers_without_a_length_end_with_the_connection(apt_proxy):
    status, headers, body = get(apt_proxy, f"http://{APT_HOST}/debian/until-close")
    assert status == 200
    assert body == b"Origin: Debian\n" * 100
    assert headers.get("connection") == "close"


def test_a_chunked_answer_reaches_an_http_1_0_client_unchunked(apt_proxy, mirror):
    mirror.release.set()
    with unix(apt_proxy.socket_path) as sock:
        sock.sendall(f"GET http://{APT_HOST}/debian/stream HTTP/1.0\r\n\r\n".encode())
        head = read_head(sock)
        body = read_all(sock)
    assert status_of(head) == 200
    assert b"transfer-encoding" not in head.lower()
    assert body == b"first half\nsecond half\n"


def test_apt_fetches_through_the_proxy(apt_proxy, mirror, tmp_path):
    # Debian machines (CI's included) have apt: its absence is a broken machine, not a skip.
    assert Path(APT_HELPER).exists(), f"{APT_HELPER} is missing"
    # apt's own HTTP client, configured as the sandbox's setup commands would configure it.
    relay = TcpShim(apt_proxy.socket_path)
    try:
        for url, fetched in (
            (f"http://{APT_HOST}/debian/dists/bookworm/Release", True),
            ("http://ftp.example.org/debian/dists/bookworm/Release", False),
        ):
            out = tmp_path / "Release"
            result = subprocess.run(
                [
                    APT_HELPER,
                    "-o",
                    f"Acquire::http::Proxy={relay.url}",
                    "download-file",
                    url,
                    str(out),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert (result.returncode == 0) is fetched, result.stdout + result.stderr
            if fetched:
                assert out.read_bytes() == b"Origin: Debian\n" * 100
            else:
                assert "403  Forbidden" in result.stdout + result.stderr
    finally:
        relay.close()
    assert mirror.seen[0][2]["User-Agent"].startswith("Debian APT-HTTP/")
    assert apt_proxy.refused == ["ftp.example.org:80"]


def test_plain_requests_to_other_names_are_refused(apt_proxy, mirror):
    status, headers, body = get(apt_proxy, "http://example.com/debian/")
    assert status == 403
    assert headers["x-claudecluster-egress"] == "refused"
    assert (
        body == b"egress proxy: example.com is not on this session's allowlist "
        b"(package registries)\n"
    )
    assert mirror.seen == []


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_only_get_and_head_are_forwarded(apt_proxy, mirror, method):
    status, _, body = get(apt_proxy, f"http://{APT_HOST}/debian/", method=method)
    assert status == 405
    assert body == b"egress proxy: only GET and HEAD are forwarded over plain HTTP\n"
    assert mirror.seen == []


def test_a_request_with_a_body_is_refused(apt_proxy, mirror):
    conn = UnixHTTPConnection(apt_proxy.socket_path)
    conn.request("GET", f"http://{APT_HOST}/debian/", body=b"data", headers={"Host": APT_HOST})
    assert conn.getresponse().status == 400
    assert mirror.seen == []


@pytest.mark.parametrize(
    "target",
    ["/debian/", f"https://{APT_HOST}/debian/", f"http://user:pw@{APT_HOST}/debian/"],
)
def test_only_absolute_http_urls_are_forwarded(apt_proxy, mirror, target):
    with unix(apt_proxy.socket_path) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {APT_HOST}\r\n\r\n".encode())
        assert status_of(read_head(sock)) == 400
    assert mirror.seen == []


# --------------------------------------------------------------------------- upstream proxy


def test_upstreams_from_the_environment():
    upstreams = Upstreams.from_env(
        {
            "HTTPS_PROXY": "http://corp:p%40ss@proxy.corp:3128",
            "http_proxy": "proxy.corp:3129",
            "HTTP_PROXY": "http://ignored:1",
            "no_proxy": "localhost, .corp.example,pypi.org:443",
        }
    )
    assert upstreams.https == UpstreamProxy(
        "proxy.corp", 3128, "Basic " + base64.b64encode(b"corp:p@ss").decode()
    )
    assert upstreams.http == UpstreamProxy("proxy.corp", 3129)
    assert upstreams.for_target(NPM_HOST, tunnel=True) == upstreams.https
    assert upstreams.for_target(APT_HOST, tunnel=False) == upstreams.http
    assert upstreams.for_target("pypi.org", tunnel=True) is None
    assert upstreams.for_target("mirror.corp.example", tunnel=False) is None
    assert "p@ss" not in repr(upstreams)
    assert Upstreams.from_env({}) == Upstreams()
    with pytest.raises(ValueError, match="only http://"):
        Upstreams.from_env({"HTTPS_PROXY": "socks5://proxy.corp:1080"})


def test_the_worker_environment_is_read_by_default(tmp_path, monkeypatch):
    for name in ("https_proxy", "http_proxy", "no_proxy", "HTTP_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    with EgressProxy(tmp_path / "env.sock") as proxy:
        assert proxy.upstreams == Upstreams(https=UpstreamProxy("proxy.corp", 3128))


def test_tunnels_go_through_the_upstream_proxy(make_proxy, tls_server, cert):
    corp = FakeUpstreamProxy(tunnel_to=tls_server.port)
    try:
        resolver = Resolver()
        upstream = UpstreamProxy.parse(f"http://corp:p%40ss@127.0.0.1:{corp.port}")
        proxy = make_proxy(resolver=resolver, upstreams=Upstreams(https=upstream))
        status, sock = connect(proxy, f"{NPM_HOST}:443")
        with sock:
            assert status == 200
            assert tls_hello(sock, cert) == b"hello registry\n"
        head = corp.heads[0].decode()
        assert head.startswith(f"CONNECT {NPM_HOST}:443 HTTP/1.1\r\n")
        basic = base64.b64encode(b"corp:p@ss").decode()
        assert f"\r\nProxy-Authorization: Basic {basic}\r\n" in head
        assert resolver.calls == []  # the upstream proxy resolves the name
    finally:
        corp.close()


def test_plain_requests_go_through_the_upstream_proxy(make_proxy):
    corp = FakeUpstreamProxy()
    try:
        proxy = make_proxy(upstreams=Upstreams(http=UpstreamProxy("127.0.0.1", corp.port)))
        status, _, body = get(proxy, f"http://{APT_HOST}/debian/dists/bookworm/Release")
        assert (status, body) == (200, b"from corp")
        head = corp.heads[0].decode()
        assert head.startswith(f"GET http://{APT_HOST}/debian/dists/bookworm/Release HTTP/1.1")
        assert f"\r\nHost: {APT_HOST}\r\n" in head
    finally:
        corp.close()


def test_an_upstream_proxy_refusing_is_a_502(make_proxy):
    corp = FakeUpstreamProxy(status=407)
    try:
        proxy = make_proxy(upstreams=Upstreams(https=UpstreamProxy("127.0.0.1", corp.port)))
        status, body = refusal(proxy, f"{NPM_HOST}:443")
        assert status == 502
        assert body == f"egress proxy: {NPM_HOST} could not be reached\n"
    finally:
        corp.close()


# --------------------------------------------------------------------------- the parts


def test_the_allowlist():
    allow = Allowlist(["pypi.org", "*.example.org", "Files.PythonHosted.org."])
    assert "pypi.org" in allow
    assert "files.pythonhosted.org" in allow
    assert "a.example.org" in allow
    assert "a.b.example.org" in allow
    assert "example.org" not in allow
    assert "badexample.org" not in allow
    assert "pypi.org.evil.example" not in allow
    assert "evilpypi.org" not in allow
    for bad in ("*", "*.org", "127.0.0.1", "http://pypi.org", "pypi.org:443", "*pypi.org", ""):
        with pytest.raises(ValueError):
            Allowlist([bad])
    assert set(Allowlist(DEFAULT_REGISTRIES).exact) == set(DEFAULT_REGISTRIES)


def test_the_server_name_of_a_real_client_hello():
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="files.pythonhosted.org")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    record = outgoing.read()
    assert record[0] == 0x16
    assert _server_name(record[5:]) == "files.pythonhosted.org"
    assert _server_name(record[5:60]) is None  # cut short
    assert _server_name(b"") is None


def test_summary(make_proxy):
    proxy = make_proxy(resolver=Resolver())
    assert proxy.summary() == "Network: no connections to package registries."
    refusal(proxy, "evil.example:443")
    refusal(proxy, "evil.example:443")
    assert proxy.summary() == "Network: 0 allowed, 2 refused (`evil.example:443`)."
    assert proxy.refusal_reasons["evil.example:443"].startswith("evil.example is not on")


# --------------------------------------------------------------------------- real registries
# These reach pypi.org, files.pythonhosted.org and registry.npmjs.org through the proxy, with the
# system resolver and the address rule on.


def test_real_pypi_through_a_tunnel(make_proxy):
    proxy = make_proxy()
    status, sock = connect(proxy, "pypi.org:443")
    assert status == 200
    sock.settimeout(60)
    with ssl.create_default_context().wrap_socket(sock, server_hostname="pypi.org") as tls:
        conn = http.client.HTTPConnection("pypi.org")
        conn.sock = tls
        conn.request("GET", "/simple/six/", headers={"Accept": "text/html"})
        response = conn.getresponse()
        body = response.read()
    assert response.status == 200
    assert b"six-1.17.0-py2.py3-none-any.whl" in body
    assert proxy.allowed == ["pypi.org:443"]


@pytest.fixture
def shim(make_proxy):
    proxy = make_proxy()
    relay = TcpShim(proxy.socket_path)
    yield proxy, relay.url
    relay.close()


def test_real_curl_through_the_proxy(shim):
    proxy, url = shim
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "60",
            "--proxy",
            url,
            "-o",
            os.devnull,
            "-w",
            "%{http_code}",
            "https://pypi.org/simple/six/",
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.stdout == "200", result.stderr
    # And what the proxy refuses, curl reports as the proxy's refusal.
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--proxy", url, "https://github.com/"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "403" in result.stderr
    assert proxy.refused == ["github.com:443"]


def test_real_pip_download_through_the_proxy(shim, tmp_path):
    proxy, url = shim
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # this machine's pip.conf points at local indexes
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--index-url",
            "https://pypi.org/simple",
            "--cert",
            ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt",
            "--proxy",
            url,
            "--dest",
            str(tmp_path),
            "--disable-pip-version-check",
            "six==1.17.0",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "six-1.17.0-py2.py3-none-any.whl").exists()
    assert proxy.allowed == ["pypi.org:443", "files.pythonhosted.org:443"]
    assert proxy.refused == []


def test_real_npm_view_through_the_proxy(shim, tmp_path):
    assert shutil.which("npm"), "npm is missing (the test dependencies install with it)"
    proxy, url = shim
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("npm_config_")}
    env.update(HOME=str(tmp_path), npm_config_cache=str(tmp_path / "cache"))
    result = subprocess.run(
        [
            "npm",
            "view",
            "left-pad@1.3.0",
            "version",
            "--registry=https://registry.npmjs.org/",
            f"--https-proxy={url}",
            f"--proxy={url}",
            "--userconfig",
            str(tmp_path / "npmrc"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "1.3.0"
    assert proxy.allowed == [f"{NPM_HOST}:443"]
