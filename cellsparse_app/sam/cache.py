"""A bounded, thread-safe LRU cache that computes each missing entry once ("single flight").

Several users may click on the same image at the same moment: the first computes the embedding,
the others wait for it instead of computing it again (samapi keeps one global slot that users
overwrite in turn).
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Callable, Generic, Hashable, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class LruCache(Generic[T]):
    """At most ``max_entries`` values, least recently used evicted first.

    Attributes:
        hits, misses: lookups answered from the cache / computed.
    """

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._data: collections.OrderedDict[Hashable, T] = collections.OrderedDict()
        self._inflight: dict[Hashable, threading.Event] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The cached value for ``key``, computing it (once across threads) when missing.

        If ``compute`` raises, the error reaches the caller that ran it; threads that were
        waiting try again themselves.
        """
        while True:
            with self._lock:
                if key in self._data:
                    self._data.move_to_end(key)
                    self.hits += 1
                    return self._data[key]
                event = self._inflight.get(key)
                if event is None:
                    event = self._inflight[key] = threading.Event()
                    self.misses += 1
                    owner = True
                else:
                    owner = False
            if not owner:
                event.wait()
                continue
            try:
                value = compute()
                with self._lock:
                    self._data[key] = value
                    self._data.move_to_end(key)
                    while len(self._data) > self.max_entries:
                        self._data.popitem(last=False)
                return value
            finally:
                with self._lock:
                    self._inflight.pop(key, None)
                event.set()

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def info(self) -> dict[str, int]:
        """``entries``, ``max_entries``, ``hits``, ``misses``."""
        with self._lock:
            return {"entries": len(self._data), "max_entries": self.max_entries,
                    "hits": self.hits, "misses": self.misses}
