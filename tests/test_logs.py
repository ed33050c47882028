"""
Tests for L{realize.logs}: option parsing, level and namespace filtering,
text and JSON lines, and installing the observer under twistd.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.application.service import Application, IService, MultiService, Service
from twisted.logger import ILogObserver, Logger, LogLevel, PredicateResult
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from realize.logs import (
    ApplicationLogging,
    LogOptions,
    LogSettings,
    NamespacePredicate,
    event_as_json,
    make_observer,
    parse_log_format,
    parse_log_level,
    parse_namespaces,
)


def emit(
    observer: ILogObserver, namespace: str, level: LogLevel, **fields: Any
) -> None:
    """
    Log one event through a L{Logger} of C{namespace} to C{observer}.
    """
    logger = Logger(namespace=namespace, observer=observer)
    logger.emit(level, "event {n}", n=fields.pop("n", 0), **fields)


def lines(stream: io.StringIO) -> list[str]:
    """
    @return: the lines written.
    """
    return stream.getvalue().splitlines()


class ParseTests(SynchronousTestCase):
    """
    L{parse_log_level}, L{parse_log_format}, L{parse_namespaces}.
    """

    def test_levels(self) -> None:
        """
        Level names are accepted in any case, C{warning} as C{warn}.
        """
        self.assertEqual(parse_log_level("debug"), LogLevel.debug)
        self.assertEqual(parse_log_level("INFO"), LogLevel.info)
        self.assertEqual(parse_log_level("warn"), LogLevel.warn)
        self.assertEqual(parse_log_level("Warning"), LogLevel.warn)
        self.assertEqual(parse_log_level(" error "), LogLevel.error)
        self.assertEqual(parse_log_level("critical"), LogLevel.critical)

    def test_bad_level(self) -> None:
        """
        An unknown level is a L{ValueError} naming it and the known ones.
        """
        error = self.assertRaises(ValueError, parse_log_level, "verbose")
        self.assertIn("'verbose'", str(error))
        self.assertIn("debug, info, warn, error or critical", str(error))

    def test_formats(self) -> None:
        """
        C{text} and C{json} are the formats.
        """
        self.assertEqual(parse_log_format("JSON"), "json")
        self.assertEqual(parse_log_format("text"), "text")
        error = self.assertRaises(ValueError, parse_log_format, "xml")
        self.assertIn("'xml'", str(error))

    def test_namespaces(self) -> None:
        """
        Namespaces come one per value or comma-separated, without repeats.
        """
        self.assertEqual(parse_namespaces("realize.auth"), ["realize.auth"])
        self.assertEqual(
            parse_namespaces(["realize.auth, realize.daemon", "realize.auth"]),
            ["realize.auth", "realize.daemon"],
        )
        for bad in ["", "a,,b", "realize auth", ".realize"]:
            self.assertRaises(ValueError, parse_namespaces, bad)


class FilterTests(SynchronousTestCase):
    """
    L{make_observer}'s filtering.
    """

    def test_level(self) -> None:
        """
        Events below the level are dropped.
        """
        stream = io.StringIO()
        observer = make_observer(stream, LogLevel.warn)
        emit(observer, "realize.daemon", LogLevel.debug, n=1)
        emit(observer, "realize.daemon", LogLevel.info, n=2)
        emit(observer, "realize.daemon", LogLevel.warn, n=3)
        emit(observer, "realize.daemon", LogLevel.error, n=4)
        text = stream.getvalue()
        self.assertNotIn("event 1", text)
        self.assertNotIn("event 2", text)
        self.assertIn("[realize.daemon#warn] event 3", text)
        self.assertIn("[realize.daemon#error] event 4", text)

    def test_namespace(self) -> None:
        """
        With C{realize.auth}, only events of that namespace and those below
        it are shown, not those of a namespace that merely starts alike.
        """
        stream = io.StringIO()
        observer = make_observer(stream, LogLevel.info, "text", ["realize.auth"])
        emit(observer, "realize.auth", LogLevel.warn, n=1)
        emit(observer, "realize.auth.tls", LogLevel.info, n=2)
        emit(observer, "realize.authx", LogLevel.warn, n=3)
        emit(observer, "realize.daemon", LogLevel.error, n=4)
        emit(observer, "realize", LogLevel.error, n=5)
        text = stream.getvalue()
        self.assertIn("event 1", text)
        self.assertIn("event 2", text)
        for n in (3, 4, 5):
            self.assertNotIn(f"event {n}", text)

    def test_namespace_and_level(self) -> None:
        """
        Namespace and level filters both apply.
        """
        stream = io.StringIO()
        observer = make_observer(stream, LogLevel.warn, "text", ["realize.auth"])
        emit(observer, "realize.auth", LogLevel.info, n=1)
        emit(observer, "realize.auth", LogLevel.warn, n=2)
        self.assertEqual(len(lines(stream)), 1)
        self.assertIn("event 2", stream.getvalue())

    def test_exclude(self) -> None:
        """
        Excluded namespaces are never shown.
        """
        stream = io.StringIO()
        observer = make_observer(stream, LogLevel.info, exclude=["realize.move"])
        emit(observer, "realize.move", LogLevel.error, n=1)
        emit(observer, "realize.storage.real", LogLevel.warn, n=2)
        text = stream.getvalue()
        self.assertNotIn("event 1", text)
        self.assertIn("event 2", text)

    def test_no_namespace(self) -> None:
        """
        An event without a namespace passes when no namespace is asked
        for, and not when one is.
        """
        event = {"log_level": LogLevel.info, "log_format": "x"}
        self.assertIs(NamespacePredicate()(event), PredicateResult.maybe)
        self.assertIs(NamespacePredicate(("realize.auth",))(event), PredicateResult.no)


class JSONTests(SynchronousTestCase):
    """
    JSON lines.
    """

    def test_one_object_per_line(self) -> None:
        """
        Each event is one line that C{json.loads} parses, with its
        namespace, level name, time, text and fields.
        """
        stream = io.StringIO()
        observer = make_observer(stream, LogLevel.debug, "json")
        logger = Logger(namespace="realize.auth", observer=observer)
        logger.warn(
            "rejected connection from {address}: unknown key {fingerprint}",
            address="[::1]:40000",
            fingerprint="sha256:0123456789abcdef",
            reason="unknown key",
            accepted=False,
        )
        logger.info("line\nbreak {path}", path="a\nb", size=10)
        [first, second] = lines(stream)
        event = json.loads(first)
        self.assertEqual(event["log_namespace"], "realize.auth")
        self.assertEqual(event["log_level"], "warn")
        self.assertEqual(event["address"], "[::1]:40000")
        self.assertEqual(event["reason"], "unknown key")
        self.assertIs(event["accepted"], False)
        self.assertEqual(
            event["log_text"],
            "rejected connection from [::1]:40000: unknown key sha256:0123456789abcdef",
        )
        self.assertEqual(
            event["log_format"],
            "rejected connection from {address}: unknown key {fingerprint}",
        )
        self.assertIsInstance(event["log_time"], float)
        self.assertNotIn("log_logger", event)
        other = json.loads(second)
        self.assertEqual(other["path"], "a\nb")
        self.assertEqual(other["size"], 10)

    def test_failure(self) -> None:
        """
        A failure becomes its type, message and traceback.
        """
        stream = io.StringIO()
        observer = make_observer(stream, LogLevel.info, "json")
        logger = Logger(namespace="realize.net.server", observer=observer)
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            logger.failure("unexpected error in {command}", Failure(), command="Read")
        [line] = lines(stream)
        event = json.loads(line)
        self.assertEqual(event["log_level"], "critical")
        self.assertEqual(event["command"], "Read")
        self.assertEqual(event["log_failure"]["type"], "ZeroDivisionError")
        self.assertIn("division by zero", event["log_failure"]["message"])
        self.assertIn("Traceback", event["log_failure"]["traceback"])

    def test_odd_values(self) -> None:
        """
        Values JSON cannot carry become strings; the line still parses.
        """

        class Thing:
            def __str__(self) -> str:
                return "a thing"

        event = {
            "log_namespace": "x",
            "log_level": LogLevel.info,
            "log_format": "{thing}",
            "log_time": 1.0,
            "thing": Thing(),
            "data": b"\xffab",
            "peers": frozenset({"b", "a"}),
            "ratio": float("nan"),
        }
        parsed = json.loads(event_as_json(event))
        self.assertEqual(parsed["thing"], "a thing")
        self.assertEqual(parsed["data"], "\\xffab")
        self.assertEqual(parsed["peers"], ["a", "b"])
        self.assertEqual(parsed["log_text"], "a thing")
        self.assertNotIn("\n", event_as_json(event))


class OptionsTests(SynchronousTestCase):
    """
    L{LogOptions} mixed into a command's options.
    """

    def parse(self, *args: str) -> LogSettings:
        """
        @return: the log settings of a command line.
        """

        class Options(LogOptions):
            default_log_level = "warn"

        options = Options()
        options.parseOptions(list(args))
        return options.log_settings()

    def test_defaults(self) -> None:
        """
        Without options: the command's default level, text, every
        namespace.
        """
        self.assertEqual(self.parse(), LogSettings(LogLevel.warn, "text", ()))

    def test_options(self) -> None:
        """
        The options set level, format and namespaces (repeated and
        comma-separated).
        """
        settings = self.parse(
            "--log-level",
            "debug",
            "--log-format=json",
            "--log-namespace",
            "realize.auth",
            "--log-namespace=realize.daemon,realize.auth",
        )
        self.assertEqual(
            settings,
            LogSettings(LogLevel.debug, "json", ("realize.auth", "realize.daemon")),
        )

    def test_bad(self) -> None:
        """
        Bad values are usage errors naming them.
        """
        self.assertRaises(usage.UsageError, self.parse, "--log-level", "loud")
        self.assertRaises(usage.UsageError, self.parse, "--log-format", "xml")
        self.assertRaises(usage.UsageError, self.parse, "--log-namespace", "a b")

    def test_settings_observer(self) -> None:
        """
        The settings make the observer they describe.
        """
        stream = io.StringIO()
        observer = LogSettings(LogLevel.info, "json", ("realize.auth",)).observer(
            stream
        )
        emit(observer, "realize.auth", LogLevel.info, n=1)
        emit(observer, "realize.daemon", LogLevel.info, n=2)
        [line] = lines(stream)
        self.assertEqual(json.loads(line)["n"], 1)


class ApplicationLoggingTests(SynchronousTestCase):
    """
    L{ApplicationLogging} under twistd's application.
    """

    def test_component(self) -> None:
        """
        Made the child of a twistd application, it sets the application's
        log observer and holds the wrapped service.
        """
        observer = make_observer(io.StringIO())
        inner = Service()
        wrapper = ApplicationLogging(inner, observer)
        application = Application("realized")
        wrapper.setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), observer)
        self.assertIn(wrapper, list(IService(application)))  # type: ignore[call-overload]
        self.assertIs(inner.parent, wrapper)

    def test_plain_parent(self) -> None:
        """
        Under a plain service collection, it is an ordinary child.
        """
        parent = MultiService()
        wrapper = ApplicationLogging(Service(), make_observer(io.StringIO()))
        wrapper.setServiceParent(parent)
        self.assertIn(wrapper, list(parent))


_PLUGIN = """
from twisted.application.service import ServiceMaker

