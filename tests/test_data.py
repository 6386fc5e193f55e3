"""Tests for vitmemad.data on real small data: PIL-written fixtures, the demo textures, real MVTec bottle."""
from __future__ import annotations

import logging
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import skimage.data
import pytest
import torch
from PIL import Image

from fixtures_data import make_btad, make_folder, make_mvtec, noise, square_mask, write_image
from vitmemad.data import (
    BTAD_PRODUCTS, DEMO_CATEGORIES, MVTEC_CATEGORIES, BTADDataModule, DatasetError, DemoDataModule,
    FolderDataModule, MVTecDataModule, collate, generate_demo, load_image, load_mask, write_demo_dataset,
)
from vitmemad.data import dataset as data_dataset
from vitmemad.data import io as data_io

S = 16  # model input size used by most tests


def check_item(item: dict, size: int = S) -> None:
    img = item["image"]
    assert img.dtype == torch.float32 and img.shape == (3, size, size)
    assert -1.0 <= img.min() and img.max() <= 1.0
    assert item["mask"].dtype == torch.uint8 and item["mask"].ndim == 2
    assert set(item["mask"].unique().tolist()) <= {0, 1}
    assert item["label"] in (0, 1) and isinstance(item["defect"], str) and isinstance(item["path"], str)
    if item["label"] == 0:
        assert item["mask"].sum() == 0


# ----------------------------------------------------------------------------- io
def test_constants():
    assert len(MVTEC_CATEGORIES) == 15 and "bottle" in MVTEC_CATEGORIES and "metal_nut" in MVTEC_CATEGORIES
    assert BTAD_PRODUCTS == ("01", "02", "03")
    assert DEMO_CATEGORIES == ("brick", "grass", "gravel")
    assert issubclass(DatasetError, ValueError)


def test_load_image_modes(tmp_path, caplog):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    assert np.array_equal(np.asarray(load_image(write_image(tmp_path / "l.png", gray)))[..., 1], gray)

    a16 = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    img16 = load_image(write_image(tmp_path / "i16.png", a16))
    assert img16.mode == "RGB" and np.asarray(img16)[0, :, 0].tolist() == [0, 1, 128, 255]

    rgba = np.dstack([noise(np.random.default_rng(0), (8, 8)), np.full((8, 8), 7, np.uint8)])
    data_io._warned_alpha = False
    with caplog.at_level(logging.WARNING, logger="vitmemad.data.io"):
        out = load_image(write_image(tmp_path / "rgba.png", rgba))
        load_image(tmp_path / "rgba.png")
    assert np.array_equal(np.asarray(out), rgba[..., :3])
    assert sum("alpha" in r.message for r in caplog.records) == 1  # warned once

    rgb = noise(np.random.default_rng(1), (8, 8))
    for mode, name in (("P", "p.png"), ("CMYK", "c.jpg")):
        assert load_image(write_image(tmp_path / name, rgb, mode=mode)).mode == "RGB"


def test_load_image_errors_name_the_file(tmp_path, monkeypatch):
    good = write_image(tmp_path / "ok.png", noise(np.random.default_rng(0), (64, 64)))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    for bad in (truncated, garbage, tmp_path / "missing.png"):
        with pytest.raises(DatasetError, match=bad.name):
            load_image(bad)
    # Decompression-bomb protection stays on; both PIL's warning and error become DatasetError.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for side in (40, 60):  # 1600 px: PIL warns; 3600 px > 2x limit: PIL errors
            big = write_image(tmp_path / f"big{side}.png", np.zeros((side, side), np.uint8))
            with pytest.raises(DatasetError, match=f"big{side}.png.*decompression"):
                load_image(big)


def test_load_mask_binarises(tmp_path):
    m = np.array([[0, 1, 128, 255]], np.uint8)
    assert load_mask(write_image(tmp_path / "m.png", m)).tolist() == [[0, 1, 1, 1]]
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0, 2] = 9
    out = load_mask(write_image(tmp_path / "rgb.png", rgb))
    assert out.dtype == np.uint8 and out.tolist() == [[1, 0], [0, 0]]


