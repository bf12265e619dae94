"""`TopKExamples`: the validation samples with the highest loss (confident mistakes) and the lowest.

On each drawn epoch (the schedule: base.py; pictures are made only then) it logs both sets as
captioned images (`true: cat · pred: dog (0.93) · loss 3.21`), a W&B table (image, true, pred,
confidence, entropy, loss, dataset index) and a PNG grid per set.
Inputs that are not images (feature vectors) have no pictures: the table (also `top_k_table.json`
beside the PNGs) then has a `features` column, the values of each sample in their own units.

Cheap: each batch is merged into a running top-k on the device (O(batch + k), no host sync).
Correct under DDP: each rank keeps its own top-k; at epoch end they are gathered and merged, so the
logged set is the global top-k. Ties are broken by dataset index and repeated samples (the
DistributedSampler pads shards by repeating some) are counted once, so one process and several agree.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor
from torch.nn import functional as F

from project.callbacks.base import EpochCallback
from project.callbacks.display import are_images, caption, class_names, display_features, display_images
from project.callbacks.visual_log import VisualLog
from project.errors import UserError
from project.structs import Example, Prediction


@dataclass
class Ranked:
    """Samples with a score, kept on the device; every field has the same length n."""

    score: Tensor  # (n,) the per-sample loss
    index: Tensor  # (n,) dataset index; -1 marks padding
    label: Tensor  # (n,)
    pred: Tensor  # (n,)
    confidence: Tensor  # (n,)
    entropy: Tensor  # (n,)
    image: Tensor  # (n, *input_shape): the model inputs, images or not

    def __len__(self) -> int:
        return len(self.score)

    def real(self) -> Ranked:
        """Without the padding (index -1). Its length depends on the values: a host sync on a GPU."""
        return self.take(torch.nonzero(self.index >= 0).flatten())

    def take(self, positions: Tensor) -> Ranked:
        return Ranked(**{f.name: getattr(self, f.name)[positions] for f in dataclasses.fields(self)})

    @staticmethod
    def cat(parts: list[Ranked]) -> Ranked:
        return Ranked(
            **{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Ranked)}
        )

    @classmethod
    def from_batch(cls, example: Example, prediction: Prediction) -> Ranked:
        label = example.require_label()
        index = example.index if example.index is not None else torch.full_like(label, -1)
        loss = F.cross_entropy(prediction.logits.float(), label, reduction="none")
        return cls(
            loss, index, label, prediction.pred, prediction.confidence, prediction.entropy, example.image
        )


def top_k(ranked: Ranked, k: int, largest: bool = True) -> Ranked:
    """The k best-scoring samples, highest first (lowest first if not `largest`).

    Deterministic: equal scores are ordered by dataset index; a dataset index seen more than once
    is kept once (its best-ranked copy); padding (index -1) is dropped. The result has min(k, n)
    entries, n the input's length: when fewer distinct samples than that are there, padding fills
    the end (`real()` leaves it out). Sorts and indexing only, every length known from the shapes: no
    host sync on a GPU. The samples (images) are indexed once, at the end.
    """
    k = min(k, len(ranked))
    if k <= 0:
        return ranked.take(torch.zeros(0, dtype=torch.long, device=ranked.score.device))
    # Two stable sorts: by index, then by score, so ties keep index order.
    order = torch.argsort(ranked.index, stable=True)
    order = order[torch.argsort(ranked.score[order], descending=largest, stable=True)]
    index = ranked.index[order]
    # A repeat: an index seen earlier in that order (within equal indices the sort keeps rank order).
    by_index = torch.argsort(index, stable=True)
    sorted_index = index[by_index]
    repeat_sorted = torch.cat(
        [torch.zeros_like(sorted_index[:1], dtype=torch.bool), sorted_index[1:] == sorted_index[:-1]]
    )
    dropped = torch.empty_like(repeat_sorted).scatter_(0, by_index, repeat_sorted) | (index < 0)
    first = torch.argsort(dropped.to(torch.uint8), stable=True)[:k]  # the kept ones first, in their order
    best = ranked.take(order[first])
    best.index = torch.where(dropped[first], -1, best.index)  # a dropped one left at the end is padding
    return best


def merge(highest: Ranked | None, lowest: Ranked | None, batch: Ranked, k: int) -> tuple[Ranked, Ranked]:
    """The running k highest and k lowest after one more batch: both ranked from one pool (the two
    sets so far and the batch), so the pool is concatenated once per batch."""
    pool = batch if highest is None or lowest is None else Ranked.cat([highest, lowest, batch])
    return top_k(pool, k), top_k(pool, k, largest=False)


def pad(ranked: Ranked, k: int, input_shape: tuple[int, ...]) -> Ranked:
    """Exactly k entries (padding has index -1), so every DDP rank gathers tensors of one shape."""
    missing = k - len(ranked)
    if missing <= 0:
        return ranked
    device = ranked.score.device
    filler = Ranked(
        score=torch.zeros(missing, device=device, dtype=ranked.score.dtype),
        index=torch.full((missing,), -1, device=device, dtype=torch.long),
        label=torch.zeros(missing, device=device, dtype=torch.long),
        pred=torch.zeros(missing, device=device, dtype=torch.long),
        confidence=torch.zeros(missing, device=device, dtype=ranked.confidence.dtype),
        entropy=torch.zeros(missing, device=device, dtype=ranked.entropy.dtype),
        image=torch.zeros(missing, *input_shape, device=device, dtype=ranked.image.dtype),
    )
    return Ranked.cat([ranked, filler])


@dataclass
class TopKDrawing:
    """What one epoch keeps for drawing: the global k highest and k lowest, still as tensors (turning
    them into pictures, captions and table rows waits until the epoch is drawn) and the class names."""

    sets: list[tuple[str, Ranked]]
    names: list[str]


class TopKExamples(EpochCallback):
    """Shows the k samples with the highest loss and the k with the lowest, captioned: set k."""

    def __init__(
        self,
        k: int = 8,
        stages: tuple[str, ...] = ("val", "test"),
        every_n_epochs: int = 0,
    ) -> None:
        """
        Args:
            k: how many samples to show in each set (0 shows none).
            stages: "val", "test" or both.
            every_n_epochs: see `EpochCallback`.
        """
        super().__init__(stages, every_n_epochs)
        if k < 0:
            raise UserError(f"k must be >= 0, got {k}")
        self.k = k
        self.highest: Ranked | None = None
        self.lowest: Ranked | None = None
        self.said_no_pictures = False  # the info line about vector inputs, once per run

    def reset(self, pl_module: pl.LightningModule) -> None:
        self.highest = self.lowest = None

    def update(self, example: Example, prediction: Prediction, pl_module: pl.LightningModule) -> None:
        self.highest, self.lowest = merge(
            self.highest, self.lowest, Ranked.from_batch(example, prediction), self.k
        )

    def _global(self, local: Ranked | None, pl_module: pl.LightningModule, largest: bool) -> Ranked | None:
        if local is None:
            return None
        if pl_module.trainer.world_size > 1:
            local = pad(local, self.k, tuple(local.image.shape[1:]))
            # Every field becomes (world_size, k, ...). all_gather walks dataclasses (apply_to_collection);
            # its annotation lists only plain collections.
            gathered = pl_module.all_gather(local)  # type: ignore[arg-type]
            assert isinstance(gathered, Ranked)
            local = Ranked(
                **{f.name: getattr(gathered, f.name).flatten(0, 1) for f in dataclasses.fields(Ranked)}
            )
        return top_k(local, self.k, largest)

    def emit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, out: VisualLog) -> TopKDrawing | None:
        if self.k == 0:
            return None
        sets = [
            (name, self._global(local, pl_module, largest))  # collective: every rank takes part
            for name, local, largest in (("top_k", self.highest, True), ("bottom_k", self.lowest, False))
        ]
        if not out.enabled:
            return None
        return TopKDrawing([(name, r) for name, r in sets if r is not None], class_names(trainer, pl_module))

    def draw(self, drawing: TopKDrawing, out: VisualLog) -> None:
        names, rows, shown_as = drawing.names, [], "image"
        for name, padded in drawing.sets:
            ranked = padded.real()
            fields = list(zip(
                ranked.label.tolist(), ranked.pred.tolist(), ranked.confidence.tolist(),
                ranked.entropy.tolist(), ranked.score.tolist(), ranked.index.tolist(), strict=True,
            ))  # fmt: skip
            shown: list[Any]
            if are_images(ranked.image):
                shown = display_images(ranked.image, out.trainer)
                captions = [
                    caption(names[label], names[pred], conf, loss) for label, pred, conf, _, loss, _ in fields
                ]
                out.images(name, shown, captions)
                out.picture(name, image_grid(shown, captions))
            else:
                shown, shown_as = display_features(ranked.image, out.trainer), "features"
                self._say_no_pictures(tuple(ranked.image.shape[1:]))
            for sample, (label, pred, confidence, entropy, loss, index) in zip(shown, fields, strict=True):
                rows.append([name, sample, names[label], names[pred], confidence, entropy, loss, index])
        columns = ["set", shown_as, "true", "pred", "confidence", "entropy", "loss", "index"]
        out.table("top_k_table", columns, rows, image_columns=frozenset({"image"}))

    def _say_no_pictures(self, input_shape: tuple[int, ...]) -> None:
        if not self.said_no_pictures:
            self.said_no_pictures = True
            rank_zero_info(
                f"TopKExamples: inputs of shape {input_shape} are not images, so no top_k/bottom_k pictures;"
                " the samples and their feature values are in top_k_table (JSON beside the plots, W&B)"
            )


def image_grid(images: list[np.ndarray], captions: list[str], columns: int = 4) -> np.ndarray:
    """Tiles with their caption lines underneath, composed with PIL: milliseconds, not a figure."""
    from PIL import Image, ImageDraw

    tiles = [Image.fromarray(image).convert("RGB") for image in images]
    size = max(max(t.size) for t in tiles)
    lines = [text.split(" · ") for text in captions]
    line_height, text_width = 12, 6 * max(len(line) for caption_lines in lines for line in caption_lines)
    cell_w, cell_h = max(size, text_width) + 8, size + line_height * max(map(len, lines)) + 8
    rows = -(-len(tiles) // columns)
    grid = Image.new("RGB", (cell_w * min(columns, len(tiles)), cell_h * rows), "white")
    draw = ImageDraw.Draw(grid)
    for i, (tile, caption_lines) in enumerate(zip(tiles, lines, strict=True)):
        x, y = (i % columns) * cell_w + 4, (i // columns) * cell_h + 4
        grid.paste(tile, (x + (cell_w - 8 - tile.width) // 2, y))
        for j, line in enumerate(caption_lines):
            draw.text((x, y + size + 2 + j * line_height), line, fill="black")
    return np.asarray(grid)