logcheck = ServiceMaker("logcheck", "logcheck_tap", "log check", "logcheck")
"""

_TAP = """
import sys

from twisted.application.service import Service
from twisted.logger import Logger, LogLevel
from twisted.python import usage

from realize.logs import ApplicationLogging, make_observer


class Options(usage.Options):
    pass


class Once(Service):
    def startService(self):
        super().startService()
        from twisted.internet import reactor

        def go():
            Logger(namespace="realize.auth").warn(
                "rejected connection from {address}: unknown key",
                address="192.0.2.7:40000",
                reason="unknown key",
                accepted=False,
            )
            Logger(namespace="realize.daemon").info("listening on {a}", a="x")
            reactor.stop()

        reactor.callWhenRunning(go)


def makeService(options):
    observer = make_observer(sys.stdout, LogLevel.info, "json", ["realize.auth"])
    return ApplicationLogging(Once(), observer)
"""


class TwistdLoggingTests(SynchronousTestCase):
    """
    L{ApplicationLogging} in a real C{twistd -n} run of a plugin.
    """

    def test_twistd_uses_observer(self) -> None:
        """
        twistd logs through the plugin's observer: JSON lines of the chosen
        namespace only, none of twistd's own start-up lines.
        """
        directory = self.mktemp()
        os.makedirs(os.path.join(directory, "twisted", "plugins"))
        with open(
            os.path.join(directory, "twisted", "plugins", "logcheck.py"), "w"
        ) as f:
            f.write(_PLUGIN)
        with open(os.path.join(directory, "logcheck_tap.py"), "w") as f:
            f.write(_TAP)
        src = str(Path(__file__).parent.parent / "src")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [directory, src, *filter(None, [env.get("PYTHONPATH")])]
        )
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "--nodaemon",
                "--pidfile=",
                "logcheck",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        [line] = result.stdout.splitlines()
        event = json.loads(line)
        self.assertEqual(event["log_namespace"], "realize.auth")
        self.assertEqual(event["log_level"], "warn")
        self.assertEqual(event["address"], "192.0.2.7:40000")
        self.assertEqual(event["reason"], "unknown key")
