"""
Tests for L{realize.config}: the TOML file, its error messages and the
value parsers.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.trial.unittest import SynchronousTestCase

from realize.config import (
    DEFAULT_PORT,
    ArenaConfig,
    CacheConfig,
    Config,
    HistoryConfig,
    LimitsConfig,
    PeerConfig,
    load_config,
    parse_address,
    parse_config,
    parse_duration,
    parse_rate,
    public_key_spki,
)
from realize.errors import ConfigError
from realize.model import ArenaName, PeerId

from .helpers import make_key

RATE_HELP = "expected a number of bytes with an optional k, M or G suffix, e.g. 512k"
DURATION_HELP = "expected e.g. 30s, 5m, 2h or 1h30m"
PEER_ID_HELP = (
    "bad peer id: use letters, digits, '_', '.' or '-', starting with a letter or digit"
)


def q(value: str) -> str:
    """
    Quote a string as a TOML basic string (JSON escapes are valid TOML).
    """
    return json.dumps(value)


def public_pem(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    """
    The PEM SubjectPublicKeyInfo of a private key's public half.
    """
    return (
        private_key.public_key()
        .public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        .decode("ascii")
    )


class _ConfigFileMixin(SynchronousTestCase):
    """
    Writes config files into a fresh directory and loads them.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "realize.toml")
        _, self.pem_a, self.spki_a = make_key()
        _, self.pem_b, self.spki_b = make_key()

    def write(self, text: str, path: str | None = None) -> str:
        """
        Write C{text} as the config file.

        @return: the file's path.
        """
        path = self.path if path is None else path
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def load(self, text: str) -> Config:
        """
        Write and load a config.
        """
        return load_config(self.write(text))

    def peers(self) -> str:
        """
        Two valid peers: C{a} listening, C{b} deaf.
        """
        return (
            f"[peers.a]\naddress = 'host-a.example:9771'\npubkey = {q(self.pem_a)}\n"
            f"[peers.b]\npubkey = {q(self.pem_b)}\n"
        )

    def assert_error(self, text: str, key: str, message: str) -> None:
        """
        Loading C{text} fails with exactly C{"<file>: <key>: <message>"}.
        """
        error = self.assertRaises(ConfigError, self.load, text)
        self.assertEqual(str(error), f"{self.path}: {key}: {message}")

    def assert_error_prefix(self, text: str, key: str, prefix: str) -> str:
        """
        Loading C{text} fails with a message that names the file and the
        key and then starts with C{prefix}; returns the rest.
        """
        error = self.assertRaises(ConfigError, self.load, text)
        head = f"{self.path}: {key}: {prefix}"
        self.assertEqual(str(error)[: len(head)], head)
        return str(error)[len(head) :]


