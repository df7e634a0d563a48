"""Fault injection in the data: unreadable images read by loader workers, files deleted mid-epoch, named pipes,
decompression bombs, 32-bit integer images, files of types that are not read, a data set that changed size
under a mid-epoch resume, a one-class evaluation set.

Each test records what it injected and what survived through the ``fault_case`` fixture (conftest.py).
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_SETS, pretrain_stopped_mid_epoch, tiny_config
from imae import checkpoints as ckpt
from imae.engine.train import pretrain
from imae.errors import ConfigError, DataError
from test_cli import assert_one_line_error, run_cli

pytestmark = pytest.mark.faults

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
LIMIT_S = 60  # a job that meets a bad file must stop within this (it used to wait forever)
# a digits-sized MAE (16 px) trained on an ImageFolder tree read by 2 loader workers
FILE_SETS = {**TINY_SETS, "data.dataset": "imagefolder", "data.in_memory": False, "data.num_workers": 2,
             "data.max_per_class": "null", "data.cache_dir": "none", "train.epochs": 1, "train.warmup_epochs": 0}


def tree(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    """An ImageFolder tree of small random RGB PNGs: {split: {class: images}}."""
    gen = torch.Generator().manual_seed(0)
    for split, classes in layout.items():
        for c, n in classes.items():
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                px = torch.randint(0, 256, (16, 16, 3), generator=gen, dtype=torch.uint8).numpy()
                Image.fromarray(px).save(root / split / c / f"{c}{i:02d}.png")
    return root


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def pretrain_cmd(data: Path, out: Path, *extra: str, **sets) -> list[str]:
    args = [sys.executable, "-m", "imae", "pretrain", "--preset", "digits-mae", "--data-path", str(data),
            "--output-dir", str(out), "--device", "cpu"]
    for k, v in {**FILE_SETS, **sets}.items():
        args += ["--set", f"{k}={v}"]
    return args + list(extra)


def bounded(cmd: list[str], limit: float = LIMIT_S, until=None) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``cmd`` in its own process group; fail the test (killing the group) when it outlives ``limit``.
    ``until``: called every 10 ms while it runs (to inject a fault at the right moment)."""
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                         start_new_session=True)
    if until is not None:
        while p.poll() is None and time.time() - t0 < limit and not until():
            time.sleep(0.01)
    try:
        out, err = p.communicate(timeout=max(1.0, limit - (time.time() - t0)))
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"still running after {limit:.0f} s (killed); stderr ends: {err[-1500:]}")
    return subprocess.CompletedProcess(cmd, p.returncode, out, err), time.time() - t0


def one_line_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "Caught" not in res.stderr, res.stderr[-2000:]
    errors = [x for x in res.stderr.splitlines() if x.startswith("imae: error:")]
    assert len(errors) == 1 and res.stderr.strip().splitlines()[-1] == errors[0], res.stderr[-2000:]
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def steps_logged(run: Path) -> int:
    log = run / "log.jsonl"
    return log.read_text().count('"kind": "step"') if log.exists() else 0


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory) -> Path:
    """A seconds-long digits MAE (16 px) to fine-tune and evaluate."""
    return pretrain(tiny_config(tmp_path_factory.mktemp("mae") / "run", **{"train.epochs": 1,
                                                                              "train.warmup_epochs": 0}))


# ----------------------------------------------------------------------------------------------
# bug 1: an unreadable image read by loader workers


