"""Fetch http(s) image URLs for the chat API without letting clients reach the server's own network.

A client-supplied URL is a request the server makes on the client's behalf (server-side request forgery):
without care it reads cloud metadata (169.254.169.254), admin ports on loopback, or hosts on the private
network. Every connection this module opens, the first and each redirect hop, goes to an address that was
resolved here and checked here, in the one place a socket is made (`_CheckedBackend.connect_tcp`).
"""

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

_MAX_SHOWN_URL_CHARS = 100
_NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")  # IPv4 reached through a NAT64 gateway
# Cloud metadata and host-platform endpoints; most are non-public anyway, listed so that refusing them never
# depends on the stdlib's tables. Azure's WireServer (168.63.129.16) is a public address reachable only inside Azure.
_METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "168.63.129.16", "192.0.0.192",
))
# Media types that are certainly not an image: an error page, a login form, an API answer.
_NOT_IMAGE_TYPES = frozenset((
    "text/html", "application/xhtml+xml", "application/json", "application/xml", "text/xml",
    "text/css", "text/javascript", "application/javascript",
))


@dataclass(frozen=True)
class ImageFetchConfig:
    """Limits on one image fetch. `allow_private` lets URLs reach loopback and private networks (trusted clients)."""

    timeout_s: float = 10.0  # the whole fetch: resolution, connection, redirects, last byte
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5
    allow_private: bool = False
    user_agent: str = "vlmserve-image-fetch"

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise ValueError(f"ImageFetchConfig.timeout_s must be > 0, got {self.timeout_s}")
        if self.max_bytes < 1:
            raise ValueError(f"ImageFetchConfig.max_bytes must be >= 1, got {self.max_bytes}")
        if self.max_redirects < 0:
            raise ValueError(f"ImageFetchConfig.max_redirects must be >= 0, got {self.max_redirects}")


