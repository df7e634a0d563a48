"""Fine-tuning's run folder is pre-training's RunSession: a failed start leaves nothing behind, and a resume that
changes the configuration says so, logs it, and keeps the original as config.orig.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config
from imae.engine.train import pretrain

SETS = ["data.train_per_class=6", "data.eval_per_class=2", "data.num_workers=0", "finetune.batch_size=20",
        "finetune.log_every=1", "finetune.warmup_epochs=0", "finetune.mixup=0", "finetune.cutmix=0"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A seconds-long digits MAE: fine-tuning takes its data set from the run's configuration."""
    return pretrain(tiny_config(tmp_path_factory.mktemp("mae") / "run", **{"train.epochs": 1}))


def _finetune(source: Path, out: Path, epochs: int, resume: str | None = None) -> Path:
    from imae.finetune import finetune

    return finetune(source, overrides={"device": "cpu", "output_dir": str(out), "finetune.epochs": epochs},
                    sets=SETS, resume=resume)


def _events(run: Path, name: str) -> list[dict]:
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return [e for e in lines if e.get("event") == name]


def test_a_fine_tune_that_fails_to_start_leaves_no_folder_and_a_failed_resume_leaves_it_as_it_was(
        source, tmp_path, monkeypatch):
    import imae.finetune.run as ft

    def broken(*args, **kwargs):
        raise RuntimeError("the classifier cannot be built")

    out = tmp_path / "deep" / "ft"
    with monkeypatch.context() as m:
        m.setattr(ft, "vit_from_encoder", broken)
        with pytest.raises(RuntimeError, match="cannot be built"):
            _finetune(source, out, epochs=1)
    assert not (tmp_path / "deep").exists()  # the folders the start made are gone too

    run = _finetune(source, out, epochs=1)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with monkeypatch.context() as m:
        m.setattr(ft, "vit_from_encoder", broken)
        with pytest.raises(RuntimeError, match="cannot be built"):
            _finetune(source, out, epochs=2, resume=str(run))
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after.keys() == before.keys() and after["config.yaml"] == before["config.yaml"]
    assert not (run / "config.orig.yaml").exists()


def test_a_resumed_fine_tune_logs_its_configuration_changes_and_keeps_the_original(source, tmp_path, capsys):
    run = _finetune(source, tmp_path / "ft", epochs=1)
    assert not (run / "config.orig.yaml").exists()
    capsys.readouterr()
    _finetune(source, run, epochs=2, resume="auto")
    err = capsys.readouterr().err
    assert "resume: finetune.epochs changed: 1 -> 2" in err
    (event,) = _events(run, "resume")
    assert event["changes"] == {"finetune.epochs": [1, 2]} and event["from"] == "checkpoint-last.pth"
    assert event["epochs_done"] == 1
    assert yaml.safe_load((run / "config.orig.yaml").read_text())["finetune"]["epochs"] == 1
    assert yaml.safe_load((run / "config.yaml").read_text())["finetune"]["epochs"] == 2
    assert json.loads((run / "finetune.json").read_text())["results"]["epoch"] == 2
