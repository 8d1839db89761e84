"""ImageNet preprocessing as ADM made its reference batch: the crop-resize against an
independent float64 re-implementation of PIL's resampling, the prepare command (layout,
labels, pixels, resume, one-line errors) and the memory-mapped "prepared" data source."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmjax.cli.prepare_imagenet import COMMAND
from cmjax.data import DataError, DataHParams, make_dataset, make_source
from cmjax.data.adm_preprocess import adm_center_crop, load_adm_image
from cmjax.data.prepare_imagenet import prepare

ROOT = Path(__file__).resolve().parents[1]


# --- an independent float64 model of ADM's center_crop_arr ------------------------------------


def _box(x):
    return ((x > -0.5) & (x <= 0.5)).astype(np.float64)


def _bicubic(x, a=-0.5):
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _weights(n_in, n_out, kernel, support):
    """(n_out, n_in) normalized resampling matrix: PIL's convention, the kernel stretched by
    the downscale factor (antialiasing), sample centers at (i + 0.5) * n_in / n_out."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    reach = support * stretch
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo, hi = max(int(center - reach + 0.5), 0), min(int(center + reach + 0.5), n_in)
        j = np.arange(lo, hi)
        k = kernel((j - center + 0.5) / stretch)
        w[i, lo:hi] = k / k.sum()
    return w


def _to_u8(v):
    return np.clip(np.floor(v + 0.5), 0, 255)


def _resize(x, width, height, kernel, support):
    """Horizontal then vertical pass, each rounded to 8 bits, as PIL does: float64 (H, W, 3)."""
    if width != x.shape[1]:
        w = _weights(x.shape[1], width, kernel, support)
        x = _to_u8(np.einsum("ow,hwc->hoc", w, x, optimize=True))
    if height != x.shape[0]:
        w = _weights(x.shape[0], height, kernel, support)
        x = _to_u8(np.einsum("oh,hwc->owc", w, x, optimize=True))
    return x


def _round_half_even(v):
    return int(np.round(v))  # numpy rounds halves to even, like Python's round


def _adm_reference(rgb, size):
    x = rgb.astype(np.float64)
    while min(x.shape[:2]) >= 2 * size:
        x = _resize(x, x.shape[1] // 2, x.shape[0] // 2, _box, 0.5)
    h, w = x.shape[:2]
    scale = size / min(h, w)
    x = _resize(x, _round_half_even(w * scale), _round_half_even(h * scale), _bicubic, 2.0)
    top, left = (x.shape[0] - size) // 2, (x.shape[1] - size) // 2
    return x[top : top + size, left : left + size]


@pytest.mark.parametrize(
    "width, height, size",
    [
        (517, 300, 64),  # two halvings (300 -> 150 -> 75), odd sizes, landscape
        (700, 1100, 64),  # three halvings (700 -> 350 -> 175 -> 87), portrait
        (50, 90, 64),  # smaller than the target: bicubic upsampling
        (20, 8, 5),  # 20 * 5/8 = 12.5: round half to even gives 12, the crop starts at 3
    ],
)
def test_adm_crop_matches_independent_float64_model(width, height, size):
    rgb = np.random.default_rng(width * height).integers(0, 256, (height, width, 3), np.uint8)
    got = adm_center_crop(Image.fromarray(rgb), size)
    want = _adm_reference(rgb, size)
    assert got.shape == (size, size, 3) and got.dtype == np.uint8
    diff = np.abs(got.astype(np.int64) - want)
    assert diff.max() <= 1, f"max |diff| {diff.max()}"
    assert (diff > 0).mean() < 0.01  # off by one only where float rounding ties differ


def test_round_half_even_case_is_not_half_up():
    """Half-up rounding would resize 20x8 to 13x5 and crop from 4: different pixels."""
    rgb = np.random.default_rng(0).integers(0, 256, (8, 20, 3), np.uint8)
    half_up = np.asarray(Image.fromarray(rgb).resize((13, 5), Image.BICUBIC))[:, 4:9]
    assert not np.array_equal(adm_center_crop(Image.fromarray(rgb), 5), half_up)


# --- the prepare command ----------------------------------------------------------------------

SIZE = 16
TREE = {  # class folder -> [(name, (w, h), mode)], created out of sorted order
    "n03": [("b.JPEG", (40, 33), "RGB"), ("a.JPEG", (33, 70), "L"), ("c.png", (16, 16), "RGBA")],
    "n01": [
        ("x.JPEG", (100, 64), "RGB"),
        ("sub/y.jpg", (20, 50), "RGB"),
        ("z.JPEG", (9, 7), "RGB"),
    ],
    "n02": [(f"i{k}.JPEG", (17 + 13 * k, 31 + 7 * k), "RGB") for k in range(6)],
}


def _make_tree(root: Path) -> None:
    rng = np.random.default_rng(1)
    for cls, files in TREE.items():
        for name, (w, h), mode in files:
            path = root / cls / name
            path.parent.mkdir(parents=True, exist_ok=True)
            channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
            pixels = rng.integers(0, 256, (h, w, channels), np.uint8)
            Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)
    (root / "n01" / "notes.txt").write_text("not an image")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    _make_tree(root)
    return root