class LoadConfigTests(_ConfigFileMixin):
    """
    Tests for L{load_config} and L{parse_config} on valid files.
    """

    def test_full(self) -> None:
        """
        Every section and key of DESIGN.md section 3 is read into the
        frozen L{Config}: a listening and a deaf peer, arenas with datadir,
        workdir, mountpoint, mark and ACL, the cache quota and the limits.
        """
        config = self.load(
            self.peers() + "[[arena]]\n"
            "name = 'documents'\n"
            "workdir = '/store/.documents.w'\n"
            "datadir = '/store/documents'\n"
            "mountpoint = '/home/u/documents'\n"
            "mark = 'own'\n"
            "peers = ['a']\n"
            "[[arena]]\n"
            "name = 'home/photos'\n"
            "workdir = '/store/photos.w'\n"
            "mark = 'keep'\n"
            "peers = []\n"
            "[cache]\n"
            "size = '20G'\n"
            "[limits]\n"
            "throttle_up = '1.5M'\n"
            "throttle_down = 512\n"
        )
        self.assertEqual(
            config,
            Config(
                source=self.path,
                peers={
                    PeerId("a"): PeerConfig(
                        PeerId("a"), ("host-a.example", 9771), self.spki_a
                    ),
                    PeerId("b"): PeerConfig(PeerId("b"), None, self.spki_b),
                },
                arenas={
                    ArenaName("documents"): ArenaConfig(
                        name=ArenaName("documents"),
                        datadir=Path("/store/documents"),
                        workdir=Path("/store/.documents.w"),
                        mountpoint=Path("/home/u/documents"),
                        mark="own",
                        peers=frozenset({PeerId("a")}),
                    ),
                    ArenaName("home/photos"): ArenaConfig(
                        name=ArenaName("home/photos"),
                        datadir=None,
                        workdir=Path("/store/photos.w"),
                        mountpoint=None,
                        mark="keep",
                        peers=frozenset(),
                    ),
                },
                cache=CacheConfig(size_bytes=20 << 30),
                limits=LimitsConfig(throttle_up=1572864, throttle_down=512),
            ),
        )
        self.assertEqual(list(config.peers), ["a", "b"])
        self.assertEqual(list(config.arenas), ["documents", "home/photos"])

    def test_empty(self) -> None:
        """
        An empty file is a config without peers or arenas, with default
        cache and limits.
        """
        self.assertEqual(self.load(""), Config(source=self.path))
        self.assertEqual(Config(source="x").cache, CacheConfig(None, None))
        self.assertEqual(Config(source="x").limits, LimitsConfig(0, 0))

    def test_defaults(self) -> None:
        """
        An arena with only a name and a datadir has mark C{watch}, no ACL
        (every peer allowed), no mountpoint, and its workdir is the hidden
        sibling C{<parent>/.<basename>.realize} of the datadir.
        """
        config = self.load(
            self.peers() + "[[arena]]\nname = 'docs'\ndatadir = '/store/docs/'\n"
        )
        self.assertEqual(
            config.arenas[ArenaName("docs")],
            ArenaConfig(
                name=ArenaName("docs"),
                datadir=Path("/store/docs"),
                workdir=Path("/store/.docs.realize"),
                mountpoint=None,
                mark="watch",
                peers=None,
            ),
        )

    def test_acl(self) -> None:
        """
        L{ArenaConfig.allows} admits every peer without an ACL and only the
        listed ones with one.
        """
        config = self.load(
            self.peers()
            + "[[arena]]\nname = 'open'\ndatadir = '/o'\n"
            + "[[arena]]\nname = 'closed'\ndatadir = '/c'\npeers = ['b', 'b']\n"
        )
        open_arena = config.arenas[ArenaName("open")]
        closed = config.arenas[ArenaName("closed")]
        self.assertEqual(
            [open_arena.allows(PeerId("a")), open_arena.allows(PeerId("zz"))],
            [True, True],
        )
        self.assertEqual(closed.peers, frozenset({"b"}))
        self.assertEqual(
            [closed.allows(PeerId("a")), closed.allows(PeerId("b"))],
            [False, True],
        )

    def test_relative_paths(self) -> None:
        """
        Relative datadir, workdir and mountpoint are resolved against the
        directory of the config file, not the working directory, also when
        the config file's own path is relative.
        """
        subdirectory = os.path.join(self.directory, "etc")
        os.mkdir(subdirectory)
        absolute = os.path.join(subdirectory, "realize.toml")
        self.write(
            "[[arena]]\nname = 'a'\ndatadir = 'data/a'\nmountpoint = '../mnt/a'\n"
            "[[arena]]\nname = 'b'\nworkdir = 'w/b'\n",
            absolute,
        )
        relative = os.path.relpath(absolute)
        self.assertNotEqual(relative, absolute)
        config = load_config(relative)
        self.assertEqual(config.source, relative)
        base = Path(subdirectory)
        a = config.arenas[ArenaName("a")]
        self.assertEqual(
            (a.datadir, a.workdir, a.mountpoint),
            (base / "data/a", base / "data/.a.realize", base / "../mnt/a"),
        )
        b = config.arenas[ArenaName("b")]
        self.assertEqual((b.datadir, b.workdir), (None, base / "w/b"))

    def test_parse_config_base(self) -> None:
        """
        L{parse_config} resolves relative paths against the C{base} it is
        given and keeps absolute ones.
        """
        config = parse_config(
            {"arena": [{"name": "x", "datadir": "d", "workdir": "/abs/w"}]},
            "inline",
            Path("/srv/conf"),
        )
        arena = config.arenas[ArenaName("x")]
        self.assertEqual(
            (arena.datadir, arena.workdir), (Path("/srv/conf/d"), Path("/abs/w"))
        )

    def test_cache_percent(self) -> None:
        """
        A cache size ending in C{%} is a share of the disk, in percent.
        """
        for text, percent in [("10%", 10.0), (" 12.5 %", 12.5), ("100%", 100.0)]:
            config = self.load(f"[cache]\nsize = {q(text)}\n")
            self.assertEqual(config.cache, CacheConfig(size_percent=percent))

    def test_cache_bytes(self) -> None:
        """
        A cache size without C{%} is a byte count with an optional suffix.
        """
        for text, size in [("512", 512), ("1k", 1024), ("10MiB", 10 << 20)]:
            config = self.load(f"[cache]\nsize = {q(text)}\n")
            self.assertEqual(config.cache, CacheConfig(size_bytes=size))

    def test_cache_min_free(self) -> None:
        """
        C{min_free} is the free-space reserve, bytes or a percentage of the
        filesystem (0 allowed), 5% by default; C{quota} and C{min_free}
        resolve them against the filesystem's size.
        """
        default = self.load("[cache]\nsize = '10%'\n").cache
        self.assertEqual(
            (default.min_free_percent, default.quota(1000), default.min_free(1000)),
            (5.0, 100, 50),
        )
        for text, expected in [
            ("1G", CacheConfig(min_free_bytes=1 << 30, min_free_percent=None)),
            ("0", CacheConfig(min_free_bytes=0, min_free_percent=None)),
            ("0%", CacheConfig(min_free_percent=0.0)),
            ("12.5%", CacheConfig(min_free_percent=12.5)),
        ]:
            config = self.load(f"[cache]\nmin_free = {q(text)}\n")
            self.assertEqual(config.cache, expected)
        self.assertEqual(CacheConfig(size_bytes=7).quota(1000), 7)
        self.assertIsNone(CacheConfig().quota(1000))
        self.assertEqual(CacheConfig(min_free_percent=None).min_free(1000), 0)
        self.assertEqual(
            CacheConfig(min_free_bytes=3, min_free_percent=None).min_free(1000), 3
        )

    def test_bad_cache_min_free(self) -> None:
        """
        A bad reserve is named with its key.
        """
        for text in ["100%", "-1%", "x%"]:
            self.assert_error(
                f"[cache]\nmin_free = {q(text)}\n",
                "cache.min_free",
                f"bad percentage {text!r}",
            )
        self.assert_error(
            "[cache]\nmin_free = 'lots'\n",
            "cache.min_free",
            f"bad rate 'lots': {RATE_HELP}",
        )
        self.assert_error(
            "[cache]\nmin_free = 5\n",
            "cache.min_free",
            "must be a string, not an integer",
        )

    def test_empty_tables(self) -> None:
        """
        Empty C{[cache]} and C{[limits]} tables keep the defaults.
        """
        config = self.load("[cache]\n[limits]\n")
        self.assertEqual((config.cache, config.limits), (CacheConfig(), LimitsConfig()))

    def test_peer(self) -> None:
        """
        L{Config.peer} returns a configured peer's config.
        """
        config = self.load(self.peers())
        self.assertEqual(config.peer("b"), PeerConfig(PeerId("b"), None, self.spki_b))

    def test_unknown_peer(self) -> None:
        """
        L{Config.peer} on an unknown id raises L{ConfigError} naming the
        file, the id and the configured ids, sorted.
        """
        config = self.load(
            f"[peers.zed]\npubkey = {q(self.pem_a)}\n"
            f"[peers.b]\npubkey = {q(self.pem_b)}\n"
        )
        error = self.assertRaises(ConfigError, config.peer, "c")
        self.assertEqual(
            str(error), f"{self.path}: unknown peer 'c' (configured: b, zed)"
        )
        error = self.assertRaises(ConfigError, Config(source="x.toml").peer, "c")
        self.assertEqual(str(error), "x.toml: unknown peer 'c' (configured: none)")

    def test_peer_by_spki(self) -> None:
        """
        L{Config.peer_by_spki} maps each peer's SPKI to its id.
        """
        config = self.load(self.peers())
        self.assertEqual(config.peer_by_spki(), {self.spki_a: "a", self.spki_b: "b"})
        self.assertEqual(Config(source="x").peer_by_spki(), {})

    def test_describe(self) -> None:
        """
        L{PeerConfig.describe} gives the id and address, with brackets for
        IPv6, or says that the peer has none.
        """
        self.assertEqual(
            [
                PeerConfig(PeerId("a"), ("h", 1), b"").describe(),
                PeerConfig(PeerId("b"), ("::1", 9771), b"").describe(),
                PeerConfig(PeerId("c"), None, b"").describe(),
            ],
            ["a (h:1)", "b ([::1]:9771)", "c (no address)"],
        )

    def test_spki(self) -> None:
        """
        The SPKI of a peer is the DER of the PEM public key, which also
        loads with surrounding whitespace and as bytes.
        """
        self.assertEqual(public_key_spki("\n  " + self.pem_a + "\n\n"), self.spki_a)
        self.assertEqual(public_key_spki(self.pem_a.encode("ascii")), self.spki_a)
        self.assertEqual(len(self.spki_a), 44)
        self.assertEqual(
            self.spki_a,
            serialization.load_pem_public_key(self.pem_a.encode()).public_bytes(
                serialization.Encoding.DER,
                serialization.PublicFormat.SubjectPublicKeyInfo,
            ),
        )


