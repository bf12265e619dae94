"""`python -m project export`: a checkpoint's model as an ONNX file or a torch.export program, with a
JSON spec beside it.

    python -m project export --ckpt_path runs/<run>/checkpoints/best-epoch010.ckpt --format onnx
    python -m project export --ckpt_path ... --format exported     # .pt2, for torch.export.load

The exported model maps a batch of inputs (N, *in_shape), N free (a dynamic dimension), to the logits
(N, num_classes): the model's forward on an `Example` holding only the inputs, in eval mode. It takes
the inputs normalized as the run's DataModule yields them; the spec records that normalization rather
than folding it in, so the exported graph is the trained model as it is, and what parity is checked
against. Files: `<ckpt stem>.onnx` or `.pt2` beside the checkpoint (or --output), and `<that>.json`:
the format, input and output names, shapes and dtypes, class names and normalization (from the run's
config.yaml), the model class and the checkpoint's path and sha256. Both are written whole or not at
all; an existing one is replaced only with --overwrite.

TorchScript (`--format torchscript`) is refused: torch.jit.script/trace warn that they are
deprecated (torch 2.14) and Lightning deprecates `to_torchscript`; torch.export is its successor.
The checkpoint is read with torch's safe loader and its hyper-parameters checked (checkpoint_io.py)
before the model class it names is imported; `--weights_only false` skips both, for a trusted file.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import io
import json
import logging
import pickle
import re
import sysconfig
import traceback
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import yaml

from project.errors import CommandParser, UserError, exit_on_user_error
from project.files import atomic_write
from project.terms import DOTTED, PACKAGE, inside

# torch, Lightning and the model are imported only once the arguments pass (seconds): a refusal is instant.
if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

SUFFIXES = {"onnx": ".onnx", "exported": ".pt2"}
INPUT, OUTPUT, BATCH = "image", "logits", "batch"
# The batch size traced: not 0 or 1, which torch.export would specialize the batch dimension to.
TRACE_BATCH = 2


def main(args: list[str]) -> None:
    written = exit_on_user_error(lambda: export_command(args))
    print(f"wrote {written} and {spec_path(written)}")


def parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog=f"python -m {PACKAGE} export",
        allow_abbrev=False,
        description="Export a checkpoint's model (dynamic batch dimension) with a JSON spec beside it.",
    )
    p.add_argument("--ckpt_path", required=True, help="a checkpoint: runs/<run>/checkpoints/*.ckpt")
    p.add_argument("--format", required=True, choices=["onnx", "exported", "torchscript"],
                   help="onnx (ONNX Runtime and others) or exported (torch.export, .pt2); torchscript is "
                   "deprecated and refused")  # fmt: skip
    p.add_argument("--output", type=Path, help="the model file (default: beside the checkpoint)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")
    p.add_argument("--weights_only", type=_boolean, default=True,
                   help="read the checkpoint with torch's safe loader (default true); false only for a "
                   "checkpoint you trust")  # fmt: skip
    return p


def _boolean(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return value.lower() == "true"


def spec_path(model_file: Path) -> Path:
    return model_file.with_name(model_file.name + ".json")


def export_command(args: list[str]) -> Path:
    """Run `python -m project export ARGS`; the model file written."""
    options = parser().parse_args(args)
    if options.format == "torchscript":
        raise UserError(
            "--format torchscript: TorchScript is deprecated (torch.jit warns so in torch 2.14, and "
            "Lightning deprecates to_torchscript); use --format exported (torch.export, a .pt2 file) or "
            "--format onnx"
        )
    ckpt = Path(options.ckpt_path)
    suffix = SUFFIXES[options.format]
    output = options.output or ckpt.with_suffix(suffix)
    if output.suffix != suffix:
        raise UserError(f"--output {output}: a --format {options.format} file ends in {suffix}")
    for path in (output, spec_path(output)):
        if path.exists() and not options.overwrite:
            raise UserError(f"{path} exists: pass --overwrite to replace it, or --output another file")
    missing = [name for name in ("onnx", "onnxscript") if find_spec(name) is None]
    if options.format == "onnx" and missing:
        raise UserError(f"--format onnx needs {' and '.join(missing)}: pip install -r requirements.txt")
    import torch

    model, model_class = load_model(ckpt, options.weights_only)
    example = torch.zeros(TRACE_BATCH, *model.in_shape)
    program = trace(logits_module(model), example, type(model).__qualname__)
    class_names, normalization = data_spec(ckpt)
    spec: dict[str, Any] = {"format": options.format, "file": output.name, **io_spec(program)}
    if options.format == "onnx":
        proto = to_onnx(program, example, type(model).__qualname__)
        spec["opset"] = next(o.version for o in proto.opset_import if o.domain == "")

    def write(f: IO[bytes]) -> None:
        if options.format == "onnx":
            f.write(proto.SerializeToString())
        else:
            torch.export.save(program, f)

    spec.update(
        class_names=class_names,
        normalization=normalization,
        model_class=model_class,
        checkpoint={"path": str(ckpt), "sha256": sha256(ckpt)},
        torch=torch.__version__,
    )
    try:
        with atomic_write(output, "wb") as f:
            write(f)
        try:
            with atomic_write(spec_path(output), "w") as f:
                f.write(spec_text(spec))
        except BaseException:
            output.unlink()  # no model file without its spec
            raise
    except OSError as e:
        raise UserError(
            f"could not write {output}: {e.strerror or e}; fix the folder or pass --output"
        ) from None
    return output


def to_onnx(program: torch.export.ExportedProgram, example: Tensor, name: str) -> Any:
    """The ONNX model (a protobuf) of an exported program, by torch's dynamo-based exporter."""
    import torch

    try:
        with quiet():
            onnx_program = torch.onnx.export(
                program,
                (example,),
                dynamo=True,
                dynamic_shapes=dynamic_shapes(),  # again: names the ONNX dimension "batch"
                input_names=[INPUT],
                output_names=[OUTPUT],
                verbose=False,
            )
    except Exception as e:  # an operation with no ONNX translation
        raise UserError(
            f"the ONNX exporter cannot convert {name}: {summary(e)}; use --format exported instead"
        ) from None
    assert onnx_program is not None
    return onnx_program.model_proto


