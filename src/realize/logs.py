"""
Logging of both programs (#daemonlog, #cmdlog, #logauth; docs/logging.md).

Code logs with C{twisted.logger}: a C{Logger} per module or class, events
with fields, never pre-formatted strings.  This module turns the command
line options C{--log-level}, C{--log-format} and C{--log-namespace} into
one observer (L{make_observer}, L{LogOptions}), and installs it: for a
console script with L{start_logging}, under C{twistd} with
L{ApplicationLogging}.

Levels:

    - C{critical}: the process cannot go on (cannot listen, bad config at
      start); it exits.
    - C{error}: data at risk or a job failed: a file could not be moved, an
      arena could not be listed, an unexpected exception in a command
      (with its traceback), a config that failed to reload.
    - C{warn}: degraded but going on: retrying after a network error, a
      peer unreachable, a file or directory skipped, a range that differed
      and is repaired, a delta that was not applied; every rejected
      connection (C{realize.auth}).
    - C{info}: one line per file finished or deleted (arena, path, size,
      hash, peer), connections accepted and closed (C{realize.auth}),
      listening, config reloaded, metrics pushed.
    - C{debug}: protocol detail: rate limits set, metrics scrapes, frames
      and streams.

Namespaces: C{realize.auth} (connection attempts, TLS accept and reject),
C{realize.daemon}, C{realize.move}, C{realize.web}, and for the other
modules their dotted module (and class) names, e.g.
C{realize.storage.listing}, C{realize.net}.  A namespace given to
C{--log-namespace} selects itself and everything below it.

Fields: every event carries C{log_namespace}, C{log_level} and
C{log_time}; events of the same kind carry the same fields:

    - connections (C{realize.auth}): C{address} (C{host:port} or
      C{[v6]:port} of the other side), C{peer} (its id, once known),
      C{fingerprint} (C{sha256:...} of the key it presented), C{accepted}
      (C{true}/C{false}), C{reason} (why it was refused).
    - files: C{arena}, C{path}, C{size} (bytes), C{hash}
      (C{blake3m:...}), C{source} and C{destination} (moves), C{peer}
      (the daemon).
    - failures: C{error} (one line naming the thing that is wrong); an
      unexpected exception also has C{log_failure} (a traceback).

In JSON (C{--log-format json}) each event is one JSON object on one line:
its fields, C{log_namespace}, C{log_level} (C{"info"}, ...), C{log_time}
(Unix time), C{log_format} (the message template, the same for every event
of a kind) and C{log_text} (the message as the text format shows it), and
C{log_failure} as C{{"type", "message", "traceback"}}.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import IO, Any

from attrs import field, frozen
from twisted.application.service import IService, MultiService
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "AUTH_NAMESPACE",
    "FORMATS",
    "LEVELS",
    "ApplicationLogging",
    "LogOptions",
    "LogSettings",
    "NamespacePredicate",
    "event_as_json",
    "make_observer",
    "parse_log_format",
    "parse_log_level",
    "parse_namespaces",
    "start_logging",
]

#: Namespace of connection attempts and TLS/auth accept and reject.
AUTH_NAMESPACE = "realize.auth"

#: C{--log-level} values.
LEVELS: dict[str, LogLevel] = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}

#: C{--log-format} values.
FORMATS = ("text", "json")

#: Event keys left out of JSON lines: objects, not data.
_INTERNAL = frozenset(
    {
        "log_logger",
        "log_source",
        "log_observer",
        "log_trace",
        "log_flattened",
        "log_legacy",
        "log_failure",
        "log_level",
    }
)


def parse_log_level(text: str) -> LogLevel:
    """
    Parse a C{--log-level} value.

    @param text: C{debug}, C{info}, C{warn} (or C{warning}), C{error} or
        C{critical}, in any case.
    @return: the level.
    @raise ValueError: naming the value and the accepted ones.
    """
    try:
        return LEVELS[text.strip().lower()]
    except KeyError:
        raise ValueError(
            f"bad log level {text!r}: use debug, info, warn, error or critical"
        ) from None


def parse_log_format(text: str) -> str:
    """
    Parse a C{--log-format} value.

    @param text: C{text} or C{json}, in any case.
    @return: C{"text"} or C{"json"}.
    @raise ValueError: naming the value and the accepted ones.
    """
    value = text.strip().lower()
    if value not in FORMATS:
        raise ValueError(f"bad log format {text!r}: use text or json")
    return value


def parse_namespaces(values: str | Iterable[str]) -> list[str]:
    """
    Parse C{--log-namespace} values.

    @param values: one value or several (the option given more than once);
        each a namespace or a comma-separated list of them, e.g.
        C{"realize.auth,realize.daemon"}.
    @return: the namespaces, in order, without repeats.
    @raise ValueError: for an empty namespace or one with spaces.
    """
    if isinstance(values, str):
        values = [values]
    found: list[str] = []
    for value in values:
        for part in value.split(","):
            name = part.strip()
            if not name or any(c.isspace() for c in name) or name.startswith("."):
                raise ValueError(
                    f"bad log namespace {part!r} in {value!r}: expected "
                    "e.g. realize.auth"
                )
            if name not in found:
                found.append(name)
    return found


@implementer(ILogFilterPredicate)
@frozen
class NamespacePredicate:
    """
    Lets through events of some namespaces and the namespaces below them
    (C{realize.auth} lets C{realize.auth} and C{realize.auth.x} through,
    not C{realize.authx}), and drops those of some others.

    @ivar include: namespaces to keep; empty keeps all.
    @ivar exclude: namespaces to drop, even if included.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __call__(self, event: LogEvent) -> object:
        """
        @return: C{PredicateResult.no} or C{PredicateResult.maybe}.
        """
        namespace = event.get("log_namespace")
        if not isinstance(namespace, str):
            namespace = ""
        result: object = PredicateResult.maybe
        if (self.exclude and _within(namespace, self.exclude)) or (
            self.include and not _within(namespace, self.include)
        ):
            result = PredicateResult.no
        return result