class LoadErrorTests(_ConfigFileMixin):
    """
    L{load_config} names the file when it cannot be read or parsed.
    """

    def test_missing(self) -> None:
        """
        A missing file is a L{ConfigError} naming it and the reason.
        """
        error = self.assertRaises(ConfigError, load_config, self.path)
        self.assertEqual(
            str(error), f"{self.path}: cannot read config: No such file or directory"
        )

    def test_directory(self) -> None:
        """
        A directory in place of the file is a L{ConfigError} naming it.
        """
        error = self.assertRaises(ConfigError, load_config, self.directory)
        self.assertEqual(
            str(error), f"{self.directory}: cannot read config: Is a directory"
        )

    def test_unreadable(self) -> None:
        """
        A file without read permission is a L{ConfigError} naming it.
        """
        if os.geteuid() == 0:
            raise self.skipTest("root reads files without permission")
        self.write("")
        os.chmod(self.path, 0)
        self.addCleanup(os.chmod, self.path, 0o600)
        error = self.assertRaises(ConfigError, load_config, self.path)
        self.assertEqual(
            str(error), f"{self.path}: cannot read config: Permission denied"
        )

    def test_not_toml(self) -> None:
        """
        A file that is not TOML is a L{ConfigError} naming it, with the
        parser's line and column.
        """
        text = "[peers.a]\naddress 9771\n"
        with self.assertRaises(tomllib.TOMLDecodeError) as raised:
            tomllib.loads(text)
        self.assertIn("(at line 2, column 9)", str(raised.exception))
        self.assertEqual(
            str(self.assertRaises(ConfigError, self.load, text)),
            f"{self.path}: not valid TOML: {raised.exception}",
        )

    def test_not_utf8(self) -> None:
        """
        A file that is not UTF-8 is a L{ConfigError} naming it, not a
        L{UnicodeDecodeError}.
        """
        with open(self.path, "wb") as f:
            f.write(b'colour = "\xff"\n')
        error = self.assertRaises(ConfigError, load_config, self.path)
        self.assertEqual(
            str(error),
            f"{self.path}: not valid TOML: 'utf-8' codec can't decode byte 0xff "
            "in position 10: invalid start byte",
        )


