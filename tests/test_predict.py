"""`vitmemad.predict` end to end: a tiny checkpoint scores a folder of good, odd and broken files; its exported
ONNX file scores them the same way; bf16 gives float32 maps close to fp32 ones; pictures carry their legend."""
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

from helpers import read_metrics, run_here
from vitmemad.data import DatasetError, load_image, preprocess, write_demo_dataset
from vitmemad.inference import calibrated_thresholds, image_size_of, list_inputs, load_module, output_names
from vitmemad.models.anomaly_map import resize_maps
from vitmemad.predict import COLUMNS
from vitmemad.utils.overlay_legend import display_scale, legend_canvas_size

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
def ckpt(smoke_run) -> str:
    """The shared smoke run's best checkpoint (read only: predict writes its outputs elsewhere)."""
    return read_metrics(smoke_run)["ckpt_path"]


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
        assert tuple(reader.fieldnames) == COLUMNS == ("path", "score", "label", "threshold", "error",
                                                       "score_normalized")  # appended after the contract's
        return list(reader)


def has_colour_bar(region: np.ndarray) -> bool:
    """A jet colour bar: strong blue and strong red pixels (the inputs' textures are grey or noise)."""
    r, g, b = (region[..., i].astype(int) for i in range(3))
    return bool(((b > 100) & (r < 40) & (g < 40)).any() and ((r > 100) & (g < 40) & (b < 40)).any())


def test_predict_folder_with_good_odd_and_broken_files(tmp_path, ckpt, inputs):
    out = tmp_path / "pred"
    proc = run_here("vitmemad.predict", f"ckpt_path={ckpt}", f"input={inputs}", f"output={out}", "masks=true",
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
        assert float(row["score_normalized"]) == pytest.approx(score / image_thr, rel=1e-12)
        assert rec["score_normalized"] == pytest.approx(rec["score"] / rec["threshold"], rel=1e-12)
        with Image.open(out / "overlays" / f"{stem}.png") as overlay:
            assert overlay.size == legend_canvas_size(h, w) and overlay.mode == "RGB"
            pixels = np.asarray(overlay.convert("RGB"))
        k = display_scale(h, w)
        assert overlay.width > w * k and overlay.height > h * k  # the colour bar and the verdict
        if stem == "good_000":
            assert has_colour_bar(pixels[:, w * k:])
        mask = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask > 0, amap > pixel_thr)
    for name, reason in BAD.items():
        row, rec = rows[name], by_name[name]
        assert reason in row["error"] and name in row["error"], row["error"]
        assert row["score"] == row["label"] == row["score_normalized"] == ""
        assert rec["score"] is None and rec["label"] is None and rec["score_normalized"] is None
        stem = Path(name).stem
        assert not (out / "maps" / f"{stem}.npy").exists() and not (out / "overlays" / f"{stem}.png").exists()
    assert sorted(p.stem for p in (out / "maps").iterdir()) == sorted(GOOD)

    # Predictions are never overwritten silently.
    again = run_here("vitmemad.predict", f"ckpt_path={ckpt}", f"input={inputs}", f"output={out}",
                       f"hydra.run.dir={tmp_path / 'run2'}", check=False)
    assert again.returncode != 0 and "already holds predictions" in again.stderr + again.stdout


