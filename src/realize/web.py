"""
HTTP for metrics (#daemonmetrics, #cmdmetrics): the C{/metrics} resource
that Prometheus scrapes, and the push of a finished move's metrics to a
Pushgateway.

L{metrics_site} serves C{/metrics} in the Prometheus text format (or
OpenMetrics, gzipped, when the scraper asks for it) from one registry, and
answers 401 for every other path: the endpoint shows nothing else, and a
probe learns nothing.  L{listen_metrics} listens on a C{HOST:PORT} given by
the user (C{--metrics-addr}).  L{push_metrics} replaces a Pushgateway group
with a registry's metrics (C{--metrics-pushgateway}).

C{/metrics} is C{prometheus_client.twisted.MetricsResource}: the
library's WSGI exposition (text format, OpenMetrics when asked, gzip,
C{name[]} filters, 405 for methods but GET) run in the reactor's thread
pool.  This module only puts the 401 around it.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Protocol
from urllib.parse import quote

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from realize.errors import ConfigError, NetworkError, describe

__all__ = [
    "DEFAULT_JOB",
    "PUSH_TIMEOUT",
    "HTTPClient",
    "listen_metrics",
    "make_http_client",
    "metrics_endpoint",
    "metrics_site",
    "parse_metrics_address",
    "push_metrics",
    "pushgateway_url",
]

log = Logger(namespace="realize.web")

#: Default Pushgateway job name (C{--metrics-job}).
DEFAULT_JOB = "realize"

#: Seconds a push may take, connecting included.
PUSH_TIMEOUT = 30.0

_UNAUTHORIZED = b"401 Unauthorized: only /metrics is served here\n"


class _Unauthorized(Resource):
    """
    401 for any method.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def render(self, request: Request) -> bytes:
        return _unauthorized(request)


class _Root(Resource):
    """
    C{/metrics} (exactly: not C{/metrics/}, not C{/metrics/x}) or 401.
    """

    def __init__(self, metrics: IResource) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.metrics = metrics

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"metrics" and not request.postpath:
            return self.metrics
        return _Unauthorized()

    def render(self, request: Request) -> bytes:
        return _unauthorized(request)


def _unauthorized(request: Request) -> bytes:
    request.setResponseCode(401)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"www-authenticate", b'Bearer realm="realize"')
    return _UNAUTHORIZED


class _QuietSite(Site):
    """
    A site whose access log is debug events of C{realize.web}, not one
    info line per scrape.
    """

    noisy = False

    def __init__(self, resource: IResource) -> None:
        super().__init__(resource)  # type: ignore[no-untyped-call]

    def log(self, request: Any) -> None:
        log.debug(
            "{method} {path} from {client}: {code}",
            method=_text(request.method),
            path=_text(request.uri),
            client=getattr(request.getClientAddress(), "host", "?"),
            code=request.code,
        )


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def metrics_site(registry: CollectorRegistry, metrics: IResource | None = None) -> Site:
    """
    The HTTP site of the metrics endpoint.

    @param registry: the process's registry.
    @param metrics: the resource for C{/metrics}, instead of
        C{prometheus_client.twisted.MetricsResource(registry=registry)}
        (which runs in the global reactor's thread pool).
    @return: a site answering C{/metrics} with the metrics and 401 for
        every other path (C{/}, C{/metrics/x}, C{/favicon.ico}, ...).
    """
    if metrics is None:
        # Imported here: it imports the global reactor, which twistd must
        # install first.
        from prometheus_client.twisted import MetricsResource

        metrics = MetricsResource(registry=registry)  # type: ignore[no-untyped-call]
    site = _QuietSite(_Root(metrics))
    site.displayTracebacks = False
    return site


_PORT = re.compile(r"[0-9]{1,5}")

#: Twisted endpoint types, which are no host names here.
_ENDPOINT_TYPES = frozenset({"tcp", "tcp6", "ssl", "unix", "systemd", "tls"})


