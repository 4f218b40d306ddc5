"""The backbone registry and the in-model preprocessing."""

from __future__ import annotations

import functools
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import ALL_BACKBONES, REPO_ROOT, small_input
from tf_models.models import alexnet
from tf_models import backbone_table, build_classifier, get_backbone, list_backbones
from tf_models.models.classifier import PREPROCESS_LAYER

# The module each backbone's preprocess_input must come from, written out independently of the
# registry so a wrong entry there fails here.
KERAS_PREPROCESS = {
    "vgg16": keras.applications.vgg16.preprocess_input,
    "vgg19": keras.applications.vgg19.preprocess_input,
    "resnet50": keras.applications.resnet50.preprocess_input,
    "resnet101": keras.applications.resnet.preprocess_input,
    "inceptionv3": keras.applications.inception_v3.preprocess_input,
    "densenet201": keras.applications.densenet.preprocess_input,
    "mobilenetv2": keras.applications.mobilenet_v2.preprocess_input,
    # Built without their internal Normalization layer (ONNX cannot freeze it): ImageNet mean/std instead.
    "efficientnetv2b0": functools.partial(keras.applications.imagenet_utils.preprocess_input, mode="torch"),
    "convnexttiny": functools.partial(keras.applications.imagenet_utils.preprocess_input, mode="torch"),
    "alexnet": alexnet.preprocess_input,
    "alexnet_bn": alexnet.preprocess_input,
}
EXPECTED_MODE = {
    "vgg16": "caffe", "vgg19": "caffe", "resnet50": "caffe", "resnet101": "caffe",
    "inceptionv3": "tf", "mobilenetv2": "tf", "densenet201": "torch",
    "alexnet": "torch", "alexnet_bn": "torch",
    "efficientnetv2b0": "torch", "convnexttiny": "torch",
}


def test_registry_holds_the_required_backbones_and_the_newer_ones():
    required = {"vgg16", "vgg19", "resnet50", "resnet101", "inceptionv3", "densenet201", "mobilenetv2", "alexnet",
                "efficientnetv2b0", "convnexttiny"}
    assert required <= set(list_backbones())
    assert set(list_backbones()) == set(KERAS_PREPROCESS)


@pytest.mark.parametrize("name", ALL_BACKBONES)
def test_spec_preprocessing_is_the_modules_own(name):
    spec = get_backbone(name)
    batch = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(spec.preprocess_input(batch.copy()), KERAS_PREPROCESS[name](batch.copy()), rtol=1e-6)
    assert spec.preprocessing == EXPECTED_MODE[name]


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError) as info:
        get_backbone("resnet5O")
    message = str(info.value)
    assert "'resnet5O'" in message
    for name in ALL_BACKBONES:
        assert name in message
    assert "Did you mean 'resnet50'" in message


@pytest.mark.parametrize("typed, expected", [
    ("ResNet50", "resnet50"), ("mobilenet_v2", "mobilenetv2"), ("Inception-V3", "inceptionv3"),
    ("alexnet-bn", "alexnet_bn"), (" VGG16 ", "vgg16"),
])
def test_common_spellings_resolve(typed, expected):
    assert get_backbone(typed).name == expected


@pytest.mark.parametrize("name", ALL_BACKBONES)
def test_builtin_preprocessing_matches_keras_preprocess_input(name):
    size = small_input(name)
    model = build_classifier(name, 2, size, mode="scratch", weights=None)
    rng = np.random.default_rng(1)
    batch = rng.uniform(0, 255, size=(4, *size, 3)).astype("float32")
    inside_model = keras.ops.convert_to_numpy(model.get_layer(PREPROCESS_LAYER)(batch))
    reference = np.asarray(KERAS_PREPROCESS[name](batch.copy()))
    np.testing.assert_allclose(inside_model, reference, rtol=1e-5, atol=1e-4)
    # The model must not see what it was given: raw 0..255 is transformed, not passed through.
    assert not np.allclose(inside_model, batch)


def test_alexnet_preprocess_input_is_imagenet_standardisation():
    pixel = np.array([[[[0.485 * 255, 0.456 * 255, 0.406 * 255]]]], dtype="float32")
    np.testing.assert_allclose(alexnet.preprocess_input(pixel), 0.0, atol=1e-5)
    white = np.full((1, 1, 1, 3), 255.0, dtype="float32")
    np.testing.assert_allclose(alexnet.preprocess_input(white)[0, 0, 0],
                               (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
                               rtol=1e-5)


def test_alexnet_full_layout_has_five_convs_and_three_dense():
    for variant, bn in ((alexnet.AlexNet, False), (alexnet.AlexNetBN, True)):
        model = variant(include_top=True, weights=None, input_shape=(227, 227, 3), classes=10)
        convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
        dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
        assert [c.filters for c in convs] == [96, 256, 384, 384, 256]
        assert [d.units for d in dense] == [4096, 4096, 10]
        assert convs[0].kernel_size == (11, 11) and convs[0].strides == (4, 4)
        has_bn = any(isinstance(l, keras.layers.BatchNormalization) for l in model.layers)
        assert has_bn is bn
        assert model.output_shape == (None, 10)


def test_backbone_table_names_every_backbone():
    table = backbone_table()
    for name in ALL_BACKBONES:
        assert f"\n{name} " in table


def test_list_backbones_cli_names_every_backbone():
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), "--list-backbones"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines()[2:] if line.strip()]
    assert listed == ALL_BACKBONES
    for required in ("vgg16", "vgg19", "resnet50", "resnet101", "inceptionv3", "densenet201", "mobilenetv2", "alexnet"):
        assert required in listed


def test_pass_through_mode_leaves_pixels_as_they_are():
    """Mode "none": for a backbone that must keep normalising inside itself."""
    from tf_models.models.preprocessing import ImagePreprocessing

    batch = np.random.default_rng(2).uniform(0, 255, (2, 5, 5, 3)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(ImagePreprocessing("none")(batch)), batch)