class ConfigErrorTests(_ConfigFileMixin):
    """
    Every bad key or value is a L{ConfigError} whose message names the file
    and the key.
    """

    def arena(self, body: str, name: str = "docs") -> str:
        """
        Two peers and one arena C{name} with a datadir and C{body}.
        """
        return self.peers() + f"[[arena]]\nname = {q(name)}\ndatadir = '/d'\n" + body

    def test_unknown_top_level_key(self) -> None:
        """
        An unknown top-level key is named.
        """
        self.assert_error(self.peers() + "[colour]\n", "colour", "unknown key")
        self.assert_error("arenas = []\n", "arenas", "unknown key")

    def test_unknown_peer_key(self) -> None:
        """
        An unknown key in a peer table is named with the peer.
        """
        self.assert_error(
            self.peers() + "[peers.c]\nport = 1\npubkey = " + q(self.pem_a) + "\n",
            "peers.c.port",
            "unknown key",
        )

    def test_unknown_arena_key(self) -> None:
        """
        An unknown key in an arena is named with the arena's index and name.
        """
        self.assert_error(
            self.arena("mode = 'own'\n"), "arena[0] (docs).mode", "unknown key"
        )

    def test_unknown_cache_key(self) -> None:
        """
        An unknown key in C{[cache]} is named.
        """
        self.assert_error("[cache]\nquota = '1G'\n", "cache.quota", "unknown key")

    def test_unknown_limits_key(self) -> None:
        """
        An unknown key in C{[limits]} is named.
        """
        self.assert_error(
            "[limits]\nthrottle_up = '1M'\nthrottle = '1M'\n",
            "limits.throttle",
            "unknown key",
        )

    def test_missing_pubkey(self) -> None:
        """
        A peer without a pubkey is an error naming C{peers.ID.pubkey}.
        """
        self.assert_error(
            self.peers() + "[peers.c]\naddress = 'c.example'\n",
            "peers.c.pubkey",
            "missing",
        )

    def test_pubkey_not_pem(self) -> None:
        """
        A pubkey that is not PEM is an error naming C{peers.ID.pubkey}.
        """
        for value in ["hello", self.pem_b.replace("PUBLIC", "PRIVATE"), ""]:
            rest = self.assert_error_prefix(
                f"[peers.b]\npubkey = {q(value)}\n",
                "peers.b.pubkey",
                "not a PEM public key (",
            )
            self.assertEqual(rest[-1:], ")")

    def test_pubkey_rsa(self) -> None:
        """
        An RSA public key is refused: peers use ed25519 keys.
        """
        pem = public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
        self.assert_error(
            f"[peers.b]\npubkey = {q(pem)}\n",
            "peers.b.pubkey",
            "not an ed25519 public key (RSAPublicKey)",
        )

    def test_pubkey_ec(self) -> None:
        """
        An EC public key is refused: peers use ed25519 keys.
        """
        pem = public_pem(ec.generate_private_key(ec.SECP256R1()))
        self.assert_error(
            f"[peers.a]\npubkey = {q(pem)}\n",
            "peers.a.pubkey",
            "not an ed25519 public key (ECPublicKey)",
        )

    def test_pubkey_type(self) -> None:
        """
        A pubkey that is not a string is named with the types.
        """
        self.assert_error(
            "[peers.a]\npubkey = 1\n",
            "peers.a.pubkey",
            "must be a string, not an integer",
        )

    def test_bad_address(self) -> None:
        """
        A malformed address is named, with the reason.
        """
        cases = [
            ("::1", "bad address '::1': write IPv6 as [addr]:port"),
            ("h:0", "bad address 'h:0': bad port '0'"),
            ("h:http", "bad address 'h:http': bad port 'http'"),
            (":80", "bad address ':80': no host"),
        ]
        for address, message in cases:
            self.assert_error(
                f"[peers.a]\naddress = {q(address)}\npubkey = {q(self.pem_a)}\n",
                "peers.a.address",
                message,
            )
        self.assert_error(
            f"[peers.a]\naddress = 9771\npubkey = {q(self.pem_a)}\n",
            "peers.a.address",
            "must be a string, not an integer",
        )

    def test_bad_peer_id(self) -> None:
        """
        A peer id must be 1 to 64 letters, digits, C{_}, C{.} or C{-},
        starting with a letter or digit; a trailing newline is not let
        through.
        """
        for peer_id in ["-a", ".a", "a b", "a/b", "é", "a\n", "a" * 65, ""]:
            self.assert_error(
                f"[peers.{q(peer_id)}]\npubkey = {q(self.pem_a)}\n",
                f"peers.{peer_id}",
                PEER_ID_HELP,
            )

    def test_good_peer_ids(self) -> None:
        """
        Ids at the edges of the rule are accepted.
        """
        for peer_id in ["a", "0", "A.b_c-d", "x" * 64]:
            config = self.load(f"[peers.{q(peer_id)}]\npubkey = {q(self.pem_a)}\n")
            self.assertEqual(list(config.peers), [peer_id])

    def test_duplicate_pubkey(self) -> None:
        """
        Two peers with the same key are refused, naming the second one's
        pubkey and the first peer.
        """
        self.assert_error(
            f"[peers.a]\npubkey = {q(self.pem_a)}\n"
            f"[peers.c]\npubkey = {q(self.pem_b)}\n"
            f"[peers.b]\npubkey = {q(self.pem_a)}\n",
            "peers.b.pubkey",
            "same key as peers.a",
        )

    def test_duplicate_arena(self) -> None:
        """
        Two arenas with the same name are refused, naming the second one.
        """
        self.assert_error(
            self.arena("") + "[[arena]]\nname = 'docs'\nworkdir = '/w'\n",
            "arena[1] (docs).name",
            "arena 'docs' is defined twice",
        )

    def test_arena_prefix(self) -> None:
        """
        An arena name that is a leading part of another is refused, also
        when names sorting between them hide the pair from a neighbour
        check.
        """
        cases = [
            (["a", "a/b"], "a", "a/b"),
            (["a/b", "a"], "a", "a/b"),
            (["a", "a b", "a-x", "a/b"], "a", "a/b"),
            (["a/b", "a/b-c", "a/b/c/d"], "a/b", "a/b/c/d"),
        ]
        for names, prefix, longer in cases:
            text = "".join(
                f"[[arena]]\nname = {q(name)}\nworkdir = {q('/w/' + name)}\n"
                for name in names
            )
            self.assert_error(
                text, "arena", f"arena name {prefix!r} is a prefix of arena {longer!r}"
            )

    def test_arena_not_prefix(self) -> None:
        """
        Names that share leading characters but not a whole segment are
        separate arenas.
        """
        text = "".join(
            f"[[arena]]\nname = {q(name)}\nworkdir = {q('/w/' + name)}\n"
            for name in ["a", "ab", "b/a", "ba/c", "a.b"]
        )
        self.assertEqual(
            list(self.load(text).arenas), ["a", "ab", "b/a", "ba/c", "a.b"]
        )

    def test_acl_unknown_peer(self) -> None:
        """
        An ACL naming a peer that is not configured is refused.
        """
        self.assert_error(
            self.arena("peers = ['a', 'c']\n"),
            "arena[0] (docs).peers",
            "unknown peer 'c'",
        )
        self.assert_error(
            self.arena("peers = [1]\n"), "arena[0] (docs).peers", "unknown peer 1"
        )

    def test_mountpoint_without_datadir(self) -> None:
        """
        A mountpoint needs a datadir to overlay.
        """
        self.assert_error(
            "[[arena]]\nname = 'docs'\nworkdir = '/w'\nmountpoint = '/m'\n",
            "arena[0] (docs).mountpoint",
            "needs a datadir",
        )

    def test_no_workdir_no_datadir(self) -> None:
        """
        An arena needs a workdir or a datadir to derive it from.
        """
        self.assert_error(
            "[[arena]]\nname = 'docs'\n",
            "arena[0] (docs).workdir",
            "required when there is no datadir",
        )

    def test_arena_name(self) -> None:
        """
        A missing or malformed arena name is named by the arena's index.
        """
        self.assert_error("[[arena]]\ndatadir = '/d'\n", "arena[0].name", "missing")
        self.assert_error(
            self.arena("") + "[[arena]]\nname = '../x'\ndatadir = '/x'\n",
            "arena[1].name",
            "arena name '../x' has an empty, '.' or '..' segment",
        )
        self.assert_error(
            "[[arena]]\nname = ''\ndatadir = '/d'\n",
            "arena[0].name",
            "arena name is empty",
        )

    def test_bad_mark(self) -> None:
        """
        A mark other than own, keep or watch is refused, the empty string
        included.
        """
        for mark in ["mine", "Own", ""]:
            self.assert_error(
                self.arena(f"mark = {q(mark)}\n"),
                "arena[0] (docs).mark",
                "must be one of own, keep, watch",
            )

    def test_copies(self) -> None:
        """
        C{copies} defaults to 1 and is read when given.
        """
        config = self.load(self.arena("copies = 3\n"))
        self.assertEqual(config.arenas[ArenaName("docs")].copies, 3)
        config = self.load(self.arena(""))
        self.assertEqual(config.arenas[ArenaName("docs")].copies, 1)

    def test_bad_copies(self) -> None:
        """
        C{copies} is an integer from 1 (the last copy is never dropped).
        """
        for copies in ["0", "-1", "1001"]:
            self.assert_error(
                self.arena(f"copies = {copies}\n"),
                "arena[0] (docs).copies",
                "must be between 1 and 1000 (other peers holding a version before "
                "the local copy may go)",
            )
        self.assert_error(
            self.arena("copies = '2'\n"),
            "arena[0] (docs).copies",
            "must be an integer, not a string",
        )

    def test_wrong_types(self) -> None:
        """
        A value of the wrong TOML type is named with the expected and the
        given type.
        """
        cases = [
            ("peers = 'a'\n", "peers", "must be a table, not a string"),
            ("[peers]\na = 'x'\n", "peers.a", "must be a table, not a string"),
            ("arena = 'x'\n", "arena", "must be an array, not a string"),
            ("[arena]\nname = 'x'\n", "arena", "must be an array, not a table"),
            ("arena = [1]\n", "arena[0]", "must be a table, not an integer"),
            ("cache = 3\n", "cache", "must be a table, not an integer"),
            ("limits = []\n", "limits", "must be a table, not an array"),
            (
                "[[arena]]\nname = 3\n",
                "arena[0].name",
                "must be a string, not an integer",
            ),
            (
                "[[arena]]\nname = 'x'\ndatadir = true\n",
                "arena[0] (x).datadir",
                "must be a string, not a boolean",
            ),
            (
                "[[arena]]\nname = 'x'\ndatadir = 1979-05-27\n",
                "arena[0] (x).datadir",
                "must be a string, not date",
            ),
            (
                "[[arena]]\nname = 'x'\ndatadir = '/d'\nworkdir = ['/w']\n",
                "arena[0] (x).workdir",
                "must be a string, not an array",
            ),
            (
                "[[arena]]\nname = 'x'\ndatadir = '/d'\nmark = 1\n",
                "arena[0] (x).mark",
                "must be a string, not an integer",
            ),
            (
                "[[arena]]\nname = 'x'\ndatadir = '/d'\npeers = 'a'\n",
                "arena[0] (x).peers",
                "must be an array, not a string",
            ),
            ("[cache]\nsize = 1.5\n", "cache.size", "must be a string, not a number"),
            (
                "[limits]\nthrottle_up = true\n",
                "limits.throttle_up",
                "must be a string such as '1M'",
            ),
            (
                "[limits]\nthrottle_down = 1.5\n",
                "limits.throttle_down",
                "must be a string such as '1M'",
            ),
        ]
        for text, key, message in cases:
            self.assert_error(text, key, message)

    def test_bad_cache_size(self) -> None:
        """
        A cache size that is neither a byte count nor a percentage in
        (0, 100] is named.
        """
        for size in ["0%", "101%", "-5%", "x%", "%", "nan%"]:
            self.assert_error(
                f"[cache]\nsize = {q(size)}\n",
                "cache.size",
                f"bad percentage {size!r}",
            )
        for size in ["lots", "-1", "1X", ""]:
            self.assert_error(
                f"[cache]\nsize = {q(size)}\n",
                "cache.size",
                f"bad rate {size!r}: {RATE_HELP}",
            )

    def test_bad_limits(self) -> None:
        """
        A bad rate in C{[limits]} is named with the key.
        """
        self.assert_error(
            "[limits]\nthrottle_up = 'fast'\n",
            "limits.throttle_up",
            f"bad rate 'fast': {RATE_HELP}",
        )
        self.assert_error(
            "[limits]\nthrottle_down = -1\n",
            "limits.throttle_down",
            "bad rate -1: negative",
        )

    def test_huge_rate(self) -> None:
        """
        A rate too large for a float is an exact integer, not an
        L{OverflowError} escaping the parser.
        """
        digits = "1" * 400
        config = self.load(f"[limits]\nthrottle_up = {q(digits + 'k')}\n")
        self.assertEqual(config.limits.throttle_up, int(digits) * 1024)


