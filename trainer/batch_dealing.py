"""How the rows of a training or evaluation set reach `RPATrainer`'s processes under accelerate: a stream is dealt out
batch by batch (`dealt_by_batch`), the last global batch evened out with repeated rows, and the rows of an evaluation
batch that accelerate repeated are told apart (`repeated_eval_rows`, for a stream by the positions `numbered_stream`
gives its rows), so that evaluation counts every row of its set once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from accelerate import Accelerator
from datasets import Dataset, IterableDataset
from torch import Tensor

from .collator import ROW_POSITION


class StreamDealtByBatch(torch.utils.data.IterableDataset):
    """A `datasets` stream that accelerate deals out batch by batch (its `IterableDatasetShard`: every process reads
    the stream and keeps its part of each global batch, the last one evened out with repeated rows), not by shards.
    Given a `datasets.IterableDataset` of at least as many shards as processes, accelerate hands each process shards
    of its own, unevened: shards of unequal length left the processes unequal numbers of batches, and one waited
    forever in the loss's all-gather or ran its evaluation against the other's training step."""

    def __init__(self, stream: IterableDataset) -> None:
        self.stream = stream

    def __iter__(self):
        return iter(self.stream)

    def set_epoch(self, epoch: int) -> None:  # the stream's shuffling is seeded by the epoch
        self.stream.set_epoch(epoch)


def dealt_by_batch(dataset: Dataset | IterableDataset, processes: int) -> Dataset | torch.utils.data.IterableDataset:
    """`dataset`, a stream read by several processes wrapped in `StreamDealtByBatch`."""
    return StreamDealtByBatch(dataset) if isinstance(dataset, IterableDataset) and processes > 1 else dataset


def numbered_stream(stream: IterableDataset) -> IterableDataset:
    """`stream` with each row's position in it as its `ROW_POSITION` field, which the collator passes on: how
    `repeated_eval_rows` tells the rows accelerate repeats in a stream, which has no length."""
    return stream.map(_with_position, with_indices=True)


def _with_position(row: dict[str, Any], position: int) -> dict[str, int]:
    return {ROW_POSITION: position}


def repeated_stream_rows(positions: Tensor) -> Tensor:
    """``(P,)`` bool: the rows of a global batch of a stream, given by their ``(P,)`` positions in it (processes in rank
    order), that accelerate repeated. Its `IterableDatasetShard` fills a stream's last batch with the stream's first
    rows again, so a row is repeated unless its position is above every earlier row's."""
    earlier = torch.cat([positions.new_full((1,), -1), positions.cummax(0).values[:-1]])
    return positions <= earlier


def repeated_eval_rows(accelerator: Accelerator, inputs: Mapping[str, Tensor]) -> Tensor:
    """``(N,)`` bool: this process's rows of the collated evaluation batch `inputs` that accelerate repeated to fill the
    last batch of every process (evaluation loaders have even batches). accelerate tells them by the dataset's length
    (`gradient_state.remainder`, which its `gather_for_metrics` drops); a stream has none (-1), so its rows are
    numbered (`numbered_stream`), and the default collator passes the numbers on as `row_position` (with a collator
    that does not, a streamed evaluation still counts them)."""
    rows = len(inputs["anchor_text_index"])
    state, device = accelerator.gradient_state, inputs["anchor_text_index"].device
    # the rows' places in the global batch, processes in rank order (as gathered)
    places = accelerator.process_index * rows + torch.arange(rows, device=device)
    if ROW_POSITION in inputs and state.remainder == -1:
        return repeated_stream_rows(accelerator.gather(inputs[ROW_POSITION]))[places]
    if state.end_of_dataloader and state.remainder > 0:
        return places >= state.remainder
    return torch.zeros(rows, dtype=torch.bool, device=device)
