"""`FastCifarNet`: a small, fast CIFAR-10 network in the spirit of airbench94 (~94 % in seconds on a GPU).

    model = FastCifarNet(num_classes=10, in_shape=(3, 32, 32))              # ~1.97 M parameters
    model = FastCifarNet(10, (3, 32, 32), channels_last=True, tta_flip=True, compile=True)
    python -m project fit --config configs/cifar10_fast.yaml

The layers, for 32x32 inputs (sizes adapt to `in_shape`)::

    stem    2x2 conv, no padding, 8*C = 24 channels, GELU           32 -> 31
    block1  conv3x3 -> maxpool -> BN -> GELU -> conv3x3 -> BN -> GELU   24 -> 64,   31 -> 15
    block2  the same                                                   64 -> 256,  15 -> 7
    block3  the same                                                  256 -> 256,   7 -> 3
    head    global max-pool -> linear (no bias) -> x logit_scale (1/9)

Written from the published ideas of Keller Jordan's airbench (and David Page's earlier DAWNBench
ResNet), not from their code:

- **Whitening stem** (`whiten=True`): the 2x2 stem is set, from the first training batch, to the
  PCA whitening of 2x2 patches: each eigenvector of the patch covariance scaled by
  1/sqrt(eigenvalue + eps), and its negative (so GELU passes both signs), hence 2 x 4 x C channels.
  Its weight then stays frozen; its bias trains. It decorrelates the input, so the first layers
  need not learn that. `init_whitening(images)` does the same by hand outside Lightning.
- **Pooling right after the first conv of a block**, before BN and activation: 4x less work there.
- **Scaled logits** (`logit_scale`): a small output scale keeps early softmax outputs soft, which
  suits a high learning rate.
- **Flip test-time augmentation** (`tta_flip`): evaluation averages the logits of each image and
  its mirror image, in one forward pass of the doubled batch. Never during training.
- **channels_last** and **torch.compile** (`compile`): GPU speed only; same numbers up to rounding.

Label smoothing is `BaseModel`'s `label_smoothing`; bf16, device-resident data and GPU augmentation
come from the config (`trainer.precision`, `data.init_args.device_loader`). Not reproduced here:
airbench's lookahead/EMA of weights, frozen BatchNorm scales, a separate learning rate for biases,
identity-initialized convolutions and multi-crop TTA, which together buy its last fractions of a
percent and of a second.
"""

from __future__ import annotations

import os
import shutil
from collections import OrderedDict
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from project.errors import UserError
from project.model.base import BaseModel
from project.structs import Example, Prediction


class Scale(nn.Module):
    """Multiplies by a constant: the logit scale of the head."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def conv_block(in_channels: int, out_channels: int, convs: int, pool: bool) -> nn.Sequential:
    """`convs` 3x3 conv-BN-GELU layers, with a 2x2 max-pool right after the first conv when `pool`."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(out_channels), nn.GELU()]
    for _ in range(convs - 1):
        conv = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        layers += [conv, nn.BatchNorm2d(out_channels), nn.GELU()]
    return nn.Sequential(*layers)


def compile_unavailable_reason(device: torch.device) -> str | None:
    """Why torch.compile cannot work for `device` here, or None when it can.

    Checked up front because torch.compile fails only at the first forward pass, deep in a run."""
    import torch._dynamo  # imported here: torch does not import it eagerly

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python version or platform"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "Triton, which compiling for CUDA needs, is not installed"
    if device.type == "cpu" and not (
        os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++") or shutil.which("c++")
    ):
        return "no C++ compiler (g++ or clang++), which compiling for the CPU needs, is on PATH"
    return None