def _within(namespace: str, prefixes: Sequence[str]) -> bool:
    return any(namespace == p or namespace.startswith(p + ".") for p in prefixes)


def _json_value(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(str(v) for v in value)
    return str(value)


def event_as_json(event: LogEvent) -> str:
    """
    One event as one line of JSON.

    @param event: a C{twisted.logger} event.
    @return: a JSON object without newlines: the event's fields (values
        that are not JSON become strings), C{log_level} as its name,
        C{log_text} the formatted message, C{log_failure} as C{type},
        C{message} and C{traceback}.
    """
    record: dict[str, Any] = {
        key: value
        for key, value in event.items()
        if isinstance(key, str) and key not in _INTERNAL
    }
    level = event.get("log_level")
    record["log_level"] = getattr(level, "name", None)
    record["log_text"] = formatEvent(event)
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        record["log_failure"] = {
            "type": getattr(failure.type, "__name__", str(failure.type)),
            "message": failure.getErrorMessage(),
            "traceback": failure.getTraceback(),
        }
    try:
        return json.dumps(record, default=_json_value, ensure_ascii=False)
    except (TypeError, ValueError):
        # Circular structures or keys of odd types: keep the line.
        return json.dumps(
            {k: (_json_value(v) if k != "log_time" else v) for k, v in record.items()},
            default=_json_value,
            ensure_ascii=False,
            check_circular=False,
        )


def make_observer(
    stream: IO[Any],
    level: LogLevel = LogLevel.info,
    fmt: str = "text",
    namespaces: Sequence[str] | None = None,
    *,
    exclude: Sequence[str] = (),
) -> ILogObserver:
    """
    The log observer of a process.

    @param stream: where lines go (text stream, e.g. C{sys.stderr}).
    @param level: the lowest level shown.
    @param fmt: C{"text"} (C{textFileLogObserver}'s lines: time,
        C{[namespace#level]}, message) or C{"json"} (one JSON object per
        line, L{event_as_json}).
    @param namespaces: show only events of these namespaces and those below
        them (e.g. C{["realize.auth"]}); C{None} or empty shows all.
    @param exclude: namespaces never shown (e.g. C{realize-move} leaves out
        C{realize.move}, whose failures its output already shows).
    @return: the observer, to give to L{start_logging} or
        L{ApplicationLogging}.
    @raise ValueError: for an unknown C{fmt}.
    """
    fmt = parse_log_format(fmt)
    if fmt == "json":
        inner: ILogObserver = FileLogObserver(
            stream, lambda event: event_as_json(event) + "\n"
        )
    else:
        inner = textFileLogObserver(stream)
    predicates: list[ILogFilterPredicate] = [
        LogLevelFilterPredicate(defaultLogLevel=level)
    ]
    if namespaces or exclude:
        predicates.append(NamespacePredicate(tuple(namespaces or ()), tuple(exclude)))
    return FilteringLogObserver(inner, predicates)


def start_logging(observer: ILogObserver) -> None:
    """
    Start the global log of a console script with one observer.

    Events logged before are dropped (C{twisted.logger} buffers them until
    logging starts); C{sys.stdout} and C{sys.stderr} are left alone.

    @param observer: from L{make_observer}.
    """
    globalLogBeginner.beginLoggingTo(
        [observer], discardBuffer=True, redirectStandardIO=False
    )


class ApplicationLogging(MultiService):
    """
    Wraps the service of a twistd plugin so that twistd logs to our
    observer: twistd makes the plugin's service a child of its
    application, then starts its log with the application's
    L{ILogObserver} component if it has one (before C{--logfile}).  This
    service sets that component when it becomes the application's child.

    Use in C{makeService}::

        return ApplicationLogging(service, make_observer(sys.stdout, ...))

    @ivar observer: the observer to install.
    """

    def __init__(self, service: IService, observer: ILogObserver) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.observer = observer
        service.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        if isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.observer)
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]


