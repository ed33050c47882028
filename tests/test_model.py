"""
Tests for L{realize.model}: path rules, partial file names, byte ranges.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from realize.errors import BadRequest, InvalidPath
from realize.model import (
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    FileInfo,
    check_arena_name,
    check_path,
    check_range,
    final_name,
    is_partial_name,
    partial_name,
)

quick = settings(max_examples=200, deadline=None, database=None)

#: One path segment that L{check_path} accepts anywhere: no C{/}, no NUL, no
#: surrogates, not C{.} or C{..}, not too long.
segments = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
    min_size=1,
    max_size=20,
).filter(lambda s: s not in (".", ".."))


class CheckPathTests(SynchronousTestCase):
    """
    Tests for L{check_path}.
    """

    def test_accepts(self) -> None:
        """
        Plain, nested, spaced, C{:} and non-ASCII paths are valid; the
        segments are returned.
        """
        cases = {
            "file.txt": ["file.txt"],
            "dir/sub/file": ["dir", "sub", "file"],
            "my documents/a b.txt": ["my documents", "a b.txt"],
            "c:/x:y": ["c:", "x:y"],
            "été/日本語/😀": ["été", "日本語", "😀"],
            ".hidden/...": [".hidden", "..."],
            "a\\b": ["a\\b"],
            " ": [" "],
        }
        self.assertEqual({path: check_path(path) for path in cases}, cases)

    def assert_invalid(self, path: str, message: str) -> None:
        """
        L{check_path} refuses C{path} with exactly C{message}.
        """
        error = self.assertRaises(InvalidPath, check_path, path)
        self.assertEqual(str(error), message)

    def test_empty(self) -> None:
        """
        The empty path is refused.
        """
        self.assert_invalid("", "path is empty")

    def test_absolute(self) -> None:
        """
        Absolute paths are refused.
        """
        self.assert_invalid("/etc/passwd", "path '/etc/passwd' is absolute")
        self.assert_invalid("/", "path '/' is absolute")

    def test_dot_segments(self) -> None:
        """
        C{.}, C{..} and empty segments, anywhere, are refused.
        """
        for path in [
            "..",
            ".",
            "../x",
            "a/../b",
            "a/..",
            "./a",
            "a/./b",
            "a//b",
            "a/",
            "a/b/",
        ]:
            self.assert_invalid(
                path, f"path {path!r} has an empty, '.' or '..' segment"
            )

    def test_nul(self) -> None:
        """
        A NUL anywhere is refused.
        """
        self.assert_invalid("a\0b", "path 'a\\x00b' contains NUL")
        self.assert_invalid("\0", "path '\\x00' contains NUL")

    def test_surrogates(self) -> None:
        """
        A name that is not UTF-8 on disk decodes with surrogate escapes and
        is refused: it could not travel on the wire.
        """
        path = os.fsdecode(b"dir/caf\xe9")
        self.assertEqual(path, "dir/caf\udce9")
        self.assert_invalid(path, "path 'dir/caf\\udce9' is not valid UTF-8")

    def test_path_length(self) -> None:
        """
        Paths up to L{MAX_PATH_BYTES} bytes of UTF-8 are valid, longer ones
        are refused; bytes are counted, not characters.
        """
        self.assertEqual(MAX_PATH_BYTES, 4096)
        segment = "x" * 127
        longest = "/".join([segment] * 32)
        self.assertEqual(len(longest.encode()), 4095)
        self.assertEqual(len(check_path(longest + "y")), 32)
        self.assert_invalid(longest + "yy", "path is longer than 4096 bytes")
        # Two bytes per "é": 2059 characters make 4098 bytes.
        wide = "/".join(["é" * 100] * 20 + ["é" * 24])
        self.assertEqual(len(wide.encode()), 4068)
        self.assertEqual(len(check_path(wide)), 21)
        self.assert_invalid(wide + "éé" * 7 + "é", "path is longer than 4096 bytes")

    def test_segment_length(self) -> None:
        """
        Segments up to L{MAX_NAME_BYTES} (255 less the partial file
        decoration) bytes of UTF-8 are valid, longer ones are refused.
        """
        self.assertEqual(MAX_NAME_BYTES, 249)
        self.assertEqual(check_path("d/" + "x" * 249), ["d", "x" * 249])
        self.assertEqual(len(partial_name("x" * 249).encode()), 255)
        long = "x" * 250
        self.assert_invalid(
            f"d/{long}", f"path 'd/{long}' has a segment longer than 249 bytes"
        )
        wide = "é" * 125
        self.assert_invalid(wide, f"path {wide!r} has a segment longer than 249 bytes")
        self.assertEqual(check_path("é" * 124 + "x"), ["é" * 124 + "x"])

    def test_partial(self) -> None:
        """
        A path whose last segment is a partial file's name is refused; a
        directory named like one is not.
        """
        for path in [".x.part", "d/.x.part", "d/e/.a b.part", "....part"]:
            self.assert_invalid(path, f"path {path!r} names a partial file")
        self.assertEqual(check_path(".x.part/y"), [".x.part", "y"])

    def test_not_partial(self) -> None:
        """
        Names that only look partly like C{.<name>.part} are ordinary
        files: nothing between the dot and C{.part}, no leading dot, another
        suffix.
        """
        for path in [".part", "..part", "x.part", "d/x.part", ".x.parts", ".x.Part"]:
            self.assertEqual(check_path(path)[-1], path.split("/")[-1])

    @quick
    @given(st.lists(segments, min_size=1, max_size=6))
    def test_segments_round_trip(self, parts: list[str]) -> None:
        """
        Joining valid segments gives a valid path whose segments are the
        same, unless the last one is a partial name.
        """
        path = "/".join(parts)
        if is_partial_name(parts[-1]):
            self.assertRaises(InvalidPath, check_path, path)
        else:
            self.assertEqual(check_path(path), parts)


class CheckArenaNameTests(SynchronousTestCase):
    """
    Tests for L{check_arena_name}.
    """

    def test_accepts(self) -> None:
        """
        Plain and nested names are returned as they are, partial-looking
        ones included (arena names are not files).
        """
        for name in ["documents", "home/photos", "a b:c", "été", ".x.part"]:
            self.assertEqual(check_arena_name(name), name)

    def test_refuses(self) -> None:
        """
        The path rules apply, with the messages naming an arena name.
        """
        cases = {
            "": "arena name is empty",
            "/abs": "arena name '/abs' is absolute",
            "a/../b": "arena name 'a/../b' has an empty, '.' or '..' segment",
            "a/": "arena name 'a/' has an empty, '.' or '..' segment",
            ".": "arena name '.' has an empty, '.' or '..' segment",
            "a\0": "arena name 'a\\x00' contains NUL",
            "\udcff": "arena name '\\udcff' is not valid UTF-8",
            "x" * 250: f"arena name {'x' * 250!r} has a segment longer than 249 bytes",
        }
        for name, message in cases.items():
            error = self.assertRaises(InvalidPath, check_arena_name, name)
            self.assertEqual(str(error), message)


class PartialNameTests(SynchronousTestCase):
    """
    Tests for L{partial_name}, L{is_partial_name} and L{final_name}.
    """

    def test_partial_name(self) -> None:
        """
        The partial file of C{name} is C{.<name>.part}.
        """
        self.assertEqual(
            [partial_name("x"), partial_name("a b.txt"), partial_name(".hidden")],
            [".x.part", ".a b.txt.part", "..hidden.part"],
        )

    def test_is_partial_name(self) -> None:
        """
        A name is partial iff it is C{.<something>.part} with C{something}
        not empty.
        """
        cases = {
            ".x.part": True,
            "...part": True,
            "..hidden.part": True,
            ". .part": True,
            ".part": False,
            "..part": False,
            "x.part": False,
            ".x.par": False,
            ".x.part ": False,
            "x": False,
            "": False,
        }
        self.assertEqual({name: is_partial_name(name) for name in cases}, cases)

    def test_final_name(self) -> None:
        """
        L{final_name} strips the decoration.
        """
        self.assertEqual(
            [
                final_name(".x.part"),
                final_name("..hidden.part"),
                final_name(".a.part.part"),
            ],
            ["x", ".hidden", "a.part"],
        )

    @quick
    @given(segments)
    def test_round_trip(self, name: str) -> None:
        """
        Every valid name's partial name is partial and maps back to it.
        """
        partial = partial_name(name)
        self.assertTrue(is_partial_name(partial))
        self.assertEqual(final_name(partial), name)


class CheckRangeTests(SynchronousTestCase):
    """
    Tests for L{check_range}.
    """

    def test_good(self) -> None:
        """
        Empty and non-empty ranges within the file, up to its end, pass.
        """
        for start, end, size in [(0, 0, 0), (0, 10, 10), (5, 5, 10), (3, 7, None)]:
            self.assertIsNone(check_range(start, end, size))
        self.assertIsNone(check_range(0, 1 << 62))

    def test_bad(self) -> None:
        """
        Negative, reversed or out-of-file ranges are a L{BadRequest}
        naming the range and the size.
        """
        cases = [
            ((-1, 5, None), "bad byte range [-1, 5)"),
            ((-2, -1, None), "bad byte range [-2, -1)"),
            ((6, 5, None), "bad byte range [6, 5)"),
            ((6, 5, 100), "bad byte range [6, 5)"),
            ((0, 11, 10), "byte range [0, 11) beyond file size 10"),
            ((11, 11, 10), "byte range [11, 11) beyond file size 10"),
            ((0, 1, 0), "byte range [0, 1) beyond file size 0"),
        ]
        for (start, end, size), message in cases:
            error = self.assertRaises(BadRequest, check_range, start, end, size)
            self.assertEqual(str(error), message)


class FileInfoTests(SynchronousTestCase):
    """
    Tests for L{FileInfo}.
    """

    def test_value(self) -> None:
        """
        L{FileInfo} compares by value, is not partial by default and is
        frozen.
        """
        info = FileInfo("a/b", 3, 10)
        self.assertEqual(info, FileInfo(path="a/b", size=3, mtime_ns=10, partial=False))
        self.assertNotEqual(info, FileInfo("a/b", 3, 10, partial=True))
        self.assertEqual(hash(info), hash(FileInfo("a/b", 3, 10)))
        self.assertRaises(AttributeError, setattr, info, "size", 4)