def test_collate_stacks_or_lists():
    def item(h, w, label):
        return {"image": torch.zeros(3, 4, 4), "mask": torch.zeros(h, w, dtype=torch.uint8),
                "label": label, "defect": "good" if label == 0 else "x", "path": f"p{label}"}

    b = collate([item(5, 6, 0), item(5, 6, 1)])
    assert b["image"].shape == (2, 3, 4, 4) and b["mask"].shape == (2, 5, 6)
    assert b["label"].tolist() == [0, 1] and b["label"].dtype == torch.long
    assert b["defect"] == ["good", "x"] and b["path"] == ["p0", "p1"]
    b = collate([item(5, 6, 0), item(7, 6, 1)])
    assert isinstance(b["mask"], list) and [m.shape for m in b["mask"]] == [(5, 6), (7, 6)]


# ----------------------------------------------------------------------------- MVTec
def test_mvtec_tiny_items_and_splits(tmp_path):
    root = make_mvtec(tmp_path, n_train=10, gray=True)
    dm = MVTecDataModule(root=root, category="widget", image_size=S, batch_size=4, val_fraction=0.2, seed=3)
    assert dm.num_test_images == 6 and dm.has_masks and dm.category == "widget"
    dm.setup("fit")
    assert len(dm.train_dataset) == 8 and len(dm.val_dataset) == 2 and len(dm.test_dataset) == 6
    train_paths = {s.path for s in dm.train_dataset.samples}
    val_paths = {s.path for s in dm.val_dataset.samples}
    assert not train_paths & val_paths and all("/train/good/" in p for p in train_paths | val_paths)
    # seeded: the same seed gives the same hold-out, another seed (usually) another one
    again = MVTecDataModule(root=root, category="widget", image_size=S, batch_size=4, val_fraction=0.2, seed=3)
    again.setup()
    assert {s.path for s in again.val_dataset.samples} == val_paths

    items = [dm.test_dataset[i] for i in range(len(dm.test_dataset))]
    for it in items:
        check_item(it)
        assert it["mask"].shape == (40, 48)  # native resolution, not image_size
        assert torch.equal(it["image"][0], it["image"][1])  # grayscale → 3 equal channels
    assert [it["defect"] for it in items] == ["crack", "crack", "good", "good", "good", "hole"]
    assert [it["label"] for it in items] == [1, 1, 0, 0, 0, 1]
    assert all(it["mask"].sum() == 10 * 12 for it in items if it["label"] == 1)

    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (4, 3, S, S) and batch["mask"].shape == (4, 40, 48)
    train_loader = dm.train_dataloader()
    assert train_loader.drop_last and len(train_loader) == 2
    order = lambda: [p for b in dm.train_dataloader() for p in b["path"]]  # noqa: E731
    assert order() == order()  # seeded shuffling
    assert not dm.val_dataloader().drop_last
    assert [p for b in dm.predict_dataloader() for p in b["path"]] == [it["path"] for it in items]


def test_mvtec_small_train_set_keeps_last_batch(tmp_path):
    dm = MVTecDataModule(root=make_mvtec(tmp_path, n_train=4), category="widget", image_size=S,
                         batch_size=8, val_fraction=0.25)
    assert not dm.train_dataloader().drop_last and len(next(iter(dm.train_dataloader()))["path"]) == 3


def test_mvtec_cache_decodes_each_file_once(tmp_path, monkeypatch):
    calls = []
    real = data_dataset.load_image
    monkeypatch.setattr(data_dataset, "load_image", lambda p: calls.append(p) or real(p))
    dm = MVTecDataModule(root=make_mvtec(tmp_path), category="widget", image_size=S, batch_size=4)
    loader = dm.train_dataloader()
    epochs = [[p for b in loader for p in b["path"]] for _ in range(4)]
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled every epoch (the generator advances)
    assert len(calls) == len(set(calls)) == len(set().union(*epochs))
    pickle.dumps(dm.train_dataset)  # picklable for spawn-started workers