@frozen
class LogSettings:
    """
    The logging options of a command line.

    @ivar level: the lowest level shown.
    @ivar fmt: C{"text"} or C{"json"}.
    @ivar namespaces: namespaces shown (empty: all).
    """

    level: LogLevel = LogLevel.info
    fmt: str = "text"
    namespaces: tuple[str, ...] = field(default=(), converter=tuple)

    def observer(self, stream: IO[Any], exclude: Sequence[str] = ()) -> ILogObserver:
        """
        @param stream: where lines go.
        @param exclude: namespaces never shown.
        @return: the observer (L{make_observer}).
        """
        return make_observer(
            stream, self.level, self.fmt, list(self.namespaces), exclude=exclude
        )


class LogOptions(usage.Options):
    """
    The logging options, to mix into a command's C{usage.Options}
    (C{class DaemonOptions(GnuOptions, LogOptions)}):

        - C{--log-level LEVEL}: C{debug}, C{info}, C{warn}, C{error},
          C{critical} (default L{default_log_level});
        - C{--log-format text|json} (default C{text});
        - C{--log-namespace NS}: show only this namespace and those below
          it; may be repeated or comma-separated.

    After parsing, L{log_settings} has them.

    @cvar default_log_level: the level without C{--log-level}.
    """

    default_log_level = "info"

    optParameters = [
        [
            "log-level",
            None,
            None,
            "Lowest level logged: debug, info, warn, error or critical.",
        ],
        ["log-format", None, "text", "Log lines as text or json (one object a line)."],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["log-namespace"] = []

    def opt_log_namespace(self, value: str) -> None:
        """
        Log only this namespace and those below it (e.g. realize.auth);
        repeat or separate with commas for several.
        """
        try:
            names = parse_namespaces(value)
        except ValueError as e:
            raise usage.UsageError(f"--log-namespace: {e}") from None
        self["log-namespace"] = [*self["log-namespace"], *names]

    def log_settings(self) -> LogSettings:
        """
        @return: the parsed logging options.
        @raise usage.UsageError: for a bad level or format.
        """
        try:
            level = parse_log_level(self["log-level"] or self.default_log_level)
            fmt = parse_log_format(self["log-format"] or "text")
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        return LogSettings(level, fmt, tuple(dict.fromkeys(self["log-namespace"])))
