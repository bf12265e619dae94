"""`VisualLog`: where one epoch's pictures go.

Every figure is saved as a PNG in the run directory, `plots/<stage>/<weights>/<name>.png`, so it can
be looked at without any logger. `<weights>` names the weights looked at: `epoch_<n>` during fit (and
for a model tested as it is in memory), the checkpoint's name when validate or test loaded one
(`plots/test/best-epoch012/` for `best-epoch012.ckpt`). It is also sent to each configured logger
that shows pictures: W&B (images with captions, tables) and TensorBoard (`add_image` of the rendered
figure). Tables are also saved as `<name>.json` beside the PNGs. On DDP ranks other than 0 every
method but `scalar` does nothing.

    out = VisualLog(trainer, pl_module, "val")
    out.figure("confusion_matrix", fig)                       # PNG + W&B image + TensorBoard image
    out.images("top_k", images, captions=["true: cat ..."])  # W&B captioned images
    out.table("top_k_table", columns, rows, image_columns={"image"})
    out.scalar("ece", 0.031)                                  # logged as val/ece like any metric
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.trainer.states import TrainerFn

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class VisualLog:
    def __init__(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.trainer = trainer
        self.pl_module = pl_module
        self.stage = stage
        self.step = trainer.global_step
        self.dir = Path(trainer.default_root_dir) / "plots" / stage / weights_name(trainer)
        self.enabled = trainer.is_global_zero
        self.prefix = f"{stage}/"

    def as_best(self) -> None:
        """Log under `<stage>/best/<name>`: the best epoch, drawn after later epochs were logged."""
        self.prefix = f"{self.stage}/best/"

    def key(self, name: str) -> str:
        return self.prefix + name

    def _loggers(self, kind: type) -> list[Any]:
        return [logger for logger in self.trainer.loggers if isinstance(logger, kind)]

    def figure(self, name: str, fig: Figure) -> Path | None:
        """Render a matplotlib figure once and send the pixels everywhere `picture` does."""
        if not self.enabled:
            return None
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        return self.picture(name, np.asarray(canvas.buffer_rgba())[..., :3])

    def picture(self, name: str, pixels: np.ndarray) -> Path | None:
        """An (H, W, 3) uint8 picture: PNG in the run directory, W&B image, TensorBoard image."""
        if not self.enabled:
            return None
        from PIL import Image

        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{name}.png"
        Image.fromarray(pixels).save(path, compress_level=1)  # fast; these PNGs are small anyway
        for wandb_logger in self._loggers(WandbLogger):
            wandb_logger.log_image(self.key(name), [str(path)], step=self.step)  # the file: no re-encode
        for tb_logger in self._loggers(TensorBoardLogger):
            tb_logger.experiment.add_image(self.key(name), pixels, global_step=self.step, dataformats="HWC")
        return path

    def images(self, name: str, images: list[np.ndarray], captions: list[str]) -> None:
        if self.enabled and images:
            for wandb_logger in self._loggers(WandbLogger):
                wandb_logger.log_image(self.key(name), images, step=self.step, caption=captions)

    def table(
        self,
        name: str,
        columns: list[str],
        rows: list[list[Any]],
        image_columns: frozenset[str] = frozenset(),
    ) -> None:
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        plain = [{c: v for c, v in zip(columns, row, strict=True) if c not in image_columns} for row in rows]
        (self.dir / f"{name}.json").write_text(json.dumps(plain, indent=1) + "\n")
        wandb_loggers = self._loggers(WandbLogger)
        if wandb_loggers:
            import wandb

            image_at = [i for i, c in enumerate(columns) if c in image_columns]
            data = [[wandb.Image(v) if i in image_at else v for i, v in enumerate(row)] for row in rows]
            for wandb_logger in wandb_loggers:
                wandb_logger.log_table(self.key(name), columns=columns, data=data, step=self.step)

    def json(self, name: str, data: Any) -> None:
        """Machine-readable numbers behind a figure, beside its PNG."""
        if self.enabled:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")

    def scalar(self, name: str, value: float) -> None:
        """Logged like any metric (loggers, progress bar, metrics.json). Call on every rank."""
        self.pl_module.log(self.key(name), float(value))


def weights_name(trainer: pl.Trainer) -> str:
    """The folder name of the weights an epoch looks at. Outside fit, trainer.ckpt_path is the
    checkpoint validate/test loaded (`best` resolved to its file); during fit it is only where a
    resume started, and the weights are those of the current epoch."""
    if trainer.state.fn != TrainerFn.FITTING and trainer.ckpt_path:
        return Path(trainer.ckpt_path).stem
    return f"epoch_{trainer.current_epoch}"


def new_figure(
    width: float = 5.0, height: float = 4.0, layout: Literal["constrained"] | None = "constrained"
) -> Figure:
    """A matplotlib figure outside pyplot: no global state, no GUI backend, freed when dropped.
    `layout=None` for a figure that places its axes itself."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout=layout)