class ParseRateTests(SynchronousTestCase):
    """
    Tests for L{parse_rate}.
    """

    def test_integers(self) -> None:
        """
        Integers are bytes; 0 means unlimited and stays 0.
        """
        self.assertEqual([parse_rate(0), parse_rate(512)], [0, 512])

    def test_suffixes(self) -> None:
        """
        k, M, G and T are binary multiples, case-insensitive, with an
        optional B or iB and surrounding whitespace.
        """
        cases = {
            "0": 0,
            "512": 512,
            "512k": 512 * 1024,
            "512K": 512 * 1024,
            "1M": 1 << 20,
            "1m": 1 << 20,
            "1.5M": 1572864,
            "2G": 2 << 30,
            "1T": 1 << 40,
            "10MiB": 10 << 20,
            "10MB": 10 << 20,
            "10kb": 10 << 10,
            " 3 k ": 3 << 10,
            "0.5k": 512,
            "0.1k": 102,
            "9007199254740993": 9007199254740993,
        }
        self.assertEqual({text: parse_rate(text) for text in cases}, cases)

    def test_bad(self) -> None:
        """
        Anything else is a L{ValueError} that quotes the value.
        """
        for text in [
            "",
            "k",
            "fast",
            "1X",
            "1.2.3",
            "1e3",
            "-1",
            "-1k",
            "1 000",
            "1,5M",
        ]:
            error = self.assertRaises(ValueError, parse_rate, text)
            self.assertEqual(str(error), f"bad rate {text!r}: {RATE_HELP}")

    def test_negative(self) -> None:
        """
        A negative integer is refused as negative.
        """
        error = self.assertRaises(ValueError, parse_rate, -1)
        self.assertEqual(str(error), "bad rate -1: negative")

    def test_bool(self) -> None:
        """
        A boolean is not taken for 0 or 1.
        """
        for value in (True, False):
            error = self.assertRaises(ValueError, parse_rate, value)
            self.assertEqual(str(error), f"bad rate {value!r}")


