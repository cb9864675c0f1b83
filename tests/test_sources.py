"""Tests of the digit and background sources on tiny synthetic data, plus checks
of the real data when OOD_BENCH_DATA is set."""

from __future__ import annotations

import logging
import os
import pickle
import struct
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageFile

from benchmark.errors import DataError
from benchmark.sources import (
    Backgrounds,
    Digits,
    data_fingerprint,
    load_backgrounds,
    load_digits,
    resolve_data_root,
)

CLASSES = ("bird", "cat", "dog")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("OOD_BENCH_CACHE", str(cache))
    return cache


def write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x00000800 | array.ndim
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, n_train: int = 20, n_test: int = 10) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28))
        )
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return raw


def write_image_folder(
    root: Path, n_per_class: int = 4, size: tuple[int, int] = (32, 32)
) -> Path:
    folder = root / "CIFAR10"
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for cls in CLASSES:
            (folder / split / cls).mkdir(parents=True)
            for i in range(n_per_class):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                # PNG is lossless, so decoded pixels can be compared exactly.
                Image.fromarray(pixels).save(folder / split / cls / f"{i:04d}.png")
    return folder


def write_batches(root: Path, n_per_batch: int = 3) -> Path:
    batches = root / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    rng = np.random.default_rng(2)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        entry = {
            "batch_label": name,
            "labels": list(range(n_per_batch)),
            "data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            "filenames": [f"{name}_{i}.png" for i in range(n_per_batch)],
        }
        with open(batches / name, "wb") as f:
            pickle.dump(entry, f)
    with open(batches / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile"], "num_vis": 3072}, f)
    return batches


def bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_resolve_data_root_prefers_flag_then_env(monkeypatch, tmp_path):
    monkeypatch.setenv("OOD_BENCH_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data_root() == tmp_path / "env"
    monkeypatch.delenv("OOD_BENCH_DATA")
    default = resolve_data_root()
    assert default.name == "data" and "ood-bench" in str(default)


def test_digits_from_idx_files(tmp_path):
    write_mnist(tmp_path)
    digits = load_digits(tmp_path, download=False)
    assert isinstance(digits, Digits)
    assert digits.train_images.shape == (20, 28, 28)
    assert digits.train_images.dtype == torch.uint8
    assert digits.test_labels.dtype == torch.int64
    assert digits.test_labels.tolist() == list(range(10))
    assert len(digits.fingerprint) == 16


def test_digits_cache_is_used_then_rebuilt_after_a_source_changes(tmp_path, caplog):
    raw = write_mnist(tmp_path)
    first = load_digits(tmp_path, download=False)
    with caplog.at_level(logging.INFO, logger="benchmark.sources"):
        second = load_digits(tmp_path, download=False)
    assert "loaded cached digits" in caplog.text
    assert torch.equal(first.train_images, second.train_images)
    assert first.fingerprint == second.fingerprint

    caplog.clear()
    bump_mtime(raw / "t10k-labels-idx1-ubyte")
    with caplog.at_level(logging.INFO, logger="benchmark.sources"):
        third = load_digits(tmp_path, download=False)
    assert "decoded MNIST" in caplog.text
    # Same pixels, so the same fingerprint, though the cache key changed.
    assert third.fingerprint == first.fingerprint


@pytest.mark.parametrize(
    "damage",
    ["truncate", "bad_magic", "short_header"],
)
def test_damaged_idx_file_is_a_data_error_naming_it(tmp_path, damage):
    raw = write_mnist(tmp_path)
    path = raw / "train-images-idx3-ubyte"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:-100])
    elif damage == "bad_magic":
        path.write_bytes(b"\x1f\x8b\x08\x00" + data[4:])
    else:
        path.write_bytes(data[:6])
    with pytest.raises(DataError) as error:
        load_digits(tmp_path, download=False)
    message = str(error.value)
    assert str(path) in message and "download it again" in message
    assert "\n" not in message


def test_missing_digits_without_download(tmp_path):
    with pytest.raises(DataError) as error:
        load_digits(tmp_path, download=False)
    message = str(error.value)
    assert "MNIST/raw/" in message and "OOD_BENCH_DATA" in message
    assert "--data-root" in message and "\n" not in message


def test_missing_data_with_download_fails_offline(tmp_path, monkeypatch):
    # Stand in for a machine without a network, whatever this one has.
    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as error:
        load_digits(tmp_path / "digits", download=True)
    assert "MNIST/raw/" in str(error.value) and "OOD_BENCH_DATA" in str(error.value)
    with pytest.raises(DataError) as error:
        load_backgrounds(tmp_path / "backgrounds", download=True)
    message = str(error.value)
    assert "cifar-10-batches-py" in message and "CIFAR10/{train,test}" in message
    assert "OOD_BENCH_DATA" in message and "\n" not in message


