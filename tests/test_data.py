"""Data sets, decoding, batch plans and batched augmentation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from imae.data.augment import BatchAugment, crop_resize, normalize, sample_crop_boxes
from imae.data.datasets import NORMALIZATION, load_split
from imae.data.loader import BatchPlan, TensorLoader
from imae.errors import DataError


def test_digits_is_embedded_16px_rgb_with_a_fixed_split():
    train, test = load_split("digits", "train"), load_split("digits", "eval")
    assert train.images.shape == (1437, 3, 16, 16) and test.images.shape == (360, 3, 16, 16)
    assert train.images.dtype == torch.uint8 and train.num_classes == 10
    assert torch.equal(train.images[:, 0], train.images[:, 2])  # grayscale as RGB
    assert torch.bincount(test.labels).min() >= 25


@pytest.mark.parametrize("name", ["digits"])
def test_normalisation_constants_match_the_data(name):
    x = load_split(name, "train").images.float() / 255
    mean, std = NORMALIZATION[name]
    assert x.mean().item() == pytest.approx(mean[0], abs=0.01)
    assert x.std().item() == pytest.approx(std[0], abs=0.01)


def test_cifar10_jpeg_tree_loads_as_imagefolder_and_is_cached(cifar10_dir, tmp_path):
    kw = dict(path=str(cifar10_dir), max_per_class=20, cache_dir=str(tmp_path))
    train = load_split("cifar10", "train", **kw)
    assert train.images.shape == (200, 3, 32, 32)
    assert train.classes[:3] == ["airplane", "automobile", "bird"]
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 20))
    mean = train.images.float().div(255).mean((0, 2, 3))
    assert torch.allclose(mean, torch.tensor(NORMALIZATION["cifar10"][0]), atol=0.06)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    again = load_split("cifar10", "train", **kw)
    assert torch.equal(again.images, train.images)
    test = load_split("imagefolder", "eval", img_size=32, **kw)
    assert test.images.shape == (200, 3, 32, 32)  # test/ is the evaluation split
    assert not torch.equal(test.images, train.images)


def _small_tree(root, cifar10_dir, per_class=3):
    for c in ("cat", "dog"):
        (root / "train" / c).mkdir(parents=True)
        for f in sorted((cifar10_dir / "train" / c).iterdir())[:per_class]:
            shutil.copy(f, root / "train" / c / f.name)
    return root


def test_corrupt_and_empty_images_name_the_file_or_are_skipped_and_counted(cifar10_dir, tmp_path):
    root = _small_tree(tmp_path / "d", cifar10_dir)
    good = sorted((root / "train" / "cat").iterdir())[0].read_bytes()
    (root / "train" / "cat" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "train" / "dog" / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"cannot decode image .*(truncated|empty)\.jpg.*--skip-corrupt"):
        load_split("imagefolder", "train", path=str(root), img_size=32, cache_dir="none")
    ok = load_split("imagefolder", "train", path=str(root), img_size=32, cache_dir="none", skip_corrupt=True)
    assert len(ok) == 6 and sorted(p.rsplit("/", 1)[1] for p in ok.skipped) == ["empty.jpg", "truncated.jpg"]


def test_grayscale_cmyk_and_rgba_images_are_converted(tmp_path):
    folder = tmp_path / "t" / "train" / "a"
    folder.mkdir(parents=True)
    Image.new("L", (40, 32), 128).save(folder / "gray.png")
    Image.new("CMYK", (32, 32), (0, 0, 0, 0)).save(folder / "cmyk.jpg")
    Image.new("RGBA", (32, 48), (255, 0, 0, 0)).save(folder / "rgba.png")
    s = load_split("imagefolder", "train", path=str(tmp_path / "t"), img_size=32, cache_dir="none")
    assert s.images.shape == (3, 3, 32, 32)


def test_missing_and_empty_folders_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_split("imagefolder", "train", path=str(tmp_path / "nope"), img_size=32)
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        load_split("imagefolder", "train", path=str(tmp_path / "empty"), img_size=32)
    with pytest.raises(DataError, match="needs --data-path"):
        load_split("imagefolder", "train", img_size=32)
    with pytest.raises(DataError, match="--download"):
        load_split("cifar10", "train", path=str(tmp_path / "nocifar"))


def test_tiny_imagenet_original_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    (root).mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids))
    for w in wnids:
        (root / "train" / w / "images").mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (64, 64), (i * 50, 0, 0)).save(root / "train" / w / "images" / f"{w}_{i}.JPEG")
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for i, w in enumerate(["n02", "n01", "n02"]):
        Image.new("RGB", (64, 64)).save(root / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines))
    train = load_split("tiny-imagenet", "train", path=str(root), cache_dir="none")
    val = load_split("tiny-imagenet", "eval", path=str(root), cache_dir="none")
    assert train.images.shape == (4, 3, 64, 64) and train.labels.tolist() == [0, 0, 1, 1]
    assert val.labels.tolist() == [1, 0, 1]


def test_batch_plan_visits_each_image_once_and_splits_ranks():
    labels = torch.arange(103) % 7
    plan = BatchPlan(labels, batch_size=8, world_size=2, seed=3)
    order = plan.epoch_order(0)
    assert order.shape == (6, 16) and len(order.flatten().unique()) == 96
    assert torch.equal(order, plan.epoch_order(0)) and not torch.equal(order, plan.epoch_order(1))
    r0, r1 = plan.rank_order(0, 0), plan.rank_order(0, 1)
    assert torch.equal(torch.cat([r0, r1], 1), order)


def test_class_pair_plan_puts_every_class_in_a_batch_at_least_twice():
    labels = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(0))
    plan = BatchPlan(labels, batch_size=16, world_size=2, seed=0, class_pairs=True)
    for epoch in range(3):
        for rank in range(2):
            for row in plan.rank_order(epoch, rank):
                counts = torch.bincount(labels[row])
                assert ((counts == 0) | (counts >= 2)).all()
                assert torch.equal(labels[row[0::2]], labels[row[1::2]])
    with pytest.raises(DataError, match="even batch size"):
        BatchPlan(labels, batch_size=5, class_pairs=True)
    with pytest.raises(DataError, match="fewer than one batch"):
        BatchPlan(labels[:10], batch_size=8, world_size=2)


def test_crop_boxes_stay_within_ranges_and_match_torchvision_sampling():
    from torchvision.transforms import RandomResizedCrop

    g = torch.Generator().manual_seed(0)
    boxes = sample_crop_boxes(4000, 32, 32, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), generator=g)
    top, left, h, w = boxes.unbind(1)
    area, ratio = h * w / (32 * 32), w / h
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    # sides are rounded to whole pixels, so area and ratio may pass the ranges by a pixel's worth
    assert area.min() >= 0.2 - 0.03 and area.max() <= 1.0
    assert ratio.min() >= 3 / 4 - 0.05 and ratio.max() <= 4 / 3 + 0.06
    torch.manual_seed(0)
    ref = torch.tensor([RandomResizedCrop.get_params(torch.empty(3, 32, 32), [0.2, 1.0], [3 / 4, 4 / 3])
                        for _ in range(4000)], dtype=torch.float)
    ref_area = ref[:, 2] * ref[:, 3] / 1024
    assert area.mean().item() == pytest.approx(ref_area.mean().item(), abs=0.015)
    assert area.std().item() == pytest.approx(ref_area.std().item(), abs=0.015)
    assert (left + w / 2).mean().item() == pytest.approx((ref[:, 1] + ref[:, 3] / 2).mean().item(), abs=0.3)


def test_crop_resize_full_box_is_identity_and_flip_mirrors():
    x = torch.randn(2, 3, 16, 16)
    full = torch.tensor([[0, 0, 16, 16]] * 2)
    assert torch.allclose(crop_resize(x, full, 16), x, atol=1e-5)
    flipped = crop_resize(x, full, 16, flip=torch.tensor([True, False]))
    assert torch.allclose(flipped[0], x[0].flip(-1), atol=1e-5) and torch.allclose(flipped[1], x[1], atol=1e-5)
    # a 8x8 box at (4, 2) upsampled x2 equals nearest... check a corner-aligned crop at scale 1
    box = torch.tensor([[4, 2, 8, 8]] * 2)
    assert torch.allclose(crop_resize(x, box, 8), x[:, :, 4:12, 2:10], atol=1e-5)


def test_tensor_loader_is_deterministic_per_epoch_and_step():
    data = load_split("digits", "train")
    plan = BatchPlan(data.labels, 32, seed=1)
    aug = BatchAugment(16, data.mean, data.std)
    loader = TensorLoader(data, plan, aug, torch.device("cpu"), seed=1)
    a = [b.images for _, b in loader.batches(0)]
    b = dict(loader.batches(0, start=5))
    assert len(a) == 44 and torch.equal(a[5], b[5].images) and torch.equal(a[7], b[7].images)
    x = normalize(data.images[:4], data.mean, data.std)
    assert a[0].shape == (32, 3, 16, 16) and abs(x.mean().item()) < 1.0


def test_file_loader_path_is_deterministic_and_trains(cifar10_dir, tmp_path):
    """The DataLoader path for ImageNet-scale trees (workers, per-sample seeded augmentation)."""
    from conftest import tiny_config
    from imae.data.loader import build_train_loader
    from imae.engine.train import pretrain

    files = load_split("imagefolder", "train", path=str(cifar10_dir), img_size=32, in_memory=False,
                       max_per_class=8)
    assert files.images is None and len(files.files) == 80
    kw = dict(seed=3, num_workers=2)
    a = build_train_loader(files, 16, 32, torch.device("cpu"), **kw)
    b = build_train_loader(files, 16, 32, torch.device("cpu"), **kw)
    first = [batch.images for _, batch in a.batches(1)]
    again = dict(b.batches(1, start=2))
    assert len(first) == 5 and first[0].shape == (16, 3, 32, 32)
    assert torch.equal(first[2], again[2].images) and torch.equal(first[4], again[4].images)
    assert not torch.equal(first[0], [batch.images for _, batch in a.batches(2)][0])
    run = pretrain(tiny_config(tmp_path / "run", **{
        "data.dataset": "imagefolder", "data.path": str(cifar10_dir), "data.in_memory": False,
        "data.num_workers": 2, "data.max_per_class": 8, "model.img_size": 32, "model.patch_size": 4,
        "train.epochs": 1}))
    assert (run / "checkpoint-last.pth").is_file()


def _write_cifar10_pickles(folder, images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, str]:
    """torchvision's ``cifar-10-batches-py`` layout (rows of 3072 bytes: R, G, B planes; "labels"; every
    sixth image in each of data_batch_1..5 and test_batch). Returns each file's MD5."""
    import hashlib
    import pickle

    folder.mkdir(parents=True)
    rows = images.reshape(len(images), -1).numpy()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows[k::len(names)], "labels": labels[k::len(names)].tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": classes}, f)
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_download_flag_fetches_through_torchvision_and_the_pickled_release_loads_upright(cifar10_dir, tmp_path,
                                                                                         monkeypatch):
    from torchvision.datasets import CIFAR10

    from conftest import CLASSES, load_cifar_images

    images, labels = load_cifar_images(cifar10_dir, per_class=6)
    release = tmp_path / "release" / CIFAR10.base_folder
    md5 = _write_cifar10_pickles(release, images, labels, CLASSES)
    # torchvision verifies every file against these checksums, as it does the real release's
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    fetched = []

    def fetch(self):  # what torchvision's network fetch leaves on disk (there is no internet here)
        fetched.append(self.root)
        if not (Path(self.root) / self.base_folder).is_dir():
            shutil.copytree(release, Path(self.root) / self.base_folder)

    monkeypatch.setattr(CIFAR10, "download", fetch)
    root = tmp_path / "new"
    root.mkdir()
    with pytest.raises(DataError, match="pass --download to fetch it"):
        load_split("cifar10", "train", path=str(root))
    root.rmdir()
    train = load_split("cifar10", "train", path=str(root), download=True)
    assert fetched == [str(root)]  # the missing folder was created and handed to torchvision
    test = load_split("cifar10", "eval", path=str(root))
    # data_batch_1..5 are the training split and test_batch the evaluation split; the JPEG pixels come back
    # as [N, 3, H, W] exactly (HWC -> CHW once, nothing transposed or flipped)
    train_idx = [i for k in range(5) for i in range(k, len(images), 6)]  # batch files in order
    assert torch.equal(train.images, images[train_idx]) and torch.equal(train.labels, labels[train_idx])
    assert torch.equal(test.images, images[5::6]) and torch.equal(test.labels, labels[5::6])
    assert train.classes == CLASSES
    # the command line's --download reaches torchvision: a tiny pre-training into a folder that does not exist
    from conftest import tiny_cli_sets
    from imae.cli import main

    fetched.clear()
    main(["pretrain", "--preset", "cifar10-mae-tiny", "--download", "--data-path", str(tmp_path / "fresh"),
          "--output-dir", str(tmp_path / "run"), "--epochs", "1",
          *tiny_cli_sets(**{"data.max_per_class": 4, "train.batch_size": 8})])
    assert fetched == [str(tmp_path / "fresh")] and (tmp_path / "run" / "checkpoint-last.pth").is_file()


def test_file_loader_micro_batches_gathered_are_the_whole_batches(cifar10_dir):
    """What the full linear probe relies on to bound its loader memory: micro-batches of a file-based set,
    gathered in order, are exactly the whole batches (same images, same per-image crops)."""
    from imae.data.loader import build_train_loader
    from imae.eval.linprobe import _largest_divisor

    files = load_split("imagefolder", "train", path=str(cifar10_dir), img_size=32, in_memory=False,
                       max_per_class=5)
    whole = [b for _, b in build_train_loader(files, 16, 32, torch.device("cpu"), seed=1, num_workers=0).batches(0)]
    micro = [b for _, b in build_train_loader(files, 8, 32, torch.device("cpu"), seed=1, num_workers=0).batches(0)]
    assert len(whole) == 3 and len(micro) == 6
    for i, w in enumerate(whole):
        assert torch.equal(w.images, torch.cat([micro[2 * i].images, micro[2 * i + 1].images]))
        assert torch.equal(w.labels, torch.cat([micro[2 * i].labels, micro[2 * i + 1].labels]))
    assert _largest_divisor(16384, 256) == 256 and _largest_divisor(1000, 256) == 250 and _largest_divisor(7, 4) == 1
