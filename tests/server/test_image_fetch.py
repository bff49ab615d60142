"""Image URL fetching against a real HTTP server on loopback: limits, errors, and the refusal of non-public addresses.

Public addresses are simulated honestly: a fake resolver gives a name a real public address (93.184.216.34),
and the test's network backend, the layer below the fetcher's address check, routes that address to the
loopback server, recording every connection it is asked to open.
"""

import asyncio
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import httpcore
import pytest

from tests.helpers import png_bytes
from vlmserve.multimodal.inputs import load_image
from vlmserve.server.chat_images import resolve_images
from vlmserve.server.protocol import UserMessageParam
from vlmserve.server.image_fetch import (
    ImageFetchConfig,
    ImageFetcher,
    ImageFetchError,
    is_public_address,
)

PUBLIC_IP = "93.184.216.34"
CHUNK = b"\0" * 65536
HUGE_CHUNKS = 4096  # 256 MiB if anyone read it all


PNG = png_bytes(size=(3, 2), color=(200, 10, 10))


class ImageServer:
    """A loopback HTTP server with one route per situation; records every request and bytes sent of huge bodies."""

    def __init__(self, tls: ssl.SSLContext | None = None):
        self.scheme = "https" if tls else "http"
        self.requests: list[tuple[str, str, str]] = []  # (path, Host header, User-Agent header)
        self.huge_bytes_sent = 0
        self.huge_done = threading.Event()
        self.stop = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.httpd.server_address[1]
        if tls:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.requests]

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Host"), self.headers.get("User-Agent")))
                url = urlparse(self.path)
                if url.path == "/png":
                    self._send(200, "image/png", PNG)
                elif url.path.startswith("/hops/"):
                    hops = int(url.path.rsplit("/", 1)[1])
                    self._redirect("/png" if hops == 0 else f"/hops/{hops - 1}")
                elif url.path == "/redirect":
                    self._redirect(parse_qs(url.query)["to"][0])
                elif url.path == "/html":
                    self._send(200, "text/html; charset=utf-8", b"<html>login</html>")
                elif url.path in ("/huge", "/huge-declared"):
                    self._huge(declare=url.path == "/huge-declared")
                elif url.path == "/slow-headers":
                    server.stop.wait(5)
                    self._send(200, "image/png", PNG)
                elif url.path == "/trickle":
                    self._trickle()
                else:
                    self._send(404, "text/plain", b"not found")

            def _send(self, status, content_type, body):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _redirect(self, location):
                self.send_response(302)
                self.send_header("Location", location)
                self.end_headers()

            def _huge(self, declare):
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                if declare:
                    self.send_header("Content-Length", str(len(CHUNK) * HUGE_CHUNKS))
                self.end_headers()
                try:
                    for _ in range(HUGE_CHUNKS):
                        self.wfile.write(CHUNK)
                        server.huge_bytes_sent += len(CHUNK)
                except OSError:  # the client hung up
                    pass
                finally:
                    server.huge_done.set()

            def _trickle(self):
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                try:
                    for byte in PNG:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        if server.stop.wait(0.05):
                            return
                except OSError:
                    pass

        return Handler


