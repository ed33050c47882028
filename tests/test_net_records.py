"""
Tests for L{realize.net.commands.Records}, the packed list argument of the
batch commands.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.protocols.amp import MAX_VALUE_LENGTH
from twisted.trial.unittest import SynchronousTestCase

from realize.model import FileInfo, SmallFile
from realize.net.commands import (
    DeleteFiles,
    Records,
    WriteFiles,
    pack_delete_files,
    pack_write_files,
)

FIELDS = [("path", "text"), ("size", "uint"), ("mtime_ns", "int"), ("root", "blob")]


class RecordsTests(SynchronousTestCase):
    """
    Packing and unpacking records.
    """

    records = Records(FIELDS)

    @settings(database=None, max_examples=200)
    @given(
        st.lists(
            st.fixed_dictionaries(
                {
                    "path": st.text(max_size=50),
                    "size": st.integers(0, 2**64 - 1),
                    "mtime_ns": st.integers(-(2**63), 2**63 - 1),
                    "root": st.binary(max_size=40),
                }
            ),
            max_size=20,
        )
    )
    def test_round_trip(self, values: list[dict[str, object]]) -> None:
        """
        Any list of records comes back equal after packing.
        """
        self.assertEqual(self.records.unpack(self.records.pack(values)), values)

    def test_known_answer(self) -> None:
        """
        The packed form is length-prefixed UTF-8 text and blobs and 8-byte
        big-endian numbers, in field order.
        """
        packed = self.records.pack(
            [{"path": "é", "size": 1, "mtime_ns": -1, "root": b"r"}]
        )
        self.assertEqual(
            packed,
            b"\x00\x02\xc3\xa9" + b"\x00" * 7 + b"\x01" + b"\xff" * 8 + b"\x00\x01r",
        )

    def test_big_list_through_a_box(self) -> None:
        """
        A list packed larger than an AMP value travels over several keys of
        the box and comes back whole.
        """
        values = [
            {"path": f"dir/{i:05d}" * 10, "size": i, "mtime_ns": i, "root": b"x" * 32}
            for i in range(2000)
        ]
        strings: dict[bytes, bytes] = {}
        self.records.toBox(b"files", strings, {"files": values}, None)
        self.assertGreater(len(strings), 1)
        self.assertTrue(all(len(v) <= MAX_VALUE_LENGTH for v in strings.values()))
        objects: dict[str, object] = {}
        self.records.fromBox(b"files", strings, objects, None)
        self.assertEqual(objects["files"], values)

    def test_field_orders(self) -> None:
        """
        Fixed fields before, between and after variable ones, and lists of
        only fixed or only variable fields, come back as they were packed.
        """
        for fields, record in [
            (
                [("a", "uint"), ("b", "text"), ("c", "int"), ("d", "int")],
                {"a": 1, "b": "x", "c": -2, "d": 3},
            ),
            ([("a", "int"), ("b", "uint")], {"a": -1, "b": 2**64 - 1}),
            ([("a", "blob"), ("b", "text")], {"a": b"\0\1", "b": "é"}),
        ]:
            records = Records(fields)
            packed = records.pack([record, record])
            self.assertEqual(records.unpack(packed), [record, record])
            self.assertRaises(ValueError, records.unpack, packed[:-1])

    def test_malformed(self) -> None:
        """
        Truncated data raises ValueError.
        """
        good = self.records.pack(
            [{"path": "p", "size": 1, "mtime_ns": 1, "root": b"r"}]
        )
        for bad in (good[:-1], good[:5]):
            self.assertRaises(ValueError, self.records.unpack, bad)

    def test_not_utf8(self) -> None:
        """
        Text that is not UTF-8 decodes with C{surrogateescape}, so that the
        store refuses that one path (INVALID_PATH) and not the whole batch.
        """
        good = self.records.pack(
            [{"path": "p", "size": 1, "mtime_ns": 1, "root": b"r"}]
        )
        [record] = self.records.unpack(b"\x00\x01\xff" + good[3:])
        self.assertEqual(record["path"], "\udcff")

    def test_too_long_text(self) -> None:
        """
        A text field longer than 65,535 bytes cannot be packed.
        """
        import struct

        self.assertRaises(
            struct.error,
            self.records.pack,
            [{"path": "x" * 70_000, "size": 1, "mtime_ns": 1, "root": b""}],
        )

    def test_unknown_kind(self) -> None:
        """
        A field of an unknown kind is refused when the argument is made.
        """
        self.assertRaises(ValueError, Records, [("x", "float")])


class PackedTests(SynchronousTestCase):
    """
    L{pack_write_files} and L{pack_delete_files} pack the records of a batch
    as the commands' own L{Records} would pack their dicts, and a
    L{Records} argument sends a L{Packed} as it is.
    """

    @settings(database=None, max_examples=200)
    @given(
        st.lists(
            st.builds(
                SmallFile,
                st.text(max_size=50),
                st.integers(0, 2**64 - 1),
                st.integers(-(2**63), 2**63 - 1),
                st.binary(max_size=40),
            ),
            max_size=20,
        )
    )
    def test_write_files(self, files: list[SmallFile]) -> None:
        """
        The records of a WriteFiles call: what its argument packs of the
        same files as dicts.
        """
        argument = dict(WriteFiles.arguments)[b"files"]
        assert isinstance(argument, Records)
        dicts = [
            {"path": f.path, "size": f.size, "mtime_ns": f.mtime_ns, "root": f.root}
            for f in files
        ]
        packed = pack_write_files(files)
        self.assertEqual(packed.data, argument.pack(dicts))
        self.assertEqual(argument.pack(packed), packed.data)
        self.assertEqual(argument.unpack(packed.data), dicts)

    @settings(database=None, max_examples=200)
    @given(
        st.lists(
            st.builds(
                FileInfo,
                st.text(max_size=50),
                st.integers(0, 2**64 - 1),
                st.integers(-(2**63), 2**63 - 1),
            ),
            max_size=20,
        )
    )
    def test_delete_files(self, files: list[FileInfo]) -> None:
        """
        The records of a DeleteFiles call: what its argument packs of the
        same files as dicts.
        """
        argument = dict(DeleteFiles.arguments)[b"files"]
        assert isinstance(argument, Records)
        dicts = [
            {"path": f.path, "size": f.size, "mtime_ns": f.mtime_ns} for f in files
        ]
        packed = pack_delete_files(files)
        self.assertEqual(packed.data, argument.pack(dicts))
        self.assertEqual(argument.unpack(packed.data), dicts)
