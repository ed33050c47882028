"""
Repairing the ranges of a destination file whose Merkle leaves differ from
the source's: by copying them again (L{CopyRepairer}) or by rsync deltas
(L{DeltaRepairer}, #rsync).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, cast

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from realize.errors import BadDelta, Conflict
from realize.hashing import LEAF_SIZE
from realize.model import MAX_DELTA_RANGE, ArenaName, FileInfo
from realize.services.budget import ByteBudget
from realize.services.sides import Sides

__all__ = ["CopyRepairer", "DeltaRepairer", "Repairer", "differing_ranges"]

log = Logger(namespace="realize.move")


def differing_ranges(
    source: Sequence[bytes], destination: Sequence[bytes], size: int
) -> list[tuple[int, int]]:
    """
    Byte ranges whose Merkle leaves differ, adjacent ones merged.

    @param source: the source's leaves of the whole file.
    @param destination: the destination's leaves (possibly fewer).
    @param size: the file's size in bytes.
    @return: C{[(start, end), ...]} in bytes, sorted.
    """
    ranges: list[tuple[int, int]] = []
    for index, leaf in enumerate(source):
        if index < len(destination) and destination[index] == leaf:
            continue
        start = index * LEAF_SIZE
        end = min(start + LEAF_SIZE, size)
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return ranges


def _leaves_of(expected: Sequence[bytes], start: int, end: int) -> Sequence[bytes]:
    """
    @return: the leaves of C{[start, end)} among a whole file's leaves.
    """
    first = start // LEAF_SIZE
    return expected[first : first + -(-(end - start) // LEAF_SIZE)]


class Repairer(Protocol):
    """
    Makes byte ranges of the destination file equal to the source's.
    """

    async def repair(
        self,
        sides: Sides,
        arena: ArenaName,
        info: FileInfo,
        ranges: Sequence[tuple[int, int]],
        expected: Sequence[bytes],
    ) -> list[tuple[bytes, ...]]:
        """
        @param sides: the stores, the error wrappers and the ledger to
            count what is sent.
        @param ranges: C{(start, end)} byte ranges, C{start} on a leaf
            boundary.
        @param expected: the source's leaves of the whole file.
        @return: for each range, the destination's leaves of it afterwards.
        @raise realize.errors.SideError: naming the side that failed.
        """


class CopyRepairer:
    """
    Repairs ranges by copying them again.
    """

    async def repair(
        self,
        sides: Sides,
        arena: ArenaName,
        info: FileInfo,
        ranges: Sequence[tuple[int, int]],
        expected: Sequence[bytes],
    ) -> list[tuple[bytes, ...]]:
        return [
            await sides.copy_range(arena, info, start, end) for start, end in ranges
        ]


class DeltaRepairer:
    """
    Repairs ranges with rsync deltas (Tridgell and Mackerras 1996): the
    destination sends the signature of what it has, the source answers a
    delta, the destination applies it.  Ranges are cut in pieces of at
    most L{MAX_DELTA_RANGE} bytes, and L{CONCURRENCY} pieces are in flight
    at once so that the source's and the destination's work overlap.  A
    piece whose delta only copies the basis needs no ApplyDelta
    (#emptydelta); one whose delta cannot be applied, or whose leaves still
    differ afterwards, is copied instead.
    """

    #: Pieces in flight at once.
    CONCURRENCY = 3

    async def repair(
        self,
        sides: Sides,
        arena: ArenaName,
        info: FileInfo,
        ranges: Sequence[tuple[int, int]],
        expected: Sequence[bytes],
    ) -> list[tuple[bytes, ...]]:
        slots = ByteBudget(self.CONCURRENCY, self.CONCURRENCY)
        errors: list[BaseException] = []

        async def one(first: int, last: int) -> tuple[bytes, ...]:
            try:
                return await self._piece(
                    sides, arena, info, first, last, _leaves_of(expected, first, last)
                )
            except BaseException as e:
                errors.append(e)
                raise
            finally:
                slots.release(1)

        pieces: list[tuple[int, Deferred[tuple[bytes, ...]]]] = []
        for index, (start, end) in enumerate(ranges):
            for first in range(start, end, MAX_DELTA_RANGE):
                await slots.acquire(1)
                if errors:
                    slots.release(1)
                    break
                last = min(first + MAX_DELTA_RANGE, end)
                pieces.append((index, Deferred.fromCoroutine(one(first, last))))
        await DeferredList([d for _, d in pieces], consumeErrors=True)
        if errors:
            raise errors[0]
        results: list[list[bytes]] = [[] for _ in ranges]
        for index, d in pieces:
            results[index].extend(cast(tuple[bytes, ...], d.result))
        return [tuple(leaves) for leaves in results]

    async def _piece(
        self,
        sides: Sides,
        arena: ArenaName,
        info: FileInfo,
        start: int,
        end: int,
        expected: Sequence[bytes],
    ) -> tuple[bytes, ...]:
        # Here, not at the top: numpy costs every start-up ~60 ms.
        from realize import delta

        ledger = sides.ledger
        try:
            signature = await sides.destination.signature(arena, info.path, start, end)
        except Exception as e:
            raise sides.destination_error(e) from e
        if signature is not None:
            try:
                change = await sides.source.diff(
                    arena, info.path, start, end, signature
                )
            except Exception as e:
                raise sides.source_error(e) from e
            spent = len(signature) + len(change)
            ledger.exchanged(arena, info.path, spent)
            if not delta.is_identity(change, delta.signature_basis_length(signature)):
                try:
                    leaves = await sides.destination.apply_delta(
                        arena, info.path, start, end, info.size, change
                    )
                except (BadDelta, Conflict) as e:
                    log.warn(
                        "{arena}/{path}: delta for [{start}, {end}) not applied "
                        "({error}), copying the range",
                        arena=arena,
                        path=info.path,
                        start=start,
                        end=end,
                        error=str(e),
                    )
                except Exception as e:
                    raise sides.destination_error(e) from e
                else:
                    if tuple(leaves) == tuple(expected):
                        ledger.saved(end - start - spent)
                        return tuple(leaves)
        ledger.fell_back()
        return await sides.copy_range(arena, info, start, end)
