"""`LazySequence`: a sequence whose items are made when read, so that a benchmark's images are decoded a batch at a
time and never all held in memory."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any


class LazySequence(Sequence):
    """Item i is `_item(i)`, made on access; negative indices and bounds are resolved here, and slices give lists."""

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._item(range(len(self))[index])

    @abstractmethod
    def _item(self, index: int) -> Any:
        """Item `index`, in [0, len(self))."""
