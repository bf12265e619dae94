"""`RNGState`: checkpoints carry the random number generators, so a resumed run equals one that
never stopped.

Shuffling, augmentation and dropout draw from the global torch, NumPy and Python generators.
Lightning's checkpoints do not store them, so a run resumed from epoch k would shuffle epoch k+1
differently from the run that went on. This callback saves all three in every checkpoint and puts
them back on resume. The values are stored as plain tensors and numbers, so torch's safe
`weights_only` loader still reads the checkpoint.
"""

from __future__ import annotations

import random
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch


class RNGState(pl.Callback):
    """Saves the random generators in every checkpoint, so a resumed run equals one that never stopped."""

    def state_dict(self) -> dict[str, Any]:
        # legacy=True: the tuple ("MT19937", keys, pos, has_gauss, cached_gaussian)
        state = cast(tuple[Any, ...], np.random.get_state(legacy=True))
        numpy_state = {
            "kind": str(state[0]),
            "keys": torch.from_numpy(np.asarray(state[1]).astype(np.int64)),
            "pos": int(state[2]),
            "has_gauss": int(state[3]),
            "cached_gaussian": float(state[4]),
        }
        version, python_state, gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "numpy": numpy_state,
            # 625 ints as one tensor, pickled as one object rather than 625: a quarter of a checkpoint's.
            "python": {"version": version, "state": torch.tensor(python_state), "gauss": gauss},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        n = state_dict["numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
        p = state_dict["python"]
        values = p["state"].tolist() if isinstance(p["state"], torch.Tensor) else p["state"]  # older: a list
        random.setstate((p["version"], tuple(values), p["gauss"]))