def logits_module(model: Any) -> nn.Module:
    """`model` as a plain function of a tensor, in eval mode: inputs (N, *in_shape) -> logits (N, K)."""
    from torch import nn

    class Logits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, image: Tensor) -> Tensor:
            logits: Tensor = self.model(self.model.example_type(image=image)).logits
            return logits

    return Logits().eval()


def load_model(ckpt: Path, weights_only: bool) -> tuple[Any, str]:
    """The model the checkpoint holds, on the CPU, and the class path its hyper-parameters name."""
    from project.checkpoint_io import check_checkpoint, check_ckpt_path

    check_checkpoint(ckpt)
    class_path = saved_class_path(ckpt, weights_only=True)  # None when the safe loader refuses the file
    if class_path and DOTTED.fullmatch(class_path) and inside(class_path, (PACKAGE,)):
        try:
            module, _, name = class_path.rpartition(".")
            getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise UserError(
                f"checkpoint {ckpt} holds a {class_path}, which cannot be imported ({e}): it was renamed or "
                f"removed since the run; restore it under that name (or install the version of {PACKAGE} "
                "that has it) and export again"
            ) from None
    # The safe loader and the hyper-parameter check, before the model class is imported.
    check_ckpt_path(str(ckpt), weights_only=weights_only, model_class=None)
    if not weights_only:  # the user trusts the file: read it whole
        class_path = saved_class_path(ckpt, weights_only=False)
    if class_path is None:
        raise UserError(
            f"checkpoint {ckpt} does not name its model class (hyper_parameters._class_path, written by "
            f"LightningCLI): export a checkpoint of `python -m {PACKAGE} fit`"
        )
    module, _, name = class_path.rpartition(".")
    model_class = getattr(importlib.import_module(module), name)
    model = model_class.load_from_checkpoint(ckpt, map_location="cpu", weights_only=weights_only)
    return model.eval(), class_path


def saved_class_path(ckpt: Path, weights_only: bool) -> str | None:
    import torch

    try:
        saved = torch.load(ckpt, map_location="cpu", weights_only=weights_only, mmap=True)
    except pickle.UnpicklingError:
        return None
    except RuntimeError as e:  # a zip file, but not one torch.save wrote
        raise UserError(f"checkpoint {ckpt} is not a checkpoint ({str(e).splitlines()[0]})") from None
    hparams = saved.get("hyper_parameters") if isinstance(saved, dict) else None
    class_path = hparams.get("_class_path") if isinstance(hparams, dict) else None
    return class_path if isinstance(class_path, str) else None


