"""
Hostile input to the daemon (issue 4, "Crash safety and hostile
conditions"; DESIGN.md section 4; docs/protocol.md).

Every test goes through the daemon's whole server stack
(L{realize.net.server.server_factory}: throttle, pyOpenSSL TLS 1.3 in
memory with L{twisted.test.iosim} as in L{tests.test_net}, the framing
layer, AMP, the L{StoreResponders}), a L{StoreService} whose L{PeerView} applies
the arena ACLs of a real config, and a L{LocalStore} on a temporary
directory (its "threads" run synchronously, L{sync_run_in_thread}).  The
client side speaks raw AMP (C{callRemote}, C{callRemoteString}) and raw
frames, not L{RemoteStore}, so that it can send what a well-behaved peer
never would.

The daemon's directory::

    base/
      docs/       arena docs (peer a may use it)
      photos/     arena photos (only peer c may use it)
      outside/    not an arena: nothing may read, create or change it

After every hostile command the tests compare snapshots of the whole base
directory (names, kinds, contents, symlink targets, mtimes), and check
that the connection still serves a valid command, or, for input that
cannot be answered, that only that connection was dropped and another
connection to the same server keeps working.

These tests found seven bugs of the daemon (non-UTF-8 paths, junk boxes,
integers beyond 64 bits, far-future mtimes, stream ids out of range, a bad
mtime in a group commit, a path twice in one batch); all are fixed, and
the tests keep them fixed.
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from attrs import define, field
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import LogLevel, globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import TestCase

from realize.config import Config, PeerConfig, parse_config
from realize.errors import WIRE_ERRORS, IOFailure, RealizeError
from realize.hashing import LeafHasher, merkle_root
from realize.interfaces import RunInThread
from realize.model import MAX_NAME_BYTES, MAX_PATH_BYTES, PeerId
from realize.net import commands
from realize.net.client import RemoteStore, connect
from realize.net.codec import MAX_DATA_FRAME, decode_entries
from realize.net.factory import client_factory, server_factory
from realize.net.framing import (
    BOX,
    MAX_BOX_FRAME,
    READ_CANCEL,
    READ_DATA,
    WRITE_DATA,
    WRITE_END,
    Connection,
)
from realize.net.server import store_responders
from realize.net.streams import Inbox
from realize.net.tls import ClientTLS, ServerTLS
from realize.services.store import StoreService
from tests.helpers import sync_run_in_thread
from tests.test_net import (
    CLIENT_ADDRESS,
    SERVER_ADDRESS,
    Identity,
    Link,
    NetTestCase,
    WireTransport,
)

KiB = 1 << 10
MiB = 1 << 20

#: The codes of docs/protocol.md section 4: every refusal carries one.
DOCUMENTED_CODES = frozenset(WIRE_ERRORS.values())

SECRET = b"outside the arena\n"

_HEADER = struct.Struct("!BII")


def root_of(data: bytes) -> bytes:
    """
    @return: the Merkle root of C{data}, as the wire carries it.
    """
    hasher = LeafHasher()
    hasher.update(data)
    return merkle_root(hasher.finish())


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """
    Everything under a directory, without following symlinks: for each
    entry its kind and, for files, content and mtime; for symlinks, the
    target; for directories, the mtime (which changes when an entry is
    created or removed in it).

    @return: relative path to description.
    """
    found: dict[str, tuple[Any, ...]] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            full = os.path.join(directory, name)
            relative = os.path.relpath(full, root)
            info = os.lstat(full)
            if stat.S_ISLNK(info.st_mode):
                found[relative] = ("link", os.readlink(full))
            elif stat.S_ISDIR(info.st_mode):
                found[relative] = ("dir", info.st_mtime_ns)
            elif stat.S_ISREG(info.st_mode):
                with open(full, "rb") as f:
                    found[relative] = ("file", f.read(), info.st_mtime_ns)
            else:
                found[relative] = ("other", stat.S_IFMT(info.st_mode))
    return found


def read_beneath(root: Path, path: str) -> bytes:
    """
    Read a file of a path too long for one system call, a directory at a
    time.
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for segment in path.split("/")[:-1]:
            child = os.open(segment, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        file = os.open(path.split("/")[-1], os.O_RDONLY, dir_fd=fd)
    finally:
        os.close(fd)
    with os.fdopen(file, "rb") as f:
        return f.read()


def amp_box(*pairs: tuple[bytes, bytes]) -> bytes:
    """
    Encode an AMP box by hand, without AMP's checks: each key and value
    is a 2-byte big-endian length and the bytes; an empty key ends it.
    """
    out = [
        struct.pack("!H", len(k)) + k + struct.pack("!H", len(v)) + v for k, v in pairs
    ]
    return b"".join(out) + b"\x00\x00"


@define
class Outcome:
    """
    What came back for one command.

    @ivar answer: the answer's arguments, or C{None} if it failed.
    @ivar error: the exception it failed with, or C{None}.
    @ivar data: the data frames received on its stream.
    """

    answer: dict[str, Any] | None = None
    error: BaseException | None = None
    data: list[bytes] = field(factory=list)

    @property
    def answered(self) -> bool:
        return self.answer is not None or self.error is not None

    @property
    def code(self) -> bytes | None:
        """
        The error code: ours (C{b"INVALID_PATH"}...), or AMP's own
        (C{b"UNHANDLED"}, C{b"UNKNOWN"}), or C{None}.
        """
        error = self.error
        if isinstance(error, RealizeError):
            return error.code
        if isinstance(error, amp.RemoteAmpError):
            return error.errorCode  # type: ignore[no-any-return]
        for code, cls in amp.PROTOCOL_ERRORS.items():
            if type(error) is cls:
                return code  # type: ignore[no-any-return]
        return None

    def codes(self) -> list[bytes]:
        """
        @return: the per-file codes of a batch answer (C{b""} for success).
        """
        assert self.answer is not None, self.error
        return [r["code"] for r in self.answer["results"]]


#: Commands that take a data stream from the caller.
SENDING = {"Write", "WriteFiles"}

#: Commands that answer with a data stream.
READING = {"List", "Read", "ReadFiles"}

COMMANDS: dict[str, type[amp.Command]] = {
    "List": commands.List,
    "Read": commands.Read,
    "Write": commands.Write,
    "Truncate": commands.Truncate,
    "Finish": commands.Finish,
    "Delete": commands.Delete,
    "Hash": commands.Hash,
    "ReadFiles": commands.ReadFiles,
    "WriteFiles": commands.WriteFiles,
    "DeleteFiles": commands.DeleteFiles,
}

#: Commands that name one path, and those that name paths in records.
SINGLE = ("Read", "Write", "Truncate", "Finish", "Delete", "Hash")
BATCH = ("ReadFiles", "WriteFiles", "DeleteFiles")

EVIL = b"evil"


def every_call(arena: str, path: str) -> list[tuple[str, dict[str, Any], bytes]]:
    """
    Each path command with plausible arguments for C{path}.

    @return: C{(command name, arguments, data to send)}.
    """
    root = root_of(EVIL)
    return [
        ("Read", {"arena": arena, "path": path, "start": 0, "end": 4}, b""),
        (
            "Write",
            {
                "arena": arena,
                "path": path,
                "start": 0,
                "end": 4,
                "file_size": 4,
                "hash": True,
                "finish_root": root,
            },
            EVIL,
        ),
        ("Truncate", {"arena": arena, "path": path, "size": 0}, b""),
        ("Finish", {"arena": arena, "path": path}, b""),
        ("Delete", {"arena": arena, "path": path}, b""),
        ("Hash", {"arena": arena, "path": path, "start": 0, "end": 4}, b""),
        ("ReadFiles", {"arena": arena, "files": [{"path": path, "limit": 99}]}, b""),
        (
            "WriteFiles",
            {
                "arena": arena,
                "files": [{"path": path, "size": 4, "mtime_ns": 0, "root": root}],
            },
            EVIL,
        ),
        (
            "DeleteFiles",
            {"arena": arena, "files": [{"path": path, "size": 4, "mtime_ns": 0}]},
            b"",
        ),
    ]


def watch(d: defer.Deferred[Any]) -> Outcome:
    """
    @return: the outcome of a command's Deferred, filled in when it fires
        (handled at once: AMP drops the connection of an error answer that
        arrives before its errback is attached).
    """
    outcome = Outcome()

    def answered(result: Any) -> None:
        if isinstance(result, Failure):
            outcome.error = result.value
        else:
            outcome.answer = result

    d.addBoth(answered)
    return outcome


def issue(
    connection: Connection,
    name: str,
    arguments: dict[str, Any],
    data: bytes = b"",
    stream: int | None = None,
) -> Outcome:
    """
    Call a store command with raw AMP, sending its data frames (for Write
    and WriteFiles) and collecting the data frames of its answer (List,
    Read, ReadFiles).  The outcome fills in when the link is flushed.

    @param stream: the stream id to give; a fresh one by default.  An id
        that does not fit the frame header is given to the command, but
        no data frame is sent or expected for it.
    """
    command = COMMANDS[name]
    if stream is None:
        stream = connection.new_stream()
    framed = 0 <= stream <= 0xFFFFFFFF
    reading = name in READING and framed
    inbox = connection.open_reading(stream) if reading else None
    if name in SENDING or name in READING:
        arguments = {**arguments, "stream": stream}
    d = connection.amp.callRemote(command, **arguments)
    outcome = watch(d)

    async def drain(inbox: Inbox) -> None:
        async for chunk in inbox:
            outcome.data.append(chunk)

    def answered(_: object) -> None:
        if inbox is not None:
            connection.close_reading(stream)
            # The data came before the answer: it is all in the inbox.
            Deferred.fromCoroutine(drain(inbox)).addErrback(lambda _: None)

    d.addBoth(answered)
    if name in SENDING and framed:
        if data:
            connection.send_data(WRITE_DATA, stream, data)
        connection.end_write(stream, True)
    return outcome


def issue_raw(connection: Connection, command: bytes, **values: bytes) -> Outcome:
    """
    Send a command box built by hand (values as raw bytes, e.g. invalid
    UTF-8 or a text where an integer belongs) and collect its answer box.
    """
    return watch(connection.amp.callRemoteString(command, **values))


def capture_errors(case: TestCase | NetTestCase) -> list[dict[str, Any]]:
    """
    Collect log events at error level or above (failures logged with a
    traceback are critical) until the end of a test.
    """
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if (level is not None and level >= LogLevel.error) or event.get("isError"):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    case.addCleanup(globalLogPublisher.removeObserver, observe)
    return events


class HostileCase(NetTestCase):
    """
    Peer a (the caller) and peer c connect to the store service of peer b
    (see the module docstring for its directory), all through one server
    factory.
    """

    def setUp(self) -> None:
        super().setUp()
        self.base = Path(self.mktemp()).absolute()
        self.docs = self.base / "docs"
        self.photos = self.base / "photos"
        self.outside = self.base / "outside"
        for directory in (self.docs, self.photos, self.outside / "sub"):
            directory.mkdir(parents=True)
        (self.outside / "secret").write_bytes(SECRET)
        (self.outside / "sub" / "inner").write_bytes(SECRET)
        (self.photos / "p.jpg").write_bytes(b"jpeg")
        self.populate()
        peers = {p.id: {"pubkey": p.pem} for p in (self.a, self.b, self.c)}
        self.config: Config = parse_config(
            {
                "peers": peers,
                "arena": [
                    {
                        "name": "docs",
                        "datadir": str(self.docs),
                        "workdir": str(self.base / "work"),
                        "peers": ["a"],
                    },
                    {
                        "name": "photos",
                        "datadir": str(self.photos),
                        "workdir": str(self.base / "work-photos"),
                        "peers": ["c"],
                    },
                ],
            },
            "realize.toml",
            self.base,
        )
        self.service = StoreService(self.config, self.threads())
        tls = ServerTLS(self.b.key, self.config.peer_by_spki().get)
        # The daemon's whole stack: throttle, TLS, framing, responders.
        self.server_side = server_factory(
            tls, store_responders(self.service.view), self.clock
        )
        self.errors = capture_errors(self)
        self.before = snapshot(self.base)
        self.link = self.connect(self.a)

    def threads(self) -> RunInThread:
        """
        @return: how the daemon's store runs its blocking work: at once.
        """
        return sync_run_in_thread

    def populate(self) -> None:
        """
        Fill the arena docs: regular files, and symlinks that point out of
        it, as a file and as a directory, relative and absolute, dangling.
        """
        (self.docs / "f").write_bytes(b"safe")
        (self.docs / "dir").mkdir()
        (self.docs / "dir" / "g").write_bytes(b"also safe")
        os.symlink("../outside/secret", self.docs / "link-file")
        os.symlink(str(self.outside / "secret"), self.docs / "link-abs")
        os.symlink("../outside", self.docs / "link-dir")
        os.symlink(str(self.outside), self.docs / "dir" / "link-abs-dir")
        os.symlink("..", self.docs / "dir" / "up")
        os.symlink("../outside/new-dir", self.docs / "dangling-dir")
        os.symlink("../outside/new-file", self.docs / "dangling-file")
        # A symlink planted where the partial file of "victim" would be.
        os.symlink("../outside/secret", self.docs / ".victim.part")

    def connect(self, client: Identity) -> Link:
        """
        Connect a client peer to the server over TLS in memory, through
        the server's one factory; closed at the end of the test.
        """
        expected = self.b
        client_side = client_factory(
            ClientTLS(client.key, expected.spki, expected.id), self.clock
        )
        made: dict[str, Any] = {}

        def build(side: Any, key: str, address: IPv4Address) -> Callable[[], Protocol]:
            def go() -> Protocol:
                protocol = side.buildProtocol(address)
                inner = protocol
                while not isinstance(inner, Connection):
                    inner = inner.wrappedProtocol
                made[key] = inner
                return protocol  # type: ignore[no-any-return]

            return go

        def wire(key: str, server: bool) -> Callable[[Protocol], WireTransport]:
            host, peer = (
                (SERVER_ADDRESS, CLIENT_ADDRESS)
                if server
                else (CLIENT_ADDRESS, SERVER_ADDRESS)
            )

            def go(protocol: Protocol) -> WireTransport:
                made[key] = WireTransport(
                    protocol, server, hostAddress=host, peerAddress=peer
                )
                return made[key]  # type: ignore[no-any-return]

            return go

        _, _, pump = connectedServerAndClient(
            build(self.server_side, "server", CLIENT_ADDRESS),
            build(client_side, "client", SERVER_ADDRESS),
            clientTransportFactory=wire("client_wire", False),
            serverTransportFactory=wire("server_wire", True),
            clock=self.clock,
        )
        result = Link(
            made["client"],
            made["server"],
            None,
            made["client_wire"],
            made["server_wire"],
            pump,
        )
        self.assertEqual(result.server.peer, client.id)
        self.addCleanup(result.close)
        return result

    # -- helpers ---------------------------------------------------------

    def call(
        self,
        name: str,
        arguments: dict[str, Any],
        data: bytes = b"",
        link: Link | None = None,
        stream: int | None = None,
    ) -> Outcome:
        """
        Issue a command on a link (default: peer a's) and flush.
        """
        link = link or self.link
        outcome = issue(link.client, name, arguments, data, stream)
        link.flush()
        return outcome

    def assert_refused(self, outcome: Outcome, code: bytes, what: object) -> None:
        """
        The command failed with C{code}, with a message.
        """
        self.assertTrue(outcome.answered, what)
        self.assertIsNone(outcome.answer, what)
        self.assertEqual(outcome.code, code, (what, outcome.error))
        self.assertTrue(str(outcome.error), what)

    def assert_each_refused(
        self, calls: Iterator[tuple[Any, ...]], code: bytes
    ) -> None:
        """
        Issue each C{(label, name, arguments, data)}: a single command fails
        with C{code}; a batch command answers C{code} for its one file.
        """
        for label, name, arguments, data in calls:
            outcome = self.call(name, arguments, data)
            what = (label, name)
            if name in BATCH:
                self.assertIsNone(outcome.error, (what, outcome.error))
                self.assertEqual(outcome.codes(), [code], what)
            else:
                self.assert_refused(outcome, code, what)

    def assert_untouched(self) -> None:
        """
        Nothing under the base directory (both arenas, outside) changed,
        except the mtimes of directories of the arena docs (a refused
        WriteFiles may create and remove a partial file there).
        """

        def relevant(tree: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
            return {
                path: ("dir",) if path.split("/")[0] == "docs" and v[0] == "dir" else v
                for path, v in tree.items()
            }

        before, after = relevant(self.before), relevant(snapshot(self.base))
        changed = {
            path: (before.get(path), after.get(path))
            for path in before.keys() | after.keys()
            if before.get(path) != after.get(path)
        }
        self.assertEqual(changed, {})

    def assert_outside_untouched(self) -> None:
        """
        Nothing outside the arenas changed (inside docs, anything may have).
        """
        before = {
            path: value
            for path, value in self.before.items()
            if path.startswith("outside/")
        }
        after = {"outside/" + path: v for path, v in snapshot(self.outside).items()}
        self.assertEqual(after, before)

    def assert_serving(self, link: Link | None = None) -> None:
        """
        The connection (default: peer a's) is up and serves a valid Read.
        """
        link = link or self.link
        self.assertFalse(link.server.lost.called, "the server dropped the connection")
        outcome = self.call(
            "Read", {"arena": "docs", "path": "f", "start": 0, "end": 99}, link=link
        )
        self.assertIsNone(outcome.error)
        self.assertEqual(b"".join(outcome.data), b"safe")

    def assert_no_errors_logged(self) -> None:
        self.assertEqual(self.errors, [])


#: Paths that break the rules of DESIGN.md section 1, each refused with
#: INVALID_PATH before any filesystem call.
MALFORMED = {
    "dot-dot": "..",
    "up and out": "../outside/secret",
    "up inside": "dir/../../outside/secret",
    "up at end": "dir/..",
    "dot": ".",
    "dot segment": "dir/./g",
    "empty": "",
    "empty segment": "dir//g",
    "trailing slash": "dir/",
    "absolute": "/etc/passwd",
    "absolute outside": "/outside/secret",
    "NUL": "f\0../../outside/secret",
    "NUL at end": "f\0",
    "partial name": ".f.part",
    "partial name in dir": "dir/.g.part",
    "partial of symlink": ".victim.part",
    "segment too long": "a" * (MAX_NAME_BYTES + 1),
    "segment too long in UTF-8": "é" * (MAX_NAME_BYTES // 2 + 1),
    "path too long": "/".join(["d" * 200] * 21),
    "path of 64 KiB": "x/" * 32767,
}

#: Paths that cross a symlink, a FIFO or a device: refused with
#: INVALID_PATH by the resolution beneath the arena root.
ESCAPES = {
    "symlink to a file outside": "link-file",
    "absolute symlink to a file outside": "link-abs",
    "through a symlink to a directory outside": "link-dir/secret",
    "deeper through a symlink": "link-dir/sub/inner",
    "new file through a symlink": "link-dir/created",
    "through an absolute symlink": "dir/link-abs-dir/secret",
    "through a symlink up": "dir/up/f",
    "through a dangling symlink": "dangling-dir/created",
    "dangling symlink": "dangling-file",
    "through a regular file": "f/x",
}


class PathTests(HostileCase):
    """
    Every command that names a path refuses one that is malformed, names a
    partial file, or crosses a symlink, FIFO or device: INVALID_PATH, and
    nothing under the base directory is read, created or changed.
    """

    def test_malformed(self) -> None:
        """
        Malformed paths (C{..}, absolute, NUL, empty or C{.} segments,
        overlong, partial names) are refused by every command with
        INVALID_PATH; the connection keeps serving.
        """
        calls = (
            (label, name, arguments, data)
            for label, path in MALFORMED.items()
            for name, arguments, data in every_call("docs", path)
        )
        self.assert_each_refused(calls, b"INVALID_PATH")
        self.assert_untouched()
        self.assert_serving()
        self.assert_no_errors_logged()

    def test_symlink_escapes(self) -> None:
        """
        A symlink inside the arena pointing outside, as the file itself or
        as a directory on the way (relative, absolute, dangling, pointing
        up), is never followed: every command refuses it with INVALID_PATH,
        nothing outside is read or created, and the symlinks stay as they
        are.
        """
        calls = (
            (label, name, arguments, data)
            for label, path in ESCAPES.items()
            for name, arguments, data in every_call("docs", path)
        )
        self.assert_each_refused(calls, b"INVALID_PATH")
        self.assert_untouched()
        self.assertFalse((self.outside / "created").exists())
        self.assertFalse((self.outside / "new-dir").exists())
        self.assertFalse((self.outside / "new-file").exists())
        self.assert_serving()
        self.assert_no_errors_logged()

    def test_symlinked_partial(self) -> None:
        """
        A symlink planted where a partial file would be (C{.victim.part}
        pointing outside) is not followed: reading, hashing, writing,
        truncating and finishing C{victim} are refused with INVALID_PATH;
        deleting C{victim} removes the symlink itself (it is in the arena)
        and leaves its target alone.
        """
        calls = (
            ("victim", name, arguments, data)
            for name, arguments, data in every_call("docs", "victim")
            if name not in ("Delete", "DeleteFiles", "WriteFiles")
        )
        self.assert_each_refused(calls, b"INVALID_PATH")
        self.assert_untouched()
        outcome = self.call("Delete", {"arena": "docs", "path": "victim"})
        self.assertIsNone(outcome.error)
        self.assertFalse(os.path.lexists(self.docs / ".victim.part"))
        self.assertEqual((self.outside / "secret").read_bytes(), SECRET)
        self.assert_serving()

    def test_symlinked_partial_write_files(self) -> None:
        """
        WriteFiles of C{victim} over a symlinked partial either refuses the
        file or writes a new regular file in the arena; the symlink's target
        outside is never written.
        """
        (_, arguments, data) = every_call("docs", "victim")[7]
        outcome = self.call("WriteFiles", arguments, data)
        self.assertIsNone(outcome.error)
        self.assertIn(outcome.codes(), ([b""], [b"INVALID_PATH"]))
        self.assertEqual((self.outside / "secret").read_bytes(), SECRET)
        self.assert_outside_untouched()
        self.assert_serving()

    def test_special_files(self) -> None:
        """
        A FIFO and a character device in the arena are refused with
        INVALID_PATH by every command (opening the FIFO does not hang,
        the device is never read or written).
        """
        os.mkfifo(self.docs / "fifo")
        paths = {"fifo": "fifo"}
        try:
            os.mknod(self.docs / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pass
        else:
            paths["device"] = "null"
        self.before = snapshot(self.base)
        calls = (
            (label, name, arguments, data)
            for label, path in paths.items()
            for name, arguments, data in every_call("docs", path)
        )
        self.assert_each_refused(calls, b"INVALID_PATH")
        self.assert_untouched()
        self.assert_serving()

    def test_listing(self) -> None:
        """
        List shows the arena's regular files only: no symlink, nothing
        behind one, no file outside.
        """
        outcome = self.call("List", {"arena": "docs"})
        self.assertIsNone(outcome.error)
        paths = sorted(e.path for chunk in outcome.data for e in decode_entries(chunk))
        self.assertEqual(paths, ["dir/g", "f"])

    def test_longest_valid_names(self) -> None:
        """
        The limits are exact: a segment of L{MAX_NAME_BYTES} bytes (whose
        partial name is 255 bytes) and a path of L{MAX_PATH_BYTES} bytes
        are written and finished, inside the arena.
        """
        long_name = "n" * MAX_NAME_BYTES
        deep = "/".join(["d" * 239] * 17)
        deep += "/" + "e" * (MAX_PATH_BYTES - len(deep) - 1)
        self.assertEqual(len(deep), MAX_PATH_BYTES)
        self.addCleanup(shutil.rmtree, self.docs / ("d" * 239), True)
        for path in (long_name, deep):
            _, arguments, data = every_call("docs", path)[1]
            outcome = self.call("Write", arguments, data)
            self.assertIsNone(outcome.error, outcome.error)
            self.assertTrue(outcome.answer and outcome.answer["finished"])
            self.assertEqual(read_beneath(self.docs, path), EVIL)
        self.assert_outside_untouched()


#: Well-formed boxes that are not commands: no key at all, an answer and an
#: error to questions the daemon never asked, and a command sent without
#: asking for an answer that fails.
JUNK_BOXES = [
    amp_box((b"arena", b"docs")),
    amp_box((b"_answer", b"999")),
    amp_box((b"_error", b"999"), (b"_error_code", b"X")),
    amp_box((b"_command", b"Finish"), (b"arena", b"docs"), (b"path", b"../x")),
]

#: Invalid UTF-8 sent as the raw bytes of a path: a lone continuation
#: byte, an overlong encoding of "/", an encoded surrogate, Latin-1.
NON_UTF8 = [b"\xff\xfe", b"ok/\xc0\xaf..\xc0\xafoutside", b"\xed\xa0\x80", b"caf\xe9"]


#: The batch commands, as raw command names.
BATCH_RAW = (b"ReadFiles", b"DeleteFiles")


def raw_calls(arena: bytes, path: bytes) -> list[tuple[bytes, dict[str, bytes]]]:
    """
    Each path command as a hand-built box whose path (or arena) is raw
    bytes: C{(command, values)}.
    """
    record = struct.pack("!H", len(path)) + path
    return [
        (
            b"Read",
            {"arena": arena, "path": path, "start": b"0", "end": b"4", "stream": b"77"},
        ),
        (
            b"Write",
            {
                "arena": arena,
                "path": path,
                "start": b"0",
                "end": b"0",
                "file_size": b"0",
                "stream": b"78",
                "hash": b"False",
            },
        ),
        (b"Truncate", {"arena": arena, "path": path, "size": b"0"}),
        (b"Finish", {"arena": arena, "path": path}),
        (b"Delete", {"arena": arena, "path": path}),
        (b"Hash", {"arena": arena, "path": path, "start": b"0", "end": b"4"}),
        (
            b"ReadFiles",
            {"arena": arena, "stream": b"79", "files": record + struct.pack("!Q", 99)},
        ),
        (
            b"DeleteFiles",
            {"arena": arena, "files": record + struct.pack("!Qq", 0, 0)},
        ),
    ]


class NonUTF8Tests(HostileCase):
    """
    Paths and arena names that are not valid UTF-8 cannot be sent through
    AMP's C{Unicode} arguments (they cannot carry surrogates): these
    tests build the boxes by hand with the raw bytes.
    """

    def test_refused(self) -> None:
        """
        Today: each command with a non-UTF-8 path or arena is refused,
        either by an error answer or by dropping that connection; no file
        is created; another connection to the server keeps working.
        """
        other = self.connect(self.a)
        for path in NON_UTF8:
            for arena, value in ((b"docs", path), (path, b"f")):
                for command, values in raw_calls(arena, value):
                    bad = self.connect(self.a)
                    outcome = issue_raw(bad.client, command, **values)
                    bad.flush()
                    what = (command, arena, value)
                    refused_per_file = outcome.answer is not None and any(
                        code in outcome.answer.get(b"results", b"")
                        for code in (b"INVALID_PATH", b"NOT_FOUND")
                    )
                    self.assertTrue(
                        outcome.error is not None
                        or bad.server.lost.called
                        or refused_per_file,
                        what,
                    )
        self.flushLoggedErrors(UnicodeDecodeError, ValueError)
        self.errors.clear()
        self.assert_untouched()
        self.assert_serving(other)
        self.assert_serving()

    def test_invalid_path(self) -> None:
        """
        Each command with a non-UTF-8 path is answered INVALID_PATH (a
        non-UTF-8 arena, NOT_FOUND), like any other malformed path, on a
        connection that keeps serving, and nothing is logged as an
        unexpected failure.
        """
        for path in NON_UTF8:
            for arena, value, code in (
                (b"docs", path, b"INVALID_PATH"),
                (path, b"f", b"NOT_FOUND"),
            ):
                for command, values in raw_calls(arena, value):
                    if command in BATCH_RAW:
                        continue
                    outcome = issue_raw(self.link.client, command, **values)
                    self.link.flush()
                    what = (command, arena, value)
                    self.assertEqual(outcome.code, code, (what, outcome.error))
                    self.assertFalse(self.link.server.lost.called, what)
        self.assert_untouched()
        self.assert_serving()
        self.assert_no_errors_logged()

    def test_invalid_path_in_batches(self) -> None:
        """
        A batch naming a non-UTF-8 path is answered, with INVALID_PATH for
        that file (NOT_FOUND for the whole batch if the arena is not UTF-8),
        on a connection that keeps serving.
        """
        for path in NON_UTF8:
            for arena, value in ((b"docs", path), (path, b"f")):
                for command, values in raw_calls(arena, value):
                    if command not in BATCH_RAW:
                        continue
                    outcome = issue_raw(self.link.client, command, **values)
                    self.link.flush()
                    what = (command, arena, value)
                    if arena == b"docs":
                        self.assertIsNone(outcome.error, what)
                        results = (outcome.answer or {}).get(b"results", b"")
                        self.assertIn(b"INVALID_PATH", results, what)
                    else:
                        self.assertEqual(outcome.code, b"NOT_FOUND", what)
                    self.assertFalse(self.link.server.lost.called, what)
        self.assert_untouched()
        self.assert_serving()
        self.assert_no_errors_logged()


class UnauthorizedTests(HostileCase):
    """
    An arena the caller's ACL does not admit (photos, only for peer c):
    every command is refused before anything else is looked at, and the
    arena is left alone.  The answer is NOT_FOUND, the same as for an
    arena that does not exist (issue 14 item 10: UNAUTHORIZED told a peer
    which arena names exist).
    """

    def test_every_command(self) -> None:
        """
        Peer a gets NOT_FOUND, as for an arena that does not exist, from
        every command on photos (batch commands as a whole), with valid and
        with hostile paths; photos is not listed by Arenas; nothing
        changes; the connection keeps serving.
        """
        for path in ["p.jpg", "new", "../docs/f", "link-file", ".p.jpg.part"]:
            for name, arguments, data in every_call("photos", path):
                outcome = self.call(name, arguments, data)
                self.assert_refused(outcome, b"NOT_FOUND", (name, path))
                self.assertIn("'photos'", str(outcome.error))
                missing = self.call(
                    name,
                    {**arguments, "arena": "absent"}
                    if "arena" in arguments
                    else arguments,
                    data,
                )
                self.assertEqual(
                    str(missing.error).replace("'absent'", "'photos'"),
                    str(outcome.error),
                )
        outcome = self.call("List", {"arena": "photos"})
        self.assert_refused(outcome, b"NOT_FOUND", "List")
        self.assertEqual(outcome.data, [])
        arenas = self.link.client.amp.callRemote(commands.Arenas)
        self.link.flush()
        self.assertEqual(self.successResultOf(arenas), {"arenas": ["docs"]})
        self.assert_untouched()
        self.assert_serving()
        self.assert_no_errors_logged()

    def test_other_peer(self) -> None:
        """
        The ACL is per peer: c may use photos, and is refused docs.
        """
        link = self.connect(self.c)
        outcome = self.call(
            "Read",
            {"arena": "photos", "path": "p.jpg", "start": 0, "end": 9},
            link=link,
        )
        self.assertEqual(b"".join(outcome.data), b"jpeg")
        for name, arguments, data in every_call("docs", "f"):
            outcome = self.call(name, arguments, data, link=link)
            self.assert_refused(outcome, b"NOT_FOUND", name)
        self.assert_untouched()

    def test_arena_names(self) -> None:
        """
        Arena names that try to reach another arena or the directory around
        them (C{..}, C{photos/..}, C{docs/../photos}, C{""}, C{/}) match no
        arena: NOT_FOUND for every command, nothing touched.
        """
        for arena in ["..", "docs/..", "docs/../photos", "", "/", "docs/", "outside"]:
            for name, arguments, data in [
                ("List", {"arena": arena}, b""),
                *every_call(arena, "f"),
            ]:
                outcome = self.call(name, arguments, data)
                self.assert_refused(outcome, b"NOT_FOUND", (arena, name))
        self.assert_untouched()
        self.assert_serving()


class MalformedTests(HostileCase):
    """
    Malformed and oversized AMP boxes and frames, sent by an authenticated
    peer on its own connection C{bad}: the daemon answers an error or drops
    that connection; peer a's other connection to the same server keeps
    working.
    """

    def setUp(self) -> None:
        super().setUp()
        self.bad = self.connect(self.a)

    def send(self, *frames: tuple[int, int, bytes]) -> None:
        """
        Send raw frames C{(kind, stream, payload)} on the bad connection,
        then flush.
        """
        for kind, stream, payload in frames:
            self.bad.client.transport.write(_HEADER.pack(kind, stream, len(payload)))
            self.bad.client.transport.write(payload)
        self.bad.flush()

    def announce(self, kind: int, length: int) -> None:
        """
        Send only the header of a frame of C{length} bytes.
        """
        self.bad.client.transport.write(_HEADER.pack(kind, 0, length))
        self.bad.flush()

    def assert_dropped(self) -> None:
        """
        The server dropped the bad connection, and only that one.
        """
        self.assertTrue(self.bad.server.lost.called, "bad connection not dropped")
        self.assertTrue(self.bad.client.lost.called)
        self.assert_serving()
        self.assert_untouched()

    def assert_refused_or_dropped(self, outcome: Outcome, what: object) -> None:
        """
        The command got an error answer, or its connection was dropped;
        the other connection keeps serving.
        """
        self.assertIsNone(outcome.answer, what)
        self.assertTrue(outcome.error is not None or self.bad.server.lost.called, what)
        self.assert_serving()
        self.assert_untouched()

    def test_key_too_long(self) -> None:
        """
        A box whose first key is 256 bytes long (AMP keys are at most 255):
        the connection is dropped.
        """
        box = struct.pack("!H", 256) + b"k" * 256 + struct.pack("!H", 1) + b"v"
        self.send((BOX, 0, box + b"\x00\x00"))
        self.assert_dropped()
        self.assert_no_errors_logged()

    def test_longest_value(self) -> None:
        """
        A path of 65,535 bytes (the longest value AMP can carry; its 2-byte
        length cannot say more) is answered INVALID_PATH on a connection
        that keeps serving.
        """
        outcome = issue_raw(
            self.bad.client,
            b"Hash",
            arena=b"docs",
            path=b"a" * 65535,
            start=b"0",
            end=b"1",
        )
        self.bad.flush()
        self.assertEqual(outcome.code, b"INVALID_PATH", outcome.error)
        self.assert_serving(self.bad)
        self.assert_no_errors_logged()

    def test_huge_batch_value(self) -> None:
        """
        A batch whose records fill 18 MB over several AMP values (C{files},
        C{files.1}, ...): more than 1,024 files is answered BAD_REQUEST
        and nothing is deleted.
        """
        path = b"f" * 12000
        record = struct.pack("!H", len(path)) + path + struct.pack("!Qq", 4, 0)
        packed = record * 1500
        values = {
            "files" if i == 0 else f"files.{i}": packed[o : o + 65535]
            for i, o in enumerate(range(0, len(packed), 65535))
        }
        self.assertGreater(len(values), 250)
        outcome = issue_raw(self.bad.client, b"DeleteFiles", arena=b"docs", **values)
        self.bad.flush()
        self.assertEqual(outcome.code, b"BAD_REQUEST", outcome.error)
        self.assertIn("1500 files", str(outcome.error))
        self.assert_serving(self.bad)
        self.assert_untouched()

    def test_truncated_box(self) -> None:
        """
        A box cut in the middle of a value, then the peer closes: the
        daemon forgets it without an error, and keeps serving others.
        """
        self.send((BOX, 0, b"\x00\x08_command\x00\x04Read\x00\x04path\x00\x40ab"))
        self.assertFalse(self.bad.server.lost.called)
        self.bad.close()
        self.assertTrue(self.bad.server.lost.called)
        self.assert_serving()
        self.assert_no_errors_logged()

    def test_box_split_over_frames(self) -> None:
        """
        Box frames carry a byte stream: one box split over three frames,
        even inside a length, is one command.
        """
        box = amp_box(
            (b"_command", b"Hash"),
            (b"_ask", b"1"),
            (b"arena", b"docs"),
            (b"path", b"f"),
            (b"start", b"0"),
            (b"end", b"4"),
        )
        answers: list[amp.AmpBox] = []
        self.bad.client.amp.ampBoxReceived = answers.append  # type: ignore[method-assign]
        self.send(
            (BOX, 0, box[:3]), (BOX, 0, b""), (BOX, 0, box[3:40]), (BOX, 0, box[40:])
        )
        self.assertEqual(len(answers), 1)
        self.assertEqual(answers[0][b"size"], b"4")
        self.assertFalse(self.bad.server.lost.called)

    def test_unknown_command(self) -> None:
        """
        An unknown command name is answered with AMP's UNHANDLED error; the
        connection keeps serving.
        """
        outcome = issue_raw(self.bad.client, b"Rm", path=b"/")
        self.bad.flush()
        self.assertEqual(outcome.code, b"UNHANDLED")
        self.assert_serving(self.bad)
        self.assert_no_errors_logged()

    def test_missing_argument(self) -> None:
        """
        A command without a required argument (Read without its range and
        stream) is refused, or its connection dropped.
        """
        outcome = issue_raw(self.bad.client, b"Read", arena=b"docs", path=b"f")
        self.bad.flush()
        self.assert_refused_or_dropped(outcome, "missing argument")
        self.flushLoggedErrors(KeyError)

    def test_wrong_types(self) -> None:
        """
        Values that do not parse as their type (text for an integer, a
        hexadecimal or float integer, a boolean that is not True/False,
        records cut short) are refused, or their connection dropped; no
        command runs.
        """
        good = {
            "arena": b"docs",
            "path": b"f",
            "start": b"0",
            "end": b"4",
            "file_size": b"4",
            "stream": b"5",
            "hash": b"True",
        }
        cases = [
            (b"Read", {**good, "start": b"abc"}),
            (b"Read", {**good, "end": b"0x10"}),
            (b"Hash", {**good, "end": b"1e9"}),
            (b"Truncate", {**good, "size": b"-"}),
            (b"Write", {**good, "hash": b"maybe"}),
            (b"DeleteFiles", {"arena": b"docs", "files": b"\x00\x05ab"}),
            (
                b"ReadFiles",
                {"arena": b"docs", "stream": b"6", "files": b"\x00\x01f\x00"},
            ),
        ]
        for command, values in cases:
            self.bad = self.connect(self.a)
            outcome = issue_raw(self.bad.client, command, **values)
            self.bad.flush()
            self.assert_refused_or_dropped(outcome, (command, values))
        self.flushLoggedErrors(ValueError, TypeError)
        self.assertEqual((self.docs / "f").read_bytes(), b"safe")

    def test_unknown_frame_kind(self) -> None:
        """
        A frame of an unknown kind drops the connection at once.
        """
        self.send((9, 0, b"junk"))
        self.assert_dropped()
        self.assert_no_errors_logged()

    def test_data_frame_too_large(self) -> None:
        """
        A data frame announcing more than 1 MiB drops the connection as
        soon as its header arrives (nothing is buffered).
        """
        for kind in (WRITE_DATA, READ_DATA):
            self.bad = self.connect(self.a)
            self.announce(kind, MAX_DATA_FRAME + 1)
            self.assert_dropped()
        self.assert_no_errors_logged()

    def test_box_frame_too_large(self) -> None:
        """
        A box frame announcing more than 64 MiB drops the connection as
        soon as its header arrives.
        """
        self.announce(BOX, MAX_BOX_FRAME + 1)
        self.assert_dropped()
        self.assert_no_errors_logged()

    def test_stray_stream_frames(self) -> None:
        """
        Data, end and cancel frames for streams nobody opened are ignored:
        the connection keeps serving.
        """
        self.send(
            (WRITE_DATA, 12345, b"x" * 1000),
            (WRITE_END, 12345, b"\x00"),
            (WRITE_END, 0, b"\x07"),
            (READ_DATA, 7, b"y" * 1000),
            (READ_CANCEL, 99, b""),
            (WRITE_DATA, 0xFFFFFFFF, b""),
        )
        self.assert_serving(self.bad)
        self.assert_untouched()
        self.assert_no_errors_logged()

    def test_stream_in_use(self) -> None:
        """
        A second Write on the stream id of a Write still receiving its data
        is refused with BAD_REQUEST; the first one then completes.
        """
        client = self.bad.client
        arguments = {"arena": "docs", "start": 0, "end": 4, "file_size": 4}
        first = watch(
            client.amp.callRemote(
                commands.Write,
                path="w1",
                stream=500,
                hash=False,
                finish_root=root_of(EVIL),
                **arguments,
            )
        )
        second = watch(
            client.amp.callRemote(
                commands.Write, path="w2", stream=500, hash=False, **arguments
            )
        )
        self.bad.flush()
        self.assertEqual(second.code, b"BAD_REQUEST")
        self.assertFalse(first.answered)
        client.send_data(WRITE_DATA, 500, EVIL)
        client.end_write(500, True)
        self.bad.flush()
        self.assertEqual(first.answer, {"leaves": b"", "finished": True})
        self.assertEqual((self.docs / "w1").read_bytes(), EVIL)
        self.assertFalse((self.docs / "w2").exists())
        self.assertFalse((self.docs / ".w2.part").exists())
        self.assert_serving(self.bad)

    def test_junk_boxes(self) -> None:
        """
        Each junk box makes the daemon drop that connection, with a warning
        but no traceback, and nothing escapes the connection's dataReceived
        (under a real reactor an exception there is logged as an unhandled
        error).
        """
        for box in JUNK_BOXES:
            self.bad = self.connect(self.a)
            self.send((BOX, 0, box))
            self.assert_dropped()
        self.assert_no_errors_logged()


def open_fds() -> int:
    """
    @return: how many file descriptors this process has open.
    """
    return len(os.listdir("/proc/self/fd"))


#: A time after 2262: its nanoseconds since the epoch do not fit 64 bits
#: (ext4 stores times up to 2446).
YEAR_2300_NS = 10_413_792_000 * 10**9


class ExtremeValueTests(HostileCase):
    """
    Integers the store cannot represent (AMP's C{Integer} has no bound;
    files, offsets and times are 64-bit), and stream ids that do not fit
    a frame header.
    """

    def extreme_calls(self) -> list[tuple[str, dict[str, Any], bytes]]:
        """
        Commands with integers beyond 64 bits, on files that exist.
        """
        (self.docs / ".part-file.part").write_bytes(b"partial")
        self.before = snapshot(self.base)
        big = 2**63
        return [
            ("Truncate", {"arena": "docs", "path": "f", "size": big}, b""),
            (
                "Write",
                {
                    "arena": "docs",
                    "path": "w",
                    "start": big,
                    "end": big,
                    "file_size": big,
                    "hash": False,
                },
                b"",
            ),
            ("Read", {"arena": "docs", "path": "f", "start": big, "end": big + 1}, b""),
            (
                "Read",
                {"arena": "docs", "path": "f", "start": 0, "end": 1, "hash_from": -big},
                b"",
            ),
            ("Finish", {"arena": "docs", "path": "part-file", "mtime_ns": 2**100}, b""),
            ("Hash", {"arena": "docs", "path": "f", "start": 0, "end": 2**100}, b""),
            # Only compared with the file's size: a mismatch, not an error.
            ("Delete", {"arena": "docs", "path": "dir/g", "size": 2**70}, b""),
        ]

    def test_integers_beyond_64_bits_today(self) -> None:
        """
        Today: each such command is answered (with an error or a result),
        the connection keeps serving and nothing outside the arena changes.
        """
        for name, arguments, data in self.extreme_calls():
            outcome = self.call(name, arguments, data)
            self.assertTrue(outcome.answered, (name, arguments))
            if outcome.error is not None:
                self.assertIn(outcome.code, DOCUMENTED_CODES, (name, outcome.error))
        self.assert_serving()
        self.assert_outside_untouched()
        self.flushLoggedErrors(OverflowError)

    def test_integers_beyond_64_bits(self) -> None:
        """
        Each command with an integer the filesystem cannot take is refused
        with BAD_REQUEST (where the value is only compared, a mismatch is
        CONFLICT), never as an "internal error": nothing is logged as a
        failure and no file descriptor leaks.
        """
        fds = open_fds()
        for name, arguments, data in self.extreme_calls():
            outcome = self.call(name, arguments, data)
            allowed = (
                None,
                b"BAD_REQUEST",
                *((b"CONFLICT",) if name == "Delete" else ()),
            )
            self.assertIn(outcome.code, allowed, (name, outcome.error))
        self.assert_serving()
        self.assert_no_errors_logged()
        self.assertEqual(open_fds(), fds)
        # The partial that Finish was refused stays a partial.
        self.assertTrue((self.docs / ".part-file.part").exists())

    def test_far_future_mtime_listing(self) -> None:
        """
        A file whose mtime is after 2262 (possible: ext4 stores times up to
        2446; a peer can even set one with Finish) does not break the
        listing of its arena: List still answers, nothing is logged as a
        failure.
        """
        os.utime(self.docs / "f", ns=(YEAR_2300_NS, YEAR_2300_NS))
        outcome = self.call("List", {"arena": "docs"})
        self.assertIsNone(outcome.error)
        self.assert_no_errors_logged()

    def test_far_future_mtime_listing_today(self) -> None:
        """
        Today the List of such an arena fails, but with an error answer on
        a connection that keeps serving.
        """
        os.utime(self.docs / "f", ns=(YEAR_2300_NS, YEAR_2300_NS))
        outcome = self.call("List", {"arena": "docs"})
        self.assertTrue(outcome.answered)
        self.assertIn(outcome.code, (None, *DOCUMENTED_CODES))
        self.assert_serving()
        self.flushLoggedErrors(struct.error)

    def test_stream_ids_out_of_range(self) -> None:
        """
        A stream id that does not fit the 4-byte frame header (negative or
        >= 2**32) is refused with BAD_REQUEST by every command that takes
        one, instead of failing while sending (Read, List, ReadFiles) or
        waiting forever for data that cannot come (Write, WriteFiles).
        """
        for stream in (-1, 2**32, 2**64):
            for name, arguments, data in [
                ("List", {"arena": "docs"}, b""),
                *every_call("docs", "f"),
            ]:
                if name not in READING and name not in SENDING:
                    continue
                outcome = self.call(name, arguments, data, stream=stream)
                self.assertEqual(outcome.code, b"BAD_REQUEST", (name, stream))
        self.assert_serving()
        self.assert_no_errors_logged()


class ManualThreads:
    """
    A L{RunInThread} whose calls wait until L{run} runs them, so that
    requests pile up as they do while a real thread is busy.
    """

    def __init__(self) -> None:
        self.pending: list[
            tuple[Callable[..., Any], tuple[Any, ...], defer.Deferred[Any]]
        ] = []

    def __call__(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append((lambda: f(*args, **kwargs), (), d))
        return d

    def run(self) -> int:
        """
        Run the calls waiting now.

        @return: how many ran.
        """
        batch, self.pending = self.pending, []
        for call, _, d in batch:
            try:
                result = call()
            except BaseException:
                d.errback()
            else:
                d.callback(result)
        return len(batch)


class GroupCommitTests(HostileCase):
    """
    Finish requests that arrive while a commit runs are committed together
    (L{realize.storage.commit.Committer}): one peer's bad request must not
    fail the others'.
    """

    def threads(self) -> RunInThread:
        self.manual = ManualThreads()
        return self.manual  # type: ignore[return-value]

    def settle(self, *links: Link) -> None:
        for _ in range(50):
            for link in links:
                link.flush()
            if not self.manual.run():
                break

    def test_bad_mtime_fails_only_its_file(self) -> None:
        """
        Three partials are finished at once from two connections; the
        third asks for an mtime beyond 64 bits.  The first two become
        final; the third is refused (BAD_REQUEST) and stays partial; no
        descriptor leaks.
        """
        for name in ("x", "y", "z"):
            (self.docs / f".{name}.part").write_bytes(name.encode())
        other = self.connect(self.a)
        fds = open_fds()
        x = issue(self.link.client, "Finish", {"arena": "docs", "path": "x"})
        self.link.flush()
        y = issue(other.client, "Finish", {"arena": "docs", "path": "y"})
        z = issue(
            self.link.client,
            "Finish",
            {"arena": "docs", "path": "z", "mtime_ns": 2**100},
        )
        self.settle(self.link, other)
        self.assertIsNone(x.error)
        self.assertIsNone(y.error, y.error)
        self.assertEqual((self.docs / "y").read_bytes(), b"y")
        self.assertEqual(z.code, b"BAD_REQUEST", z.error)
        self.assertTrue((self.docs / ".z.part").exists())
        self.assertEqual(open_fds(), fds)
        self.assert_no_errors_logged()


class JunkBoxLoopbackTests(TestCase):
    """
    The junk boxes of L{MalformedTests.test_junk_boxes}, through a real
    listening port on loopback and the real reactor, as the daemon meets
    them today: the exception that escapes the connection is logged by the
    reactor, which drops that connection; the daemon keeps serving others.
    """

    timeout = 30

    async def test_junk_boxes(self) -> None:
        """
        Each junk box costs the sender its connection; a second connection
        to the same port keeps working throughout.
        """
        from tests.test_net import identity

        a, b = identity("a"), identity("b")
        base = Path(self.mktemp()).absolute()
        (base / "docs").mkdir(parents=True)
        (base / "docs" / "f").write_bytes(b"safe")
        config = parse_config(
            {
                "peers": {p.id: {"pubkey": p.pem} for p in (a, b)},
                "arena": [{"name": "docs", "datadir": str(base / "docs")}],
            },
            "realize.toml",
            base,
        )
        service = StoreService(config, sync_run_in_thread)
        factory = server_factory(
            ServerTLS(b.key, config.peer_by_spki().get),
            store_responders(service.view),
            reactor,
        )
        port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, factory, interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        peer = PeerConfig(PeerId("b"), ("127.0.0.1", port.getHost().port), b.spki)

        async def client() -> RemoteStore:
            store = await connect(reactor, peer, ClientTLS(a.key, b.spki, peer.id))
            self.addCleanup(store.close)
            return store

        good = await client()
        for box in JUNK_BOXES:
            bad = await client()
            bad.connection.send_frame(BOX, 0, box)
            await bad.connection.lost
            self.assertEqual(await good.arenas(), ["docs"])
            state = await good.hash(config.arenas["docs"].name, "f", 0, 4)
            self.assertEqual(state.size, 4)
        self.flushLoggedErrors(amp.NoEmptyBoxes, KeyError, amp.RemoteAmpError)


def _text(tokens: list[str], max_size: int = 8) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(tokens), max_size=max_size).map("".join)


#: Pieces of paths the fuzzer joins: separators, dots, NUL, partial
#: decorations, names of the symlinks and files of the arena.
_PATH_TOKENS = [
    "/",
    ".",
    "..",
    "\0",
    ":",
    "é",
    " ",
    ".part",
    "f",
    "dir",
    "g",
    "link-dir",
    "link-file",
    "dangling-dir",
    "victim",
    "up",
    "outside",
    "secret",
    "x" * 250,
]


def often(likely: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> Any:
    """
    @return: a strategy drawing from C{likely} three times in four.
    """
    return st.integers(0, 3).flatmap(lambda n: likely if n else other)


PATHS = often(
    st.sampled_from(["f", "dir/g", "new", "dir/new/deeper", "victim", "p"]),
    st.one_of(
        st.sampled_from([*MALFORMED.values(), *ESCAPES.values()]),
        _text(_PATH_TOKENS),
        st.text(max_size=20),
    ),
)

ARENAS = often(
    st.just("docs"),
    st.one_of(
        st.sampled_from(["photos", "nope", "", "..", "docs/..", "outside"]),
        st.text(max_size=6),
    ),
)

#: Interesting integers that every filesystem refuses or handles quickly:
#: none of them makes a file of more than a few MiB that a command then
#: hashes (a larger claimed size is refused for want of space, and the
#: holes of a sparse file are not read: StorageLimitTests).
SMALL = often(
    st.one_of(st.integers(0, 20), st.sampled_from([0, MiB, 2 * MiB])),
    st.one_of(
        st.integers(-3, 3 * MiB),
        st.sampled_from([-1, -(2**63), MiB - 1, MiB + 1, 2**31, 2**32]),
    ),
)
INT64 = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, -(2**63), 2**63 - 1])
)
UINT64 = often(st.integers(0, 10_000), st.integers(0, 2**64 - 1))

#: Beyond 64 bits: what the daemon must refuse cleanly (ExtremeValueTests).
HUGE = st.one_of(
    SMALL,
    st.sampled_from([2**63 - 1, 2**63, 2**64, 2**100, -(2**64), -(2**100)]),
)
STREAMS = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**32 - 1]))
BAD_STREAMS = st.one_of(STREAMS, st.sampled_from([-1, 2**32, 2**64]))


