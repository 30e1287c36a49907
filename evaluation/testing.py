"""A stand-in embedder with known embeddings, for tests of the evaluation protocols (ours and yours).

```python
from evaluation.testing import LookupEmbedder
from evaluation.protocols import evaluate_quadruples

model = LookupEmbedder({"t0": [1.0, 0.0], "t1": [0.0, 1.0]})
scores = evaluate_quadruples(model, None, [([1.0, 0.1], [0.1, 1.0], "t0", "t1")])
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


class LookupEmbedder:
    """Embeds each text by a lookup table and each image as itself (a vector given in the image's place), so a test
    chooses every cosine. `calls` records each `encode` call's texts and batch size. The protocols normalise both
    sides, so the vectors need not be unit length."""

    def __init__(self, text_embeds: Mapping[str, Sequence[float]]) -> None:
        self.text_embeds = text_embeds
        self.calls: list[tuple[list[str], int]] = []

    def encode(self, processor, texts: Sequence[str], images: Sequence[Sequence[float]], batch_size: int):
        """`MapleModel.encode`'s interface: (texts, D) and (images, D) float tensors; `processor` is unused."""
        self.calls.append((list(texts), batch_size))
        text_embeds = torch.tensor([list(self.text_embeds[text]) for text in texts], dtype=torch.float32)
        return text_embeds, torch.tensor([list(image) for image in images], dtype=torch.float32)