def data_spec(ckpt: Path) -> tuple[list[str] | None, dict[str, Any] | None]:
    """Class names and input normalization of the run's DataModule (from runs/<run>/config.yaml, the
    run directory of `ckpt`); None for what cannot be known, with a note saying why."""
    from pytorch_lightning import LightningDataModule

    from project.checkpoint_io import check_class
    from project.data import ClassificationDataModule

    run_dir = ckpt.resolve().parent.parent
    config_file = run_dir / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else None
    data = config.get("data") if isinstance(config, dict) else None
    data = data if isinstance(data, dict) else {}
    class_path = data.get("class_path")
    # A file the user did not pass: a class it names is imported only from inside this package.
    if not (isinstance(class_path, str) and DOTTED.fullmatch(class_path) and inside(class_path, (PACKAGE,))):
        print(
            f"note: no DataModule of {PACKAGE} in {config_file}: the spec's class_names and "
            "normalization are null"
        )
        return None, None
    check_class(class_path, (PACKAGE,), LightningDataModule, f"{config_file}: data class")
    module, _, name = class_path.rpartition(".")
    data_class = getattr(importlib.import_module(module), name)
    names = getattr(data_class, "class_names", None)
    statistics: Any = data_class
    if not hasattr(data_class, "mean") and issubclass(data_class, ClassificationDataModule):
        # Computed from the run's training split at setup: the same split again (its split.json).
        split = run_dir / "split.json"
        init_args = {**(data.get("init_args") or {}), "split_file": str(split) if split.is_file() else None}
        try:
            statistics = data_class(**init_args)
            statistics.setup("fit")
        except (OSError, UserError) as e:
            print(f"note: the spec's normalization is null: {class_path} cannot compute it here ({e})")
    normalization = None
    if hasattr(statistics, "mean"):
        normalization = {
            "mean": list(statistics.mean),
            "std": list(statistics.std),
            "applies": "the model's input is (x - mean) / std, as the DataModule yields it, per channel "
            "of an image (pixels scaled to 0..1) or per feature: normalize before calling it",
        }
    return (list(names) if names is not None else None), normalization


def trace(module: nn.Module, example: Tensor, name: str) -> torch.export.ExportedProgram:
    """torch.export of `module` with a dynamic batch dimension, or a UserError naming what fails."""
    import torch

    try:
        with quiet():
            return torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes())
    except UserError:
        raise
    except Exception as e:
        raise UserError(
            f"torch.export cannot trace {name}.forward: {summary(e)}. forward must not branch on tensor "
            "values or turn them into Python numbers (.item(), .tolist(), if on a tensor): use tensor "
            "operations (torch.where, torch.cond) instead, then export again"
        ) from None


def dynamic_shapes() -> dict[str, Any]:
    import torch

    return {INPUT: {0: torch.export.Dim(BATCH, min=1)}}


def summary(error: BaseException) -> str:
    """One line of a (long, multi-line) export error: its first line, its first detail, and the line
    of the model's code it was raised from."""
    import torch

    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    # What a reader can act on, without torch's internals (symbol hints, where to read more).
    first = re.sub(r"\s*\(unhinted:.*|\s*For more information.*", "", first)
    detail = next((line[2:].partition(". ")[0] for line in lines[1:] if line.startswith("- ")), None)
    internal = (str(Path(torch.__file__).parent), sysconfig.get_paths()["stdlib"], __file__)
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith(internal)]
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno} `{frames[-1].line}`" if frames else ""
    return f"{first}{' ' + detail if detail else ''}{where}"


def io_spec(program: torch.export.ExportedProgram) -> dict[str, Any]:
    """Input and output name, shape and dtype, read from the exported program; the dynamic dimension
    named "batch"."""
    import torch

    def described(name: str, value: Tensor) -> dict[str, Any]:
        shape = [BATCH if isinstance(d, torch.SymInt) else int(d) for d in value.shape]
        return {"name": name, "shape": shape, "dtype": str(value.dtype).removeprefix("torch.")}

    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    (output,) = program.graph.output_node().args[0]
    return {
        "input": described(INPUT, placeholders[INPUT].meta["val"]),
        "output": described(OUTPUT, output.meta["val"]),
    }


def spec_text(spec: dict[str, Any]) -> str:
    """JSON, indented, with each list of plain values on one line (a newline inside a list can only
    be between its items: JSON strings hold none)."""
    text = json.dumps(spec, indent=2)
    flat = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r",\n\s*", ", ", m[1]) + "]", text)
    return flat + "\n"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No torch logging or stderr output: a failed export prints its partial graph and pages of
    advice, and the error becomes one line of ours instead."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(previous)
