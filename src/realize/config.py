"""
Configuration: a TOML file (DESIGN.md section 3) parsed into a frozen
L{Config}.

Pure: no reactor, no I/O besides reading the file in L{load_config}.
Unknown keys and bad values raise L{ConfigError} naming the file and the
key, e.g. C{"realize.toml: peers.b.pubkey: not an ed25519 public key"}.
Relative C{datadir}/C{workdir}/C{mountpoint} paths are resolved against the
directory of the config file.

Example::

    [peers.a]
    address = "host-a.example:9771"
    pubkey = \"\"\"-----BEGIN PUBLIC KEY-----
    MCowBQYDK2VwAyEA...
    -----END PUBLIC KEY-----\"\"\"

    [[arena]]
    name = "documents"
    datadir = "/store/documents"
    peers = ["a", "b"]
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any, Final, cast

from attrs import field, frozen
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from realize.errors import ConfigError, InvalidPath
from realize.model import ArenaName, PeerId, check_arena_name

__all__ = [
    "DEFAULT_PORT",
    "ArenaConfig",
    "CacheConfig",
    "Config",
    "HistoryConfig",
    "LimitsConfig",
    "OverlayConfig",
    "PeerConfig",
    "load_config",
    "parse_address",
    "parse_config",
    "parse_duration",
    "parse_rate",
    "public_key_spki",
]

#: TCP port of C{realized} when an address names none.
DEFAULT_PORT = 9771

MARKS = ("own", "keep", "watch")

#: Default of C{[[arena]] copies}.
DEFAULT_COPIES = 1

#: Largest C{[[arena]] copies} (a household is a few peers).
MAX_COPIES = 1000

_PEER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@frozen
class PeerConfig:
    """
    A peer of the household.

    @ivar id: short id, the key of its C{[peers.ID]} table.
    @ivar address: C{(host, port)} of a listening peer, C{None} for a deaf
        peer.
    @ivar spki: DER SubjectPublicKeyInfo of its ed25519 public key: what a
        TLS certificate's key is compared with (DESIGN.md section 4).
    """

    id: PeerId
    address: tuple[str, int] | None
    spki: bytes

    def describe(self) -> str:
        """
        @return: the id and address for messages, e.g. C{"b (host:9771)"}.
        """
        if self.address is None:
            return f"{self.id} (no address)"
        return f"{self.id} ({format_address(self.address)})"


@frozen
class ArenaConfig:
    """
    One C{[[arena]]} entry.

    @ivar name: the arena name.
    @ivar datadir: the Real: directory of local files, or C{None}.
    @ivar workdir: databases, blobs, overlay work directory; defaults to
        C{<parent>/.<basename>.realize} of the datadir.
    @ivar mountpoint: overlay mount point (milestone 3), or C{None}.
    @ivar mark: C{own}, C{keep} or C{watch}.
    @ivar peers: the ACL: ids of the peers that may use this arena, or
        C{None} for all peers.
    @ivar copies: how many other peers must hold a version of a file
        before this peer unrealizes its real copy (moves it into the
        cache), at least 1.
    """

    name: ArenaName
    datadir: Path | None
    workdir: Path
    mountpoint: Path | None = None
    mark: str = "watch"
    peers: frozenset[PeerId] | None = None
    copies: int = DEFAULT_COPIES

    def allows(self, peer: PeerId) -> bool:
        """
        @param peer: a peer id.
        @return: whether the ACL admits C{peer}.
        """
        return self.peers is None or peer in self.peers


#: Default free-space reserve of the block cache, in percent of the
#: filesystem holding an arena's workdir.
DEFAULT_MIN_FREE_PERCENT: Final = 5.0


@frozen
class CacheConfig:
    """
    C{[cache]}: quota of the block cache of each arena (issue 11).

    @ivar size_bytes: quota in bytes, or C{None}.
    @ivar size_percent: quota in percent of the filesystem holding the
        arena's workdir, or C{None}.  With neither, there is no quota but
        the free-space reserve.
    @ivar min_free_bytes: the free-space reserve in bytes, or C{None}.
    @ivar min_free_percent: the reserve in percent of that filesystem, or
        C{None}: when its free space drops below the reserve, the cache
        shrinks by the difference.
    """

    size_bytes: int | None = None
    size_percent: float | None = None
    min_free_bytes: int | None = None
    min_free_percent: float | None = DEFAULT_MIN_FREE_PERCENT

    def quota(self, filesystem_bytes: int) -> int | None:
        """
        @param filesystem_bytes: the size of the filesystem holding the
            workdir.
        @return: the quota in bytes, or C{None} for none.
        """
        if self.size_bytes is not None:
            return self.size_bytes
        if self.size_percent is not None:
            return int(filesystem_bytes * self.size_percent / 100)
        return None

    def min_free(self, filesystem_bytes: int) -> int:
        """
        @param filesystem_bytes: the size of the filesystem holding the
            workdir.
        @return: the free-space reserve in bytes.
        """
        if self.min_free_bytes is not None:
            return self.min_free_bytes
        if self.min_free_percent is not None:
            return int(filesystem_bytes * self.min_free_percent / 100)
        return 0


#: Values of C{[overlay] xattrs}: pick by privilege, or force one mode.
OVERLAY_XATTRS = ("auto", "trusted", "user")


@frozen
class OverlayConfig:
    """
    C{[overlay]}: how C{realized mountall} mounts the overlays (milestone
    3, docs/real.md).

    @ivar xattrs: C{auto} (privileged mode when root, else userxattr),
        C{trusted} (C{redirect_dir=on,metacopy=off}, trusted.* xattrs) or
        C{user} (C{userxattr,redirect_dir=nofollow}).
    """

    xattrs: str = "auto"


@frozen
class LimitsConfig:
    """
    C{[limits]}: default rate limits of the daemon, bytes per second,
    0 meaning unlimited.
    """

    throttle_up: int = 0
    throttle_down: int = 0


#: Default of C{[history] max_entries}.
DEFAULT_HISTORY_ENTRIES = 1_000_000

#: Default of C{[history] max_age}, in seconds (30 days).
DEFAULT_HISTORY_AGE = 30 * 86400.0


@frozen
class HistoryConfig:
    """
    C{[history]}: how long each arena's history is kept (#trimhistory,
    DESIGN.md section 9).

    @ivar max_entries: entries beyond this many are trimmed, oldest first.
    @ivar max_age: entries older than this many seconds are trimmed.
    """

    max_entries: int = DEFAULT_HISTORY_ENTRIES
    max_age: float = DEFAULT_HISTORY_AGE


@frozen
class Config:
    """
    A whole configuration.

    @ivar source: where it was read from, for messages.
    @ivar peers: the peers by id.
    @ivar arenas: the arenas by name.
    """

    source: str
    peers: Mapping[PeerId, PeerConfig] = field(factory=dict)
    arenas: Mapping[ArenaName, ArenaConfig] = field(factory=dict)
    cache: CacheConfig = CacheConfig()
    limits: LimitsConfig = LimitsConfig()
    history: HistoryConfig = HistoryConfig()
    overlay: OverlayConfig = OverlayConfig()

    def peer(self, peer_id: str) -> PeerConfig:
        """
        @param peer_id: a peer id.
        @return: that peer's config.
        @raise ConfigError: if C{peer_id} is not configured.
        """
        try:
            return self.peers[PeerId(peer_id)]
        except KeyError:
            known = ", ".join(sorted(self.peers)) or "none"
            raise ConfigError(
                f"{self.source}: unknown peer {peer_id!r} (configured: {known})"
            ) from None

    def peer_by_spki(self) -> dict[bytes, PeerId]:
        """
        @return: a map from DER SubjectPublicKeyInfo to peer id.
        """
        return {p.spki: p.id for p in self.peers.values()}


def format_address(address: tuple[str, int]) -> str:
    """
    @param address: C{(host, port)}.
    @return: C{host:port}, or C{[v6]:port} for an IPv6 literal.
    """
    host, port = address
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def parse_address(value: str) -> tuple[str, int]:
    """
    Parse a peer address.

    @param value: C{host:port}, C{host}, C{[v6]:port} or C{[v6]}; the port
        defaults to L{DEFAULT_PORT}.
    @return: C{(host, port)}.
    @raise ValueError: if malformed.
    """
    value = value.strip()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not host:
            raise ValueError(f"bad address {value!r}: unclosed '['")
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad address {value!r}")
        port_text = rest[1:] if rest else ""
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    elif ":" in value:
        raise ValueError(f"bad address {value!r}: write IPv6 as [addr]:port")
    else:
        host, port_text = value, ""
    if not host:
        raise ValueError(f"bad address {value!r}: no host")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad address {value!r}: bad port {port_text!r}")
    return host, int(port_text)


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_rate(value: str | int) -> int:
    """
    Parse a byte rate or size as rsync's C{--bwlimit} does, in bytes.

    @param value: an integer, or a number with an optional suffix C{k},
        C{M}, C{G} (KiB, MiB, GiB; case-insensitive, an optional trailing
        C{B} or C{iB} allowed), e.g. C{"512k"}, C{"1.5M"}; C{0} means
        unlimited.
    @return: bytes (per second for a rate).
    @raise ValueError: if malformed or negative.
    """
    if isinstance(value, bool):
        raise ValueError(f"bad rate {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"bad rate {value!r}: negative")
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", value)
    if match is None:
        raise ValueError(
            f"bad rate {value!r}: expected a number of bytes with an "
            "optional k, M or G suffix, e.g. 512k"
        )
    number, unit = match.groups()
    # Exact arithmetic: a float loses bytes past 2**53 and overflows to an
    # infinity that int() refuses with OverflowError.
    return int(Fraction(number) * _UNITS[unit.lower()])


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str) -> float:
    """
    Parse a humanized duration.

    @param value: e.g. C{"30s"}, C{"5m"}, C{"2h"}, C{"1h30m"}, C{"1.5h"}; a
        bare number is seconds.
    @return: seconds, > 0.
    @raise ValueError: if malformed or not positive.
    """
    text = value.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        seconds = float(text)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhd])", text)
        if not re.fullmatch(r"(?:\d+(?:\.\d+)?\s*[smhd]\s*)+", text):
            raise ValueError(
                f"bad duration {value!r}: expected e.g. 30s, 5m, 2h or 1h30m"
            )
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"bad duration {value!r}: must be positive")
    if not math.isfinite(seconds):
        raise ValueError(f"bad duration {value!r}: too long")
    return seconds


def public_key_spki(pem: str | bytes) -> bytes:
    """
    DER SubjectPublicKeyInfo of an ed25519 public key.

    @param pem: a PEM C{PUBLIC KEY}.
    @return: its DER SubjectPublicKeyInfo.
    @raise ValueError: if not a PEM ed25519 public key.
    """
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data.strip())
    except (ValueError, TypeError) as e:
        raise ValueError(f"not a PEM public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"not an ed25519 public key ({type(key).__name__})")
    return key.public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )


class _Table:
    """
    A TOML table being read: takes keys out one by one, so that whatever is
    left at the end is an unknown key.
    """

    def __init__(self, source: str, where: str, value: object) -> None:
        self.source = source
        self.where = where
        if not isinstance(value, dict):
            self.fail(where, f"must be a table, not {_kind(value)}")
        self.items: dict[str, Any] = dict(cast(dict[str, Any], value))

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def fail(self, key: str, message: str) -> None:
        raise ConfigError(f"{self.source}: {key}: {message}")

    def take(self, name: str, kind: type, required: bool = False) -> Any:
        if name not in self.items:
            if required:
                self.fail(self.key(name), "missing")
            return None
        value = self.items.pop(name)
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            self.fail(
                self.key(name),
                f"must be {_kind_name(kind)}, not {_kind(value)}",
            )
        return value

    def done(self) -> None:
        for name in self.items:
            self.fail(self.key(name), "unknown key")


def _kind(value: object) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _kind_name(kind: type) -> str:
    return {
        str: "a string",
        int: "an integer",
        list: "an array",
        dict: "a table",
        bool: "a boolean",
    }.get(kind, kind.__name__)


def _parse_share(
    table: _Table, key: str, value: str, zero: bool
) -> tuple[int | None, float | None]:
    """
    A size that is a byte count or a percentage of a filesystem.

    @param zero: whether C{0%} is allowed (else the percentage is in
        C{(0, 100]}).
    @return: C{(bytes, None)} or C{(None, percent)}.
    @raise ConfigError: naming the key if malformed.
    """
    if value.strip().endswith("%"):
        try:
            percent = float(value.strip()[:-1])
        except ValueError:
            percent = -1
        if not (0 <= percent < 100 if zero else 0 < percent <= 100):
            table.fail(table.key(key), f"bad percentage {value!r}")
        return None, percent
    try:
        return parse_rate(value), None
    except ValueError as e:
        table.fail(table.key(key), str(e))
        raise  # pragma: no cover (fail raises)


def _resolve(base: Path, value: str) -> Path:
    return (base / os.path.expanduser(value)).absolute()


def parse_config(data: Mapping[str, Any], source: str, base: Path) -> Config:
    """
    Build a L{Config} from parsed TOML.

    @param data: the parsed TOML document.
    @param source: name of the file, used in messages.
    @param base: directory that relative paths are resolved against.
    @return: the config.
    @raise ConfigError: naming the file and the key, for unknown keys, a
        missing required key, a value of the wrong type or a bad value.
    """
    top = _Table(source, "", data)

    peers: dict[PeerId, PeerConfig] = {}
    peers_table = top.take("peers", dict) or {}
    for peer_id, value in peers_table.items():
        where = f"peers.{peer_id}"
        if not _PEER_ID.fullmatch(peer_id):
            top.fail(
                where,
                "bad peer id: use letters, digits, '_', '.' or '-', "
                "starting with a letter or digit",
            )
        table = _Table(source, where, value)
        address_text = table.take("address", str)
        address = None
        if address_text is not None:
            try:
                address = parse_address(address_text)
            except ValueError as e:
                table.fail(table.key("address"), str(e))
        pem = table.take("pubkey", str, required=True)
        try:
            spki = public_key_spki(pem)
        except ValueError as e:
            table.fail(table.key("pubkey"), str(e))
        table.done()
        peers[PeerId(peer_id)] = PeerConfig(PeerId(peer_id), address, spki)
    seen_keys: dict[bytes, PeerId] = {}
    for peer in peers.values():
        if peer.spki in seen_keys:
            top.fail(
                f"peers.{peer.id}.pubkey",
                f"same key as peers.{seen_keys[peer.spki]}",
            )
        seen_keys[peer.spki] = peer.id

    arenas: dict[ArenaName, ArenaConfig] = {}
    arena_list = top.take("arena", list) or []
    for index, value in enumerate(arena_list):
        where = f"arena[{index}]"
        table = _Table(source, where, value)
        name_text = table.take("name", str, required=True)
        try:
            name = check_arena_name(name_text)
        except InvalidPath as e:
            table.fail(table.key("name"), str(e))
        where = f"arena[{index}] ({name})"
        table.where = where
        if name in arenas:
            table.fail(table.key("name"), f"arena {name!r} is defined twice")
        datadir_text = table.take("datadir", str)
        workdir_text = table.take("workdir", str)
        mountpoint_text = table.take("mountpoint", str)
        datadir = _resolve(base, datadir_text) if datadir_text else None
        if workdir_text:
            workdir = _resolve(base, workdir_text)
        elif datadir is not None:
            workdir = datadir.parent / f".{datadir.name}.realize"
        else:
            table.fail(table.key("workdir"), "required when there is no datadir")
        mountpoint = _resolve(base, mountpoint_text) if mountpoint_text else None
        if mountpoint is not None and datadir is None:
            table.fail(table.key("mountpoint"), "needs a datadir")
        mark = table.take("mark", str)
        if mark is None:
            mark = "watch"
        if mark not in MARKS:
            table.fail(table.key("mark"), f"must be one of {', '.join(MARKS)}")
        copies = table.take("copies", int)
        if copies is None:
            copies = DEFAULT_COPIES
        elif not 1 <= copies <= MAX_COPIES:
            table.fail(
                table.key("copies"),
                f"must be between 1 and {MAX_COPIES} (other peers holding a "
                "version before the local copy may go)",
            )
        acl_list = table.take("peers", list)
        acl = None
        if acl_list is not None:
            for peer_id in acl_list:
                if not isinstance(peer_id, str) or PeerId(peer_id) not in peers:
                    table.fail(table.key("peers"), f"unknown peer {peer_id!r}")
            acl = frozenset(PeerId(p) for p in acl_list)
        table.done()
        arenas[name] = ArenaConfig(
            name=name,
            datadir=datadir,
            workdir=workdir,
            mountpoint=mountpoint,
            mark=mark,
            peers=acl,
            copies=copies,
        )
    # Check every leading run of segments: adjacent names in sorted order
    # are not enough ("a" < "a b" < "a/b" hides "a" from "a/b").
    for name in sorted(arenas):
        segments = name.split("/")
        for count in range(1, len(segments)):
            prefix = "/".join(segments[:count])
            if prefix in arenas:
                top.fail(
                    "arena",
                    f"arena name {prefix!r} is a prefix of arena {name!r}",
                )

    cache = CacheConfig()
    cache_value = top.take("cache", dict)
    if cache_value is not None:
        table = _Table(source, "cache", cache_value)
        size = table.take("size", str)
        size_bytes, size_percent = (
            (None, None) if size is None else _parse_share(table, "size", size, False)
        )
        min_free = table.take("min_free", str)
        free_bytes, free_percent = (
            (None, DEFAULT_MIN_FREE_PERCENT)
            if min_free is None
            else _parse_share(table, "min_free", min_free, True)
        )
        cache = CacheConfig(size_bytes, size_percent, free_bytes, free_percent)
        table.done()

    limits = LimitsConfig()
    limits_value = top.take("limits", dict)
    if limits_value is not None:
        table = _Table(source, "limits", limits_value)
        rates = {}
        for limit in ("throttle_up", "throttle_down"):
            if limit not in table.items:
                continue
            raw = table.items.pop(limit)
            if not isinstance(raw, str | int) or isinstance(raw, bool):
                table.fail(table.key(limit), "must be a string such as '1M'")
            try:
                rates[limit] = parse_rate(raw)
            except ValueError as e:
                table.fail(table.key(limit), str(e))
        table.done()
        limits = LimitsConfig(**rates)

    history = HistoryConfig()
    history_value = top.take("history", dict)
    if history_value is not None:
        table = _Table(source, "history", history_value)
        max_entries = table.take("max_entries", int)
        if max_entries is None:
            max_entries = DEFAULT_HISTORY_ENTRIES
        elif max_entries < 1:
            table.fail(table.key("max_entries"), "must be at least 1")
        max_age = DEFAULT_HISTORY_AGE
        if "max_age" in table.items:
            raw = table.items.pop("max_age")
            if isinstance(raw, bool) or not isinstance(raw, str | int):
                table.fail(
                    table.key("max_age"), "must be a duration such as '30d' or '12h'"
                )
            try:
                max_age = parse_duration(str(raw))
            except ValueError as e:
                table.fail(table.key("max_age"), str(e))
        table.done()
        history = HistoryConfig(max_entries=max_entries, max_age=max_age)

    overlay = OverlayConfig()
    overlay_value = top.take("overlay", dict)
    if overlay_value is not None:
        table = _Table(source, "overlay", overlay_value)
        xattrs = table.take("xattrs", str)
        if xattrs is not None:
            if xattrs not in OVERLAY_XATTRS:
                table.fail(
                    table.key("xattrs"), f"must be one of {', '.join(OVERLAY_XATTRS)}"
                )
            overlay = OverlayConfig(xattrs)
        table.done()

    top.done()
    return Config(
        source=source,
        peers=peers,
        arenas=arenas,
        cache=cache,
        limits=limits,
        history=history,
        overlay=overlay,
    )


def load_config(path: str | os.PathLike[str]) -> Config:
    """
    Read and parse a config file.

    @param path: the TOML file.
    @return: the config.
    @raise ConfigError: if the file cannot be read, is not TOML, or is not a
        valid config; the message names the file (and the key).
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{source}: cannot read config: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    return parse_config(data, source, Path(source).absolute().parent)