@st.composite
def store_commands(
    draw: Any,
    ints: st.SearchStrategy[int] = SMALL,
    times: st.SearchStrategy[int] = INT64,
    streams: st.SearchStrategy[int] = STREAMS,
) -> tuple[str, dict[str, Any], bytes, int]:
    """
    A store command with fuzzed arguments.

    @param ints: offsets and sizes.
    @param times: mtimes.
    @param streams: stream ids.
    @return: C{(name, arguments, data to send, stream id)}.
    """
    name = draw(st.sampled_from(sorted(COMMANDS)))
    arena = draw(ARENAS)
    data = b""
    if name == "List":
        arguments: dict[str, Any] = {"arena": arena}
    elif name in SINGLE:
        arguments = {"arena": arena, "path": draw(PATHS)}
        if name in ("Read", "Hash"):
            arguments["start"] = draw(ints)
            arguments["end"] = draw(ints)
            if name == "Read" and draw(st.booleans()):
                arguments["hash_from"] = draw(ints)
        elif name == "Write":
            start = draw(ints)
            end = draw(often(st.integers(start, start + 100), ints))
            arguments.update(
                start=start,
                end=end,
                file_size=draw(st.one_of(st.just(end), ints)),
                hash=draw(st.booleans()),
            )
            if 0 <= end - start <= 64 * KiB and draw(st.booleans()):
                data = draw(st.binary(min_size=end - start, max_size=end - start))
            else:
                data = draw(st.binary(max_size=200))
            finish = draw(st.sampled_from(["none", "right", "random"]))
            if finish == "right":
                arguments["finish_root"] = root_of(data)
            elif finish == "random":
                arguments["finish_root"] = draw(st.binary(max_size=40))
            if draw(st.booleans()):
                arguments["mtime_ns"] = draw(times)
        elif name == "Truncate":
            arguments["size"] = draw(ints)
        elif name == "Finish":
            if draw(st.booleans()):
                arguments["mtime_ns"] = draw(times)
        elif name == "Delete":
            if draw(st.booleans()):
                arguments["size"] = draw(ints)
                if draw(st.booleans()):
                    arguments["mtime_ns"] = draw(times)
    else:
        paths = draw(st.lists(PATHS, max_size=4))
        if name == "ReadFiles":
            files = [{"path": p, "limit": draw(UINT64)} for p in paths]
        elif name == "WriteFiles":
            contents = [draw(st.binary(max_size=100)) for _ in paths]
            files = [
                {
                    "path": p,
                    "size": draw(st.one_of(st.just(len(c)), UINT64)),
                    "mtime_ns": draw(INT64),
                    "root": draw(
                        st.one_of(st.just(root_of(c)), st.binary(max_size=40))
                    ),
                }
                for p, c in zip(paths, contents, strict=True)
            ]
            data = b"".join(contents)
            if draw(st.booleans()):
                data += draw(st.binary(max_size=10))
        else:
            files = [
                {"path": p, "size": draw(UINT64), "mtime_ns": draw(INT64)}
                for p in paths
            ]
        arguments = {"arena": arena, "files": files}
    return name, arguments, data, draw(streams)