def test_missing_backgrounds_without_download(tmp_path):
    with pytest.raises(DataError) as error:
        load_backgrounds(tmp_path, download=False)
    assert "cifar-10-batches-py" in str(error.value)
    assert "CIFAR10/{train,test}" in str(error.value)


def test_image_folder_in_imagefolder_order(tmp_path):
    folder = write_image_folder(tmp_path)
    backgrounds = load_backgrounds(tmp_path, download=False)
    assert isinstance(backgrounds, Backgrounds)
    assert backgrounds.source == f"image-folder:{folder.resolve()}"
    assert backgrounds.train.shape == (12, 3, 32, 32)
    assert backgrounds.test.dtype == torch.uint8
    reference = torchvision.datasets.ImageFolder(str(folder / "train"))
    for i, (path, _) in enumerate(reference.samples):
        expected = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(backgrounds.train[i].numpy(), expected)


def test_image_folder_of_other_sizes_is_fitted_to_32(tmp_path):
    write_image_folder(tmp_path, size=(64, 48))
    backgrounds = load_backgrounds(tmp_path, download=False)
    assert backgrounds.train.shape == (12, 3, 32, 32)
    assert backgrounds.test.shape == (12, 3, 32, 32)


def test_image_folder_cache_is_used_then_rebuilt_after_a_source_changes(
    tmp_path, cache_dir, caplog
):
    folder = write_image_folder(tmp_path)
    first = load_backgrounds(tmp_path, download=False)
    assert list((cache_dir / "sources").glob("backgrounds-*/train.npy"))
    with caplog.at_level(logging.INFO, logger="benchmark.sources"):
        second = load_backgrounds(tmp_path, download=False)
    assert "loaded cached backgrounds" in caplog.text
    assert "decoded" not in caplog.text
    assert torch.equal(first.train, second.train)

    caplog.clear()
    changed = folder / "test" / "cat" / "0001.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(changed)
    bump_mtime(changed)
    with caplog.at_level(logging.INFO, logger="benchmark.sources"):
        third = load_backgrounds(tmp_path, download=False)
    assert "decoded 24 backgrounds" in caplog.text
    assert third.fingerprint != first.fingerprint


def test_truncated_cache_is_rebuilt(tmp_path, cache_dir, caplog):
    write_image_folder(tmp_path)
    first = load_backgrounds(tmp_path, download=False)
    (cached,) = (cache_dir / "sources").glob("backgrounds-*/train.npy")
    cached.write_bytes(cached.read_bytes()[:200])
    with caplog.at_level(logging.WARNING, logger="benchmark.sources"):
        second = load_backgrounds(tmp_path, download=False)
    assert "damaged" in caplog.text
    assert torch.equal(first.train, second.train)
    assert cached.stat().st_size > 200


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_image_is_a_data_error_naming_it(tmp_path, damage, monkeypatch):
    folder = write_image_folder(tmp_path)
    path = folder / "train" / "dog" / "0002.jpg"
    pixels = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not an image at all" * 10)
    else:
        path.write_bytes(b"")
    # Even where other code lets Pillow accept truncated images, this must fail.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DataError) as error:
        load_backgrounds(tmp_path, download=False)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_empty_class_folder_is_a_data_error(tmp_path):
    folder = write_image_folder(tmp_path)
    (folder / "test" / "empty").mkdir()
    with pytest.raises(DataError, match="empty has no images"):
        load_backgrounds(tmp_path, download=False)


def test_split_without_folders_is_a_data_error(tmp_path):
    (tmp_path / "CIFAR10" / "train").mkdir(parents=True)
    (tmp_path / "CIFAR10" / "test").mkdir()
    with pytest.raises(DataError, match="has no folders"):
        load_backgrounds(tmp_path, download=False)


def test_too_few_training_backgrounds_is_a_data_error(tmp_path):
    write_image_folder(tmp_path, n_per_class=3)
    (tmp_path / "CIFAR10" / "train" / "bird" / "0000.png").unlink()
    with pytest.raises(DataError, match="at least 10"):
        load_backgrounds(tmp_path, download=False)


def test_only_one_image_folder_split_is_a_data_error(tmp_path):
    write_image_folder(tmp_path)
    for path in (tmp_path / "CIFAR10" / "test").rglob("*.png"):
        path.unlink()
    for path in sorted((tmp_path / "CIFAR10" / "test").iterdir()):
        path.rmdir()
    (tmp_path / "CIFAR10" / "test").rmdir()
    with pytest.raises(DataError, match="needs both"):
        load_backgrounds(tmp_path, download=False)


