"""The digits demo's recipe as a raw PyTorch loop, run until a validation accuracy: demo.py's baseline.

    venv/bin/python benchmarks/raw_loop.py runs/<demo run>/split.json 0.9965

What a researcher would write without the template: no Lightning (only torch and scikit-learn are
imported), the data as tensors in memory, no logging, checkpoints or plots. Everything else is the
demo's (configs/digits.yaml): the same held-out test split and the demo run's own train/val indices
(its split.json), the same normalization, net (ConvNet with channels 32, 64 and hidden 128, written out
below), AdamW with one-cycle over 30 epochs, batch 64. Validates after every epoch and stops at the
first accuracy >= the target; prints one JSON line: {"val_acc": ..., "epochs": ...}.
"""

import json
import sys
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.nn import functional as F

TEST_SPLIT_SEED, MEAN, STD = 20_240_917, 0.3053, 0.3760  # project/data/bundled.py, digits.py
EPOCHS, BATCH, LR, WEIGHT_DECAY = 30, 64, 0.005, 1e-4


def data(split_file: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normalized images, labels, and the train and val positions of the demo run's split."""
    digits = load_digits()
    images = (torch.as_tensor(digits.images, dtype=torch.float32).div(16).unsqueeze(1) - MEAN) / STD
    labels = torch.as_tensor(digits.target)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(TEST_SPLIT_SEED))
    pool = order[round(0.2 * len(images)) :].sort().values  # what is left after the test split
    split = json.loads(Path(split_file).read_text())
    return images, labels, pool[split["train"]], pool[split["val"]]


def net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Dropout(0.25), nn.Linear(64 * 2 * 2, 128), nn.ReLU(), nn.Dropout(0.25), nn.Linear(128, 10),
    )  # fmt: skip


def main(split_file: str, target: float) -> dict[str, float]:
    torch.manual_seed(0)
    images, labels, train, val = data(split_file)
    model = net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = EPOCHS * -(-len(train) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=steps)
    accuracy, epoch = 0.0, 0
    while epoch < EPOCHS and accuracy < target:
        epoch += 1
        model.train()
        for batch in train[torch.randperm(len(train))].split(BATCH):
            F.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
            optimizer.zero_grad()
            schedule.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(images[val]).argmax(1) == labels[val]).float().mean().item()
    return {"val_acc": accuracy, "epochs": epoch}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], float(sys.argv[2]))))