class FastCifarNet(BaseModel[Example, Prediction]):
    """A fast CIFAR-10 classifier (~94 % in seconds on a GPU): set widths, whiten, tta_flip, compile.

    airbench-style: a whitening stem, three conv blocks and a scaled linear head (module docstring)."""

    whitened: Tensor
    """A bool buffer: whether `init_whitening` has set the stem (saved in checkpoints)."""

    def __init__(
        self,
        num_classes: int,
        in_shape: tuple[int, int, int],
        widths: tuple[int, int, int] = (64, 256, 256),
        convs_per_block: int = 2,
        logit_scale: float = 1 / 9,
        whiten: bool = True,
        whiten_eps: float = 5e-4,
        channels_last: bool = False,
        tta_flip: bool = False,
        compile: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            num_classes: number of classes (linked from the DataModule).
            in_shape: input (channels, height, width) (linked from the DataModule), at least 2x2.
            widths: output channels of the three conv blocks.
            convs_per_block: 3x3 conv-BN-GELU layers in each block.
            logit_scale: factor on the head's outputs (airbench: 1/9).
            whiten: set the 2x2 stem to the PCA whitening of the first training batch's 2x2 patches
                and freeze its weight; False: a plain learnable 2x2 conv.
            whiten_eps: added to the eigenvalues before the 1/sqrt scaling, so near-constant patch
                directions are not amplified without bound.
            channels_last: run the convolutions in channels_last (NHWC) memory format, which GPU
                tensor cores prefer; the input is converted if it is not already.
            tta_flip: in evaluation (validation, test, predict: any eval-mode forward), average the
                logits of each image and of its horizontal mirror image. Training never flips here.
            compile: torch.compile the network when the Trainer builds the model
                (`configure_model`); skipped with a warning where it cannot work. The first steps
                are then slow while it compiles.
            **kwargs: optimizer settings and `label_smoothing`, see `BaseModel`.
        """
        super().__init__(num_classes, in_shape, **kwargs)
        if len(widths) != 3 or min(widths) < 1:
            raise UserError(f"widths must be three positive channel counts, got {list(widths)}")
        if convs_per_block < 1:
            raise UserError(f"convs_per_block must be at least 1, got {convs_per_block}")
        channels, height, width = self.in_shape
        if min(height, width) < 2:
            raise UserError(f"FastCifarNet needs images of at least 2x2 pixels, got {height}x{width}")
        # One channel per direction of the C*2*2-dimensional patch space, and its negative.
        stem_channels = 2 * channels * 2 * 2
        stem = nn.Conv2d(channels, stem_channels, kernel_size=2)
        if whiten:
            stem.weight.requires_grad_(False)  # set by `init_whitening`, then kept: only the bias trains
        layers: OrderedDict[str, nn.Module] = OrderedDict(stem=stem, stem_act=nn.GELU())
        size, in_channels = min(height, width) - 1, stem_channels
        for i, out_channels in enumerate(widths, start=1):
            pool = size >= 2  # tiny inputs stop pooling at 1x1 instead of failing
            layers[f"block{i}"] = conv_block(in_channels, out_channels, convs_per_block, pool)
            size, in_channels = (size // 2 if pool else size), out_channels
        layers["pool"] = nn.AdaptiveMaxPool2d(1)
        layers["flatten"] = nn.Flatten()
        layers["head"] = nn.Linear(in_channels, num_classes, bias=False)
        layers["scale"] = Scale(logit_scale)
        self.net = nn.Sequential(layers)
        # Saved in checkpoints: a resumed run, or one loaded for testing, does not whiten again.
        self.register_buffer("whitened", torch.tensor(False))
        self.channels_last = channels_last
        self.tta_flip = tta_flip
        self.whiten = whiten
        self.whiten_eps = whiten_eps
        self.compile_net = compile
        if channels_last:  # the conv weights here; inputs are converted in forward
            self.net.to(memory_format=torch.channels_last)
        self._whiten_pending = False
        self._compile_done = False

    @property
    def stem(self) -> nn.Conv2d:
        stem = self.net.get_submodule("stem")
        assert isinstance(stem, nn.Conv2d)
        return stem

    def forward(self, example: Example) -> Prediction:
        x = example.image
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.tta_flip and not self.training:
            # One pass over the doubled batch: in eval mode BatchNorm treats each sample on its own.
            logits = self.net(torch.cat([x, x.flip(-1)]))
            original, mirrored = logits.chunk(2)
            return Prediction(logits=(original + mirrored) / 2)
        return Prediction(logits=self.net(x))

    # ---- the whitening stem ------------------------------------------------------------------

    @torch.no_grad()
    def init_whitening(self, images: Tensor) -> None:
        """Set the stem to whiten the 2x2 patches of `images` (B, C, H, W), as the model sees them.

        Afterwards the first 4*C stem channels have zero mean and (near) identity covariance on
        these patches (each direction's variance is eigenvalue / (eigenvalue + whiten_eps)); the
        other 4*C channels are their negatives."""
        channels = self.in_shape[0]
        patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1)  # (B, C, H-1, W-1, 2, 2)
        # One row per patch, laid out as the conv weight is (channel, row, column).
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, channels * 4)
        mean = patches.mean(dim=0)
        centered = patches - mean
        covariance = (centered.T @ centered / len(patches)).double()
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        scale = (eigenvalues.clamp_min(0) + self.whiten_eps).rsqrt()
        filters = (eigenvectors * scale).T.float()  # row k: eigenvector k / sqrt(eigenvalue k + eps)
        weight = torch.cat([filters, -filters])
        stem = self.stem
        stem.weight.copy_(weight.reshape(stem.weight.shape))
        if stem.bias is not None:
            stem.bias.copy_(-(weight @ mean))  # zero-mean outputs; the bias trains from here
        self.whitened.fill_(True)

    def on_train_start(self) -> None:
        super().on_train_start()
        # Read once (a device sync), not at every step; a restored checkpoint has it set already.
        self._whiten_pending = self.whiten and not bool(self.whitened)

    def on_train_batch_start(self, batch: Example, batch_idx: int) -> None:
        if not self._whiten_pending:
            return
        self._whiten_pending = False
        self.init_whitening(batch.image)
        if self.trainer.world_size > 1:
            # Each DDP rank saw another first batch, and DDP does not sync frozen weights: all take rank 0's.
            stem = self.stem
            weight, bias = self.trainer.strategy.broadcast((stem.weight.data, stem.bias), src=0)
            with torch.no_grad():
                stem.weight.copy_(weight)
                if stem.bias is not None and bias is not None:
                    stem.bias.copy_(bias)

    # ---- torch.compile ------------------------------------------------------------------------

    def configure_model(self) -> None:
        # Lightning calls this before each fit/validate/test; compile once. nn.Module.compile works in
        # place, so the state_dict keys (and checkpoints) stay those of the uncompiled network.
        if not self.compile_net or self._compile_done:
            return
        self._compile_done = True
        try:
            device = self.trainer.strategy.root_device
        except RuntimeError:  # not attached to a Trainer
            device = self.device
        reason = compile_unavailable_reason(device)
        if reason is not None:
            rank_zero_warn(f"FastCifarNet: compile is on but skipped: {reason}")
            return
        self.net.compile()