def test_batches_layout_is_preferred_and_read(tmp_path, caplog):
    batches = write_batches(tmp_path)
    write_image_folder(tmp_path)
    backgrounds = load_backgrounds(tmp_path, download=False)
    assert backgrounds.source == "cifar10-batches"
    assert backgrounds.train.shape == (15, 3, 32, 32)
    assert backgrounds.test.shape == (3, 3, 32, 32)
    with open(batches / "data_batch_2", "rb") as f:
        expected = pickle.load(f)["data"][1].reshape(3, 32, 32)
    assert np.array_equal(backgrounds.train[4].numpy(), expected)

    with caplog.at_level(logging.INFO, logger="benchmark.sources"):
        again = load_backgrounds(tmp_path, download=False)
    assert "loaded cached backgrounds" in caplog.text
    assert again.fingerprint == backgrounds.fingerprint


def test_truncated_batch_is_a_data_error_naming_it(tmp_path):
    batches = write_batches(tmp_path)
    path = batches / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError) as error:
        load_backgrounds(tmp_path, download=False)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_batch_that_would_run_code_is_refused(tmp_path):
    batches = write_batches(tmp_path)
    with open(batches / "data_batch_3", "wb") as f:
        pickle.dump({"data": os.getcwd, "labels": []}, f)
    with pytest.raises(DataError, match="data_batch_3"):
        load_backgrounds(tmp_path, download=False)


def test_read_only_data_root_and_cache_are_not_written(tmp_path, monkeypatch):
    write_mnist(tmp_path / "data")
    write_image_folder(tmp_path / "data")
    before = sorted(p for p in (tmp_path / "data").rglob("*"))
    monkeypatch.setenv("OOD_BENCH_CACHE", str(tmp_path / "no" / "such"))
    (tmp_path / "no").mkdir()
    (tmp_path / "no").chmod(0o500)
    try:
        digits = load_digits(tmp_path / "data", download=False)
        backgrounds = load_backgrounds(tmp_path / "data", download=False)
    finally:
        (tmp_path / "no").chmod(0o700)
    assert sorted(p for p in (tmp_path / "data").rglob("*")) == before
    assert len(data_fingerprint(digits, backgrounds)) == 16


def test_data_fingerprint_depends_on_both():
    empty = torch.zeros(0)
    d1 = Digits(empty, empty, empty, empty, "a" * 16)
    d2 = Digits(empty, empty, empty, empty, "b" * 16)
    b = Backgrounds(empty, empty, "cifar10-batches", "c" * 16)
    assert data_fingerprint(d1, b) != data_fingerprint(d2, b)
    assert data_fingerprint(d1, b) == data_fingerprint(d1, b)


# --- real data ------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_root() -> Path:
    value = os.environ.get("OOD_BENCH_DATA")
    if not value:
        pytest.skip("OOD_BENCH_DATA is not set")
    return Path(value)


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("real-cache")


@pytest.mark.realdata
def test_real_digits(real_root, real_cache, monkeypatch):
    monkeypatch.setenv("OOD_BENCH_CACHE", str(real_cache))
    digits = load_digits(real_root, download=False)
    assert digits.train_images.shape == (60000, 28, 28)
    assert digits.test_images.shape == (10000, 28, 28)
    assert digits.train_images.dtype == torch.uint8
    assert digits.train_labels.dtype == torch.int64
    assert torch.bincount(digits.train_labels).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949,
    ]  # fmt: skip
    assert torch.bincount(digits.test_labels).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009,
    ]  # fmt: skip
    mean = digits.train_images.float().div(255).mean().item()
    assert abs(mean - 0.1307) < 1e-3


@pytest.mark.realdata
def test_real_backgrounds_cached_equal_fresh(real_root, real_cache, monkeypatch):
    monkeypatch.setenv("OOD_BENCH_CACHE", str(real_cache))
    fresh = load_backgrounds(real_root, download=False)
    assert fresh.train.shape == (50000, 3, 32, 32)
    assert fresh.test.shape == (10000, 3, 32, 32)
    assert fresh.train.dtype == torch.uint8
    cached = load_backgrounds(real_root, download=False)
    assert torch.equal(fresh.train, cached.train)
    assert torch.equal(fresh.test, cached.test)
    assert fresh.fingerprint == cached.fingerprint

    # The cache holds what a plain decode of the files gives.
    reference = torchvision.datasets.ImageFolder(str(real_root / "CIFAR10" / "test"))
    for i in (0, 4321, 9999):
        image = np.asarray(reference[i][0]).transpose(2, 0, 1)
        assert np.array_equal(cached.test[i].numpy(), image)
