"""Fault injection, issue 25 (words): what a run records and says when something goes wrong.

A partial fine-tune epoch's record, skipped non-finite steps, failed writes that are not checkpoints (or the
first checkpoint), fine-tuned classifiers where an MAE is needed, damaged Hugging Face folders and report
inputs, impossible same-class pairing, and a hand-edited config.yaml of a resumed run. Each test records what
it injected and what survived through the ``fault_case`` fixture (conftest.py).
"""

from __future__ import annotations

import errno
import json
import random
from pathlib import Path

import pytest
import torch

from conftest import tiny_cli_sets, tiny_config, tiny_mae
from imae import checkpoints as ckpt
from imae.engine.train import pretrain
from imae.errors import TrainingError
from test_cli import run_cli

pytestmark = pytest.mark.faults

FT_SETS = ["finetune.batch_size=16", "data.num_workers=0", "data.train_per_class=10", "data.eval_per_class=2",
           "finetune.log_every=1", "finetune.warmup_epochs=1"]


def one_line_error(code: int, err: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith("imae: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def records(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r.get("kind") == kind]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> tuple[Path, Path]:
    """(a one-epoch digits MAE, its fine-tune stopped by finetune.max_steps=8 in epoch 2 of 2 x 6 steps)."""
    from imae.finetune import finetune

    tmp = tmp_path_factory.mktemp("ft")
    src = pretrain(tiny_config(tmp / "src", **{"train.epochs": 1}))
    out = finetune(src, overrides={"output_dir": str(tmp / "ft"), "device": "cpu", "finetune.epochs": 2},
                   sets=FT_SETS + ["finetune.max_steps=8"])
    return src, out


# ----------------------------------------------------------------------------------------------
# what a run records


def test_a_partial_finetune_epoch_records_its_loss_and_time(finetuned, fault_case):
    fault_case(injected="finetune.max_steps=8 ending a fine-tune in the middle of epoch 2 (6 steps an epoch)",
               expected="the partial epoch's record has the mean loss of its steps and its time; timing.train_s "
                        "counts it")
    _, run = finetuned
    result = json.loads((run / "finetune.json").read_text())
    last = result["results"]["history"][-1]
    assert last["partial"] and last["epoch"] == 2 and last["steps"] == 2
    steps = [r["loss"] for r in records(run, "step") if r["epoch"] == 2]
    assert len(steps) == 2 and last["loss"] == pytest.approx(sum(steps) / 2, rel=1e-5)
    assert last["time_s"] > 0
    assert result["timing"]["train_s"] == pytest.approx(sum(h["time_s"] for h in result["results"]["history"]))
    fault_case(outcome=f"the partial record's loss {last['loss']:.4f} is the mean of its 2 step records; time_s "
                       f"{last['time_s']:.2f} s, counted in timing.train_s", lost="nothing")


def test_most_of_an_epoch_skipped_as_nonfinite_stops_and_the_epoch_line_counts_skips(tmp_path, monkeypatch, capsys,
                                                                                      fault_case):
    fault_case(injected="--skip-nonfinite 1000000 with the loss NaN at 1 step of epoch 1 and 5 of the 6 steps of "
                        "epoch 2",
               expected="the epoch line counts the skipped steps; the run stops (one line) when most of an epoch is "
                        "skipped, without saving that epoch")
    from imae.engine import objectives

    real = objectives.MAEObjective.__call__
    count = {"n": 0}

    def nan_steps(self, net, batch, mask_ratio=None):
        out = real(self, net, batch, mask_ratio)
        count["n"] += 1
        return {"loss": out["loss"] * float("nan")} if count["n"] in (3, 7, 8, 9, 10, 11) else out

    monkeypatch.setattr(objectives.MAEObjective, "__call__", nan_steps)
    run = tmp_path / "run"
    with pytest.raises(TrainingError) as e:
        pretrain(tiny_config(run, **{"train.skip_nonfinite": 1000000}))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("5 of the 6 steps of epoch 2 were non-finite and skipped; stopped "
                                              "without saving this epoch; last good checkpoint: ")
    err = capsys.readouterr().err
    assert "; 1 of 6 step(s) skipped as non-finite" in err and "; 5 of 6 step(s) skipped as non-finite" in err
    ck = ckpt.load(run / "checkpoint-last.pth")
    assert ck["epoch"] == 0 and ck["nonfinite_skipped"] == 1
    epochs = records(run, "epoch")
    assert [r.get("nonfinite_skipped") for r in epochs] == [1.0, 5.0]
    fault_case(outcome=f"epoch lines end '; 1 of 6 step(s) skipped as non-finite ...' and '5 of 6'; then "
                       f"TrainingError '{msg[:60]}...'; checkpoint of epoch 1 kept",
               lost="epoch 2, whose updates were mostly skipped")


# ----------------------------------------------------------------------------------------------
# failed writes


def test_the_first_checkpoint_on_a_full_disk_does_not_claim_a_previous_one(tmp_path, monkeypatch, fault_case):
    fault_case(injected="disk full (ENOSPC) writing the very first checkpoint of a run",
               expected="one line that says no checkpoint was written before (none is 'intact')")

    def full(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    run = tmp_path / "run"
    with pytest.raises(TrainingError) as e:
        pretrain(tiny_config(run, **{"train.epochs": 1}))
    msg = str(e.value)
    assert "No space left on device" in msg and "intact" not in msg and "--resume" not in msg
    assert "no checkpoint of this run was written before" in msg
    assert not list(run.glob("checkpoint-*")) and not list(run.glob(".*tmp*"))
    fault_case(outcome=f"'{msg.split(str(run))[-1][:110]}...'", lost="the epoch (nothing to resume from)")


@pytest.mark.parametrize("target,fault", [("hf", "read_only"), ("mae", "disk_full"), ("timm", "disk_full")])
def test_export_to_a_read_only_or_full_disk_says_nothing_was_exported(tmp_path, monkeypatch, capsys, fault_case,
                                                                      target, fault):
    pytest.importorskip("safetensors")
    from imae import atomic

    cause = {"read_only": (errno.EROFS, "Read-only file system"), "disk_full": (errno.ENOSPC, "No space left on "
                                                                                             "device")}[fault]
    fault_case(injected=f"`imae export --to {target}` onto a {fault.replace('_', '-')} disk (fails opening or writing "
                        f"its file)", expected="one line about the export (no checkpoint words), nothing left behind")
    model = tiny_mae()
    torch.save({"model": model.state_dict(), "kind": "mae", "arch": model.arch.to_dict()}, tmp_path / "ours.pth")

    def failing_open(path, mode="r", *a, **k):
        raise OSError(*cause)

    monkeypatch.setattr(atomic, "open", failing_open, raising=False)
    output = tmp_path / "out" / {"hf": "hf", "mae": "m.pth", "timm": "t.safetensors"}[target]
    code, _, err = run_cli(["export", str(tmp_path / "ours.pth"), "--to", target, "--output", str(output)], capsys)
    line = one_line_error(code, err)
    assert f"could not export to {output} ({cause[1]}); nothing was exported" in line
    assert "checkpoint" not in line.split(str(output))[-1] and "--resume" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.pth"]  # out/ (made by the export) is gone
    fault_case(outcome=f"'{line.split(str(output))[-1].strip()[:90]}'; no folder or file left", lost="nothing")


# ----------------------------------------------------------------------------------------------
# a fine-tuned classifier where a pre-trained MAE is needed


def test_a_finetuned_checkpoint_given_where_an_mae_is_needed_is_named_a_classifier(finetuned, tmp_path, capsys,
                                                                                  fault_case):
    fault_case(injected="a fine-tuned checkpoint given to export, knn, --init-from and --teacher",
               expected="one line: it is a fine-tuned classifier; pass the MAE it was fine-tuned from")
    src, run = finetuned
    ft = str(run / "checkpoint-last.pth")
    calls = {"export": ["export", ft, "--to", "mae", "--output", str(tmp_path / "o.pth")],
             "knn": ["knn", ft, "--output-dir", str(tmp_path / "knn")],
             "--init-from": ["pretrain", "--output-dir", str(tmp_path / "a"), "--init-from", ft, *tiny_cli_sets()],
             "--teacher": ["pretrain", "--preset", "digits-imae", "--output-dir", str(tmp_path / "b"), "--teacher", ft,
                           *tiny_cli_sets()]}
    for what, args in calls.items():
        code, _, err = run_cli(args, capsys)
        line = one_line_error(code, err)
        assert f"{ft} is a fine-tuned classifier" in line and "--preset" not in line, (what, line)
        assert line.endswith(f"pass the MAE it was fine-tuned from ({src / 'checkpoint-last.pth'})"), (what, line)
        assert what in line or what in ("export", "knn")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no run folder left
    fault_case(outcome="'... is a fine-tuned classifier (a ViT with a classification head ...), not a pre-trained "
                       "MAE; --teacher (imae.teacher) needs the MAE: pass the MAE it was fine-tuned from (...)' for "
                       "each", lost="nothing")


def test_pretrain_resume_of_a_finetune_run_says_it_is_a_finetune_run(finetuned, capsys, fault_case):
    fault_case(injected="`imae pretrain --resume` of a fine-tune run folder",
               expected="one line: it is a fine-tune run, resume it with `imae finetune ... --resume`")
    src, run = finetuned
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    code, _, err = run_cli(["pretrain", "--resume", str(run)], capsys)
    line = one_line_error(code, err)
    assert "unknown configuration key" not in line
    assert line.endswith(f"is a fine-tune run (of `imae finetune`), not a pre-training run; resume it with: imae "
                         f"finetune {src / 'checkpoint-last.pth'} --resume {run}")
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before
    fault_case(outcome=f"'{line[len('imae: error: '):][len(str(run)):][:100]}...'; the run folder untouched",
               lost="nothing")


# ----------------------------------------------------------------------------------------------
# Hugging Face folders


HF_CONFIG = dict(model_type="vit_mae", hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=256, image_size=32, patch_size=4, decoder_hidden_size=32,
                 decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=128)


@pytest.mark.parametrize("config", [[HF_CONFIG], {**HF_CONFIG, "patch_size": 0}, {**HF_CONFIG, "hidden_size": None}],
                         ids=["list", "patch_size_0", "hidden_size_null"])
def test_a_damaged_hf_config_json_gives_one_line(tmp_path, capsys, fault_case, config):
    pytest.importorskip("safetensors")
    from imae.checkpoints import hf, safetensors_io

    name = {list: "a list"}.get(type(config)) or ("patch_size: 0" if config["patch_size"] == 0 else
                                                   "hidden_size: null")
    fault_case(injected=f"a Hugging Face folder whose config.json is {name}", expected="one line, no traceback")
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    safetensors_io.write(hf.to_hf(tiny_mae().state_dict()), folder / "model.safetensors")
    code, _, err = run_cli(["export", str(folder), "--to", "mae", "--output", str(tmp_path / "o.pth")], capsys)
    line = one_line_error(code, err)
    assert str(folder / "config.json") in line and not (tmp_path / "o.pth").exists()
    fault_case(outcome=f"'{line.split('config.json')[-1].strip()[:90]}'", lost="nothing")


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_hf_index_shards_outside_the_folder_are_refused(tmp_path, capsys, fault_case, where):
    pytest.importorskip("safetensors")
    from imae.checkpoints import hf, safetensors_io

    fault_case(injected=f"a Hugging Face weight index naming a shard outside its folder ({where}: "
                        f"{'../x.safetensors' if where == 'parent' else '/abs/x.safetensors'}), a valid file there",
               expected="refused in one line; the outside file is not read")
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(HF_CONFIG))
    weights = hf.to_hf(tiny_mae().state_dict())
    safetensors_io.write(weights, tmp_path / "outside.safetensors")
    name = "../outside.safetensors" if where == "parent" else str(tmp_path / "outside.safetensors")
    index = {"metadata": {}, "weight_map": {k: name for k in weights}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    code, _, err = run_cli(["export", str(folder), "--to", "mae", "--output", str(tmp_path / "o.pth")], capsys)
    line = one_line_error(code, err)
    assert "refusing" in line and f"names the shard {json.dumps(name)}" in line
    assert not (tmp_path / "o.pth").exists()
    shown = name.replace(str(tmp_path), "...")
    fault_case(outcome=f"'refusing .../model.safetensors.index.json: it names the shard {shown}, which is not a file "
                       f"inside ...'", lost="nothing")


# ----------------------------------------------------------------------------------------------
# the report's inputs


@pytest.mark.parametrize("damage", ["result_without_checkpoint", "binary_log"])
def test_the_report_on_a_damaged_result_or_a_binary_log_warns_in_one_line(tmp_path, capsys, fault_case, damage):
    what = {"result_without_checkpoint": "an eval/knn.json without its 'checkpoint' entry",
            "binary_log": "a log.jsonl of random bytes"}[damage]
    fault_case(injected=f"`imae report` on a run with {what}",
               expected="the report is written; one warning line names the file; no traceback")
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text("method: mae\n")
    good = {"command": "knn", "checkpoint": {"kind": "mae"}, "data": {"dataset": "digits"}, "results": {"top1": 0.5}}
    if damage == "binary_log":
        record = json.dumps({"kind": "epoch", "epoch": 1, "loss": 0.3}).encode()
        (run / "log.jsonl").write_bytes(random.Random(0).randbytes(4096) + b"\n" + record + b"\n")
    else:
        good.pop("checkpoint")
    (run / "eval" / "knn.json").write_text(json.dumps(good))
    code, out, err = run_cli(["report", str(run), "--output-dir", str(tmp_path / "report")], capsys)
    assert code == 0 and "Traceback" not in err, err
    warnings = [x for x in err.splitlines() if x.startswith("warning:")]
    name = "knn.json" if damage == "result_without_checkpoint" else "log.jsonl"
    assert len(warnings) == 1 and name in warnings[0], err
    page = (tmp_path / "report" / "report.html").read_text()
    assert "0.500" in page if damage == "binary_log" else "0.500" not in page
    fault_case(outcome=f"report written; '{warnings[0].split(name)[-1].strip()[:90]}'",
               lost="the damaged file's content" if damage == "result_without_checkpoint" else "the unreadable lines")


# ----------------------------------------------------------------------------------------------
# i-MAE pairing


def test_imae_pairing_with_one_image_per_class_blames_the_pairing_not_the_batch(tmp_path, fault_case):
    fault_case(injected="i-MAE with same-class pairing on 2,000 classes of one image each (batch 16)",
               expected="one line saying same-class pairing is impossible (not: lower the batch size)")
    from imae.data.loader import BatchPlan
    from imae.errors import DataError

    with pytest.raises(DataError) as e:
        BatchPlan(torch.arange(2000), 16, class_pairs=True)
    msg = str(e.value)
    assert msg.startswith("same-class pairing is impossible here: the training split's 2000 images fall in 2000 "
                          "classes and only 0 of them have a same-class partner")
    assert "imae.same_class_p=random" in msg and "lower --set" not in msg
    with pytest.raises(DataError, match="lower --set train.batch_size"):  # too few images at all: the batch size
        BatchPlan(torch.arange(8) // 2, 16, class_pairs=True)
    fault_case(outcome=f"'{msg[:100]}...'", lost="nothing")


# ----------------------------------------------------------------------------------------------
# a hand-edited config.yaml


def test_a_hand_edited_config_yaml_is_named_on_resume_and_kept(tmp_path, capsys, fault_case):
    fault_case(injected="config.yaml of a finished run edited by hand (train.blr), then --resume with 3 epochs",
               expected="one warning line naming the edited key (not used: a resume runs with its checkpoint's "
                        "configuration); the edited file kept; the resume event lists it")
    run = pretrain(tiny_config(tmp_path / "run"))
    text = (run / "config.yaml").read_text()
    blr = ckpt.load(run / "checkpoint-last.pth")["config"]["train"]["blr"]
    edited = text.replace(f"blr: {blr}", "blr: 0.5")
    assert edited != text
    (run / "config.yaml").write_text(edited)
    capsys.readouterr()
    pretrain(tiny_config(tmp_path / "x"), resume=str(run), overrides={"train.epochs": 3})
    warnings = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and f"config.yaml was edited by hand (train.blr: 0.5 in the file, {blr!r} used)" \
        in warnings[0], warnings
    assert (run / "config.edited.yaml").read_text() == edited and f"blr: {blr}" in (run / "config.yaml").read_text()
    event = [r for r in records(run, "event") if r.get("event") == "resume"][-1]
    assert event["hand_edits_ignored"] == ["train.blr"] and event["changes"] == {"train.epochs": [2, 3]}
    fault_case(outcome=f"'{warnings[0].split('config.yaml')[1][:110]}...'; config.edited.yaml holds the edit",
               lost="nothing (the edit was not applied, and is kept)")


def test_the_report_on_a_binary_config_yaml_or_an_alias_bomb_is_still_written(tmp_path, fault_case):
    from imae.viz.report import write_report

    binary, bomb = tmp_path / "binary", tmp_path / "bomb"
    for run in (binary, bomb):
        run.mkdir()
        (run / "log.jsonl").write_text('{"kind": "epoch", "epoch": 1, "loss": 1.0}\n')
    (binary / "config.yaml").write_bytes(b"\x80\x81\xfe\xff" * 64)
    levels = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"{c}: &{c} [" + ", ".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefg", "bcdefgh")]
    (bomb / "config.yaml").write_text("\n".join(levels) + "\n")
    paths = write_report([binary, bomb], tmp_path / "report")
    assert paths["html"].is_file() and "binary" in paths["md"].read_text()
    fault_case(injected="a run folder whose config.yaml is binary, and one whose config.yaml is a YAML alias bomb",
               expected="the report is still written; no traceback, no expansion",
               outcome="report.html and report.md written; the configuration shown as text, not expanded",
               lost="nothing")
