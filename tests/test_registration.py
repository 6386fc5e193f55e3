"""``registration=shift``: each scored image is shifted onto the normal validation images' mean before it is
reconstructed, and its reconstruction shifted back, so a test set taken a few pixels off the training position is
not scored as anomalous everywhere."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import REPO_ROOT, TINY_DEMO, read_metrics, run_here
from vitmemad.data import write_demo_dataset
from vitmemad.data.io import load_image
from vitmemad.data.transforms import preprocess
from vitmemad.inference import load_module
from vitmemad.models import AnomalyMapGenerator, MeanImage, ShiftRegistration
from vitmemad.models.registration import registered_forward

sys.path.insert(0, str(REPO_ROOT / "experiments"))
import select_map  # noqa: E402

SIZE = 32


def aligned_object(seed: int = 0) -> torch.Tensor:
    """(3, S, S) images of one aligned object: a bright square with a darker stripe, on noise-free background."""
    g = torch.Generator().manual_seed(seed)
    image = -torch.ones(3, SIZE, SIZE)
    image[:, 8:24, 10:22] = 0.6
    image[:, 14:17, 10:22] = -0.2
    return image + 0.01 * torch.randn(3, SIZE, SIZE, generator=g)


def registration_on(reference: torch.Tensor, max_shift: int = 4) -> ShiftRegistration:
    registration = ShiftRegistration(max_shift, SIZE)
    registration.set_reference(reference)
    return registration


@pytest.mark.parametrize("offset", [(2, -3), (-4, 4), (0, 1), (0, 0)])
def test_the_offset_moves_an_image_back_onto_the_reference(offset):
    reference = aligned_object()
    registration = registration_on(reference)
    moved = registration.shift(reference[None], torch.tensor([offset]))
    found = registration.offsets(moved)
    assert found.tolist() == [[-offset[0], -offset[1]]]
    back = registration.shift(moved, found)
    assert torch.allclose(back[..., 4:-4, 4:-4], reference[..., 4:-4, 4:-4])


def test_ties_keep_the_image_where_it_is():
    registration = registration_on(torch.zeros(3, SIZE, SIZE))
    assert registration.offsets(torch.zeros(2, 3, SIZE, SIZE)).tolist() == [[0, 0], [0, 0]]


def test_a_position_bound_model_rebuilds_a_moved_image_only_when_registered():
    """A model that can only draw its training position (the mean image) scores every pixel of a moved normal
    image as anomalous; registered, the moved image's map is as quiet as an aligned one's."""
    reference = aligned_object()
    net = MeanImage(image_size=SIZE)
    net.mean_image.copy_(reference)
    net.images_seen.fill_(1)
    maps = AnomalyMapGenerator(source="l2", sigma=0.0)
    registration = registration_on(reference)
    moved = registration.shift(aligned_object(seed=1)[None], torch.tensor([[1, 3]]))
    plain = maps(moved, registered_forward(net, None, moved)["reconstruction"])
    registered = maps(moved, registered_forward(net, registration, moved)["reconstruction"])
    interior = (..., slice(4, -4), slice(4, -4))
    assert plain[interior].max() > 0.5
    assert registered[interior].max() < 0.01


def test_before_its_reference_is_set_nothing_is_shifted():
    registration = ShiftRegistration(4, SIZE)
    images = aligned_object()[None]
    calls = []
    out = registered_forward(lambda x: calls.append(x) or {"reconstruction": x}, registration, images)
    assert calls[0] is images and out["reconstruction"] is images


@pytest.mark.parametrize("max_shift", [0, 8, -1])
def test_a_shift_that_cannot_work_names_the_key(max_shift):
    with pytest.raises(ValueError, match="registration.max_shift must be a whole number of pixels in"):
        ShiftRegistration(max_shift, SIZE)


def test_a_feature_space_model_refuses_registration_before_training(tmp_path):
    refused = run_here("vitmemad.train", *TINY_DEMO, "model=vitmemad_feat", "registration=shift",
                       f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert refused.returncode == 2
    assert "registration=shift needs a model that reconstructs pixels" in refused.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_registered_run_sets_its_reference_scores_and_exports_the_same_maps(tmp_path):
    run = tmp_path / "run"
    run_here("vitmemad.train", *TINY_DEMO, "registration=shift", "registration.max_shift=2", f"hydra.run.dir={run}")
    record = read_metrics(run)
    module = load_module(record["ckpt_path"])
    registration = module.registration
    assert isinstance(registration, ShiftRegistration) and bool(registration.ready) and module.registers
    assert registration.reference.abs().sum() > 0  # the normal validation images' mean, saved with the weights
    assert record["pixel_AUROC"] is not None
    # eval keeps the checkpoint's registration unless told; registration=none scores it where each image is
    for name, override in (("kept", []), ("none", ["registration=none"])):
        run_here("vitmemad.eval", f"ckpt_path={record['ckpt_path']}", *override, f"hydra.run.dir={tmp_path / name}")
    assert read_metrics(tmp_path / "kept")["PRO"] == pytest.approx(record["PRO"], abs=1e-9)
    scored = tmp_path / "unregistered.json"  # select_map's --max-shift 0: the same checkpoint scored unregistered
    select_map.main([record["ckpt_path"], "--part", "all", "--sources", "l2", "--sigmas", "4", "--max-shift", "0",
                     "--out", str(scored)])
    unregistered = json.loads(scored.read_text())[0]
    for key in ("image_AUROC", "pixel_AUROC", "PRO"):
        assert read_metrics(tmp_path / "none")[key] == pytest.approx(unregistered[key], abs=1e-6), key

    demo = write_demo_dataset(tmp_path / "demo", "brick", crop_size=64, n_train=1, n_test_good=2, n_test_defect=2)
    out = tmp_path / "predictions"
    run_here("vitmemad.predict", f"ckpt_path={record['ckpt_path']}", f"input={demo}/test/*/*.png", f"output={out}")
    rows = json.loads((out / "predictions.json").read_text())
    assert len(rows) == 4 and all(row["error"] is None for row in rows)

    # the ONNX graph shifts each image by its own offset too: predictions from it match the checkpoint's
    moved = tmp_path / "moved"
    moved.mkdir()
    for i, path in enumerate(sorted((demo / "test").glob("*/*.png"))):
        image = np.asarray(Image.open(path))
        Image.fromarray(np.roll(image, (2 * i + 1, -3), axis=(0, 1))).save(moved / f"{i}.png")
    size = registration.reference.shape[-1]
    inputs = torch.stack([preprocess(load_image(path), size) for path in sorted(moved.glob("*.png"))])
    assert len({tuple(offset) for offset in registration.offsets(inputs).tolist()}) > 1  # not one traced constant
    run_here("vitmemad.export", f"ckpt_path={record['ckpt_path']}", "format=onnx", f"output={tmp_path / 'm.onnx'}")
    scores = {}
    for name, ckpt in (("ckpt", record["ckpt_path"]), ("onnx", tmp_path / "m.onnx")):
        run_here("vitmemad.predict", f"ckpt_path={ckpt}", f"input={moved}", f"output={tmp_path / name}")
        scores[name] = [row["score"] for row in json.loads((tmp_path / name / "predictions.json").read_text())]
    assert scores["onnx"] == pytest.approx(scores["ckpt"], rel=1e-4, abs=1e-6)


def data_offsets(root, category: str, max_shift: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """The registration offsets of the normal validation images and of the normal test images of a real category,
    against the validation images' mean, at ``experiment=cpu_real``'s 128 px."""
    from vitmemad.build import build_datamodule

    datamodule = build_datamodule({"_target_": "vitmemad.data.MVTecDataModule", "root": str(root),
                                   "category": category, "image_size": 128})
    datamodule.setup("fit")
    datamodule.setup("test")
    val = torch.stack([datamodule.val_dataset[i]["image"] for i in range(len(datamodule.val_dataset))])
    good = [item["image"] for item in map(datamodule.test_dataset.__getitem__, range(len(datamodule.test_dataset)))
            if int(item["label"]) == 0]
    registration = ShiftRegistration(max_shift, 128)
    registration.set_reference(val.mean(0))
    return registration.offsets(val), registration.offsets(torch.stack(good))


@pytest.mark.real
def test_tire_test_images_sit_off_the_training_position_and_bottle_test_images_do_not(tire_root, mvtec_root):
    """The data behind ``experiment=cpu_real``'s registration: MVTec 3D-AD tire's normal test images sit about
    3 px (of 128) left of its training images; MVTec AD bottle's sit where its training images do."""
    val, test = data_offsets(tire_root, "tire")
    assert val[:, 1].abs().float().median() <= 1
    assert test[:, 1].float().median() >= 2  # moved right to meet the training images
    val, test = data_offsets(mvtec_root, "bottle")
    assert val.abs().max() <= 1 and test.abs().float().median() == 0