class ParseDurationTests(SynchronousTestCase):
    """
    Tests for L{parse_duration}.
    """

    def test_good(self) -> None:
        """
        Units s, m, h and d add up; a bare number is seconds.
        """
        cases = {
            "30s": 30.0,
            "5m": 300.0,
            "2h": 7200.0,
            "1d": 86400.0,
            "1h30m": 5400.0,
            "1h 30m": 5400.0,
            "1.5h": 5400.0,
            "90": 90.0,
            "0.25": 0.25,
            " 2M ": 120.0,
            "1m1s": 61.0,
        }
        self.assertEqual({text: parse_duration(text) for text in cases}, cases)

    def test_bad(self) -> None:
        """
        Malformed durations are a L{ValueError} quoting the value, also
        when a valid duration hides inside them.
        """
        for text in [
            "",
            "s",
            "5x",
            "5m3",
            "m5",
            "-5s",
            "1.2.3s",
            ".5s",
            "1..5h",
            "5 5s",
        ]:
            error = self.assertRaises(ValueError, parse_duration, text)
            self.assertEqual(str(error), f"bad duration {text!r}: {DURATION_HELP}")

    def test_not_positive(self) -> None:
        """
        Zero is refused: a duration must be positive.
        """
        for text in ["0", "0s", "0h0m", "0.0"]:
            error = self.assertRaises(ValueError, parse_duration, text)
            self.assertEqual(str(error), f"bad duration {text!r}: must be positive")

    def test_infinite(self) -> None:
        """
        A number too large for a float is refused rather than returned as
        infinity.
        """
        text = "9" * 400 + "s"
        error = self.assertRaises(ValueError, parse_duration, text)
        self.assertEqual(str(error), f"bad duration {text!r}: too long")


