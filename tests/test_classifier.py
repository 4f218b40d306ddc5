"""build_classifier: every backbone in every mode, trainability, weights resolution."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

from conftest import ALL_BACKBONES, MODES, small_input
from tf_models import HeadConfig, WeightsUnavailableError, build_classifier, get_backbone
from tf_models.models.classifier import BACKBONE_LAYER, FEATURES_LAYER, head_layers, mirror_averaged

NUM_CLASSES = 3


def _count(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


def _random_images(size, n=2, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=(n, *size, 3)).astype("float32")


def _head_params(feature_size: int, units: tuple[int, ...], num_classes: int) -> int:
    widths = (feature_size, *units, num_classes)
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def _build(name, mode, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transfer + random weights warns, by design
        return build_classifier(name, NUM_CLASSES, small_input(name), mode=mode, weights=None, **kwargs)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ALL_BACKBONES)
def test_every_backbone_builds_in_every_mode_and_trains_what_the_mode_says(name, mode):
    # One build per backbone and mode serves both checks: the large backbones take seconds to build.
    model = _build(name, mode)
    size = small_input(name)
    probs = keras.ops.convert_to_numpy(model(_random_images(size)))
    assert probs.shape == (2, NUM_CLASSES)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert model.output.dtype == "float32"
    {"transfer": _assert_transfer_trains_only_the_head, "finetune": _assert_finetune_trains_head_and_top_block,
     "scratch": _assert_scratch_trains_everything}[mode](model, name)


def _assert_transfer_trains_only_the_head(model: keras.Model, name: str) -> None:
    backbone = model.get_layer(BACKBONE_LAYER)
    assert backbone.trainable_weights == []
    expected = _head_params(get_backbone(name).feature_size, HeadConfig().units, NUM_CLASSES)
    assert _count(model.trainable_weights) == expected


def _assert_finetune_trains_head_and_top_block(model: keras.Model, name: str) -> None:
    """The head and the backbone from its ``finetune_from`` layer up train; no BatchNorm does."""
    spec = get_backbone(name)
    backbone = model.get_layer(BACKBONE_LAYER)
    names = [layer.name for layer in backbone.layers]
    start = names.index(spec.finetune_from)
    expected_backbone = sum(
        _count(layer.weights)
        for layer in backbone.layers[start:]
        if not isinstance(layer, keras.layers.BatchNormalization)
    )
    head = _head_params(spec.feature_size, HeadConfig().units, NUM_CLASSES)
    assert expected_backbone > 0
    assert _count(model.trainable_weights) == head + expected_backbone
    for layer in backbone.layers[:start]:
        assert layer.trainable_weights == [], f"{layer.name} is below {spec.finetune_from} but trains"
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert not layer.trainable, f"BatchNorm {layer.name} trains in finetune mode"


def _assert_scratch_trains_everything(model: keras.Model, name: str) -> None:
    # Only statistics are non-trainable, by their nature: BatchNorm's moving mean and variance, and
    # the input normalisation some backbones carry inside (ConvNeXt's ImageNet mean and variance).
    statistics = [w for w in model.weights
                  if "moving_" in w.path or w.path.rsplit("/", 1)[-1] in ("mean", "variance", "count")]
    assert _count(model.trainable_weights) + _count(statistics) == _count(model.weights)
    assert all(layer.trainable for layer in model.get_layer(BACKBONE_LAYER).layers)


def test_finetune_top_n_layers():
    model = _build("vgg16", "finetune", finetune_layers=4)
    backbone = model.get_layer(BACKBONE_LAYER)
    trainable = [layer.name for layer in backbone.layers if layer.trainable_weights]
    # The top four layers of VGG16's base are block5_conv1..3 and block5_pool.
    assert trainable == ["block5_conv1", "block5_conv2", "block5_conv3"]


def test_finetune_keeps_batchnorm_statistics_and_frozen_layers_fixed():
    model = _build("resnet50", "finetune")
    backbone = model.get_layer(BACKBONE_LAYER)
    frozen_conv = backbone.get_layer("conv2_block1_1_conv")
    top_conv = backbone.get_layer("conv5_block3_3_conv")
    bn = backbone.get_layer("conv5_block3_3_bn")
    before = {k: np.array(v) for k, v in (("frozen", frozen_conv.kernel), ("top", top_conv.kernel),
                                          ("mean", bn.moving_mean), ("var", bn.moving_variance))}
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    x = _random_images(small_input("resnet50"), n=8)
    model.fit(x, np.arange(8) % NUM_CLASSES, epochs=1, batch_size=8, verbose=0)
    np.testing.assert_array_equal(np.array(frozen_conv.kernel), before["frozen"])
    np.testing.assert_array_equal(np.array(bn.moving_mean), before["mean"])
    np.testing.assert_array_equal(np.array(bn.moving_variance), before["var"])
    assert not np.array_equal(np.array(top_conv.kernel), before["top"]), "the top block did not train"


def test_head_is_configurable():
    model = build_classifier("alexnet", 2, (67, 67), mode="scratch", weights=None,
                             head=HeadConfig(units=(1024, 256, 64, 32), dropout=0.2))
    dense = [l.units for l in model.layers if isinstance(l, keras.layers.Dense)]
    drops = [l.rate for l in model.layers if isinstance(l, keras.layers.Dropout)]
    assert dense == [1024, 256, 64, 32, 2]
    assert drops == [0.2] * 4


def test_saved_model_round_trips_with_safe_mode(tmp_path):
    model = _build("mobilenetv2", "finetune")
    x = _random_images(small_input("mobilenetv2"))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.array(loaded(x)), np.array(model(x)), atol=1e-6)


def test_mirror_averaged_answers_from_both_views_with_the_same_weights(tmp_path):
    plain = _build("alexnet_bn", "scratch")  # random weights whose answers differ from image to image
    mirrored = mirror_averaged(plain)
    assert {id(v) for v in mirrored.weights} == {id(v) for v in plain.weights}  # shared, not copied
    assert [v.path for v in mirrored.weights] == [v.path for v in plain.weights]
    x = _random_images(small_input("alexnet_bn"), n=3)
    flipped = x[:, :, ::-1]
    # By hand: the plain model's pooled features of both views, averaged, through its head.
    features = keras.Model(plain.input, plain.get_layer(FEATURES_LAYER).output)
    h = (np.asarray(features(x, training=False)) + np.asarray(features(flipped, training=False))) / 2
    for layer in head_layers(plain):
        h = layer(h, training=False)
    expected = np.asarray(h)
    np.testing.assert_allclose(np.asarray(mirrored(x, training=False)), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(mirrored(flipped)), expected, atol=1e-5)  # a mirror changes nothing
    assert not np.allclose(np.asarray(plain(x)), expected, atol=1e-5)  # and it is not the plain answer

    path = tmp_path / "model.keras"
    mirrored.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded(x)), expected, atol=1e-5)
    rebuilt = build_classifier("alexnet_bn", NUM_CLASSES, small_input("alexnet_bn"), mode="scratch", weights=None,
                               mirror_average=True)
    assert [v.path for v in rebuilt.weights] == [v.path for v in plain.weights]


# ---- weights -----------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".weights.h5", ".h5"])
def test_weights_file_gives_identical_outputs(tmp_path, suffix):
    size = small_input("mobilenetv2")
    keras.utils.set_random_seed(1)
    first = build_classifier("mobilenetv2", NUM_CLASSES, size, mode="finetune", weights=None)
    path = tmp_path / f"base{suffix}"
    if suffix == ".weights.h5":
        first.get_layer(BACKBONE_LAYER).save_weights(path)
    else:  # the legacy HDF5 layout Keras's ImageNet downloads use
        first.get_layer(BACKBONE_LAYER).save(path)
    keras.utils.set_random_seed(1)
    second = build_classifier("mobilenetv2", NUM_CLASSES, size, mode="finetune", weights=str(path))
    x = _random_images(size, n=3)
    np.testing.assert_array_equal(np.array(second(x)), np.array(first(x)))
    # And it really is the file: a third build with another seed but the same file matches the base.
    keras.utils.set_random_seed(7)
    third = build_classifier("mobilenetv2", NUM_CLASSES, size, mode="finetune", weights=str(path))
    a = first.get_layer(BACKBONE_LAYER)(x, training=False)
    b = third.get_layer(BACKBONE_LAYER)(x, training=False)
    np.testing.assert_array_equal(np.array(a), np.array(b))


def test_missing_weights_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        build_classifier("vgg16", 2, (32, 32), mode="transfer", weights=str(missing))


@pytest.mark.parametrize("donor, target", [("vgg16", "resnet50"), ("vgg16", "vgg19"), ("alexnet", "alexnet_bn")])
def test_weights_file_for_another_backbone_is_a_clear_error(tmp_path, donor, target):
    path = tmp_path / f"{donor}.weights.h5"
    _build(donor, "transfer").get_layer(BACKBONE_LAYER).save_weights(path)
    with pytest.raises(ValueError, match="Could not load weights"):
        build_classifier(target, 2, small_input(target), mode="finetune", weights=str(path))


def test_imagenet_uses_the_keras_cache_without_network(tmp_path, monkeypatch):
    spec = get_backbone("mobilenetv2")
    size = (96, 96)
    keras.utils.set_random_seed(3)
    donor = build_classifier("mobilenetv2", 2, size, mode="finetune", weights=None)
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    cached = models_dir / spec.imagenet_file_name((*size, 3))
    assert cached.name == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"
    donor.get_layer(BACKBONE_LAYER).save(cached)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise AssertionError("a cached file must not be downloaded again")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    model = build_classifier("mobilenetv2", 2, size, mode="transfer", weights="imagenet")
    for got, want in zip(model.get_layer(BACKBONE_LAYER).weights, donor.get_layer(BACKBONE_LAYER).weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


@pytest.mark.parametrize("name", ["vgg16", "resnet101", "inceptionv3", "densenet201"])
def test_imagenet_offline_is_a_clear_error_never_random(tmp_path, monkeypatch, name):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(fname, origin, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    spec = get_backbone(name)
    with pytest.raises(WeightsUnavailableError) as info:
        build_classifier(name, 2, small_input(name), mode="transfer", weights="imagenet")
    message = str(info.value)
    assert spec.imagenet_file_name((*small_input(name), 3)) in message
    assert str(tmp_path / "models") in message
    assert "$KERAS_HOME/models" in message


def test_alexnet_has_no_imagenet_weights():
    with pytest.raises(WeightsUnavailableError, match="No ImageNet weights"):
        build_classifier("alexnet", 2, (67, 67), mode="transfer", weights="imagenet")


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="scratch", weights="imagenet"), "mode='scratch'"),
    (dict(mode="transfer", input_shape=(16, 16)), "at least 32x32"),
    (dict(mode="transfer", input_shape=(64, 64, 1)), "input_shape"),
    (dict(mode="frozen"), "Received: mode='frozen'"),
    (dict(mode="finetune", finetune_from="no_such_layer", weights=None), "no_such_layer"),
    (dict(mode="finetune", finetune_layers=10_000, weights=None), "finetune_layers"),
    (dict(mode="transfer", finetune_layers=3, weights=None), "only apply to mode='finetune'"),
    (dict(mode="transfer", weights="model.pt"), "Received: weights='model.pt'"),
])
def test_bad_arguments_are_clear_errors(kwargs, match):
    kwargs.setdefault("input_shape", (32, 32))
    with pytest.raises(ValueError, match=match):
        build_classifier("vgg16", 2, **kwargs)


def test_one_class_is_rejected():
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        build_classifier("vgg16", 1, (32, 32), mode="scratch", weights=None)


def test_transfer_with_random_weights_warns():
    with pytest.warns(UserWarning, match="frozen vgg16 base is random"):
        build_classifier("vgg16", 2, (32, 32), mode="transfer", weights=None)