@pytest.fixture(scope="module")
def prepared(tree, tmp_path_factory):
    """The command line, as a user runs it: 2 worker processes, chunks of 5."""
    out = tmp_path_factory.mktemp("prepared")
    r = subprocess.run(
        [sys.executable, "-m", "cmjax.cli.prepare_imagenet", f"--src={tree}", f"--out={out}"]
        + [f"--image_size={SIZE}", "--workers=2", "--chunk_size=5"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr
    assert "images/s" in r.stdout and "ETA" in r.stdout
    return out


def test_prepare_writes_labels_shapes_and_adm_pixels(tree, prepared):
    files = (prepared / "files.txt").read_text().splitlines()
    want_files = [f"{cls}/{name}" for cls in sorted(TREE) for name, _, _ in sorted(TREE[cls])]
    assert files == sorted(want_files, key=lambda f: (f.split("/")[0], f))
    images = np.load(prepared / "images.npy")
    labels = np.load(prepared / "labels.npy")
    assert images.shape == (12, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2])
    for f, img, y in zip(files, images, labels, strict=True):
        assert f.startswith(["n01", "n02", "n03"][y])
        np.testing.assert_array_equal(img, load_adm_image(tree / f, SIZE), err_msg=f)
    info = json.loads((prepared / "info.json").read_text())
    assert info["classes"] == ["n01", "n02", "n03"] and info["num_images"] == 12
    assert info["image_size"] == SIZE and "BICUBIC" in info["preprocessing"]
    assert not (prepared / "progress.json").exists()
    assert not (prepared / "images.partial.npy").exists()


def test_flat_folder_takes_the_class_from_the_file_name(tmp_path):
    """ADM's own layout: every image in one folder, class = name before the first '_'."""
    src = tmp_path / "flat"
    src.mkdir()
    for name in ("n2_1.JPEG", "n1_7.JPEG", "n1_3.png"):
        Image.new("RGB", (30, 20), (10, 20, 30)).save(src / name)
    assert prepare(src, tmp_path / "out", image_size=8, log=lambda _: None)
    assert (tmp_path / "out" / "files.txt").read_text().split() == [
        "n1_3.png",
        "n1_7.JPEG",
        "n2_1.JPEG",
    ]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "labels.npy"), [0, 0, 1])


def test_interrupted_run_resumes_to_the_identical_result(tree, prepared, tmp_path):
    out = tmp_path / "resumed"
    quiet = dict(image_size=SIZE, chunk_size=5, log=lambda _: None)
    assert not prepare(tree, out, max_chunks=1, **quiet)
    assert not (out / "info.json").exists() and not (out / "images.npy").exists()
    with pytest.raises(DataError, match="not a finished prepared folder"):
        make_source(DataHParams(name="prepared", path=str(out), shape=(SIZE, SIZE, 3)))
    # a chunk half-written when the run was killed: its rows are garbage, it is not recorded
    partial = np.lib.format.open_memmap(out / "images.partial.npy", mode="r+")
    partial[5:8] = 255
    partial.flush()
    del partial
    lines = []
    assert prepare(tree, out, **{**quiet, "log": lines.append})
    assert lines[0] == "resuming: 1 of 3 chunks already done"
    for name in ("images.npy", "labels.npy", "files.txt"):
        assert (out / name).read_bytes() == (prepared / name).read_bytes(), name
    lines.clear()
    assert prepare(tree, out, **{**quiet, "log": lines.append})
    assert lines == [f"{out} is already complete (12 images); nothing to do"]


# --- the data source --------------------------------------------------------------------------


def test_prepared_source_serves_batches_through_make_dataset(prepared):
    data = DataHParams(name="prepared", path=str(prepared), shape=(SIZE, SIZE, 3), num_classes=3)
    ds = make_dataset(data, batch_size=8, seed=3)
    assert isinstance(ds.source.x, np.memmap)  # never loaded whole
    images, labels = np.load(prepared / "images.npy"), np.load(prepared / "labels.npy")
    for step in (0, 1, 2):  # step 1 crosses the epoch boundary at record 12
        b = ds.batch(step)
        idx = ds.global_indices(step)
        np.testing.assert_array_equal(b["label"], labels[idx])
        np.testing.assert_allclose(b["x"], images[idx] / 127.5 - 1.0, atol=1e-6)
        assert b["x"].shape == (8, SIZE, SIZE, 3) and b["x"].dtype == np.float32


@pytest.mark.parametrize(
    "data, match",
    [
        (dict(shape=(32, 32, 3)), r"images.npy is uint8 \(12, 16, 16, 3\), config.data.shape"),
        (dict(num_classes=1000), "has 3 classes, config.data.num_classes is 1000"),
        (dict(path="/nonexistent/in64"), "does not exist; prepare it with `cmjax-prepare"),
    ],
)
def test_prepared_source_errors_say_what_to_do(prepared, data, match):
    spec = dict(name="prepared", path=str(prepared), shape=(SIZE, SIZE, 3), num_classes=3)
    with pytest.raises(DataError, match=match):
        make_source(DataHParams(**{**spec, **data}))


# --- bad input: one line, non-zero exit -------------------------------------------------------


def _bad_jpeg_tree(root: Path) -> Path:
    (root / "n01").mkdir(parents=True)
    Image.new("RGB", (20, 20)).save(root / "n01" / "ok.JPEG")
    bad = root / "n01" / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    return bad


@pytest.mark.parametrize("case", ["missing", "empty", "unreadable", "mixed"])
def test_bad_input_is_one_line_and_nonzero(case, tmp_path, capsys):
    src = tmp_path / "src"
    want = {"missing": "does not exist", "empty": "no images", "mixed": "both images"}
    if case == "empty":
        (src / "n01").mkdir(parents=True)
    elif case == "unreadable":
        want[case] = f"cannot read image {_bad_jpeg_tree(src)} ("
    elif case == "mixed":
        _bad_jpeg_tree(src)
        Image.new("RGB", (20, 20)).save(src / "stray.png")
    code = COMMAND(
        ["cmjax-prepare-imagenet", f"--src={src}", f"--out={tmp_path / 'out'}", "--workers=1"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("cmjax-prepare-imagenet: error: ")
    assert want[case] in err and "Traceback" not in err