def parse_metrics_address(address: str) -> tuple[str, int]:
    """
    Parse a C{--metrics-addr} value.

    @param address: C{HOST:PORT}: an IPv4 address or host name
        (C{127.0.0.1:9772}, C{0.0.0.0:9772} for every IPv4 interface), or
        an IPv6 address in brackets (C{[::1]:9772}, C{[::]:9772} for every
        interface, IPv4 too where the system maps it); port 0 picks a free
        port.
    @return: C{(host, port)}, the host without brackets.
    @raise ConfigError: naming the value and what is wrong with it.
    """
    text = address.strip()

    def bad(why: str) -> ConfigError:
        return ConfigError(
            f"--metrics-addr {address!r}: {why}; expected HOST:PORT, e.g. "
            "127.0.0.1:9772 or [::1]:9772"
        )

    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise bad("unclosed '['")
        if ":" not in host:
            raise bad(f"{host!r} is not an IPv6 address")
        if not rest.startswith(":"):
            raise bad("no port")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise bad("no port")
        if ":" in host:
            raise bad("write an IPv6 address in brackets")
    if not host:
        raise bad("no host")
    if host.lower() in _ENDPOINT_TYPES:
        raise bad("give HOST:PORT, not an endpoint string")
    if any(c.isspace() or c in "/\\=" for c in host):
        raise bad(f"bad host {host!r}")
    if not _PORT.fullmatch(port_text) or int(port_text) > 65535:
        raise bad(f"bad port {port_text!r}")
    return host, int(port_text)


def metrics_endpoint(address: str) -> str:
    """
    The Twisted endpoint string to listen on for a C{--metrics-addr}.

    @param address: C{HOST:PORT} (see L{parse_metrics_address}).
    @return: e.g. C{tcp:port=9772:interface=127.0.0.1}, or
        C{tcp6:port=9772:interface=\\:\\:1} for an IPv6 address.
    @raise ConfigError: if C{address} is malformed.
    """
    host, port = parse_metrics_address(address)
    kind = "tcp6" if ":" in host else "tcp"
    return f"{kind}:port={port}:interface={endpoints.quoteStringArgument(host)}"


async def listen_metrics(
    reactor: Any, address: str, registry: CollectorRegistry
) -> IListeningPort:
    """
    Serve a registry's metrics on C{HOST:PORT}.

    @param reactor: the reactor (an C{IReactorTCP}).
    @param address: C{HOST:PORT}, e.g. C{127.0.0.1:9772}, C{[::1]:9772}.
    @param registry: the process's registry.
    @return: the listening port; stop it with C{stopListening()}.
    @raise ConfigError: if C{address} is malformed, or it cannot be
        listened on (in use, not an address of this machine).
    """
    description = metrics_endpoint(address)
    endpoint = endpoints.serverFromString(reactor, description)
    try:
        port: IListeningPort = await endpoint.listen(metrics_site(registry))
    except Exception as e:
        raise ConfigError(
            f"--metrics-addr {address!r}: cannot listen: {describe(e)}"
        ) from e
    host = port.getHost()
    log.info(
        "serving metrics on {address}",
        address=f"{getattr(host, 'host', '?')}:{getattr(host, 'port', '?')}",
    )
    return port


def _grouping(label: str, value: str) -> str:
    """
    One C{/<label>/<value>} segment of a Pushgateway URL: URL-quoted, or
    base64url with C{@base64} where the value holds a C{/} or is empty
    (which a path segment cannot carry).
    """
    if value == "":
        return f"/{label}@base64/="
    if "/" in value:
        encoded = base64.urlsafe_b64encode(value.encode("utf-8")).decode("ascii")
        return f"/{label}@base64/{encoded}"
    return f"/{label}/{quote(value, safe='')}"


