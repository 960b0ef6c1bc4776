"""Bounded memory of what the node has seen and what it still owes the scheduler.

The Electron node remembers every ``job_id`` for the life of its process (PROTOCOL.md §2.5, N4, N5), which
grows without bound on a long-running node. We keep the most recent ``capacity`` keys instead: the
scheduler never re-sends a job to the same node (§11.5), so the guard only has to catch recent repeats,
and memory stays flat. Results that finish while the socket is down wait in a bounded outbox; when it
overflows the oldest result is dropped, since the scheduler has long failed that job over by then.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class RecentSet(Generic[K]):
    """A set that forgets its oldest keys beyond ``capacity`` (first in, first out).

    Only each key's 64-bit ``hash`` is kept (about 80 bytes per key instead of about 240 for the strings in an
    ordered dict: 100k job ids take 8 MiB). Two different keys share a hash with a chance of about
    ``capacity / 2**64`` per new key, which would reject one new job as a duplicate: negligible."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._members: set[int] = set()
        self._order: deque[int] = deque()

    def __contains__(self, key: object) -> bool:
        return hash(key) in self._members

    def __len__(self) -> int:
        return len(self._members)

    def add(self, key: K) -> None:
        digest = hash(key)
        if digest in self._members:
            return
        self._members.add(digest)
        self._order.append(digest)
        if len(self._order) > self.capacity:
            self._members.discard(self._order.popleft())


class Outbox(Generic[T]):
    """A FIFO of undelivered items that drops the oldest when full."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._items: deque[T] = deque()
        self.capacity = capacity
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def put(self, item: T) -> None:
        if len(self._items) >= self.capacity:
            self._items.popleft()
            self.dropped += 1
            log.warning("outbox full (%d): dropped the oldest undelivered result", self.capacity)
        self._items.append(item)

    def push_front(self, item: T) -> None:
        """Put back an item whose delivery failed, so that it goes first next time (it is the oldest, so it
        is the one dropped if the outbox filled up meanwhile)."""
        if len(self._items) >= self.capacity:
            self.dropped += 1
            log.warning("outbox full (%d): dropped the oldest undelivered result", self.capacity)
            return
        self._items.appendleft(item)

    def pop(self) -> T | None:
        return self._items.popleft() if self._items else None