def test_registration_changes_scoring_only_not_the_trained_weights(tmp_path):
    """The reference pass at fit start must not move training's random stream: with and without registration a
    seed trains the same net, so registered and unregistered runs compare checkpoints, not luck."""
    nets = {}
    for registration in ("none", "shift"):
        run = tmp_path / registration
        run_here("vitmemad.train", *TINY_DEMO, "corruption=patch_swap", f"registration={registration}", "num_threads=1",
                 f"hydra.run.dir={run}")  # patch_swap draws from the global RNG at every training step
        nets[registration] = load_module(read_metrics(run)["ckpt_path"]).net.state_dict()
    assert nets["none"].keys() == nets["shift"].keys()
    for key, value in nets["none"].items():
        assert torch.equal(value, nets["shift"][key]), key


def test_the_reference_is_the_validation_images_mean_and_needs_some():
    from types import SimpleNamespace

    from vitmemad.errors import ConfigError
    from vitmemad.models.registration import normal_mean_image

    images = torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    datamodule = SimpleNamespace(val_dataloader=lambda: [{"image": images[:2]}, {"image": images[2:]}])
    torch.testing.assert_close(normal_mean_image(datamodule, torch.device("cpu")), images.mean(0))
    for empty in (None, SimpleNamespace(val_dataloader=lambda: [])):
        with pytest.raises(ConfigError, match="registration needs a datamodule with normal validation images"):
            normal_mean_image(empty, torch.device("cpu"))
