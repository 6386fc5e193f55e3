"""`vitmemad.predict` end to end: a tiny checkpoint scores a folder of good, odd and broken files."""
from __future__ import annotations

import csv
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TINY_DEMO, read_metrics, run_module
from vitmemad.data import DatasetError, load_image, preprocess, write_demo_dataset
from vitmemad.inference import calibrated_thresholds, image_size_of, list_inputs, load_module, output_names
from vitmemad.models.anomaly_map import resize_maps
from vitmemad.predict import COLUMNS

GOOD = ("good_000", "scratch_000", "spot_000", "gray", "rgba_wide", "gray16")
BAD = {  # file name -> a piece of the reason predictions.csv must give
    "corrupt.png": "cannot identify image file",
    "truncated.png": "truncated",
    "notes.jpg": "cannot identify image file",
    "bomb.png": "decompression-bomb",
}


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (no pixel data): a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    run_dir = tmp_path_factory.mktemp("train")
    run_module("vitmemad.train", *TINY_DEMO, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}")
    return read_metrics(run_dir)["ckpt_path"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("inputs")
    demo = write_demo_dataset(tmp / "demo", "brick", crop_size=64, n_train=1, n_test_good=1, n_test_defect=2)
    folder = tmp / "images"
    folder.mkdir()
    shutil.copy(demo / "test" / "good" / "000.png", folder / "good_000.png")
    shutil.copy(demo / "test" / "scratch" / "000.png", folder / "scratch_000.png")
    shutil.copy(demo / "test" / "spot" / "000.png", folder / "spot_000.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8)).save(folder / "gray.png")  # mode L
    Image.fromarray(rng.integers(0, 256, (37, 90, 4), dtype=np.uint8), "RGBA").save(folder / "rgba_wide.png")
    Image.fromarray(rng.integers(0, 65535, (40, 33), dtype=np.uint16)).save(folder / "gray16.png")  # 16-bit
    (folder / "corrupt.png").write_bytes(rng.bytes(500))
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    noise.save(tmp / "full.png")
    data = (tmp / "full.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "notes.jpg").write_text("not an image\n")
    (folder / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    (folder / "README.txt").write_text("no image suffix: skipped, not reported\n")
    return folder


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        return list(reader)


def test_predict_folder_with_good_odd_and_broken_files(tmp_path, ckpt, inputs):
    out = tmp_path / "pred"
    proc = run_module("vitmemad.predict", f"ckpt_path={ckpt}", f"input={inputs}", f"output={out}", "masks=true",
                      "batch_size=4", f"hydra.run.dir={tmp_path / 'run'}")
    assert "predict: 100%" in proc.stderr  # the progress bar

    rows = {Path(r["path"]).name: r for r in read_csv(out / "predictions.csv")}
    assert set(rows) == {f"{s}.png" for s in GOOD} | set(BAD)  # README.txt is not an image: not listed
    records = json.loads((out / "predictions.json").read_text())
    assert [Path(r["path"]).name for r in records] == [Path(r["path"]).name for r in read_csv(out / "predictions.csv")]

    module = load_module(ckpt)
    image_thr, pixel_thr = calibrated_thresholds(module)
    assert image_thr is not None and pixel_thr is not None
    size = image_size_of(module)
    by_name = {Path(r["path"]).name: r for r in records}
    for stem in GOOD:
        row, rec = rows[f"{stem}.png"], by_name[f"{stem}.png"]
        assert row["error"] == "" and rec["error"] is None
        original = Image.open(inputs / f"{stem}.png")
        w, h = original.size
        amap = np.load(out / "maps" / f"{stem}.npy")
        assert amap.shape == (h, w) and amap.dtype == np.float32
        # The same map as AnomalyModule.score on the preprocessed image, resized to the original size.
        with torch.inference_mode():
            ref, _ = module.score(preprocess(load_image(inputs / f"{stem}.png"), size)[None])
        ref = resize_maps(ref, (h, w))[0].numpy()
        np.testing.assert_allclose(amap, ref, rtol=0, atol=1e-5)
        score = float(row["score"])
        assert score == pytest.approx(float(amap.max()), abs=1e-7) and rec["score"] == pytest.approx(score)
        assert float(row["threshold"]) == pytest.approx(image_thr) and rec["threshold"] == pytest.approx(image_thr)
        assert int(row["label"]) == rec["label"] == int(score > image_thr)
        with Image.open(out / "overlays" / f"{stem}.png") as overlay:
            assert overlay.size == (w, h) and overlay.mode == "RGB"
        mask = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask > 0, amap > pixel_thr)
    for name, reason in BAD.items():
        row, rec = rows[name], by_name[name]
        assert reason in row["error"] and name in row["error"], row["error"]
        assert row["score"] == row["label"] == "" and rec["score"] is None and rec["label"] is None
        stem = Path(name).stem
        assert not (out / "maps" / f"{stem}.npy").exists() and not (out / "overlays" / f"{stem}.png").exists()
    assert sorted(p.stem for p in (out / "maps").iterdir()) == sorted(GOOD)

    # Predictions are never overwritten silently.
    again = run_module("vitmemad.predict", f"ckpt_path={ckpt}", f"input={inputs}", f"output={out}",
                       f"hydra.run.dir={tmp_path / 'run2'}", check=False)
    assert again.returncode != 0 and "already holds predictions" in again.stderr + again.stdout


def test_glob_threshold_override_and_overwrite(tmp_path, ckpt, inputs):
    out = tmp_path / "pred"
    out.mkdir()
    (out / "predictions.csv").write_text("old\n")
    common = [f"ckpt_path={ckpt}", f"input={inputs}/*_000.png", f"output={out}", "progress=false"]
    run_module("vitmemad.predict", *common, "threshold=0.0", "overwrite=true", f"hydra.run.dir={tmp_path / 'run'}")
    rows = read_csv(out / "predictions.csv")
    assert sorted(Path(r["path"]).name for r in rows) == ["good_000.png", "scratch_000.png", "spot_000.png"]
    assert all(r["label"] == "1" and float(r["threshold"]) == 0.0 and r["error"] == "" for r in rows)
    assert not (out / "masks").exists()


def test_list_inputs(tmp_path, inputs):
    assert list_inputs(inputs / "gray.png") == [inputs / "gray.png"]
    assert list_inputs(inputs / "notes.jpg") == [inputs / "notes.jpg"]  # reported per file, later
    names = [p.name for p in list_inputs(inputs)]
    assert names == sorted(names) and "README.txt" not in names and "gray.png" in names
    assert [p.name for p in list_inputs(f"{inputs}/s*.png")] == ["scratch_000.png", "spot_000.png"]
    with pytest.raises(DatasetError, match="no such file or folder"):
        list_inputs(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no image files"):
        list_inputs(f"{inputs}/*.bmp")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        list_inputs(tmp_path / "empty")


def test_output_names_are_unique():
    paths = [Path("/d/good/000.png"), Path("/d/crack/000.png"), Path("/d/crack/001.png"), Path("/d/x/a.png"),
             Path("/d/x/a.jpg")]
    assert output_names(paths) == ["good__000", "crack__000", "001", "x__a_png", "x__a_jpg"]
    assert output_names([Path("a/b.png"), Path("a/c.png")]) == ["b", "c"]


def write_rotated_jpeg(path: Path, upright: np.ndarray, orientation: int = 6) -> Path:
    """Store ``upright`` turned so that a viewer applying EXIF ``orientation`` (6: turn 90° clockwise) shows it."""
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # 90° counter-clockwise: undone by orientation 6
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    return path


def test_overwrite_keeps_only_this_runs_outputs_and_maps_follow_exif(tmp_path, ckpt, inputs):
    out = tmp_path / "pred"
    for name in ("predictions.csv", "maps/old.npy", "maps/good_000.npy", "overlays/old.png", "masks/old.png"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"an earlier run's output")
    (out / "notes.txt").write_text("mine")  # not an output: stays
    upright = np.zeros((60, 36, 3), np.uint8)
    upright[:20] = 255  # a bright band at the top, as a viewer shows it
    new = tmp_path / "new"
    write_rotated_jpeg(new / "rotated.jpg", upright)
    shutil.copy(inputs / "good_000.png", new / "good_000.png")
    run_module("vitmemad.predict", f"ckpt_path={ckpt}", f"input={new}", f"output={out}", "progress=false",
               "overwrite=true", f"hydra.run.dir={tmp_path / 'run2'}")
    for sub, suffix in (("maps", ".npy"), ("overlays", ".png")):
        assert sorted(p.name for p in (out / sub).iterdir()) == [f"good_000{suffix}", f"rotated{suffix}"], sub
    assert (out / "notes.txt").read_text() == "mine" and not list((out / "masks").iterdir())
    assert np.load(out / "maps" / "good_000.npy").ndim == 2  # rewritten by this run
    assert np.load(out / "maps" / "rotated.npy").shape == (60, 36)  # upright, as the image is shown
    overlay = np.asarray(Image.open(out / "overlays" / "rotated.png"))
    assert overlay.shape[:2] == (60, 36)
    assert load_image(new / "rotated.jpg").size == (36, 60)
    shown = np.asarray(load_image(new / "rotated.jpg").convert("L"))
    assert shown[:20].mean() > 200 and shown[25:].mean() < 50  # the band is at the top
