"""
Tests for L{realize.web}: the metrics site through C{StubTreq} and a real
loopback listener, C{--metrics-addr} parsing, and pushes to a fake
Pushgateway (C{StubTreq}) and to a real one (Debian package
C{prometheus-pushgateway}, skipped when it is not installed).
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import subprocess
import tempfile
from typing import Any

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.parser import text_string_to_metric_families
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.wsgi import WSGIResource

from realize.errors import ConfigError, NetworkError
from realize.metrics import COPY, DaemonMetrics, MoveMetrics, make_registry
from realize.web import (
    PUSH_TIMEOUT,
    listen_metrics,
    make_http_client,
    metrics_endpoint,
    metrics_site,
    parse_metrics_address,
    push_metrics,
    pushgateway_url,
)

BASE = "http://metrics.example:9772"


def daemon_registry() -> CollectorRegistry:
    """
    @return: a registry with daemon metrics in use.
    """
    registry = make_registry()
    metrics = DaemonMetrics(registry)
    metrics.connection_opened("laptop")
    metrics.command_done("Read", 0.5, None)
    return registry


def move_registry() -> CollectorRegistry:
    """
    @return: a registry with move metrics of a finished run.
    """
    registry = make_registry()
    metrics = MoveMetrics(registry)
    metrics.started(1_700_000_000.0)
    metrics.file_done("photos", "moved")
    metrics.sent(COPY, 4096)
    metrics.finished(True)
    return registry


def names_in(text: str) -> set[str]:
    """
    @return: the names of the samples of a text exposition.
    """
    return {
        sample.name
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class _Synchronous:
    """
    A reactor and thread pool for C{WSGIResource} that run everything at
    once, so that C{StubTreq} answers synchronously.
    """

    def callInThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


def synchronous_metrics(registry: CollectorRegistry) -> WSGIResource:
    """
    @return: what C{prometheus_client.twisted.MetricsResource(registry)}
        is (the library's WSGI app in a C{WSGIResource}), on a synchronous
        reactor and thread pool instead of the global ones.
    """
    now = _Synchronous()
    return WSGIResource(now, now, make_wsgi_app(registry))  # type: ignore[arg-type]


class SiteTests(SynchronousTestCase):
    """
    L{metrics_site}'s resource, through C{StubTreq}, with the library's
    metrics app (L{synchronous_metrics}); the default resource,
    C{MetricsResource} itself, is tested through a real listener
    (L{LoopbackTests}).
    """

    def setUp(self) -> None:
        self.registry = daemon_registry()
        self.client = StubTreq(
            metrics_site(self.registry, synchronous_metrics(self.registry)).resource
        )

    def get(self, path: str, **kwargs: Any) -> tuple[int, Any, bytes]:
        """
        @return: the code, headers and body of a request.
        """
        return self.request("GET", path, **kwargs)

    def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, bytes]:
        """
        @return: the code, headers and body of a request.
        """
        d = self.client.request(method, BASE + path, **kwargs)
        self.client.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(self.client.content(response))
        return response.code, response.headers, body

    def test_metrics(self) -> None:
        """
        C{/metrics} answers 200 in the text format 0.0.4 with process and
        realize series.
        """
        code, headers, body = self.get("/metrics")
        self.assertEqual(code, 200)
        self.assertEqual(
            headers.getRawHeaders("content-type"),
            ["text/plain; version=0.0.4; charset=utf-8"],
        )
        names = names_in(body.decode("utf-8"))
        self.assertIn("process_cpu_seconds_total", names)
        self.assertIn("realize_connections_total", names)
        self.assertIn("realize_store_commands_total", names)

    def test_unauthorized(self) -> None:
        """
        Every other path answers 401, whatever the method, and shows no
        metric.
        """
        for method, path in [
            ("GET", "/"),
            ("GET", ""),
            ("GET", "/metrics/"),
            ("GET", "/metrics/x"),
            ("GET", "/favicon.ico"),
            ("GET", "/Metrics"),
            ("GET", "/a/b/c"),
            ("POST", "/"),
            ("DELETE", "/x"),
        ]:
            code, headers, body = self.request(method, path)
            self.assertEqual(code, 401, (method, path))
            self.assertNotIn(b"realize_", body)
            self.assertNotIn(b"process_", body)
            self.assertTrue(headers.hasHeader("www-authenticate"))

    def test_query(self) -> None:
        """
        A query string does not change the path; C{name[]} restricts the
        answer to the families named.
        """
        code, _, body = self.get("/metrics?name[]=realize_connections_total")
        self.assertEqual(code, 200)
        self.assertEqual(
            names_in(body.decode()),
            {"realize_connections_total"},
        )

    def test_openmetrics(self) -> None:
        """
        A scraper asking for OpenMetrics gets it.
        """
        code, headers, body = self.get(
            "/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        )
        self.assertEqual(code, 200)
        [content_type] = headers.getRawHeaders("content-type")
        self.assertTrue(content_type.startswith("application/openmetrics-text"))
        self.assertTrue(body.endswith(b"# EOF\n"))

    def test_other_method(self) -> None:
        """
        C{/metrics} takes no POST.
        """
        code, _, _ = self.request("POST", "/metrics")
        self.assertEqual(code, 405)

    def test_other_resource(self) -> None:
        """
        Another resource can serve C{/metrics}; other paths still answer
        401.
        """
        page = Resource()
        page.isLeaf = True
        page.render_GET = lambda request: b"mine"  # type: ignore[method-assign]
        client = StubTreq(metrics_site(self.registry, page).resource)
        d = client.get(BASE + "/metrics")
        self.assertEqual(
            self.successResultOf(client.content(self.successResultOf(d))), b"mine"
        )
        d = client.get(BASE + "/")
        self.assertEqual(self.successResultOf(d).code, 401)


class AddressTests(SynchronousTestCase):
    """
    L{parse_metrics_address} and L{metrics_endpoint}.
    """

    def test_good(self) -> None:
        """
        IPv4 addresses, host names and bracketed IPv6 addresses with a
        port are accepted.
        """
        self.assertEqual(parse_metrics_address("127.0.0.1:9772"), ("127.0.0.1", 9772))
        self.assertEqual(parse_metrics_address("localhost:0"), ("localhost", 0))
        self.assertEqual(parse_metrics_address("[::1]:9772"), ("::1", 9772))
        self.assertEqual(parse_metrics_address(" [::]:80 "), ("::", 80))

    def test_bad(self) -> None:
        """
        Malformed values raise L{ConfigError} naming the option and the
        value.
        """
        for text in [
            "",
            "9772",
            "127.0.0.1",
            ":9772",
            "::1:9772",
            "[::1]",
            "[::1]9772",
            "[::1:9772",
            "[host]:9772",
            "127.0.0.1:",
            "127.0.0.1:http",
            "127.0.0.1:65536",
            "127.0.0.1:-1",
            "a b:9772",
            "tcp:9772",
            "host=x:1",
        ]:
            error = self.assertRaises(ConfigError, parse_metrics_address, text)
            self.assertIn("--metrics-addr", str(error), text)
            self.assertIn(repr(text), str(error))

    def test_endpoint(self) -> None:
        """
        IPv4 gives a C{tcp} endpoint, IPv6 a C{tcp6} one with its colons
        quoted.
        """
        self.assertEqual(
            metrics_endpoint("127.0.0.1:9772"), "tcp:port=9772:interface=127.0.0.1"
        )
        self.assertEqual(
            metrics_endpoint("[::1]:9772"), "tcp6:port=9772:interface=\\:\\:1"
        )


class Recording(Resource):
    """
    A fake Pushgateway: records each request and answers with a given
    code and body.
    """

    isLeaf = True

    def __init__(self, code: int = 200, body: bytes = b"") -> None:
        super().__init__()
        self.code = code
        self.body = body
        self.requests: list[tuple[bytes, bytes, Any, bytes]] = []

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        self.requests.append(
            (
                request.method,
                request.path,
                request.requestHeaders,
                request.content.read(),
            )
        )
        request.setResponseCode(self.code)
        return self.body


class PushTests(SynchronousTestCase):
    """
    L{push_metrics} against fakes.
    """

    def push(
        self,
        http: Any,
        url: str = "http://pgw.example:9091",
        job: str = "realize",
        instance: str | None = "laptop",
        clock: Clock | None = None,
    ) -> Deferred[None]:
        """
        @return: the push, as a Deferred.
        """
        d = Deferred.fromCoroutine(
            push_metrics(
                http, url, job, instance, move_registry(), clock=clock or Clock()
            )
        )
        if isinstance(http, StubTreq):
            http.flush()
        return d

    def test_put(self) -> None:
        """
        The metrics are PUT in the text format to the group's URL.
        """
        gateway = Recording()
        self.successResultOf(self.push(StubTreq(gateway)))
        [(method, path, headers, body)] = gateway.requests
        self.assertEqual(method, b"PUT")
        self.assertEqual(path, b"/metrics/job/realize/instance/laptop")
        self.assertEqual(
            headers.getRawHeaders(b"content-type"),
            [b"text/plain; version=0.0.4; charset=utf-8"],
        )
        names = names_in(body.decode("utf-8"))
        self.assertIn("realize_move_up", names)
        self.assertIn("realize_move_files_total", names)
        self.assertIn("process_cpu_seconds_total", names)

    def test_no_instance(self) -> None:
        """
        Without an instance, the group is the job alone; a path prefix of
        the URL is kept.
        """
        gateway = Recording(code=202)
        self.successResultOf(
            self.push(StubTreq(gateway), url="http://pgw.example/push/", instance=None)
        )
        [(_, path, _, _)] = gateway.requests
        self.assertEqual(path, b"/push/metrics/job/realize")

    def test_url_escaping(self) -> None:
        """
        Label values are URL-escaped; a value with a slash, or empty, is
        sent in base64url with C{@base64}.
        """
        self.assertEqual(
            pushgateway_url("http://p:9091", "a b", "x/y"),
            "http://p:9091/metrics/job/a%20b/instance@base64/eC95",
        )
        self.assertEqual(
            pushgateway_url("http://p:9091", "realize", ""),
            "http://p:9091/metrics/job/realize/instance@base64/=",
        )
        self.assertEqual(
            pushgateway_url("http://p:9091", "r?#%", "h:1"),
            "http://p:9091/metrics/job/r%3F%23%25/instance/h%3A1",
        )

    def test_bad_url(self) -> None:
        """
        A URL that is not http(s), or an empty job, is a config error.
        """
        self.assertRaises(ConfigError, pushgateway_url, "pgw:9091", "realize")
        self.assertRaises(ConfigError, pushgateway_url, "ftp://pgw", "realize")
        self.assertRaises(ConfigError, pushgateway_url, "http://pgw", "")

    def test_server_error(self) -> None:
        """
        A non-2xx answer is a L{NetworkError} naming the URL, the code and
        the start of the answer.
        """
        gateway = Recording(code=500, body=b"storage\nfailed")
        failure = self.failureResultOf(self.push(StubTreq(gateway)), NetworkError)
        message = str(failure.value)
        self.assertIn(
            "http://pgw.example:9091/metrics/job/realize/instance/laptop", message
        )
        self.assertIn("500", message)
        self.assertIn("storage failed", message)

    def test_refused(self) -> None:
        """
        A connection failure is a L{NetworkError} naming the URL and the
        reason.
        """

        class Refusing:
            def put(self, url: str, **kwargs: Any) -> Deferred[Any]:
                d: Deferred[Any] = Deferred()
                d.errback(ConnectionRefusedError("111: Connection refused"))
                return d

        failure = self.failureResultOf(self.push(Refusing()), NetworkError)
        self.assertIn("cannot push metrics to http://pgw.example", str(failure.value))
        self.assertIn("refused", str(failure.value))

    def test_timeout(self) -> None:
        """
        A Pushgateway that does not answer in time is a L{NetworkError};
        the request is cancelled and no timer is left.
        """
        requests: list[Deferred[Any]] = []

        class Silent:
            def put(self, url: str, **kwargs: Any) -> Deferred[Any]:
                d: Deferred[Any] = Deferred()
                requests.append(d)
                return d

        clock = Clock()
        d = self.push(Silent(), clock=clock)
        self.assertNoResult(d)
        clock.advance(PUSH_TIMEOUT)
        failure = self.failureResultOf(d, NetworkError)
        self.assertIn("no answer within 30 seconds", str(failure.value))
        self.assertTrue(requests[0].called)
        self.assertEqual(clock.getDelayedCalls(), [])


def free_port() -> int:
    """
    @return: a TCP port of 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopbackTests(TestCase):
    """
    The metrics site on a real loopback listener, and a push to a closed
    port.
    """

    async def test_listen(self) -> None:
        """
        L{listen_metrics} serves C{/metrics} (accepted by C{promtool} when
        it is installed) and 401 elsewhere on 127.0.0.1.
        """
        registry = daemon_registry()
        port = await listen_metrics(reactor, "127.0.0.1:0", registry)
        self.addCleanup(port.stopListening)
        base = f"http://127.0.0.1:{port.getHost().port}"
        http = HTTPClient(Agent(reactor))
        response = await http.get(base + "/metrics")
        body = await response.content()
        self.assertEqual(response.code, 200)
        self.assertIn("realize_connections_total", names_in(body.decode()))
        response = await http.get(base + "/")
        await response.content()
        self.assertEqual(response.code, 401)
        promtool = shutil.which("promtool")
        if promtool is not None:
            result = subprocess.run(
                [promtool, "check", "metrics"],
                input=body,
                capture_output=True,
                check=False,
                timeout=60,
            )
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    async def test_gzip(self) -> None:
        """
        A scraper accepting gzip gets the answer gzipped.
        """
        port = await listen_metrics(reactor, "127.0.0.1:0", daemon_registry())
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/metrics"
        response = await Agent(reactor).request(
            b"GET", url.encode(), Headers({b"accept-encoding": [b"gzip"]})
        )
        body = await readBody(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-encoding"), [b"gzip"])
        self.assertIn(b"realize_connections_total", gzip.decompress(body))

    async def test_listen_in_use(self) -> None:
        """
        A port in use is a L{ConfigError} naming the option and the
        address.
        """
        registry = make_registry()
        port = await listen_metrics(reactor, "127.0.0.1:0", registry)
        self.addCleanup(port.stopListening)
        address = f"127.0.0.1:{port.getHost().port}"
        with self.assertRaises(ConfigError) as raised:
            await listen_metrics(reactor, address, registry)
        self.assertIn(
            f"--metrics-addr '{address}': cannot listen", str(raised.exception)
        )

    async def test_push_refused(self) -> None:
        """
        A push to a port nobody listens on fails with a L{NetworkError}
        that says the connection was refused.
        """
        url = f"http://127.0.0.1:{free_port()}"
        with self.assertRaises(NetworkError) as raised:
            await push_metrics(
                make_http_client(reactor),
                url,
                "realize",
                None,
                move_registry(),
                clock=reactor,
            )
        self.assertIn(
            f"cannot push metrics to {url}/metrics/job/realize", str(raised.exception)
        )
        self.assertIn("refused", str(raised.exception).lower())


async def start_pushgateway(case: TestCase) -> str:
    """
    Start a Pushgateway (Debian package C{prometheus-pushgateway}) on
    127.0.0.1; stop it at cleanup.

    @return: its base URL.
    @raise SkipTest: if it is not installed.
    """
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is None:
        raise SkipTest(
            "the Pushgateway is not installed (Debian package prometheus-pushgateway)"
        )
    directory = tempfile.mkdtemp()
    case.addCleanup(shutil.rmtree, directory, True)
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--web.listen-address=127.0.0.1:{port}",
            f"--persistence.file={os.path.join(directory, 'data')}",
            "--log.level=error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def stop() -> None:
        process.terminate()
        process.wait(10)

    case.addCleanup(stop)
    url = f"http://127.0.0.1:{port}"
    http = HTTPClient(Agent(reactor))
    for _ in range(100):
        try:
            response = await http.get(url + "/-/ready")
            await response.content()
            if response.code == 200:
                return url
        except Exception:
            pass
        if process.poll() is not None:
            case.fail(f"the Pushgateway exited with code {process.returncode}")
        await deferLater(reactor, 0.1, lambda: None)
    case.fail("the Pushgateway did not become ready")


class PushgatewayTests(TestCase):
    """
    A push to a real Prometheus Pushgateway on 127.0.0.1, read back from
    it.
    """

    timeout = 60

    async def test_push_and_read_back(self) -> None:
        """
        The pushed series are in the Pushgateway's own exposition, under
        the job and instance of the push (escaped on the way); a second
        push replaces the first.
        """
        url = await start_pushgateway(self)
        http = make_http_client(reactor)
        registry = move_registry()
        await push_metrics(http, url, "realize move", "nas/1", registry, clock=reactor)
        response = await HTTPClient(Agent(reactor)).get(url + "/metrics")
        text = (await response.content()).decode()
        found = {
            (sample.name, sample.labels.get("job"), sample.labels.get("instance")): (
                sample.value,
                sample.labels,
            )
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.labels.get("method", "copy") == "copy"
        }
        key = ("realize_move_files_total", "realize move", "nas/1")
        self.assertIn(key, found)
        value, labels = found[key]
        self.assertEqual(value, 1.0)
        self.assertEqual(labels["arena"], "photos")
        self.assertEqual(labels["status"], "moved")
        self.assertEqual(found[("realize_move_up", "realize move", "nas/1")][0], 0.0)
        self.assertEqual(
            found[("realize_move_bytes_total", "realize move", "nas/1")][0],
            4096.0,
        )
        self.assertIn(("process_cpu_seconds_total", "realize move", "nas/1"), found)

        # PUT replaces the whole group: a metric absent from the second push
        # is gone.
        second = make_registry()
        MoveMetrics(second).retried()
        await push_metrics(http, url, "realize move", "nas/1", second, clock=reactor)
        response = await HTTPClient(Agent(reactor)).get(url + "/metrics")
        text = (await response.content()).decode()
        self.assertIn("realize_move_retries_total", names_in(text))
        self.assertNotIn('realize_move_files_total{arena="photos"', text)
