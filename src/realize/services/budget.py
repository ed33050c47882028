"""
A counting semaphore of bytes and files, for the work a move has in flight
(#sizegate).
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred

__all__ = ["ByteBudget"]


class ByteBudget:
    """
    A counting semaphore of bytes and files, first come first served.

    @ivar capacity: bytes available in all.
    @ivar max_files: holders at once.
    """

    def __init__(self, capacity: int, max_files: int) -> None:
        self.capacity = capacity
        self.max_files = max_files
        self._free = capacity
        self._files = 0
        self._waiting: deque[tuple[int, Deferred[None]]] = deque()

    def weight(self, size: int) -> int:
        """
        @return: what a file of C{size} bytes takes, at least 1, at most
            the capacity.
        """
        return max(1, min(size, self.capacity))

    def acquire(self, weight: int) -> Deferred[None]:
        """
        @return: a Deferred that fires once C{weight} bytes are held.
        """
        d: Deferred[None] = Deferred()
        self._waiting.append((weight, d))
        self._pump()
        return d

    def release(self, weight: int) -> None:
        self._free += weight
        self._files -= 1
        self._pump()

    def _pump(self) -> None:
        while self._waiting:
            weight, d = self._waiting[0]
            if weight > self._free or self._files >= self.max_files:
                return
            self._waiting.popleft()
            self._free -= weight
            self._files += 1
            d.callback(None)
