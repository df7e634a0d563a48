"""Faults of checkpoints, the teacher and the feature cache (issue 25): a teacher that changes under a resumed
i-MAE, checkpoints damaged in place, official-layout head counts that cannot be told, features of another
checkpoint copied over with its mtime kept."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from imae import checkpoints as ckpt
from imae.checkpoints.files import latest_complete
from imae.engine.train import pretrain
from imae.errors import CheckpointError, ConfigError
from test_cli import run_cli

pytestmark = pytest.mark.faults

ONE_EPOCH = {"train.epochs": 1, "train.warmup_epochs": 0}
DIGITS = ["--set", "data.dataset=digits", "--set", "data.train_per_class=20", "--set", "data.eval_per_class=12"]


def one_line_error(code: int, err: str, *patterns: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith("imae: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for pattern in patterns:
        assert pattern in lines[0], lines[0]
    return lines[0]


def snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file() and p.name != ".imae.lock"}


# ----------------------------------------------------------------------------------------------
# bug 2: the teacher of a resumed i-MAE


@pytest.fixture
def teacher_and_student(tmp_path, monkeypatch):
    """A one-epoch MAE teacher and a one-epoch i-MAE student started with a relative --teacher from tmp_path."""
    monkeypatch.chdir(tmp_path)
    teacher = pretrain(tiny_config(Path("teacher"), **ONE_EPOCH))
    student = pretrain(tiny_config(tmp_path / "student", preset="digits-imae",
                                   **{"imae.teacher": "teacher", **ONE_EPOCH}))
    return tmp_path / teacher, student


def resume(student: Path, **over) -> Path:
    over = {"train.epochs": 2, **over}
    return pretrain(tiny_config(student, preset="digits-imae", **over), resume=str(student), overrides=over)


def test_a_relative_teacher_is_recorded_absolute_and_a_run_cannot_be_its_own_teacher(teacher_and_student, tmp_path,
                                                                                     monkeypatch, fault_case):
    fault_case(injected="an i-MAE started with a relative --teacher, resumed from another working directory; then "
                        "--resume R --teacher R (and a checkpoint inside R as the teacher)",
               expected="the teacher is recorded as an absolute path with its sha256 and the resume finds the same "
                        "one; the run as its own teacher is refused in one line, nothing written")
    teacher, student = teacher_and_student
    ck = ckpt.load(student / "checkpoint-last.pth")
    assert ck["config"]["imae"]["teacher"] == str(teacher)
    import hashlib

    assert ck["teacher"] == {"path": str(teacher), "file": str(teacher / "checkpoint-last.pth"),
                             "sha256": hashlib.sha256((teacher / "checkpoint-last.pth").read_bytes()).hexdigest()}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # "teacher" relative to here does not exist
    assert ckpt.load(resume(student))["epoch"] == 1
    before = snapshot(student)
    for spec in (student, student / "checkpoint-last.pth"):
        with pytest.raises(ConfigError, match="is this run's own folder"):
            resume(student, **{"train.epochs": 3, "imae.teacher": str(spec)})
    assert snapshot(student) == before
    fault_case(outcome="config and checkpoint record the absolute path and sha256; resumed from another directory; "
                       "'--teacher R is this run's own folder R: an i-MAE distils from a separate, frozen MAE ...' for "
                       "both", lost="nothing")


def test_a_teacher_trained_further_is_refused_on_resume_unless_overridden(teacher_and_student, capsys, fault_case):
    fault_case(injected="the teacher run trained one more epoch between the student's stop and its resume",
               expected="one-line refusal naming both hashes and what to do, nothing written; an explicit --teacher "
                        "continues and is logged as a teacher_override event")
    teacher, student = teacher_and_student
    shutil.copy2(teacher / "checkpoint-last.pth", teacher / "checkpoint-1.pth")  # what the student distilled from
    pretrain(tiny_config(teacher, **{"train.epochs": 2}), resume=str(teacher), overrides={"train.epochs": 2})
    before = snapshot(student)
    sets = ["--set", "model.embed_dim=32", "--set", "model.depth=1", "--set", "model.num_heads=2",
            "--set", "model.decoder_embed_dim=32", "--set", "model.decoder_depth=1", "--set",
            "model.decoder_num_heads=2", "--set", "data.max_per_class=10", "--set", "train.batch_size=16",
            "--set", "device=cpu"]
    code, _, err = run_cli(["pretrain", "--preset", "digits-imae", "--resume", str(student), "--epochs", "2",
                            *sets], capsys)
    line = one_line_error(code, err, f"the teacher {teacher} is not the one this run distilled from",
                          "restore it", f"--teacher {teacher / 'checkpoint-1.pth'}", "pass --teacher PATH")
    assert snapshot(student) == before  # config.yaml, log.jsonl and the checkpoints as they were
    # the explicit choice continues and is recorded
    run = resume(student, **{"imae.teacher": str(teacher)})
    events = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if "teacher_override" in x]
    assert len(events) == 1 and events[0]["to"]["sha256"] != events[0]["from"]["sha256"]
    assert "teacher changed by --teacher" in capsys.readouterr().err
    ck = ckpt.load(run / "checkpoint-last.pth")
    assert ck["epoch"] == 1 and ck["teacher"] == events[0]["to"]
    fault_case(outcome=f"exit 2 with '{line[len('imae: error: '):][:150]}...'; with --teacher the resume went on "
                       f"and log.jsonl holds a teacher_override event", lost="nothing")


# ----------------------------------------------------------------------------------------------
# bug 5: checkpoints damaged in place


def damage_weights(path: Path, ck: dict) -> None:
    """Overwrite 4 KiB inside the largest weight tensor of ``path`` in place (the file keeps its size)."""
    name = max(ck["model"], key=lambda k: ck["model"][k].numel())
    data = bytearray(path.read_bytes())
    at = bytes(data).find(ck["model"][name].contiguous().numpy().tobytes())
    assert at > 0 and ck["model"][name].numel() * 4 >= 8192
    size = len(data)
    data[at + 1024: at + 1024 + 4096] = bytes(range(256)) * 16
    path.write_bytes(bytes(data))
    assert path.stat().st_size == size


def test_a_checkpoint_damaged_in_place_is_refused_and_resume_auto_falls_back(tmp_path, capsys, fault_case):
    fault_case(injected="4 KiB overwritten inside the weights of checkpoint-last.pth, file size unchanged",
               expected="export, knn and an explicit --resume refuse it in one line; --resume auto and the run "
                        "folder fall back to / name the newest intact checkpoint and say so")
    run = pretrain(tiny_config(tmp_path / "run", **{"train.save_every": 1}))
    last = run / "checkpoint-last.pth"
    damage_weights(last, torch.load(last, weights_only=True))
    capsys.readouterr()
    code, _, err = run_cli(["export", str(last), "--to", "mae", "--output", str(tmp_path / "out.pth")], capsys)
    line = one_line_error(code, err, f"checkpoint {last} is damaged: its weights do not match the checksum")
    assert not (tmp_path / "out.pth").exists()
    code, _, err = run_cli(["knn", str(run), *DIGITS], capsys)
    one_line_error(code, err, f"{last} is damaged", f"the newest intact checkpoint of {run} is "
                                                    f"{run / 'checkpoint-2.pth'}")
    assert not (run / "eval").exists()
    with pytest.raises(CheckpointError, match=f"--resume {run} resumes from the newest intact one"):
        pretrain(tiny_config(run, **{"train.epochs": 3}), resume=str(last), overrides={"train.epochs": 3})
    # what training names as the last good checkpoint, and what --resume auto continues from
    assert latest_complete(run)[0].name == "checkpoint-2.pth"
    again = pretrain(tiny_config(run, **{"train.epochs": 3}), resume="auto", overrides={"train.epochs": 3})
    err = capsys.readouterr().err
    assert f"warning: {last} is damaged (its weights do not match the checksum stored when it was saved); " \
           f"resuming from checkpoint-2.pth, the newest intact checkpoint" in err
    assert f"resuming {run} from checkpoint-2.pth" in err
    assert ckpt.load(again / "checkpoint-last.pth")["epoch"] == 2  # rewritten whole by the resumed run
    fault_case(outcome=f"export: exit 2 '{line[len('imae: error: '):][:110]}...'; knn of the run folder: exit 2 "
                       f"naming checkpoint-2.pth; --resume auto: a warning, then epoch 3 from checkpoint-2.pth",
               lost="the epoch after the newest intact checkpoint (redone)")


def test_damaged_optimiser_state_is_skipped_by_resume_but_not_by_an_evaluation(tmp_path, capsys):
    run = pretrain(tiny_config(tmp_path / "run", **{"train.save_every": 1}))
    last = run / "checkpoint-last.pth"
    ck = torch.load(last, weights_only=True)
    state = ck["optimizer"]["state"]
    exp = max((s["exp_avg"] for s in state.values()), key=lambda t: t.numel())
    data = bytearray(last.read_bytes())
    at = bytes(data).find(exp.contiguous().numpy().tobytes())
    assert at > 0
    data[at: at + 4096] = b"\x00" * 4096
    last.write_bytes(bytes(data))
    assert ckpt.load(last)["epoch"] == 1  # the weights are intact: evaluations and exports may use them
    path, _ = latest_complete(run, ("model", "optimizer"))
    assert path.name == "checkpoint-2.pth"
    with pytest.raises(CheckpointError, match="its optimiser state does not match"):
        pretrain(tiny_config(run, **{"train.epochs": 3}), resume=str(last), overrides={"train.epochs": 3})


def test_a_checkpoint_without_a_checksum_still_loads_and_resumes(tmp_path):
    run = pretrain(tiny_config(tmp_path / "run"))
    last = run / "checkpoint-last.pth"
    ck = torch.load(last, weights_only=True)
    assert set(ck["checksum"]) == {"model", "optimizer"}
    del ck["checksum"]  # as imae wrote it before checkpoints carried one
    torch.save(ck, last)
    assert ckpt.load(last)["epoch"] == 1 and latest_complete(run)[0] == last
    again = pretrain(tiny_config(run, **{"train.epochs": 3}), resume="auto", overrides={"train.epochs": 3})
    assert ckpt.load(again / "checkpoint-last.pth")["epoch"] == 2


def test_a_damaged_split_safetensors_checkpoint_is_refused(tmp_path):
    pytest.importorskip("safetensors")
    from imae.checkpoints import safetensors_io

    run = pretrain(tiny_config(tmp_path / "run", **{"train.checkpoint_format": "safetensors"}))
    weights = safetensors_io.weights_path(run / "checkpoint-last.pth")
    tensors, _ = safetensors_io.read(weights)
    data = bytearray(weights.read_bytes())
    biggest = max(tensors.values(), key=lambda t: t.numel())
    at = bytes(data).find(biggest.contiguous().numpy().tobytes())
    assert at > 0
    data[at: at + 4096] = b"\x7f" * 4096
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is damaged: its weights do not match"):
        ckpt.load(run / "checkpoint-last.pth")


# ----------------------------------------------------------------------------------------------
# bug 6: head counts of official-layout checkpoints


def test_an_official_layout_of_a_non_standard_width_asks_for_its_head_count(tmp_path, capsys, fault_case):
    fault_case(injected="a 96-wide encoder with 3 heads saved as {'model': state_dict} (no architecture)",
               expected="one-line error asking for --set num_heads=N; with it the result records how the count "
                        "was decided; standard widths are inferred")
    from imae.models import create_model
    from imae.models.loading import model_from_checkpoint

    torch.manual_seed(0)
    official = tmp_path / "micro.pth"
    torch.save({"model": create_model("mae_vit_micro_patch2").state_dict()}, official)
    code, _, err = run_cli(["knn", str(official), *DIGITS], capsys)
    line = one_line_error(code, err, "cannot tell how many attention heads the 96-wide encoder", "--set num_heads=N")
    assert not (tmp_path / "micro-eval").exists()
    code, _, err = run_cli(["export", str(official), "--to", "mae", "--output", str(tmp_path / "x.pth")], capsys)
    one_line_error(code, err, "--num-heads N")
    code, _, err = run_cli(["knn", str(official), *DIGITS, "--set", "num_heads=3"], capsys)
    assert code == 0, err
    rec = json.loads((tmp_path / "micro-eval" / "knn.json").read_text())
    assert rec["checkpoint"]["arch"]["num_heads"] == 3
    assert rec["checkpoint"]["heads_from"]["num_heads"] == "given (num_heads=3)"
    code, _, err = run_cli(["export", str(official), "--to", "mae", "--output", str(tmp_path / "x.pth"),
                            "--num-heads", "3"], capsys)
    assert code == 0, err
    # a standard width is unambiguous; an exported checkpoint records its count
    standard = create_model("mae_vit_tiny_patch4", depth=1, decoder_depth=1)
    model = model_from_checkpoint({"model": standard.state_dict()})
    assert model.arch.num_heads == 3 and model.heads_from["num_heads"].startswith("the standard count for width 192")
    again = model_from_checkpoint(ckpt.load(tmp_path / "x.pth"))
    assert again.arch.num_heads == 3 and again.heads_from["num_heads"] == "recorded in the checkpoint"
    fault_case(outcome=f"exit 2 '{line[len('imae: error: '):][:120]}...'; with --set num_heads=3 knn.json records "
                       f"heads_from 'given (num_heads=3)'", lost="nothing")


def test_an_official_layout_teacher_of_a_non_standard_width_is_one_line(tmp_path, capsys):
    from imae.models import create_model

    official = tmp_path / "micro.pth"
    torch.save({"model": create_model("mae_vit_micro_patch2").state_dict()}, official)
    code, _, err = run_cli(["pretrain", "--preset", "digits-imae", "--teacher", str(official), "--output-dir",
                            str(tmp_path / "o"), "--set", "device=cpu", "--set", "train.max_steps=1"], capsys)
    one_line_error(code, err, "cannot tell how many attention heads", "--num-heads N) and pass --teacher")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------
# bug 8: the feature cache's key


def test_another_checkpoint_copied_with_its_mtime_kept_does_not_reuse_features(tmp_path, fault_case):
    fault_case(injected="a different checkpoint of the same size copied over the evaluated one with its mtime "
                        "kept (cp -p)", expected="features computed again from the new weights, not the cached ones")
    from imae.config.evaluate import EvalDataConfig
    from imae.eval.eval_split import load_eval_split
    from imae.eval.features import FeatureCache, extract
    from imae.eval.subject import load_subject

    a = pretrain(tiny_config(tmp_path / "a", **ONE_EPOCH)) / "checkpoint-last.pth"
    b = pretrain(tiny_config(tmp_path / "b", seed=1, **ONE_EPOCH)) / "checkpoint-last.pth"
    assert a.stat().st_size == b.stat().st_size
    split = load_eval_split(EvalDataConfig(dataset="digits", eval_per_class=3), "eval", 16, progress=False)
    cache = FeatureCache(tmp_path / "cache")
    first = load_subject(a)
    fa = extract(first.model, split, first.fingerprint, cache=cache, show_progress=False)
    st = a.stat()
    shutil.copyfile(b, a)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))  # as cp -p, rsync -a and tar keep it
    assert (a.stat().st_size, a.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    second = load_subject(a)
    fb = extract(second.model, split, second.fingerprint, cache=cache, show_progress=False)
    assert not fb.cached and not torch.equal(fa.cls, fb.cls)
    fresh = extract(second.model, split, second.fingerprint, show_progress=False)
    assert torch.equal(fb.cls, fresh.cls) and second.fingerprint.startswith(f"sha256={second.sha256}")
    fault_case(outcome="the cache key is the content hash: the copied checkpoint's features were computed again",
               lost="nothing")


def test_an_imae_checkpoint_copied_into_an_mae_run_is_refused_on_resume(teacher_and_student, tmp_path, capsys,
                                                                        fault_case):
    teacher, student = teacher_and_student
    fault_case(injected="an i-MAE's checkpoint-last.pth copied over an MAE run's, then --resume of the MAE run",
               expected="one line saying the checkpoint came from another (i-MAE) run; the MAE run left as it was")
    mae = pretrain(tiny_config(tmp_path / "mae-run", **ONE_EPOCH))
    shutil.copy(student / "checkpoint-last.pth", mae / "checkpoint-last.pth")
    before = snapshot(mae)
    code, _, err = run_cli(["pretrain", "--resume", str(mae), "--epochs", "2"], capsys)
    line = one_line_error(code, err, "is the checkpoint of an imae run", "describes an mae run", "--init-from")
    assert snapshot(mae) == before
    fault_case(outcome=f"exit 2: {line[:160]}...; the MAE run's files unchanged", lost="nothing")


def test_a_configuration_of_a_huge_model_is_refused_before_the_model_is_built(tmp_path, capsys, fault_case):
    import time

    run = pretrain(tiny_config(tmp_path / "mae", **ONE_EPOCH))
    ck = torch.load(run / "checkpoint-last.pth", map_location="cpu", weights_only=True)
    ck["arch"] = {**ck["arch"], "embed_dim": 65536, "num_heads": 64, "depth": 48}  # ~2.5e12 parameters
    ck["config"]["model"] = {**ck["config"]["model"], "embed_dim": 65536, "num_heads": 64, "depth": 48}
    torch.save(ck, tmp_path / "huge.pth")
    t0 = time.perf_counter()
    code, _, err = run_cli(["knn", str(tmp_path / "huge.pth"), *DIGITS, "--output-dir", str(tmp_path / "out")], capsys)
    seconds = time.perf_counter() - t0
    line = one_line_error(code, err, "its weights do not match the model its configuration describes",
                          "patch_embed.proj.weight")
    assert seconds < 30 and not (tmp_path / "out").exists()
    fault_case(injected="a checkpoint whose recorded architecture asks for a 65536-wide, 48-deep encoder beside "
                        "the weights of a 32-wide one", expected="one line before anything is allocated",
               outcome=f"exit 2 after {seconds:.1f} s: {line[:150]}...", lost="nothing")