def test_mvtec_augment_flips_textures_only(tmp_path):
    root = make_mvtec(tmp_path, category="carpet")
    make_mvtec(tmp_path, category="bottle")
    torch.manual_seed(0)
    tex = MVTecDataModule(root=root, category="carpet", image_size=S, batch_size=2, augment=True)
    tex.setup()
    plain = tex.train_dataset.samples[0]
    ref = MVTecDataModule(root=root, category="carpet", image_size=S, batch_size=2)
    ref.setup()
    x = next(ref.train_dataset[i]["image"] for i, s in enumerate(ref.train_dataset.samples) if s == plain)
    flips = [x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)]
    seen = set()
    for _ in range(40):
        y = tex.train_dataset[0]["image"]
        seen.add(next(k for k, f in enumerate(flips) if torch.equal(y, f)))
    assert seen == {0, 1, 2, 3}
    obj = MVTecDataModule(root=root, category="bottle", image_size=S, batch_size=2, augment=True)
    obj.setup()
    assert len({tuple(obj.train_dataset[0]["image"].flatten().tolist()) for _ in range(10)}) == 1


def test_mvtec_missing_root_and_unknown_category(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="nowhere.*Expected layout.*train/good"):
        MVTecDataModule(root=missing, category="bottle", image_size=S, batch_size=2).setup()
    root = make_mvtec(tmp_path / "mv", category="widget")
    with pytest.raises(DatasetError) as err:
        MVTecDataModule(root=root, category="botle", image_size=S, batch_size=2).setup()
    msg = str(err.value)
    assert "botle" in msg and "'widget'" in msg and "bottle" in msg and "zipper" in msg
    with pytest.raises(DatasetError, match="category folder itself"):
        MVTecDataModule(root=root / "widget", category="widget", image_size=S, batch_size=2).setup()


def test_mvtec_layout_errors_name_the_path(tmp_path):
    root = make_mvtec(tmp_path / "a")
    (root / "widget" / "ground_truth" / "hole" / "000_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"test/hole/000\.png.*ground_truth/hole/000_mask\.png"):
        MVTecDataModule(root=root, category="widget", image_size=S, batch_size=2).setup()

    root = make_mvtec(tmp_path / "b")
    write_image(root / "widget" / "ground_truth" / "crack" / "001_mask.png", square_mask((20, 48)))
    with pytest.raises(DatasetError, match=r"001_mask\.png.*48x20.*crack/001\.png.*48x40"):
        MVTecDataModule(root=root, category="widget", image_size=S, batch_size=2).setup()

    root = make_mvtec(tmp_path / "c")
    shutil.rmtree(root / "widget" / "train" / "good")
    (root / "widget" / "train" / "good").mkdir()
    with pytest.raises(DatasetError, match=r"train/good.*no images"):
        MVTecDataModule(root=root, category="widget", image_size=S, batch_size=2).setup()

    root = make_mvtec(tmp_path / "d")
    bad = root / "widget" / "test" / "good" / "001.png"
    bad.write_bytes(bad.read_bytes()[:60])
    dm = MVTecDataModule(root=root, category="widget", image_size=S, batch_size=2)
    with pytest.raises(DatasetError, match=r"test/good/001\.png"):
        list(dm.test_dataloader())


# ----------------------------------------------------------------------------- BTAD
@pytest.mark.parametrize("ext,mask_suffix", [(".bmp", ""), (".png", "_mask"), (".jpg", "")])
def test_btad_layout(tmp_path, ext, mask_suffix):
    root = make_btad(tmp_path, product="02", ext=ext, mask_suffix=mask_suffix)
    dm = BTADDataModule(root=root, category="02", image_size=S, batch_size=2, val_fraction=0.2)
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), dm.num_test_images) == (5, 1, 4)
    items = [dm.test_dataset[i] for i in range(4)]
    for it in items:
        check_item(it)
        assert it["mask"].shape == (36, 36)
    assert [(it["label"], it["defect"]) for it in items] == [(0, "good")] * 2 + [(1, "ko")] * 2
    assert all(it["mask"].sum() > 0 for it in items[2:])


def test_btad_int_category_is_converted_with_warning(tmp_path, caplog):
    root = make_btad(tmp_path, product="01")
    with caplog.at_level(logging.WARNING, logger="vitmemad.data.btad"):
        dm = BTADDataModule(root=root, category=1, image_size=S, batch_size=2)
    assert dm.category == "01" and dm.num_test_images == 4
    assert any("'01'" in r.message for r in caplog.records)


