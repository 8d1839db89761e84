"""Data: TFDS (mocked, offline), npz and image-folder sources, determinism, sharding, resume."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from cmjax.data import DataError, DataHParams, Dataset, make_dataset, make_source
from cmjax.data.sources import ArraySource


def data_spec(*args, **kw):
    """``hp.data`` from config.data keys."""
    return DataHParams(**dict(*args, **kw))


def _dataset(batch=16, seed=0, process_index=0, process_count=1, **data):
    return make_dataset(DataHParams(**data), batch, seed, process_index, process_count)


CIFAR = dict(name="cifar10", shape=(32, 32, 3), num_classes=0, random_flip=True)
IMAGENET = dict(name="imagenet64", shape=(64, 64, 3), num_classes=1000, random_flip=True)


def test_tfds_cifar10_batches_shapes_and_range():
    with tfds.testing.mock_data(num_examples=40):
        ds = _dataset(**CIFAR)
        b = ds.batch(0)
    assert set(b) == {"x"}
    assert b["x"].shape == (16, 32, 32, 3) and b["x"].dtype == np.float32
    assert -1.0 <= b["x"].min() < -0.9 and 0.9 < b["x"].max() <= 1.0


def test_tfds_imagenet64_labels():
    with tfds.testing.mock_data(num_examples=40):
        b = _dataset(**IMAGENET).batch(1)
    assert b["x"].shape == (16, 64, 64, 3)
    assert b["label"].dtype == np.int32 and b["label"].shape == (16,)
    assert b["label"].min() >= 0 and b["label"].max() < 1000


def test_two_processes_read_disjoint_halves_of_the_global_batch():
    with tfds.testing.mock_data(num_examples=50):
        whole = _dataset(**IMAGENET)
        halves = [_dataset(**IMAGENET, process_index=p, process_count=2) for p in (0, 1)]
        for step in (0, 3):  # step 3 crosses the epoch boundary at record 50
            idx = [
                h.global_indices(step)[h.process_index * 8 : (h.process_index + 1) * 8]
                for h in halves
            ]
            assert not set(idx[0]) & set(idx[1])
            full = whole.batch(step)
            parts = [h.batch(step) for h in halves]
            for key in ("x", "label"):
                np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), full[key])


def test_batches_are_deterministic_and_resume_exactly():
    with tfds.testing.mock_data(num_examples=40):
        ds = _dataset(**CIFAR)
        uninterrupted = [b for _, (_, b) in zip(range(6), ds.iterate(0), strict=False)]
        resumed_ds = _dataset(**CIFAR)
        resumed = [sb for _, sb in zip(range(3), resumed_ds.iterate(3), strict=False)]
    assert [step for step, _ in resumed] == [3, 4, 5]
    for a, (_, b) in zip(uninterrupted[3:], resumed, strict=True):
        np.testing.assert_array_equal(a["x"], b["x"])
    assert not np.array_equal(uninterrupted[0]["x"], uninterrupted[1]["x"])


def test_every_record_once_per_epoch():
    src = ArraySource(np.arange(24, dtype=np.uint8).reshape(24, 1, 1, 1), None, "ids")
    ds = Dataset(src, global_batch_size=8, seed=3)
    epoch0 = np.concatenate([ds.global_indices(k) for k in range(3)])
    epoch1 = np.concatenate([ds.global_indices(k) for k in range(3, 6)])
    assert sorted(epoch0) == list(range(24)) == sorted(epoch1)
    assert not np.array_equal(epoch0, epoch1)


def test_random_flip_mirrors_about_half_the_images():
    rng = np.random.default_rng(0)
    src = ArraySource(rng.integers(0, 256, (64, 4, 4, 3), dtype=np.uint8), None, "rand")
    plain = Dataset(src, 64, seed=1).batch(0)["x"]
    flipped = Dataset(src, 64, seed=1, random_flip=True).batch(0)["x"]
    mirrored = np.all(flipped == plain[:, :, ::-1], axis=(1, 2, 3))
    same = np.all(flipped == plain, axis=(1, 2, 3))
    assert np.all(mirrored | same)
    assert 16 < mirrored.sum() < 48


def test_missing_tfds_dataset_says_how_to_prepare(tmp_path):
    with pytest.raises(DataError, match=r"tfds build cifar10 --file_format=array_record"):
        make_source(data_spec(CIFAR, data_dir=str(tmp_path)))
    with pytest.raises(DataError, match="manual"):
        make_source(data_spec(IMAGENET, data_dir=str(tmp_path)))


def test_npz_images_with_labels_are_resized_when_asked(tmp_path):
    path = tmp_path / "d.npz"
    x = np.random.default_rng(0).integers(0, 256, (10, 16, 12, 3), dtype=np.uint8)
    np.savez(path, x=x, labels=np.arange(10) % 3)
    b = _dataset(
        batch=4, name="npz", path=str(path), shape=(8, 8, 3), num_classes=3, resize=True
    ).batch(0)
    assert b["x"].shape == (4, 8, 8, 3) and set(b["label"]) <= {0, 1, 2}


@pytest.mark.parametrize(
    "arrays,num_classes,message",
    [
        (dict(x=np.zeros((4, 8, 8, 3), np.float32)), 0, "must be uint8"),
        (dict(x=np.zeros((4, 8, 8), np.uint8)), 0, "rank 4"),
        (
            dict(x=np.zeros((4, 8, 8, 3), np.uint8), labels=np.array([0, 1, 5, 2])),
            3,
            "label 5 is out of range",
        ),
        (dict(x=np.zeros((4, 8, 8, 3), np.uint8)), 3, "no 'labels'"),
        (dict(y=np.zeros((4, 2))), 0, "no array named 'x'"),
    ],
)
def test_bad_npz_files_are_named(tmp_path, arrays, num_classes, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as err:
        make_source(data_spec(name="npz", path=str(path), shape=(8, 8, 3), num_classes=num_classes))
    assert "bad.npz" in str(err.value)


def test_vector_npz_for_toy_data(tmp_path):
    path = tmp_path / "pts.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(100, 2)))
    b = _dataset(batch=10, name="npz", path=str(path), shape=(2,)).batch(2)
    assert b["x"].shape == (10, 2) and b["x"].dtype == np.float32


def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        for i in range(3):
            _write_png(tmp_path / cls / f"{i}.png", rng.integers(0, 256, (20, 24, 3), np.uint8))
    src = make_source(
        data_spec(
            name="image_folder", path=str(tmp_path), shape=(16, 16, 3), num_classes=2, resize=True
        )
    )
    assert len(src) == 6 and src.x.shape == (6, 16, 16, 3)
    assert list(src.labels) == [0, 0, 0, 1, 1, 1]


def test_image_folder_errors_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no"):
        make_source(data_spec(name="image_folder", path=str(tmp_path / "empty"), shape=(8, 8, 3)))
    _write_png(tmp_path / "mixed" / "a.png", np.zeros((8, 8, 3), np.uint8))
    _write_png(tmp_path / "mixed" / "b.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"b\.png is L"):
        make_source(data_spec(name="image_folder", path=str(tmp_path / "mixed"), shape=(8, 8, 3)))


def test_digits_and_toy_defaults_need_no_download():
    b = _dataset(batch=32, name="digits", shape=(8, 8, 1), num_classes=10).batch(0)
    assert b["x"].shape == (32, 8, 8, 1) and b["label"].max() <= 9
    toy = _dataset(batch=32, name="toy2d", shape=(2,), distribution="two_moons")
    np.testing.assert_array_equal(toy.batch(5)["x"], toy.batch(5)["x"])
    assert np.abs(toy.batch(5)["x"]).max() < 1.5


def test_unknown_source_is_named():
    with pytest.raises(DataError, match="unknown config.data.name 'cifar100'"):
        make_source(data_spec(name="cifar100", shape=(32, 32, 3)))