class ParseAddressTests(SynchronousTestCase):
    """
    Tests for L{parse_address}.
    """

    def test_good(self) -> None:
        """
        Host names, IPv4 and bracketed IPv6, with or without a port; the
        port defaults to L{DEFAULT_PORT}.
        """
        self.assertEqual(DEFAULT_PORT, 9771)
        cases = {
            "host": ("host", 9771),
            "host.example:80": ("host.example", 80),
            " 10.0.0.1:65535 ": ("10.0.0.1", 65535),
            "[::1]:9000": ("::1", 9000),
            "[::1]": ("::1", 9771),
            "[fe80::1%eth0]:1": ("fe80::1%eth0", 1),
        }
        self.assertEqual({text: parse_address(text) for text in cases}, cases)

    def test_bad(self) -> None:
        """
        Unbracketed IPv6, empty hosts and ports outside 1..65535 are a
        L{ValueError} quoting the address.
        """
        cases = {
            "::1": "bad address '::1': write IPv6 as [addr]:port",
            "fe80::1:80": "bad address 'fe80::1:80': write IPv6 as [addr]:port",
            "": "bad address '': no host",
            ":80": "bad address ':80': no host",
            "[::1": "bad address '[::1': unclosed '['",
            "[::1]80": "bad address '[::1]80'",
            "h:0": "bad address 'h:0': bad port '0'",
            "h:65536": "bad address 'h:65536': bad port '65536'",
            "h:-1": "bad address 'h:-1': bad port '-1'",
            "h:+1": "bad address 'h:+1': bad port '+1'",
            "h:x": "bad address 'h:x': bad port 'x'",
            "[::1]:99999": "bad address '[::1]:99999': bad port '99999'",
        }
        for text, message in cases.items():
            error = self.assertRaises(ValueError, parse_address, text)
            self.assertEqual((text, str(error)), (text, message))

    def test_empty_brackets(self) -> None:
        """
        Brackets around nothing are not a host.
        """
        for text in ["[]", "[]:80"]:
            error = self.assertRaises(ValueError, parse_address, text)
            self.assertTrue(str(error).startswith(f"bad address {text!r}"), str(error))