def pushgateway_url(url: str, job: str, instance: str | None = None) -> str:
    """
    The URL of a Pushgateway group.

    @param url: the Pushgateway's base URL, e.g. C{http://pgw:9091} (a
        path prefix is kept, a trailing C{/} dropped).
    @param job: the C{job} label (C{--metrics-job}).
    @param instance: the C{instance} label (C{--metrics-instance}), or
        C{None} to leave it out.
    @return: C{URL/metrics/job/<job>[/instance/<instance>]}.
    @raise ConfigError: if C{url} is not an http(s) URL or C{job} is
        empty.
    """
    if not re.match(r"https?://[^/]", url):
        raise ConfigError(
            f"--metrics-pushgateway {url!r}: expected an http:// or https:// URL"
        )
    if not job:
        raise ConfigError("--metrics-job: must not be empty")
    path = url.rstrip("/") + "/metrics" + _grouping("job", job)
    if instance is not None:
        path += _grouping("instance", instance)
    return path


class HTTPClient(Protocol):
    """
    What L{push_metrics} needs of an HTTP client: the C{put} of
    C{treq.client.HTTPClient} (or of C{treq.testing.StubTreq}).
    """

    def put(self, url: str, /, *, data: bytes, headers: Headers) -> Any:
        """
        @return: a L{Deferred} firing with a treq response.
        """


def make_http_client(reactor: Any) -> HTTPClient:
    """
    A treq client for L{push_metrics}.

    @param reactor: the reactor.
    @return: C{treq.client.HTTPClient} over an C{Agent} of C{reactor}.
    """
    from treq.client import HTTPClient as TreqClient
    from twisted.web.client import Agent

    client: HTTPClient = TreqClient(Agent(reactor, connectTimeout=PUSH_TIMEOUT))
    return client


async def push_metrics(
    http: HTTPClient,
    url: str,
    job: str,
    instance: str | None,
    registry: CollectorRegistry,
    *,
    clock: IReactorTime,
    timeout: float = PUSH_TIMEOUT,
) -> None:
    """
    Replace a Pushgateway group with a registry's metrics (HTTP C{PUT}, as
    C{prometheus_client.push_to_gateway} does: every metric of the group is
    replaced, none left from an earlier push).

    @param http: an HTTP client (L{make_http_client}; C{StubTreq} in tests).
    @param url: the Pushgateway's base URL (C{--metrics-pushgateway}).
    @param job: the C{job} label (C{--metrics-job}, default
        L{DEFAULT_JOB}).
    @param instance: the C{instance} label (C{--metrics-instance}), or
        C{None}.
    @param registry: the metrics to push.
    @param clock: for the timeout.
    @param timeout: seconds before giving up.
    @raise ConfigError: if C{url} or C{job} is malformed.
    @raise NetworkError: naming the URL, if the Pushgateway cannot be
        reached, does not answer in time, or answers other than 2xx (with
        the start of its answer).
    """
    target = pushgateway_url(url, job, instance)
    body = generate_latest(registry)
    request: Deferred[Any] = Deferred.fromCoroutine(
        _put(http, target, body)
    ).addTimeout(timeout, clock)
    try:
        code, text = await request
    except Exception as e:
        raise NetworkError(
            f"cannot push metrics to {target}: {_network_reason(e, timeout)}"
        ) from e
    if not 200 <= code < 300:
        detail = " ".join(text.split())[:200]
        raise NetworkError(
            f"cannot push metrics to {target}: the Pushgateway answered {code}"
            + (f": {detail}" if detail else "")
        )
    log.info("pushed metrics to {url}", url=target)


async def _put(http: HTTPClient, url: str, body: bytes) -> tuple[int, str]:
    response = await http.put(
        url,
        data=body,
        headers=Headers({b"Content-Type": [CONTENT_TYPE_PLAIN_0_0_4.encode("ascii")]}),
    )
    content: bytes = await response.content()
    return int(response.code), content.decode("utf-8", "replace")


def _network_reason(error: BaseException, timeout: float) -> str:
    from twisted.internet.defer import TimeoutError as DeferredTimeout

    if isinstance(error, DeferredTimeout):
        return f"no answer within {timeout:g} seconds"
    reasons = getattr(error, "reasons", None)
    if reasons:
        # ResponseNeverReceived and friends wrap Failures.
        return "; ".join(r.getErrorMessage() for r in reasons)
    return describe(error)