def serve(tls: ssl.SSLContext | None = None):
    image_server = ImageServer(tls)
    image_server.thread.start()
    yield image_server
    image_server.stop.set()
    image_server.httpd.shutdown()
    image_server.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    yield from serve()


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory):
    """A throwaway CA (ca.pem) and a certificate it signed for images.example.com (leaf.pem, leaf.key), made with
    the openssl command (present on every machine this project runs on)."""
    assert shutil.which("openssl"), "the openssl command is needed to make the test certificates"
    folder = tmp_path_factory.mktemp("tls")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (folder / "leaf.ext").write_text("subjectAltName=DNS:images.example.com\nauthorityKeyIdentifier=keyid,issuer\n")
    for command in (
        ["req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=vlmserve test CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"],
        ["req", *key, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=images.example.com"],
        ["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext"],
    ):
        subprocess.run(["openssl", *command], cwd=folder, check=True, capture_output=True)
    return folder


@pytest.fixture(scope="module")
def tls_server(test_ca):
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(test_ca / "leaf.pem", test_ca / "leaf.key")
    yield from serve(tls)


class RoutedNetwork(httpcore.AsyncNetworkBackend):
    """The test's internet, below the fetcher's check: sends `routes` addresses to loopback, logs every connect."""

    def __init__(self, routes: dict[str, str] | None = None):
        self.routes = routes or {}
        self.connects: list[str] = []
        self._sockets = httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.connects.append(host)
        return await self._sockets.connect_tcp(self.routes.get(host, host), port, timeout, local_address,
                                               socket_options)

    async def sleep(self, seconds):
        await self._sockets.sleep(seconds)


class FakeDNS:
    """A resolver with fixed answers (a list of answers per name: one per lookup, the last one repeating)."""

    def __init__(self, answers: dict[str, list[list[str]]]):
        self.answers = answers
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        self.lookups.append(host)
        answers = self.answers[host]
        return answers[min(len(self.lookups) - 1, len(answers) - 1)]


def fetch_all(urls, config=ImageFetchConfig(), **seams) -> list:
    """Fetch `urls` in turn with one fetcher; each result is the body or the ImageFetchError."""
    async def run():
        fetcher = ImageFetcher(config, **seams)
        results = []
        try:
            for url in urls:
                try:
                    results.append(await fetcher.fetch(url))
                except ImageFetchError as error:
                    results.append(error)
        finally:
            await fetcher.aclose()
        return results

    return asyncio.run(run())


def fetch(url, config=ImageFetchConfig(), **seams):
    return fetch_all([url], config, **seams)[0]


def fetch_error(url, config=ImageFetchConfig(), **seams) -> ImageFetchError:
    result = fetch(url, config, **seams)
    assert isinstance(result, ImageFetchError), f"expected an ImageFetchError, got {len(result)} bytes"
    return result


PRIVATE = ImageFetchConfig(allow_private=True)


def test_fetches_an_image_when_private_addresses_are_allowed(server):
    body = fetch(server.url("/png"), PRIVATE)
    assert body == PNG
    assert load_image(body).size == (3, 2)
    assert server.requests[-1] == ("/png", f"127.0.0.1:{server.port}", "vlmserve-image-fetch")


def test_a_fetched_image_keeps_its_detail(server):
    message = UserMessageParam.model_validate({"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": server.url("/png"), "detail": "low"}},
        {"type": "image_url", "image_url": {"url": server.url("/png")}}]})

    async def run():
        fetcher = ImageFetcher(PRIVATE)
        try:
            return await resolve_images([message], fetcher, max_images=2, max_image_bytes=1 << 20)
        finally:
            await fetcher.aclose()

    [resolved] = asyncio.run(run())
    assert resolved["content"] == [{"type": "image", "image": PNG, "detail": "low"}, {"type": "image", "image": PNG}]


@pytest.mark.parametrize("host", [
    "127.0.0.1", "localhost", "[::1]", "10.0.0.1", "169.254.169.254", "0.0.0.0", "[::ffff:127.0.0.1]",
    "[::ffff:a9fe:a9fe]", "[fd00:ec2::254]", "[64:ff9b::7f00:1]", "224.0.0.1",
])
def test_refuses_non_public_hosts_before_connecting(server, host):
    network = RoutedNetwork()
    requests_before = len(server.requests)
    error = fetch_error(server.url("/png", host), network_backend=network)
    assert error.status == 400
    assert "refused" in str(error) and "public addresses" in str(error)
    assert network.connects == [] and len(server.requests) == requests_before


@pytest.mark.parametrize("answer", [["127.0.0.1"], [PUBLIC_IP, "127.0.0.1"], ["::1", PUBLIC_IP], ["10.20.30.40"]])
def test_refuses_a_name_when_any_of_its_addresses_is_not_public(server, answer):
    network, dns = RoutedNetwork({PUBLIC_IP: "127.0.0.1"}), FakeDNS({"images.example.com": [answer]})
    error = fetch_error(server.url("/png", "images.example.com"), resolve=dns, network_backend=network)
    assert "refused: host 'images.example.com'" in str(error)
    assert network.connects == []