#: Examples per fuzz run; the same ones every run unless
#: C{REALIZE_FUZZ_RANDOM} is set.  To search longer:
#: C{REALIZE_FUZZ_RANDOM=1 REALIZE_FUZZ_EXAMPLES=20000 trial
#: tests.test_hostile.FuzzTests}.
FUZZ_EXAMPLES = int(os.environ.get("REALIZE_FUZZ_EXAMPLES", "300"))

FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("REALIZE_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class FuzzTests(HostileCase):
    """
    Hypothesis fuzzes the arguments of the store commands (paths with
    C{/}, C{..}, NUL, symlink names; negative and large integers; random
    bytes; batches) and sends them through the real AMP dispatch, one
    command per example, on a freshly populated arena.
    """

    def reset(self) -> None:
        """
        Put the arena back as L{populate} made it, and make sure the link
        is up.
        """
        shutil.rmtree(self.docs)
        self.docs.mkdir()
        self.populate()
        if self.link.server.lost.called:
            self.link = self.connect(self.a)

    def check(self, command: tuple[str, dict[str, Any], bytes, int]) -> None:
        """
        Issue one fuzzed command and check that the daemon answered it with
        a result or a documented error code, logged no failure, leaked no
        descriptor, kept the connection, and left everything outside the
        arena docs as it was.
        """
        self.reset()
        fds = open_fds()
        name, arguments, data, stream = command
        outcome = self.call(name, arguments, data, stream=stream)
        what = (name, arguments, len(data), stream)
        self.assertTrue(outcome.answered, what)
        if outcome.error is not None:
            self.assertIn(outcome.code, DOCUMENTED_CODES, (what, outcome.error))
            if isinstance(outcome.error, IOFailure):
                self.assertNotIn("internal error", str(outcome.error), what)
        elif name in BATCH:
            self.assertLessEqual(set(outcome.codes()), {b"", *DOCUMENTED_CODES}, what)
        self.assertEqual(self.errors, [], what)
        self.assertFalse(self.link.server.lost.called, what)
        self.assertEqual(open_fds(), fds, what)
        after = snapshot(self.base)
        self.assertEqual(
            {k: v for k, v in after.items() if k.split("/")[0] != "docs"},
            {k: v for k, v in self.before.items() if k.split("/")[0] != "docs"},
            what,
        )
        # Nothing of the arena's own directory may point out of it either.
        for path, value in after.items():
            if path.split("/")[0] == "docs" and value[0] == "link":
                self.assertIn(path, self.before, what)

    @FUZZ_SETTINGS
    @given(store_commands())
    def test_fuzz(self, command: tuple[str, dict[str, Any], bytes, int]) -> None:
        """
        Within 64-bit values and 32-bit stream ids, every fuzzed command is
        answered cleanly and touches nothing outside its arena.
        """
        self.check(command)

    @FUZZ_SETTINGS
    @given(store_commands(ints=HUGE, times=HUGE, streams=BAD_STREAMS))
    def test_fuzz_beyond_64_bits(
        self, command: tuple[str, dict[str, Any], bytes, int]
    ) -> None:
        """
        With integers beyond 64 bits and stream ids beyond 32 bits too.
        """
        self.check(command)


class BatchTests(HostileCase):
    """
    Batches that a well-behaved peer never sends.
    """

    def test_duplicate_paths(self) -> None:
        """
        A WriteFiles naming the same path twice, first with content A and
        its root, then with content B and a root that does not match B:
        whatever the outcome, the final file is never B (a final file
        always has the content whose root was verified), and a file
        reported written has the content sent for it.
        """
        first, second = b"A" * 10, b"B" * 10
        outcome = self.call(
            "WriteFiles",
            {
                "arena": "docs",
                "files": [
                    {"path": "dup", "size": 10, "mtime_ns": 0, "root": root_of(first)},
                    {"path": "dup", "size": 10, "mtime_ns": 0, "root": b"wrong"},
                ],
            },
            first + second,
        )
        self.assertIsNone(outcome.error)
        final = self.docs / "dup"
        if final.exists():
            self.assertEqual(final.read_bytes(), first)
        if outcome.codes()[0] == b"":
            self.assertEqual(final.read_bytes(), first)

    def test_duplicate_paths_same_content(self) -> None:
        """
        The same file twice with the same content: it is written once,
        final and right; each entry gets an outcome.
        """
        data = b"same"
        entry = {"path": "twice", "size": 4, "mtime_ns": 0, "root": root_of(data)}
        outcome = self.call(
            "WriteFiles", {"arena": "docs", "files": [entry, entry]}, data + data
        )
        self.assertEqual(len(outcome.codes()), 2)
        self.assertEqual((self.docs / "twice").read_bytes(), data)
        self.assert_serving()


class StorageLimitTests(HostileCase):
    """
    What a peer can make the store do to files (issue 14, items 2, 8, 9):
    never write through a hard link, never claim more than the disk has,
    never leave a failed command's changes.
    """

    def test_hard_link(self) -> None:
        """
        A final file of the arena that is a hard link to a file outside is
        truncated, written and finished without the outside file changing
        (the repro of issue 14: C{ln outside/f arena/h}, Truncate C{h} to
        3).
        """
        os.link(self.outside / "secret", self.docs / "h")
        self.before = snapshot(self.base)
        truncate = self.call("Truncate", {"arena": "docs", "path": "h", "size": 3})
        self.assertIsNone(truncate.error)
        _, arguments, data = every_call("docs", "h")[1]
        write = self.call("Write", arguments, data)
        self.assertIsNone(write.error)
        self.assertTrue(write.answer and write.answer["finished"])
        self.assert_outside_untouched()
        self.assertEqual((self.docs / "h").read_bytes(), EVIL)
        self.assertEqual((self.outside / "secret").stat().st_nlink, 1)
        self.assert_serving()

    def test_sparse_claims(self) -> None:
        """
        A one-byte Write at the end of an 8 TiB file answers NO_SPACE and
        makes nothing; a Truncate of a final file to 2**63-1 bytes is
        refused and leaves the final file alone, without a partial.
        """
        size = 8 << 40
        outcome = self.call(
            "Write",
            {
                "arena": "docs",
                "path": "giant",
                "start": size - 1,
                "end": size,
                "file_size": size,
                "hash": False,
            },
            b"x",
        )
        self.assert_refused(outcome, b"NO_SPACE", "Write")
        outcome = self.call(
            "Truncate", {"arena": "docs", "path": "f", "size": 2**63 - 1}
        )
        self.assertIsNotNone(outcome.error)
        self.assert_untouched()
        self.assert_serving()