def test_btad_errors(tmp_path):
    root = make_btad(tmp_path, product="01")
    with pytest.raises(DatasetError) as err:
        BTADDataModule(root=root, category="03", image_size=S, batch_size=2).setup()
    assert "03" in str(err.value) and "['01']" in str(err.value)
    (root / "01" / "ground_truth" / "ko" / "0001.png").unlink()
    with pytest.raises(DatasetError, match=r"ko/0001\.bmp.*ground_truth/ko/0001\.png"):
        BTADDataModule(root=root, category="01", image_size=S, batch_size=2).setup()


# ----------------------------------------------------------------------------- Folder
def test_folder_without_masks(tmp_path):
    dirs = make_folder(tmp_path, masks=False)
    dm = FolderDataModule(**dirs, image_size=S, batch_size=4, val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    assert dm.has_masks is False
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (6, 2, 5)
    train_val = {s.path for s in dm.train_dataset.samples + dm.val_dataset.samples}
    test_normals = {s.path for s in dm.test_dataset.samples if s.label == 0}
    assert len(test_normals) == 2 and not train_val & test_normals  # seeded hold-out of normal_dir
    for it in (dm.test_dataset[i] for i in range(5)):
        check_item(it)
        assert it["mask"].sum() == 0 and it["defect"] in ("good", "abnormal")


def test_folder_with_masks_and_normal_test_dir(tmp_path):
    dirs = make_folder(tmp_path)
    for i in range(2):
        write_image(tmp_path / "normal_test" / f"t{i}.png", noise(np.random.default_rng(i), (30, 30)))
    dm = FolderDataModule(**dirs, normal_test_dir=tmp_path / "normal_test", image_size=S, batch_size=4)
    dm.setup()
    assert dm.has_masks and len(dm.train_dataset) + len(dm.val_dataset) == 10 and dm.num_test_images == 5
    ab = [dm.test_dataset[i] for i in range(5) if dm.test_dataset.samples[i].label == 1]
    assert len(ab) == 3 and all(it["mask"].sum() == 8 * 8 for it in ab)
    # relative folders resolve under `root`
    rel = FolderDataModule("normal", "abnormal", "masks", root=tmp_path, image_size=S, batch_size=4)
    assert rel.num_test_images == 2 + 3


def test_folder_errors(tmp_path):
    dirs = make_folder(tmp_path)
    (dirs["mask_dir"] / "a01_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"abnormal/a01\.jpg.*masks/a01\.png"):
        FolderDataModule(**dirs, image_size=S, batch_size=4).setup()
    with pytest.raises(DatasetError, match="no_such_dir"):
        FolderDataModule(tmp_path / "no_such_dir", dirs["abnormal_dir"], image_size=S, batch_size=4).setup()


# ----------------------------------------------------------------------------- demo
DEMO_SMALL = dict(crop_size=64, n_train=20, n_test_good=6, n_test_defect=9)


def test_demo_masks_are_exact_and_deterministic():
    data = generate_demo("brick", 0)  # the defaults: 160 / 40 / 40 at 128 px
    assert len(data.train) == 160 and len(data.test) == 80
    fresh = generate_demo.__wrapped__("brick", 0)  # bypass the cache: regenerate from scratch
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(data.test, fresh.test))
    other = generate_demo("brick", 1, **DEMO_SMALL)
    assert not np.array_equal(other.test[0][2], generate_demo("brick", 0, **DEMO_SMALL).test[0][2])
    for category in DEMO_CATEGORIES:
        data = generate_demo(category, 0)
        defects = [row for row in data.test if row[3] is not None]
        assert sorted({row[1] for row in defects}) == ["patch", "scratch", "spot"]
        for name, defect, img, mask in defects:
            assert name == f"demo/{category}/test/{name.rsplit('/', 1)[1]}" and name.split("/")[-1].startswith(defect)
            diff = np.abs(img.astype(int) - data.clean[name].astype(int))
            assert diff[mask == 0].max() == 0, name  # nothing changes outside the mask
            assert diff[mask == 1].mean() >= 20, name  # clearly visible inside it
            assert 0.005 <= mask.mean() <= 0.08, (name, mask.mean())


def test_demo_stains_leave_the_range_of_every_normal_material():
    # brick has two materials (brick ~100, mortar ~170); a stain must not turn one into the other
    lo, hi = np.percentile(skimage.data.brick(), [2, 98])
    stains = [img[mask == 1].mean() for _, defect, img, mask in generate_demo("brick", 0).test if defect == "spot"]
    assert len(stains) >= 10
    assert all(m < lo or m > hi for m in stains), (lo, hi, sorted(stains))


def test_demo_train_and_test_crops_do_not_overlap():
    data = generate_demo("grass", 0)
    size = data.crop_size
    tr = [p for n, p in data.positions.items() if "/train/" in n]
    te = [p for n, p in data.positions.items() if "/test/" in n]
    for ty, tx in te:
        for ry, rx in tr:
            assert abs(ty - ry) >= size or abs(tx - rx) >= size


def test_demo_datamodule_items():
    dm = DemoDataModule("gravel", image_size=S, batch_size=4, **DEMO_SMALL)
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), dm.num_test_images) == (18, 2, 15)
    assert dm.has_masks and dm.category == "gravel"
    batch = next(iter(dm.test_dataloader()))
    assert batch["mask"].shape == (4, 64, 64) and batch["image"].shape == (4, 3, S, S)
    for i in range(len(dm.test_dataset)):
        it = dm.test_dataset[i]
        check_item(it)
        assert (it["mask"].sum() > 0) == (it["label"] == 1) == (it["defect"] != "good")
    assert dm.test_dataset[0]["path"] == "demo/gravel/test/good_000"
    pickle.dumps(dm.test_dataset)
    with pytest.raises(DatasetError, match="marble.*brick"):
        DemoDataModule("marble", image_size=S, batch_size=4)