def test_connects_to_the_checked_address_with_the_name_in_the_host_header(server):
    network, dns = RoutedNetwork({PUBLIC_IP: "127.0.0.1"}), FakeDNS({"images.example.com": [[PUBLIC_IP]]})
    assert fetch(server.url("/png", "images.example.com"), resolve=dns, network_backend=network) == PNG
    assert dns.lookups == ["images.example.com"]
    assert network.connects == [PUBLIC_IP]  # the socket went to the address that was checked, never the name
    assert server.requests[-1][1] == f"images.example.com:{server.port}"


def test_https_verifies_the_certificate_against_the_name_while_connecting_to_the_address(tls_server, test_ca):
    network = RoutedNetwork({PUBLIC_IP: "127.0.0.1"})
    dns = FakeDNS({"images.example.com": [[PUBLIC_IP]], "other.example.com": [[PUBLIC_IP]]})
    trust = ssl.create_default_context(cafile=test_ca / "ca.pem")
    urls = [tls_server.url("/png", "images.example.com"), tls_server.url("/png", "other.example.com")]
    good, wrong_name = fetch_all(urls, resolve=dns, network_backend=network, ssl_context=trust)
    assert good == PNG and tls_server.requests[-1][1] == f"images.example.com:{tls_server.port}"
    assert isinstance(wrong_name, ImageFetchError) and "connection failed" in str(wrong_name)
    assert network.connects == [PUBLIC_IP, PUBLIC_IP] and tls_server.paths() == ["/png"]


def test_a_name_that_rebinds_to_loopback_is_refused_on_its_next_connection(server):
    network = RoutedNetwork({PUBLIC_IP: "127.0.0.1"})
    dns = FakeDNS({"images.example.com": [[PUBLIC_IP], ["127.0.0.1"]]})
    url = server.url("/png", "images.example.com")
    first, second = fetch_all([url, url], resolve=dns, network_backend=network)
    assert first == PNG
    assert isinstance(second, ImageFetchError) and "refused" in str(second)
    assert network.connects == [PUBLIC_IP]


@pytest.mark.parametrize("target", [
    "http://internal.example.com:{port}/secret", "http://127.0.0.1:{port}/secret", "http://localhost:{port}/secret",
    "http://169.254.169.254/latest/meta-data/", "http://[::ffff:7f00:1]:{port}/secret",
])
def test_refuses_a_redirect_from_a_public_host_to_a_private_one(server, target):
    network = RoutedNetwork({PUBLIC_IP: "127.0.0.1"})
    dns = FakeDNS({"images.example.com": [[PUBLIC_IP]], "internal.example.com": [["10.0.0.7"]],
                   "localhost": [["127.0.0.1"]]})
    url = server.url(f"/redirect?to={target.format(port=server.port)}", "images.example.com")
    error = fetch_error(url, resolve=dns, network_backend=network)
    assert error.status == 400 and "refused" in str(error)
    assert network.connects == [PUBLIC_IP]
    assert server.paths()[-1].startswith("/redirect") and "/secret" not in server.paths()


def test_follows_redirects_on_a_public_host(server):
    network, dns = RoutedNetwork({PUBLIC_IP: "127.0.0.1"}), FakeDNS({"images.example.com": [[PUBLIC_IP]]})
    assert fetch(server.url("/hops/3", "images.example.com"), resolve=dns, network_backend=network) == PNG
    assert server.paths()[-5:] == ["/hops/3", "/hops/2", "/hops/1", "/hops/0", "/png"]


def test_follows_up_to_max_redirects_and_no_more(server):
    config = ImageFetchConfig(allow_private=True, max_redirects=3)
    assert fetch(server.url("/hops/2"), config) == PNG  # 3 redirects: /hops/2, /hops/1, /hops/0
    error = fetch_error(server.url("/hops/3"), config)
    assert error.status == 400 and "redirected more than 3 times" in str(error)
    assert server.paths()[-4:] == ["/hops/3", "/hops/2", "/hops/1", "/hops/0"]