def test_glob_threshold_override_and_overwrite(tmp_path, ckpt, inputs):
    out = tmp_path / "pred"
    out.mkdir()
    (out / "predictions.csv").write_text("old\n")
    common = [f"ckpt_path={ckpt}", f"input={inputs}/*_000.png", f"output={out}", "progress=false"]
    run_here("vitmemad.predict", *common, "threshold=0.0", "overwrite=true", "overlay_legend=false",
               f"hydra.run.dir={tmp_path / 'run'}")
    rows = read_csv(out / "predictions.csv")
    assert sorted(Path(r["path"]).name for r in rows) == ["good_000.png", "scratch_000.png", "spot_000.png"]
    assert all(r["label"] == "1" and float(r["threshold"]) == 0.0 and r["error"] == "" for r in rows)
    # A threshold of 0 gives no ratio: score_normalized is empty (null in JSON), the score is not.
    assert all(r["score_normalized"] == "" and float(r["score"]) > 0 for r in rows)
    assert all(r["score_normalized"] is None for r in json.loads((out / "predictions.json").read_text()))
    assert not (out / "masks").exists()
    with Image.open(out / "overlays" / "good_000.png") as overlay:  # overlay_legend=false: the bare overlay
        assert overlay.size == Image.open(inputs / "good_000.png").size


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
    run_here("vitmemad.predict", f"ckpt_path={ckpt}", f"input={new}", f"output={out}", "progress=false",
               "overwrite=true", f"hydra.run.dir={tmp_path / 'run2'}")
    for sub, suffix in (("maps", ".npy"), ("overlays", ".png")):
        assert sorted(p.name for p in (out / sub).iterdir()) == [f"good_000{suffix}", f"rotated{suffix}"], sub
    assert (out / "notes.txt").read_text() == "mine" and not list((out / "masks").iterdir())
    assert np.load(out / "maps" / "good_000.npy").ndim == 2  # rewritten by this run
    assert np.load(out / "maps" / "rotated.npy").shape == (60, 36)  # upright, as the image is shown
    overlay = np.asarray(Image.open(out / "overlays" / "rotated.png"))
    assert overlay.shape[:2] == legend_canvas_size(60, 36)[::-1] != legend_canvas_size(36, 60)[::-1]  # upright too
    assert load_image(new / "rotated.jpg").size == (36, 60)
    shown = np.asarray(load_image(new / "rotated.jpg").convert("L"))
    assert shown[:20].mean() > 200 and shown[25:].mean() < 50  # the band is at the top


# ---------------------------------------------------------------- pictures, ONNX, precision
def predict_here(compose, ckpt, inputs, out: Path, *overrides: str) -> dict[str, dict]:
    """predict in this process (the CLI's code path after Hydra); records by file name."""
    from vitmemad.predict import predict

    cfg = compose(f"ckpt_path={ckpt}", f"input={inputs}", f"output={out}", "progress=false", "num_threads=1",
                  *overrides, config_name="predict")
    return {Path(r["path"]).name: r for r in predict(cfg)}


def maps_of(out: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p) for p in sorted((out / "maps").glob("*.npy"))}


def test_examples_png_has_labels_scores_and_a_colour_bar(ckpt):
    from vitmemad.utils.visualize import examples_figure_size

    # TINY_DEMO's test set: 6 normal and 6 anomalous images -> 6 anomalous rows and 2 normal ones.
    path = Path(ckpt).parents[1] / "examples.png"
    with Image.open(path) as img:
        assert img.size == examples_figure_size(8) and img.mode == "RGB"
        pixels = np.asarray(img)
    assert has_colour_bar(pixels[:, -int(0.15 * img.width):])  # right of (and within) the ground-truth column