def test_a_bad_image_read_by_loader_workers_stops_pretraining_in_seconds(tmp_path, fault_case):
    fault_case(injected="a truncated PNG in an ImageFolder tree read by 2 persistent DataLoader workers "
                        "(data.in_memory=false) in pretrain",
               expected="exit 2 within seconds with one line naming the file (it used to print the worker's "
                        "traceback and wait forever in multiprocessing's exit handler); --skip-corrupt skips it")
    data = tree(tmp_path / "data", {"train": {"cat": 24, "dog": 24}})
    bad = data / "train" / "dog" / "dog05.png"
    truncate(bad)
    res, took = bounded(pretrain_cmd(data, tmp_path / "a"))
    line = one_line_error(res, f"cannot decode image {bad}", "--skip-corrupt")
    res, took_skip = bounded(pretrain_cmd(data, tmp_path / "b", "--skip-corrupt"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "1 unreadable file(s) skipped" in res.stderr
    fault_case(outcome=f"exit 2 after {took:.1f} s: '{line.replace(str(tmp_path), '<tmp>')[:110]}...'; with "
                       f"--skip-corrupt exit 0 after {took_skip:.1f} s, '1 unreadable file(s) skipped' in the epoch "
                       f"line", lost="nothing")


def test_an_image_deleted_mid_run_stops_pretraining_in_seconds(tmp_path, fault_case):
    fault_case(injected="an image deleted while a pre-training reads the tree with 2 persistent loader workers",
               expected="exit 2 within seconds with one line naming the file (it used to sit 11 minutes)")
    data = tree(tmp_path / "data", {"train": {"cat": 24, "dog": 24}})
    gone = data / "train" / "cat" / "cat07.png"
    run = tmp_path / "run"

    def delete_after_two_steps() -> bool:
        if steps_logged(run) >= 2:
            gone.unlink()
            return True
        return False

    res, took = bounded(pretrain_cmd(data, run, **{"train.epochs": 400}), until=delete_after_two_steps)
    line = one_line_error(res, f"cannot read image {gone}: it is gone (deleted or moved since the data set was "
                                    f"listed); restore it, or pass --skip-corrupt")
    assert (run / "log.jsonl").exists()  # a run that trained keeps its logs
    fault_case(outcome=f"exit 2 after {took:.1f} s: '{line.replace(str(tmp_path), '<tmp>')[:120]}...'",
               lost="the epoch in progress")


def test_a_bad_image_read_by_loader_workers_stops_a_fine_tune_in_seconds(tmp_path, mae_run, fault_case):
    fault_case(injected="a truncated PNG in the training folder of a fine-tune reading files with 2 loader workers",
               expected="exit 2 within seconds with one line naming the file; --set data.skip_corrupt=true skips "
                        "it (mixup still gets an even batch)")
    data = tree(tmp_path / "data", {"train": {"cat": 24, "dog": 24}, "val": {"cat": 4, "dog": 4}})
    bad = data / "train" / "cat" / "cat03.png"
    truncate(bad)

    def cmd(out: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "imae", "finetune", str(mae_run), "--data-path", str(data), "--output-dir",
                str(tmp_path / out), "--epochs", "1", "--device", "cpu", "--set", "data.dataset=imagefolder",
                "--set", "data.in_memory=false", "--set", "data.num_workers=2", "--set", "data.cache_dir=none",
                "--set", "finetune.batch_size=16", *extra]

    res, took = bounded(cmd("a"))
    line = one_line_error(res, f"cannot decode image {bad}")
    res, took_skip = bounded(cmd("b", "--set", "data.skip_corrupt=true"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "1 unreadable file(s) skipped" in res.stderr
    fault_case(outcome=f"exit 2 after {took:.1f} s: '{line.replace(str(tmp_path), '<tmp>')[:100]}...'; skipped "
                       f"and counted with data.skip_corrupt=true (exit 0 after {took_skip:.1f} s)", lost="nothing")


def test_any_error_with_loader_workers_alive_still_exits(tmp_path, fault_case):
    fault_case(injected="an error raised by the training side (not by the loader) while 2 persistent loader "
                        "workers, which ignore SIGTERM, are alive; the error's traceback keeps the loader referenced, "
                        "as when a non-finite loss stops a run on image files",
               expected="the process exits at once with the error's status (multiprocessing's exit handler used to "
                        "SIGTERM the workers, which ignore it, and join them forever)")
    script = (
        "import sys\n"
        "from imae.data.loader import WorkerLoader, ignore_stop_signals\n"
        "KEPT = []  # the loader stays referenced until exit (in imae: by a reference cycle through the traceback)\n"
        "def train():\n"
        "    loader = WorkerLoader(list(range(64)), batch_size=4, num_workers=2, persistent_workers=True,\n"
        "                          worker_init_fn=ignore_stop_signals)\n"
        "    KEPT.append(loader)\n"
        "    for batch in loader:\n"
        "        raise RuntimeError('loss became non-finite')\n"
        "try:\n"
        "    train()\n"
        "except RuntimeError as e:\n"
        "    print(f'error: {e}', file=sys.stderr)\n"
        "    sys.exit(1)\n")
    res, took = bounded([sys.executable, "-c", script], limit=30)
    assert res.returncode == 1 and res.stderr.strip() == "error: loss became non-finite", res.stderr[-2000:]
    fault_case(outcome=f"exit 1 after {took:.1f} s, the workers ended by the loader's exit handler", lost="nothing")


# ----------------------------------------------------------------------------------------------
# bug 9: 32-bit integer images


def test_thirty_two_bit_integer_images_are_not_divided_as_sixteen_bit(tmp_path, fault_case):
    fault_case(injected="32-bit integer (mode I) TIFFs: one with values 0..255, one with values 0..1000",
               expected="0..255 read as the 8-bit image it is (it used to be divided by 257: black); a range "
                        "whose white level is unknown refused in one line; 16-bit images still scaled by 257")
    from imae.data.datasets import load_split
    from imae.data.decode import open_rgb

    levels = np.arange(256, dtype=np.int32).reshape(16, 16)
    Image.fromarray(levels).save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    rgb = np.asarray(open_rgb(str(tmp_path / "i32.tif")))
    assert (rgb[..., 0] == levels).all() and (rgb[..., 2] == levels).all()
    # the same image held in memory for training: its mean level, not ~0
    (tmp_path / "set" / "train" / "grey").mkdir(parents=True)
    Image.fromarray(levels).save(tmp_path / "set" / "train" / "grey" / "a.tif")
    images = load_split("imagefolder", "train", str(tmp_path / "set"), 16, cache_dir="none", progress=False).images
    assert images.float().mean().item() == pytest.approx(127.5)
    Image.fromarray(levels * 4).save(tmp_path / "wide.tif")
    with pytest.raises(DataError) as e:
        open_rgb(str(tmp_path / "wide.tif"))
    assert "32-bit integer pixels" in str(e.value) and "0..1020" in str(e.value) and "\n" not in str(e.value)
    Image.fromarray((levels * 257).astype(np.uint16)).save(tmp_path / "u16.tif")  # a 16-bit TIFF: scaled
    assert (np.asarray(open_rgb(str(tmp_path / "u16.tif")))[..., 0] == levels).all()
    fault_case(outcome="0..255 decoded level for level (mean 127.5, before 0.5); 0..1020 refused: 'cannot decode "
                       "image ... (32-bit integer pixels, mode I, with values 0..1020: their white level is not "
                       "known); convert it to 8-bit or 16-bit, ...'; a 16-bit TIFF still scaled", lost="nothing")


# ----------------------------------------------------------------------------------------------
# bug 10: a named pipe in the data folder


def test_a_named_pipe_in_the_data_folder_is_skipped_and_reported(tmp_path, capsys, fault_case):
    fault_case(injected="a named pipe called pipe.png among the images of a class folder; a folder holding only a "
                        "pipe; a pipe opened as an image",
               expected="only regular files are read: the pipe is skipped with a note and training goes on (it used "
                        "to wait for a writer forever, leaving a locked run folder); a folder of pipes only has 'no "
                        "images found'; opening a pipe is refused at once")
    from imae.data.datasets import load_split

    data = tree(tmp_path / "data", {"train": {"cat": 24, "dog": 24}})
    pipe = data / "train" / "cat" / "pipe.png"
    os.mkfifo(pipe)
    note = (f"note: skipped 1 entry under {data / 'train'} that is not a regular file (named pipe, socket or device), "
            f"e.g. {pipe}")
    res, took = bounded(pretrain_cmd(data, tmp_path / "run", **{"data.in_memory": "null"}))  # decoded in memory
    assert res.returncode == 0, res.stderr[-2000:]
    assert [x for x in res.stderr.splitlines() if "not a regular file" in x] == [note], res.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoint-last.pth").is_file()
    files = load_split("imagefolder", "train", str(data), 16, in_memory=False, progress=False).files  # for workers
    assert len(files) == 48 and str(pipe) not in files and note in capsys.readouterr().err
    only = tmp_path / "only"
    (only / "train" / "cat").mkdir(parents=True)
    os.mkfifo(only / "train" / "cat" / "x.png")
    with pytest.raises(DataError, match="no images found in"):
        load_split("imagefolder", "train", str(only), 16, in_memory=False, progress=False)
    probe = ("from imae.data.decode import open_rgb\nfrom imae.errors import DataError\ntry:\n"
             f"    open_rgb({str(pipe)!r})\nexcept DataError as e:\n    print(e)\n")
    res, took_open = bounded([sys.executable, "-c", probe], limit=30)
    assert res.stdout.strip() == (f"cannot read image {pipe}: it is a named pipe, not a regular file; remove it, or "
                                  f"pass --skip-corrupt to skip unreadable files")
    fault_case(outcome=f"trained (exit 0 after {took:.1f} s) with '{note.replace(str(tmp_path), '<tmp>')}'; the "
                       f"worker path's file list leaves it out; pipes only: 'no images found'; open_rgb on the pipe "
                       f"refused in {took_open:.1f} s", lost="nothing")


# ----------------------------------------------------------------------------------------------
# rough edges: a decompression bomb, .gif files


def bomb_png(path: Path, side: int = 30000) -> None:
    """A PNG whose header declares side x side pixels (a few hundred bytes on disk)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_one_line_and_skipped_under_skip_corrupt(tmp_path, capsys, fault_case):
    fault_case(injected="a PNG declaring 30000x30000 pixels in the training folder",
               expected="one line naming the file (it used to be a DecompressionBombError traceback, also under "
                        "--skip-corrupt); --skip-corrupt skips it and counts it")
    data = tree(tmp_path / "data", {"train": {"cat": 12, "dog": 12}})
    huge = data / "train" / "dog" / "huge.png"
    bomb_png(huge)
    base = ["pretrain", "--preset", "digits-mae", "--data-path", str(data), "--device", "cpu"]
    for k, v in {**TINY_SETS, "data.dataset": "imagefolder", "data.max_per_class": "null", "data.cache_dir": "none",
                 "train.epochs": 1, "train.warmup_epochs": 0, "train.batch_size": 8}.items():
        base += ["--set", f"{k}={v}"]
    code, _, err = run_cli([*base, "--output-dir", str(tmp_path / "a")], capsys)
    assert_one_line_error(code, err, f"cannot decode image {huge} (too large: Image size (900000000 pixels) exceeds")
    code, _, err = run_cli([*base, "--output-dir", str(tmp_path / "b"), "--skip-corrupt"], capsys)
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert f"skipped 1 unreadable image(s) (--skip-corrupt), e.g. {huge}" in err
    fault_case(outcome="'cannot decode image .../huge.png (too large: Image size (900000000 pixels) exceeds limit "
                       "of 178956970 pixels, ...)', exit 2; --skip-corrupt: 'skipped 1 unreadable image(s)', exit 0",
               lost="nothing")


def test_files_of_types_that_are_not_read_are_reported(tmp_path, capsys, fault_case):
    fault_case(injected="two .gif images and a .txt file beside the PNGs of a class folder",
               expected="a note naming how many files of which types were skipped (they used to be skipped silently)")
    from imae.data.datasets import load_split

    data = tree(tmp_path / "data", {"train": {"cat": 3, "dog": 3}})
    for name in ("a.gif", "b.gif"):
        Image.new("P", (16, 16)).save(data / "train" / "dog" / name)
    (data / "train" / "cat" / "notes.txt").write_text("x")
    capsys.readouterr()
    split = load_split("imagefolder", "train", str(data), 16, cache_dir="none", progress=False)
    assert len(split) == 6
    err = capsys.readouterr().err
    assert (f"note: skipped 3 file(s) under {data / 'train'} that are not of an image type read here (.gif: 2, "
            f".txt: 1; read: .jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp), e.g. ") in err, err
    fault_case(outcome="'note: skipped 3 file(s) under <data>/train that are not of an image type read here (.gif: 2, "
                       ".txt: 1; read: .jpg ...), e.g. ...'; the 6 PNGs read", lost="nothing")


# ----------------------------------------------------------------------------------------------
# rough edges: a mid-epoch resume over a data set that changed size; a one-class evaluation set


def test_a_mid_epoch_resume_over_a_data_set_of_another_size_is_refused(tmp_path, monkeypatch, fault_case):
    fault_case(injected="a run stopped at step 3 of epoch 2, resumed with data.max_per_class 10 -> 9 (100 -> 90 "
                        "training images)",
               expected="refused in one line, as a batch-size change is (the rest of the epoch's batches would "
                        "differ); the checkpoint, config.yaml and log.jsonl untouched; the same data resumes")
    run = pretrain_stopped_mid_epoch(tiny_config(tmp_path / "run"), monkeypatch)
    assert ckpt.load(run / "checkpoint-last.pth")["step_in_epoch"] == 3
    before = {name: (run / name).read_bytes() for name in ("config.yaml", "log.jsonl", "checkpoint-last.pth")}
    with pytest.raises(ConfigError) as e:
        pretrain(tiny_config(tmp_path / "x"), resume=str(run), overrides={"data.max_per_class": 9})
    assert str(e.value) == (f"{run} stopped in the middle of an epoch of 100 training images, but the data set now "
                            f"has 90; resume it with the same images (check --data-path and data.max_per_class), "
                            f"else the rest of the epoch would see some images twice and others never")
    assert {name: (run / name).read_bytes() for name in before} == before
    pretrain(tiny_config(tmp_path / "x"), resume=str(run))  # the same images resume
    fault_case(outcome="'<run> stopped in the middle of an epoch of 100 training images, but the data set now has "
                       "90; resume it with the same images (check --data-path and data.max_per_class), ...'; run "
                       "folder byte-identical; the same data resumes", lost="nothing")


def test_a_one_class_evaluation_set_is_warned_about(tmp_path, mae_run, capsys, fault_case):
    fault_case(injected="kNN and linear probe of a checkpoint on an ImageFolder tree with one class",
               expected="one warning line that the 1.000 scores mean nothing (they used to be printed as they are)")
    data = tree(tmp_path / "data", {"train": {"cat": 8}, "val": {"cat": 4}})
    warnings = []
    for command in ("knn", "linprobe"):
        code, _, err = run_cli([command, str(mae_run), "--data-path", str(data), "--output-dir", str(tmp_path),
                                "--set", "data.dataset=imagefolder", "--set", "data.cache_dir=none"], capsys)
        assert code == 0, err[-2000:]
        lines = [x for x in err.splitlines() if x.startswith("warning: every evaluation image")]
        assert lines == ["warning: every evaluation image of imagefolder is of one class (cat): probe and kNN "
                         "accuracy and NMI are 1.000 whatever the model; evaluate on two or more classes"], err
        warnings += lines
    fault_case(outcome=f"'{warnings[0]}' (knn and linprobe)", lost="nothing")
