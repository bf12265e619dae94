"""`--log_model`: checkpoints uploaded as W&B artifacts, read back from the offline run with W&B's tool."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from project.cli import main
from tests.conftest import CONFIGS, DIGITS_NO_VISUALS, cli_args, only_run_dir

DIGITS = str(DIGITS_NO_VISUALS)  # configs/digits.yaml without the pictures: none is looked at here
LIMIT = str(CONFIGS / "debug" / "limit.yaml")


def logged_artifacts(run_dir: Path) -> list[dict[str, object]]:
    """The artifact records of the run's offline W&B log, as `wandb leet inspect --json` prints them."""
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(offline_run)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [r["artifact"] for r in records if r.get("type") == "artifact"]


def md5_base64(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


@pytest.mark.slow
def test_log_model_uploads_the_best_and_last_checkpoints(runs_dir: Path) -> None:
    main(
        cli_args(
            "fit", "--config", DIGITS, "--config", LIMIT, "--trainer.max_epochs", "1",
            "--test_after_fit", "false", "--log_model", "true", runs_dir=runs_dir,
        )
    )  # fmt: skip
    run_dir = only_run_dir(runs_dir)
    models = [a for a in logged_artifacts(run_dir) if a["type"] == "model"]
    by_file = {json.loads(str(a["metadata"]))["original_filename"]: a for a in models}
    (best,) = [name for name in by_file if name.startswith("best-epoch")]
    assert set(by_file) == {best, "last.ckpt"}
    assert "best" in by_file[best]["aliases"]  # type: ignore[operator]
    for name, artifact in by_file.items():
        (entry,) = artifact["manifest"]["contents"]  # type: ignore[index]
        # The staged copy `wandb sync` uploads is the checkpoint as written.
        assert entry["digest"] == md5_base64(run_dir / "checkpoints" / name)
        assert Path(entry["local_path"]).stat().st_size == (run_dir / "checkpoints" / name).stat().st_size


@pytest.mark.parametrize(
    ("more", "env", "why"),
    [
        (["--trainer.logger", "false"], {}, "trainer.logger has no WandbLogger"),
        ([], {"WANDB_MODE": "disabled"}, "WANDB_MODE=disabled"),
    ],
)
def test_log_model_without_wandb_is_one_line_and_writes_nothing(
    runs_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    more: list[str],
    env: dict[str, str],
    why: str,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args("fit", "--config", DIGITS, "--log_model", "all", *more, runs_dir=runs_dir))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: log_model=all uploads checkpoints to W&B, but " + why), err
    assert not runs_dir.exists() or not any(runs_dir.iterdir())