def test_onnx_file_predicts_like_its_checkpoint(tmp_path, compose, ckpt, inputs):
    import onnx

    from vitmemad.errors import VitmemadError
    from vitmemad.export import export_onnx

    onnx_path = tmp_path / "model.onnx"
    export_onnx(load_module(ckpt), onnx_path)
    from_ckpt = predict_here(compose, ckpt, inputs, tmp_path / "ckpt", "masks=true")
    from_onnx = predict_here(compose, onnx_path, inputs, tmp_path / "onnx", "masks=true")
    assert read_csv(tmp_path / "onnx" / "predictions.csv")  # same columns (checked inside)
    assert list(from_onnx) == list(from_ckpt) and len(from_onnx) == len(GOOD) + len(BAD)
    parity = json.loads({p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}["vitmemad.parity"])
    assert parity["atol"] == 1e-4 and parity["max_abs_diff"] <= parity["atol"]
    for name, ref in from_ckpt.items():
        got = from_onnx[name]
        assert got["threshold"] == ref["threshold"] and (got["error"] is None) == (ref["error"] is None)
        if ref["error"] is None:
            assert got["score"] == pytest.approx(ref["score"], abs=parity["atol"])
            assert got["score_normalized"] == pytest.approx(got["score"] / got["threshold"], rel=1e-12)
    ckpt_maps, onnx_maps = maps_of(tmp_path / "ckpt"), maps_of(tmp_path / "onnx")
    assert sorted(onnx_maps) == sorted(GOOD) == sorted(ckpt_maps)
    for stem, ref in ckpt_maps.items():
        assert onnx_maps[stem].dtype == np.float32 and onnx_maps[stem].shape == ref.shape
        np.testing.assert_allclose(onnx_maps[stem], ref, rtol=0, atol=parity["atol"])
    assert sorted(p.name for p in (tmp_path / "onnx" / "overlays").iterdir()) == \
        sorted(p.name for p in (tmp_path / "ckpt" / "overlays").iterdir())
    assert len(list((tmp_path / "onnx" / "masks").iterdir())) == len(GOOD)

    # An ONNX file without vitmemad's metadata: one error naming the file, before anything is written.
    bare = onnx.load(str(onnx_path))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(VitmemadError, match=r"bare\.onnx has no vitmemad metadata"):
        predict_here(compose, tmp_path / "bare.onnx", inputs, tmp_path / "bare")
    assert not (tmp_path / "bare" / "predictions.csv").exists()
    proc = run_here("vitmemad.predict", f"ckpt_path={tmp_path / 'bare.onnx'}", f"input={inputs}",
                      f"output={tmp_path / 'bare'}", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'bare.onnx'} has no vitmemad metadata")


def test_precision_key(tmp_path, compose, ckpt, inputs):
    from vitmemad.errors import ConfigError

    fp32 = predict_here(compose, ckpt, inputs, tmp_path / "fp32", "overlays=false")
    bf16 = predict_here(compose, ckpt, inputs, tmp_path / "bf16", "overlays=false", "precision=bf16-mixed")
    ref, got = maps_of(tmp_path / "fp32"), maps_of(tmp_path / "bf16")
    assert sorted(got) == sorted(GOOD)
    for stem in GOOD:
        assert got[stem].dtype == np.float32 and got[stem].shape == ref[stem].shape
        np.testing.assert_allclose(got[stem], ref[stem], rtol=0.02, atol=2e-3)
        assert isinstance(bf16[f"{stem}.png"]["score"], float)
        assert bf16[f"{stem}.png"]["score"] == pytest.approx(fp32[f"{stem}.png"]["score"], rel=0.02)
    assert any(not np.array_equal(got[s], ref[s]) for s in GOOD)  # the forward pass did run in bfloat16

    with pytest.raises(ConfigError, match="precision=fp16 is not supported"):
        predict_here(compose, ckpt, inputs, tmp_path / "x", "precision=fp16")
    with pytest.raises(ConfigError, match=r"precision=bf16-mixed is not available with ckpt_path=.*\.onnx"):
        predict_here(compose, tmp_path / "model.onnx", inputs, tmp_path / "x", "precision=bf16-mixed")
    assert not (tmp_path / "x").exists()  # refused before anything was read or written


def test_normalized_score_is_empty_where_no_ratio_exists():
    from vitmemad.predict import normalized_score

    assert normalized_score(1.17, 0.18) == pytest.approx(6.5)
    assert normalized_score(0.09, 0.18) == pytest.approx(0.5)
    assert normalized_score(None, 0.18) is None and normalized_score(1.0, None) is None
    assert normalized_score(1.0, 0.0) is None and normalized_score(1.0, -0.5) is None