def test_refuses_a_redirect_to_another_scheme(server):
    error = fetch_error(server.url("/redirect?to=file:///etc/passwd"), PRIVATE)
    assert "redirected to 'file:/etc/passwd' is not a valid http:// or https:// URL" in str(error)


@pytest.mark.parametrize("path, declared", [("/huge", False), ("/huge-declared", True)])
def test_stops_reading_past_max_bytes(server, path, declared):
    server.huge_done.clear()
    server.huge_bytes_sent = 0
    error = fetch_error(server.url(path), ImageFetchConfig(allow_private=True, max_bytes=1_000_000))
    assert error.status == 413 and "larger than the 1000000 bytes allowed" in str(error)
    assert ("Content-Length" in str(error)) == declared
    assert server.huge_done.wait(5)
    assert server.huge_bytes_sent < len(CHUNK) * HUGE_CHUNKS // 8  # the server was cut off long before the end


@pytest.mark.parametrize("path", ["/slow-headers", "/trickle"])
def test_times_out_on_the_whole_fetch(server, path):
    start = time.monotonic()
    error = fetch_error(server.url(path), ImageFetchConfig(allow_private=True, timeout_s=0.5))
    assert time.monotonic() - start < 2
    assert error.status == 400 and "timed out after 0.5 s" in str(error)


def test_an_error_status_is_a_bad_request_naming_the_status(server):
    error = fetch_error(server.url("/missing"), PRIVATE)
    assert error.status == 400 and "answered HTTP 404 Not Found" in str(error)


def test_refuses_html(server):
    error = fetch_error(server.url("/html"), PRIVATE)
    assert error.status == 400 and "returned 'text/html' content, not an image" in str(error)


@pytest.mark.parametrize("url", [
    "ftp://example.com/a.png", "file:///etc/passwd", "data:image/png;base64,AAAA", "gopher://example.com/",
    "example.com/a.png", "http://", "https:///a.png", "",
])
def test_refuses_urls_that_are_not_http(url):
    network = RoutedNetwork()
    error = fetch_error(url, network_backend=network)
    assert error.status == 400 and "is not a valid http:// or https:// URL" in str(error)
    assert network.connects == []


def test_reports_unresolvable_hosts_and_refused_connections(server):
    error = fetch_error("http://nowhere.invalid/a.png", resolve=FakeDNS({}))
    assert "host 'nowhere.invalid' could not be resolved" in str(error)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    error = fetch_error(f"http://127.0.0.1:{port}/a.png", PRIVATE)
    assert error.status == 400 and "connection failed" in str(error)


def test_messages_show_a_truncated_url_and_no_traceback(server):
    error = fetch_error(server.url("/missing/" + "x" * 500), PRIVATE)
    assert len(str(error)) < 200 and "x" * 50 + "...'" in str(error)
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


@pytest.mark.parametrize("address, public", [
    (PUBLIC_IP, True), ("2606:4700:4700::1111", True), ("64:ff9b::5db8:d822", True), ("::ffff:93.184.216.34", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False), ("100.64.0.1", False),
    ("169.254.169.254", False), ("0.0.0.0", False), ("224.0.0.1", False), ("255.255.255.255", False),
    ("240.0.0.1", False), ("192.0.2.1", False), ("198.18.0.1", False), ("168.63.129.16", False),
    ("::1", False), ("::", False), ("fe80::1", False), ("fc00::1", False), ("fd00:ec2::254", False),
    ("ff02::1", False), ("::ffff:127.0.0.1", False), ("::ffff:169.254.169.254", False), ("::ffff:10.0.0.1", False),
    ("64:ff9b::a9fe:a9fe", False), ("2002:7f00:1::1", False), ("2001:0:4136:e378::1", False),
    ("2001:db8::1", False), ("::127.0.0.1", False), ("2002:5db8:d822::1", True),
])
def test_is_public_address(address, public):
    assert is_public_address(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize("field, value", [("timeout_s", 0), ("max_bytes", 0), ("max_redirects", -1)])
def test_config_rejects_impossible_limits(field, value):
    with pytest.raises(ValueError, match=field):
        ImageFetchConfig(**{field: value})