def test_write_demo_dataset_round_trips_through_mvtec(tmp_path):
    out = write_demo_dataset(tmp_path, "brick", seed=0, **DEMO_SMALL)
    assert out == tmp_path / "brick"
    assert len(list((out / "train" / "good").glob("*.png"))) == 20
    assert sorted(p.name for p in (out / "ground_truth").iterdir()) == ["patch", "scratch", "spot"]
    assert (out / "ground_truth" / "scratch" / "000_mask.png").is_file()
    files = MVTecDataModule(root=tmp_path, category="brick", image_size=S, batch_size=4, val_fraction=0)
    mem = DemoDataModule("brick", image_size=S, batch_size=4, val_fraction=0, **DEMO_SMALL)
    files.setup(), mem.setup()
    by_name = {s.path.rsplit("/", 1)[1]: i for i, s in enumerate(mem.test_dataset.samples)}
    assert files.num_test_images == mem.num_test_images == 15
    for i, s in enumerate(files.test_dataset.samples):
        a = files.test_dataset[i]
        b = mem.test_dataset[by_name[f"{a['defect']}_{Path(s.path).stem}"]]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


# ----------------------------------------------------------------------------- real MVTec bottle
@pytest.mark.real
def test_real_mvtec_bottle(mvtec_root):
    dm = MVTecDataModule(root=mvtec_root, category="bottle", image_size=32, batch_size=16)
    dm.setup()
    assert len(dm.train_dataset) + len(dm.val_dataset) == 209 and len(dm.val_dataset) == 21
    assert dm.num_test_images == 83
    samples = dm.test_dataset.samples
    assert sum(s.mask_path is not None for s in samples) == 63
    assert {s.defect for s in samples} == {"good", "broken_large", "broken_small", "contamination"}
    labels, n_masks = [], 0
    for batch in dm.test_dataloader():
        assert batch["image"].shape[1:] == (3, 32, 32) and batch["mask"].shape[1:] == (384, 384)
        labels += batch["label"].tolist()
        n_masks += int((batch["mask"].flatten(1).sum(1) > 0).sum())
    assert sum(labels) == 63 and n_masks == 63


# ----------------------------------------------------------------------------- Lightning
def test_datamodule_drives_a_lightning_trainer(tmp_path):
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = {"val": 0, "test": 0}

        def training_step(self, batch, _):
            return ((batch["image"].mean() - self.w) ** 2).sum()

        def validation_step(self, batch, _):
            assert batch["label"].sum() == 0  # validation holds normal TRAIN images only
            self.seen["val"] += len(batch["path"])

        def test_step(self, batch, _):
            self.seen["test"] += len(batch["path"])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = DemoDataModule("brick", image_size=S, batch_size=4, **DEMO_SMALL)
    model = Tiny()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    assert model.seen["val"] >= 2 and model.seen["test"] == dm.num_test_images