class HistoryConfigTests(_ConfigFileMixin):
    """
    C{[history]}: C{max_entries} and C{max_age} (#trimhistory).
    """

    def test_defaults(self) -> None:
        """
        Without C{[history]}, or with an empty one, the history keeps a
        million entries for 30 days.
        """
        self.assertEqual(self.load("").history, HistoryConfig(1_000_000, 30 * 86400.0))
        self.assertEqual(self.load("[history]\n").history, HistoryConfig())

    def test_values(self) -> None:
        """
        Both keys are read; the age is a duration.
        """
        config = self.load("[history]\nmax_entries = 500\nmax_age = '1d12h'\n")
        self.assertEqual(config.history, HistoryConfig(500, 36 * 3600.0))
        config = self.load("[history]\nmax_age = 90\n")
        self.assertEqual(config.history, HistoryConfig(1_000_000, 90.0))

    def test_bad_max_entries(self) -> None:
        """
        C{max_entries} must be a positive integer.
        """
        self.assert_error(
            "[history]\nmax_entries = 0\n", "history.max_entries", "must be at least 1"
        )
        self.assert_error(
            "[history]\nmax_entries = '10'\n",
            "history.max_entries",
            "must be an integer, not a string",
        )

    def test_bad_max_age(self) -> None:
        """
        C{max_age} must be a positive duration.
        """
        self.assert_error(
            "[history]\nmax_age = 'soon'\n",
            "history.max_age",
            f"bad duration 'soon': {DURATION_HELP}",
        )
        self.assert_error(
            "[history]\nmax_age = true\n",
            "history.max_age",
            "must be a duration such as '30d' or '12h'",
        )
        self.assert_error(
            "[history]\nmax_age = '0s'\n",
            "history.max_age",
            "bad duration '0s': must be positive",
        )

    def test_unknown_key(self) -> None:
        """
        An unknown key in C{[history]} is named.
        """
        self.assert_error(
            "[history]\nmax_size = 3\n", "history.max_size", "unknown key"
        )
