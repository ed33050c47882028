"""
The one error hierarchy of realize.

Every error that crosses a module boundary is a L{RealizeError}.  Each class
carries a stable wire C{code}; the three places that translate errors are the
AMP C{errors} maps (L{realize.net.commands}), the FUSE errno map (milestone 2)
and HTTP status codes.  Exit codes are mapped from these classes in
L{realize.tap}.

Errors are built from one human message, because AMP rebuilds a remote error
on the caller's side as C{ErrorClass(description)}.  The message names the
thing that is wrong (the key, the arena, the path, the peer) so that it can be
shown to the user as is; L{SideError} adds which side of a move failed.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "WIRE_ERRORS",
    "ArenaUnavailable",
    "AuthenticationError",
    "BadDelta",
    "BadRequest",
    "ConfigError",
    "Conflict",
    "IOFailure",
    "InvalidPath",
    "IsADirectory",
    "NetworkError",
    "NoSpace",
    "NotADirectory",
    "NotFound",
    "PermissionDenied",
    "ReadOnly",
    "RealizeError",
    "SideError",
    "SubscriptionClosed",
    "Unauthorized",
    "describe",
    "is_retryable",
    "where",
]


class RealizeError(Exception):
    """
    Base of all realize errors.

    @ivar message: a human readable sentence naming what is wrong.
    @cvar code: the stable code of this error on the wire (AMP error code).
    @cvar retryable: whether retrying the same operation later may succeed
        (network errors); local, disk, application and authentication
        errors are not retried.
    """

    code: ClassVar[bytes] = b"ERROR"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(RealizeError):
    """
    A configuration file, key file or command line option is invalid.

    The message names the file and the key.
    """

    code = b"CONFIG"


class InvalidPath(RealizeError):
    """
    A path is malformed (absolute, C{..}, empty or C{.} segment, NUL), names
    a partial file, or resolves through a symlink, a device or another
    non-regular file.
    """

    code = b"INVALID_PATH"


class NotADirectory(InvalidPath):
    """
    A path goes through, or an operation needs, a directory, and the entry
    is a file (ENOTDIR).
    """

    code = b"NOT_A_DIRECTORY"


class IsADirectory(InvalidPath):
    """
    An operation on file data was asked of a directory (EISDIR).
    """

    code = b"IS_A_DIRECTORY"


class BadRequest(RealizeError):
    """
    A command's arguments are inconsistent (a reversed byte range, a range
    beyond the file size, a stream id in use).
    """

    code = b"BAD_REQUEST"


class NotFound(RealizeError):
    """
    An arena or file does not exist.
    """

    code = b"NOT_FOUND"


class PermissionDenied(RealizeError):
    """
    The operating system refused access to a file or directory (EACCES,
    EPERM, EROFS).
    """

    code = b"PERMISSION"


class ReadOnly(PermissionDenied):
    """
    A change was asked of something realize shows read-only: the data and
    names of the FUSE view (EROFS; changes go through the overlay).
    """

    code = b"READ_ONLY"


class Unauthorized(RealizeError):
    """
    The calling peer may not use this arena (arena ACL, DESIGN.md section 4).
    """

    code = b"UNAUTHORIZED"


class ArenaUnavailable(NotFound, Unauthorized):
    """
    An arena a peer asked for is not one it may use here: absent, without a
    datadir, or outside its ACL.  One answer for all three, with the code
    of L{NotFound}, so that a peer cannot learn which arenas exist by
    asking (issue 14 item 10); it is both a L{NotFound} and an
    L{Unauthorized} for callers.
    """

    code = b"NOT_FOUND"


class IOFailure(RealizeError):
    """
    An I/O error other than the more specific ones.
    """

    code = b"IO"


class NoSpace(RealizeError):
    """
    The device is full (ENOSPC, EDQUOT).
    """

    code = b"NO_SPACE"


class Conflict(RealizeError):
    """
    The file changed under us (a conditional delete whose precondition
    failed, a write stream shorter than announced).
    """

    code = b"CONFLICT"


class BadDelta(RealizeError):
    """
    A signature or delta is malformed, or does not produce the announced
    range.
    """

    code = b"BAD_DELTA"


class SubscriptionClosed(RealizeError):
    """
    A pull on a history subscription that was closed (by its subscriber, a
    config reload that removed its access, or the publisher stopping).
    """

    code = b"CLOSED"


class NetworkError(RealizeError):
    """
    The connection to a peer failed or was lost (refused, timed out, reset).

    Network errors are the only ones retried (DESIGN.md section 8).
    """

    code = b"NETWORK"
    retryable = True


class AuthenticationError(RealizeError):
    """
    The TLS handshake failed because a key is not the pinned one: the peer
    presented an unknown key, or refused ours.
    """

    code = b"AUTH"


class SideError(RealizeError):
    """
    An error of one side of a move, with the side named.

    @ivar side: C{"source"} or C{"destination"}.
    @ivar peer: description of the peer, e.g. C{"b (127.0.0.1:9771)"} or
        C{"local:/data"}.
    @ivar cause: the underlying error.
    """

    def __init__(self, side: str, peer: str, cause: BaseException) -> None:
        super().__init__(f"{side} {peer}: {describe(cause)}")
        self.side = side
        self.peer = peer
        self.cause = cause


def where(arena: str, path: str) -> str:
    """
    @return: C{"arena 'a', path 'd/f'"}, the start of every message about
        a file.
    """
    return f"arena {arena!r}, path {path!r}"


def is_retryable(error: BaseException) -> bool:
    """
    Whether an operation that failed with C{error} may succeed if retried.

    @param error: any exception; a L{SideError} is judged by its cause.
    @return: C{True} for network errors only (DESIGN.md section 8).
    """
    if isinstance(error, SideError):
        error = error.cause
    return isinstance(error, RealizeError) and error.retryable


def describe(error: BaseException) -> str:
    """
    Describe an exception and its cause chain in one line, each cause once.

    @param error: any exception.
    @return: C{"outer: inner: innermost"}, skipping a cause whose text is
        already part of the line.
    """
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current) or type(current).__name__
        if not any(text in part for part in parts):
            parts.append(text)
        following = current.__cause__
        if following is None and not current.__suppress_context__:
            following = current.__context__
        current = following
    return ": ".join(parts)


#: The errors that travel over AMP, with their codes.
WIRE_ERRORS: dict[type[Exception], bytes] = {
    cls: cls.code
    for cls in (
        InvalidPath,
        BadRequest,
        # NotFound before Unauthorized, and ArenaUnavailable after NotFound:
        # AMP answers the first class an error is an instance of, and
        # rebuilds a code as the last class that has it, so an unavailable
        # arena travels as NOT_FOUND and comes back as ArenaUnavailable
        # (both a NotFound and an Unauthorized).
        NotFound,
        ArenaUnavailable,
        Unauthorized,
        PermissionDenied,
        IOFailure,
        NoSpace,
        Conflict,
        BadDelta,
        SubscriptionClosed,
    )
}