class ImageFetchError(ValueError):
    """An image URL that was refused or could not be fetched; the message is safe to show the client.

    `status` is the HTTP status for the client: 413 when the image is larger than allowed, else 400.
    """

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def is_public_address(address: IPAddress) -> bool:
    """Whether an image URL may connect to `address`: globally routable unicast, and no metadata endpoint.

    IPv6 that carries an IPv4 destination (mapped `::ffff:127.0.0.1`, 6to4 `2002:7f00:1::`, NAT64
    `64:ff9b::a9fe:a9fe`) is judged by that IPv4 address; Teredo, unique-local (fd00:ec2::254) and
    documentation ranges are non-global and refused outright.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public_address(address.ipv4_mapped)
        if address.sixtofour is not None:
            return is_public_address(address.sixtofour)
        if address in _NAT64_PREFIX:
            return is_public_address(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
    return address.is_global and address not in _METADATA_ADDRESSES and not (
        address.is_multicast or address.is_private or address.is_loopback or address.is_link_local
        or address.is_reserved or address.is_unspecified
    )


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to for a TCP connection, as the system resolver answers now."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class ImageFetcher:
    """Downloads image URLs under `ImageFetchConfig`'s limits; one per server, shared by all requests.

    Anti-rebinding: name resolution happens inside the connection pool's network backend, at the moment a TCP
    connection is opened. The host is resolved once, the connection is refused if ANY address is not public,
    and the socket is opened to those checked addresses, never to the name, so a DNS answer that changes
    between a check and a connect cannot redirect it. TLS is layered on that socket by httpcore with the URL's
    host name, so SNI and certificate verification use the name, and pooled connections are keyed by name.
    Redirects are followed here, one request per hop, so every hop's connection passes the same check. Proxies
    and netrc from the environment are ignored: a proxy would resolve names itself.

    `resolve` and `network_backend` (the sockets below the check) are seams for tests; `ssl_context` overrides
    the default verification (system CAs, or $SSL_CERT_FILE).
    """

    def __init__(self, config: ImageFetchConfig, *, resolve: Resolver = resolve_host,
                 network_backend: httpcore.AsyncNetworkBackend | None = None,
                 ssl_context: ssl.SSLContext | None = None):
        self._config = config
        backend = _CheckedBackend(network_backend or httpcore.AnyIOBackend(), resolve, config.allow_private)
        self._client = httpx.AsyncClient(
            transport=_Transport(backend, ssl_context or httpx.create_ssl_context()),
            follow_redirects=False, trust_env=False, timeout=config.timeout_s,
            headers={"User-Agent": config.user_agent, "Accept": "image/*", "Accept-Encoding": "identity"},
        )

    async def fetch(self, url: str) -> bytes:
        """The body of the image at `url` (http or https), after redirects; raises `ImageFetchError`."""
        try:
            async with asyncio.timeout(self._config.timeout_s):
                return await self._follow(url)
        except (TimeoutError, httpx.TimeoutException, httpcore.TimeoutException):
            raise ImageFetchError(
                f"fetching image URL {_shown(url)} timed out after {self._config.timeout_s:g} s") from None
        except _HostError as error:
            raise ImageFetchError(f"image URL {_shown(url)} {error}") from None
        except httpcore.ConnectError:
            raise ImageFetchError(f"image URL {_shown(url)} could not be fetched: connection failed") from None
        except (httpcore.ProtocolError, httpcore.NetworkError, httpx.HTTPError) as error:
            raise ImageFetchError(
                f"image URL {_shown(url)} could not be fetched: the transfer failed ({type(error).__name__})"
            ) from None

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()

    async def _follow(self, url: str) -> bytes:
        target = _checked_url(url, url)
        for _ in range(self._config.max_redirects + 1):
            async with self._client.stream("GET", target) as response:
                if not response.is_redirect:
                    _check_response(response, url)
                    return await self._read_body(response, url)
                target = _redirect_target(response, url)
        raise ImageFetchError(f"image URL {_shown(url)} redirected more than {self._config.max_redirects} times")

    async def _read_body(self, response: httpx.Response, url: str) -> bytes:
        limit = self._config.max_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(url, limit, f" (Content-Length {declared})")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise _too_large(url, limit)
        return bytes(body)


class _HostError(Exception):
    """A host that may not be connected to, or cannot be resolved; raised from inside the connection pool."""


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that resolves each host itself and connects only to addresses it checked."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend, resolve: Resolver, allow_private: bool):
        self._inner, self._resolve, self._allow_private = inner, resolve, allow_private

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        addresses = await self._addresses(host, port)
        if not self._allow_private and not all(map(is_public_address, addresses)):
            raise _HostError(f"refused: host {host!r} is or resolves to a loopback, private, link-local, multicast, "
                             "reserved or metadata address; only public addresses may be fetched")
        for address in addresses[:-1]:
            try:
                return await self._inner.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except httpcore.ConnectError:
                continue
        return await self._inner.connect_tcp(str(addresses[-1]), port, timeout, local_address, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)

    async def _addresses(self, host: str, port: int) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        try:
            addresses = [ipaddress.ip_address(a) for a in await self._resolve(host, port)]
        except (OSError, ValueError):  # socket.gaierror; an unparsable address
            addresses = []
        if not addresses:
            raise _HostError(f"could not be fetched: host {host!r} could not be resolved")
        return addresses


class _Transport(httpx.AsyncBaseTransport):
    """httpx's AsyncHTTPTransport minus proxies, with a connection pool on `_CheckedBackend` (httpx has no
    public way to give its own transport a network backend). httpcore's errors pass through unmapped."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend, ssl_context: ssl.SSLContext):
        self._pool = httpcore.AsyncConnectionPool(ssl_context=ssl_context, network_backend=backend)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        response = await self._pool.handle_async_request(httpcore.Request(
            method=request.method, headers=request.headers.raw, extensions=request.extensions,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
        ))
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_ResponseStream(response.stream), extensions=response.extensions)

    async def aclose(self) -> None:
        await self._pool.aclose()


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream):
        self._stream = stream

    async def __aiter__(self):
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


def _checked_url(target: str, url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(target)
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        where = "image URL" if target == url else f"image URL {_shown(url)} redirected to"
        raise ImageFetchError(f"{where} {_shown(target)} is not a valid http:// or https:// URL")
    return parsed


def _redirect_target(response: httpx.Response, url: str) -> httpx.URL:
    location = response.headers["Location"]
    try:
        target = str(response.url.join(location))
    except httpx.InvalidURL:
        target = location
    return _checked_url(target, url)


def _check_response(response: httpx.Response, url: str) -> None:
    if not response.is_success:
        raise ImageFetchError(
            f"image URL {_shown(url)} answered HTTP {response.status_code} {response.reason_phrase}".rstrip())
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media_type in _NOT_IMAGE_TYPES or media_type.startswith(("audio/", "video/")):
        raise ImageFetchError(f"image URL {_shown(url)} returned {media_type!r} content, not an image")


def _too_large(url: str, limit: int, detail: str = "") -> ImageFetchError:
    return ImageFetchError(f"image at URL {_shown(url)} is larger than the {limit} bytes allowed{detail}", status=413)


def _shown(url: str) -> str:
    if len(url) <= _MAX_SHOWN_URL_CHARS:
        return repr(url)
    return repr(url[:_MAX_SHOWN_URL_CHARS] + "...")
