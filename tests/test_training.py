"""The training engine: models, augmentation, recorder, trainer (determinism, resume, cache), subsets."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from datacull.config import compose
from datacull.data.base import ArraySource, build_source
from datacull.errors import DatacullError
from datacull.training import (
    MODELS, Recorder, build_model, indices_from_selection, load_epoch_model, predict_logits, train_model,
)
from datacull.training.augment import (
    CenterCropView, augment_batch, center_crop_size, random_crop, resize_center_crop, resized_crop, resized_crop_boxes,
)
from datacull.training.recorder import batch_statistics
from datacull.training.trainer import CHECKPOINT_FILE, RUN_FILE, lr_at, to_input, train_identity, weights_path


def make_cfg(tmp_path, *overrides: str):
    """Digits, ResNet-8 of width 4, a couple of epochs on the CPU, work dir under tmp_path."""
    return compose(["data=digits", f"paths.work_dir={tmp_path / 'work'}", "device=cpu", "model=resnet8",
                    "model.width=4", "train=cpu", "train.epochs=2", "train.batch_size=64", *overrides])


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


# ---------------------------------------------------------------- models

@pytest.mark.parametrize("name", ["resnet8", "resnet20", "resnet18_cifar", "resnet50", "timm"])
@pytest.mark.parametrize("channels,side", [(1, 28), (3, 32)])
def test_models_build_and_keep_the_classifier_contract(name, channels, side):
    overrides = [f"model={name}"] + (["model.width=4"] if name in ("resnet8", "resnet20", "resnet18_cifar") else [])
    if name == "timm":
        overrides.append("model.timm_name=test_resnet")
    cfg = compose(overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, 5, channels, side).eval()
    x = torch.rand(2, channels, side, side)
    with torch.no_grad():
        logits, features = model(x), model.penultimate(x)
    assert isinstance(model.classifier, torch.nn.Linear)
    assert logits.shape == (2, 5) and features.ndim == 2 and features.shape[0] == 2
    assert features.shape[1] == model.classifier.in_features
    torch.testing.assert_close(logits, model.classifier(features))


def test_model_registry_and_bad_model_names():
    assert {"resnet8", "resnet20", "resnet18_cifar", "resnet50", "timm"} <= set(MODELS.names())
    with pytest.raises(DatacullError, match="valid model.name values"):
        build_model(compose(["model.name=nope"]).model, 10, 1, 28)
    with pytest.raises(DatacullError, match="timm has no model"):
        build_model(compose(["model=timm", "model.timm_name=no_such_net"]).model, 10, 3, 32)


def test_resnet_depths_match_he_et_al():
    cfg8, cfg20 = compose(["model=resnet8"]).model, compose(["model=resnet20"]).model
    convs = lambda m: sum(isinstance(x, torch.nn.Conv2d) and x.kernel_size == (3, 3) for x in m.modules())  # noqa: E731
    # depth 6n + 2: 6n 3x3 convs in the blocks + the stem conv (+ the classifier layer)
    assert convs(build_model(cfg8, 10, 3, 32)) == 7
    assert convs(build_model(cfg20, 10, 3, 32)) == 19


# ---------------------------------------------------------------- augmentation and schedule

def test_random_crop_is_a_shifted_window_of_the_padded_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, r: r + 6, c: c + 6] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    same = augment_batch(x, "crop_flip", 2, torch.Generator().manual_seed(3))
    assert torch.equal(same, augment_batch(x, "crop_flip", 2, torch.Generator().manual_seed(3)))
    assert torch.equal(augment_batch(x, "none", 2, torch.Generator()), x)


def test_reflect_padding_crops_windows_of_the_reflected_image():
    x = torch.arange(3 * 2 * 5 * 5, dtype=torch.float32).reshape(3, 2, 5, 5)
    out = random_crop(x, 2, torch.Generator().manual_seed(1), "reflect")
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(3):
        assert any(torch.equal(out[i], padded[i, :, r: r + 5, c: c + 5]) for r in range(5) for c in range(5))
    with pytest.raises(DatacullError, match="too large for reflect"):
        random_crop(x, 5, torch.Generator(), "reflect")


def test_random_resized_crop_boxes_follow_the_sampling_rule():
    boxes = resized_crop_boxes(4000, 224, 224, torch.Generator().manual_seed(0))
    top, left, h, w = boxes.T.double()
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 224).all() and (left + w <= 224).all()
    area = h * w / 224 ** 2
    assert area.min() >= 0.079 and area.max() <= 1.0 and area.mean() > 0.4  # U(0.08, 1) of fitting boxes
    assert (w / h).min() >= 0.74 and (w / h).max() <= 1.35  # (3/4, 4/3) up to rounding
    assert (top > 0).any() and (left > 0).any()  # uniform positions, not only corners or centres
    assert torch.equal(boxes, resized_crop_boxes(4000, 224, 224, torch.Generator().manual_seed(0)))
    assert not torch.equal(boxes, resized_crop_boxes(4000, 224, 224, torch.Generator().manual_seed(1)))
    # no box of the scale range fits a 2 x 400 strip: the centre crop with the ratio clamped to 4/3
    strip = resized_crop_boxes(5, 2, 400, torch.Generator().manual_seed(0))
    assert (strip == torch.tensor([0, (400 - 3) // 2, 2, 3])).all()


def test_random_resized_crop_resizes_each_box_like_interpolate():
    x = torch.rand(6, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    boxes = resized_crop_boxes(6, 20, 24, torch.Generator().manual_seed(4))
    out = resized_crop(x, boxes)
    assert out.shape == x.shape
    for i, (t, l, h, w) in enumerate(boxes.tolist()):
        want = torch.nn.functional.interpolate(x[i: i + 1, :, t: t + h, l: l + w], size=(20, 24), mode="bilinear",
                                               align_corners=False)[0]
        torch.testing.assert_close(out[i], want, atol=1e-5, rtol=1e-5)
    whole = torch.tensor([[0, 0, 20, 24]] * 6)
    torch.testing.assert_close(resized_crop(x, whole), x)  # the whole image at its own size: identity
    same = augment_batch(x, "resized_crop_flip", 0, torch.Generator().manual_seed(2))
    assert same.shape == x.shape
    assert torch.equal(same, augment_batch(x, "resized_crop_flip", 0, torch.Generator().manual_seed(2)))
    assert not torch.equal(same, augment_batch(x, "resized_crop_flip", 0, torch.Generator().manual_seed(3)))


def test_eval_transform_geometry():
    # 300 x 400 at side 224: shorter side 256, longer int(256 * 400 / 300) = 341; crop at (16, round(58.5) = 58)
    assert center_crop_size(300, 400, 224) == (256, 341, 16, 58)
    assert center_crop_size(400, 300, 224) == (341, 256, 58, 16)
    assert center_crop_size(256, 256, 224) == (256, 256, 16, 16)
    image = np.zeros((300, 400, 3), dtype=np.uint8)
    image[:, 250:] = 255   # a vertical edge at x = 250 -> 250 * 256/300 - 58 = 155.3 in the output
    image[100:, :, 1] = 0  # a horizontal edge at y = 100 (green only) -> 100 * 256/300 - 16 = 69.3
    out = resize_center_crop(image, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert (out[:, :153, 0] == 0).all() and (out[:, 158:, 0] == 255).all()
    assert (out[:67, 158:, 1] == 255).all() and (out[72:, :, 1] == 0).all()
    square = np.random.default_rng(0).integers(0, 256, (256, 256, 1), dtype=np.uint8)
    np.testing.assert_array_equal(resize_center_crop(square, 224), square[16:240, 16:240])  # no resize: the crop


def test_predict_logits_applies_the_eval_transform(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 20, 30, 3), dtype=np.uint8)
    source = ArraySource("toy", "train", images, np.arange(5) % 3, 3)
    cfg = make_cfg(tmp_path, "train.eval_transform=resize_center_crop", "model.image_size=16")
    torch.manual_seed(0)
    model = build_model(cfg.model, 3, 3, 16).eval()
    logits = predict_logits(model, source, np.arange(5), cfg)
    # side 16: shorter side round(16 * 256/224) = 18, longer int(18 * 30 / 20) = 27, crop at (1, round(5.5) = 6)
    from PIL import Image
    want = np.stack([np.asarray(Image.fromarray(im).resize((27, 18), Image.BILINEAR))[1:17, 6:22] for im in images])
    np.testing.assert_array_equal(CenterCropView(source, 16, 3).load(2), want[2])
    with torch.no_grad():
        expected = model(to_input(torch.from_numpy(want).permute(0, 3, 1, 2), torch.device("cpu"))).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    plain = predict_logits(model, source, np.arange(5), make_cfg(tmp_path, "model.image_size=16"))
    assert not np.allclose(plain, logits)  # the default evaluates the squashed whole image
    with pytest.raises(DatacullError, match="train.eval_transform"):
        predict_logits(model, source, np.arange(5), make_cfg(tmp_path, "train.eval_transform=crop"))


def test_trainer_passes_the_recipe_augmentation(tmp_path, monkeypatch):
    from datacull.training import trainer
    seen = []
    real = trainer.augment_batch
    monkeypatch.setattr(trainer, "augment_batch", lambda x, name, padding, generator, pad_mode="zeros": (
        seen.append((name, padding, pad_mode, tuple(x.shape[1:]))) or real(x, name, padding, generator, pad_mode)))
    for overrides, want in ((("train.augment=resized_crop_flip",), ("resized_crop_flip", 1, "zeros")),
                            (("train.augment=crop", "train.crop_padding=3", "train.crop_padding_mode=reflect"),
                             ("crop", 3, "reflect"))):
        cfg = make_cfg(tmp_path, "data.limit=64", "train.epochs=1", *overrides)
        source = build_source(cfg.data)
        result = train_model(cfg, source, np.arange(len(source)), seed=0, run_dir=tmp_path / want[0])
        assert np.isfinite(result.history[-1]["loss"])
        assert seen[-1] == (*want, (1, 8, 8))


def test_learning_rate_schedules():
    step = compose(["train=imagenet_sorscher2022"]).train
    assert lr_at(step, 90, 0) == pytest.approx(0.1)
    assert lr_at(step, 90, 30.0) == pytest.approx(0.01)
    assert lr_at(step, 90, 65.5) == pytest.approx(0.001)
    cosine = compose(["train=cifar_cosine"]).train
    assert lr_at(cosine, 200, 100) == pytest.approx(0.05)
    assert lr_at(cosine, 200, 200) == pytest.approx(0.0, abs=1e-12)
    # Paul et al. 2021 (mansheej/data_diet): lr 0.1, x0.2 at epochs 60, 120, 160 of 200
    paul = compose(["train=cifar_paul2021"]).train
    assert paul.epochs == 200 and paul.augment == "crop_flip" and paul.crop_padding_mode == "reflect"
    for epoch, lr in ((0, 0.1), (59, 0.1), (59.99, 0.1), (60, 0.02), (119.5, 0.02), (120, 0.004), (159, 0.004),
                      (160, 0.0008), (199.9, 0.0008)):
        assert lr_at(paul, 200, epoch) == pytest.approx(lr, rel=1e-12), epoch


def test_recipe_names_and_aliases():
    assert compose(["train=cifar"]).train == compose(["train=cifar_paul2021"]).train
    assert compose(["train=imagenet"]).train == compose(["train=imagenet_sorscher2022"]).train
    imagenet = compose(["train=imagenet_sorscher2022"]).train
    assert (imagenet.augment, imagenet.eval_transform, imagenet.batch_size, imagenet.weight_decay) == (
        "resized_crop_flip", "resize_center_crop", 256, 1e-4)
    # keys at their neutral default stay out of the run identity (cached runs of older configs are reused)
    cpu = train_identity(compose([]).train)
    assert "eval_transform" not in cpu and "crop_padding_mode" not in cpu
    assert train_identity(compose(["train.eval_transform=resize_center_crop"]).train)["eval_transform"] == \
        "resize_center_crop"


# ---------------------------------------------------------------- recorder

def test_recorder_matches_an_independent_computation(tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(10, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=10)
    recorder = Recorder.create(tmp_path / "record", epochs=2, n=10)
    order = rng.permutation(10)
    for part in (order[:6], order[6:]):  # two batches, positions out of order
        recorder.record(1, part, torch.from_numpy(logits[part]), torch.from_numpy(labels[part]))
    recorder.flush()
    reopened = Recorder.open(tmp_path / "record")

    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    onehot = np.eye(4)[labels]
    for i in range(10):
        others = [logits[i, k] for k in range(4) if k != labels[i]]
        assert reopened.field("margin")[1, i] == pytest.approx(logits[i, labels[i]] - max(others), abs=1e-5)
        assert reopened.field("el2n")[1, i] == pytest.approx(np.sqrt(((probs[i] - onehot[i]) ** 2).sum()), abs=1e-5)
        assert reopened.field("correct")[1, i] == int(np.argmax(logits[i]) == labels[i])
        assert reopened.field("pred")[1, i] == np.argmax(logits[i])
    assert (reopened.field("correct")[0] == 0).all()  # epoch 0 untouched
    assert batch_statistics(torch.from_numpy(logits), torch.from_numpy(labels)).shape == (10, 4)


# ---------------------------------------------------------------- trainer

def test_training_learns_records_and_caches(tmp_path):
    cfg = make_cfg(tmp_path, "train.epochs=3")
    source = build_source(cfg.data)
    indices = np.arange(0, len(source), 2)
    result = train_model(cfg, source, indices, seed=0, run_dir=tmp_path / "run")
    assert not result.model.training and result.epochs == 3 and len(result.history) == 3
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    # the recorder saw every example once per epoch, from the same forward pass as the train accuracy
    correct = np.asarray(result.recorder.field("correct"), dtype=float)
    np.testing.assert_allclose(correct.mean(axis=1), [h["train_acc"] for h in result.history], atol=1e-9)
    assert (np.asarray(result.recorder.field("el2n")) > 0).all()
    logits = predict_logits(result.model, source, indices, cfg)
    assert logits.shape == (len(indices), 10) and logits.dtype == np.float32
    assert (logits.argmax(1) == source.labels[indices]).mean() > 0.5
    info = json.loads((tmp_path / "run" / RUN_FILE).read_text())
    assert info["finished"] and not (tmp_path / "run" / CHECKPOINT_FILE).exists()
    # epoch 0 (initialisation) and the last keep_epoch_weights epochs are kept
    assert weights_path(tmp_path / "run", 0).exists() and weights_path(tmp_path / "run", 3).exists()
    again = train_model(cfg, source, indices, seed=0, run_dir=tmp_path / "run")  # loads, no training
    assert again.history == result.history and weights_equal(again.model, result.model)
    np.testing.assert_array_equal(predict_logits(again.model, source, indices, cfg), logits)
    assert weights_equal(load_epoch_model(cfg, source, tmp_path / "run", 3), result.model)
    with pytest.raises(DatacullError, match="no weights for epoch"):
        load_epoch_model(compose(["train.keep_epoch_weights=1"]), source, tmp_path / "nowhere", 1)


def test_same_seed_same_run_and_other_seed_differs(tmp_path):
    cfg = make_cfg(tmp_path, "train.epochs=1")
    source = build_source(cfg.data)
    indices = np.arange(300)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = train_model(cfg, source, indices, 7, tmp_path / "a")
    assert torch.equal(torch.get_rng_state(), before)  # the caller's global RNG is left alone
    b = train_model(cfg, source, indices, 7, tmp_path / "b")
    c = train_model(cfg, source, indices, 8, tmp_path / "c")
    assert weights_equal(a.model, b.model) and not weights_equal(a.model, c.model)
    for field in ("margin", "el2n", "correct", "pred"):
        np.testing.assert_array_equal(a.recorder.field(field), b.recorder.field(field))


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    cfg = make_cfg(tmp_path, "train.epochs=2", "train.augment=crop_flip")
    source = build_source(cfg.data)
    indices = np.arange(400)
    whole = train_model(cfg, source, indices, 3, tmp_path / "whole")

    class Killed(Exception):
        pass

    def kill_after_first(epoch, stats):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train_model(cfg, source, indices, 3, tmp_path / "killed", on_epoch_end=kill_after_first)
    assert (tmp_path / "killed" / CHECKPOINT_FILE).exists()
    assert not json.loads((tmp_path / "killed" / RUN_FILE).read_text())["finished"]
    resumed = train_model(cfg, source, indices, 3, tmp_path / "killed")
    assert weights_equal(whole.model, resumed.model)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    for field in ("margin", "el2n", "correct", "pred"):
        np.testing.assert_array_equal(whole.recorder.field(field), resumed.recorder.field(field))


def test_streamed_training_equals_in_memory_training(tmp_path):
    cfg = make_cfg(tmp_path, "train.epochs=1", "train.augment=crop_flip")
    source = build_source(cfg.data)
    indices = np.arange(1, 301, 2)
    in_memory = train_model(cfg, source, indices, 4, tmp_path / "memory")
    streamed = train_model(make_cfg(tmp_path, "train.epochs=1", "train.augment=crop_flip", "train.max_in_memory_gb=0"),
                           source, indices, 4, tmp_path / "stream")
    assert weights_equal(in_memory.model, streamed.model)
    np.testing.assert_array_equal(in_memory.recorder.field("margin"), streamed.recorder.field("margin"))


def test_other_config_in_the_same_run_dir_retrains(tmp_path):
    cfg = make_cfg(tmp_path, "train.epochs=1")
    source = build_source(cfg.data)
    first = train_model(cfg, source, np.arange(200), 0, tmp_path / "run", record=False)
    assert first.recorder is None and not (tmp_path / "run" / "record").exists()
    # asking for records later retrains with the recorder on
    second = train_model(cfg, source, np.arange(200), 0, tmp_path / "run", record=True)
    assert second.recorder is not None and weights_equal(first.model, second.model)
    third = train_model(make_cfg(tmp_path, "train.epochs=1", "train.lr=0.01"), source, np.arange(200), 0,
                        tmp_path / "run")
    assert not weights_equal(third.model, second.model)


def test_epochs_zero_gives_the_initial_model(tmp_path):
    cfg = make_cfg(tmp_path)
    source = build_source(cfg.data)
    result = train_model(cfg, source, np.arange(100), 5, tmp_path / "init", record=False, epochs=0)
    assert result.history == [] and result.epochs == 0
    assert weights_equal(result.model, load_epoch_model(cfg, source, tmp_path / "init", 0))


def test_grayscale_data_on_a_three_channel_resized_model(tmp_path):
    cfg = make_cfg(tmp_path, "train.epochs=1", "model.in_channels=3", "model.image_size=16")
    source = build_source(cfg.data)  # 8x8 grayscale
    result = train_model(cfg, source, np.arange(64), 0, tmp_path / "run", record=False)
    assert result.model.in_channels == 3 and result.model.image_size == 16
    assert predict_logits(result.model, source, np.arange(10), cfg).shape == (10, 10)


def test_bad_training_input(tmp_path):
    cfg = make_cfg(tmp_path)
    source = build_source(cfg.data)
    with pytest.raises(DatacullError, match="training indices must lie"):
        train_model(cfg, source, np.array([0, len(source)]), 0, tmp_path / "r")
    with pytest.raises(DatacullError, match="empty"):
        train_model(cfg, source, np.array([], dtype=np.int64), 0, tmp_path / "r")
    unlabeled = ArraySource("toy", "train", np.zeros((4, 8, 8, 1), np.uint8), np.array([0, 1, -1, 1]), 2)
    with pytest.raises(DatacullError, match="training needs labels"):
        train_model(cfg, unlabeled, np.arange(4), 0, tmp_path / "r")
    with pytest.raises(DatacullError, match="train.schedule"):
        train_model(make_cfg(tmp_path, "train.schedule=linear"), source, np.arange(4), 0, tmp_path / "r")
    with pytest.raises(DatacullError, match="train.augment"):
        train_model(make_cfg(tmp_path, "train.augment=rotate"), source, np.arange(4), 0, tmp_path / "r")


# ---------------------------------------------------------------- selection files

def test_indices_from_selection_joins_by_key(tmp_path):
    source = build_source(make_cfg(tmp_path).data)
    keys = source.keys
    frame = pd.DataFrame({"key": [keys[5], keys[2], keys[9]], "kept": [True, True, False]})
    path = tmp_path / "selection.parquet"
    frame.to_parquet(path)
    np.testing.assert_array_equal(indices_from_selection(path, source), [2, 5])

    bad = pd.DataFrame({"key": [keys[1], "other/train/000001", "other/train/000002"], "kept": [True] * 3})
    bad.to_parquet(path)
    with pytest.raises(DatacullError, match="2 keys .*first: \\['other/train/000001'"):
        indices_from_selection(path, source)
    with pytest.raises(DatacullError, match="does not exist"):
        indices_from_selection(tmp_path / "missing.parquet", source)
