"""Sources: the MNIST digits and the background images, loaded once and cached.

Digits come from the four MNIST IDX files under ``<root>/MNIST/raw``. Backgrounds
come from either the pickled CIFAR-10 batches (``<root>/cifar-10-batches-py``)
or an image-folder tree (``<root>/CIFAR10/{train,test}/<folder>/<image>``) of
any images, which are fitted to 32x32 RGB. Decoded arrays are cached outside
the data root, keyed by the path, size and modification time of every source
file, so a warm start reads no image and decodes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import socket
import struct
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs
import torch
from PIL import Image, ImageFile, ImageOps

from benchmark.errors import DataError

logger = logging.getLogger(__name__)

DATA_ENV = "OOD_BENCH_DATA"
CACHE_ENV = "OOD_BENCH_CACHE"

# Bump when the decoding or the cache layout changes, so old entries are ignored.
_CACHE_FORMAT = 1

_MNIST_FILES = {
    # name: (magic number, dimensions)
    "train-images-idx3-ubyte": (0x00000803, 3),
    "train-labels-idx1-ubyte": (0x00000801, 1),
    "t10k-images-idx3-ubyte": (0x00000803, 3),
    "t10k-labels-idx1-ubyte": (0x00000801, 1),
}
_BATCH_FILES = {
    "train": (
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
    ),
    "test": ("test_batch",),
}
# The extensions torchvision's ImageFolder accepts, so both read the same files.
_IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)
_SIZE = 32
_MIN_TRAIN_BACKGROUNDS = 10  # one per digit class, the smallest class size
_DOWNLOAD_TIMEOUT_S = 30.0
# Offline, a read-only root, a bad mirror or a damaged archive.
_DOWNLOAD_ERRORS = (
    OSError,
    RuntimeError,
    ValueError,
    EOFError,
    tarfile.TarError,
    zlib.error,
)
# Truncated, not a pickle, or a pickle of something other than a batch.
_UNPICKLE_ERRORS = (
    OSError,
    EOFError,
    pickle.UnpicklingError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
)

_DATA_HINT = f"pass --data-root or set {DATA_ENV} to a folder that has them"
_MNIST_LAYOUT = "<root>/MNIST/raw/{" + ",".join(_MNIST_FILES) + "}"
_BACKGROUND_LAYOUTS = (
    "<root>/cifar-10-batches-py/{data_batch_1..5,test_batch} or "
    "<root>/CIFAR10/{train,test}/<folder>/<image>"
)


@dataclass(frozen=True)
class Digits:
    """The MNIST digits: uint8 [N, 28, 28] images and int64 [N] labels per set."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    fingerprint: str  # 16 hex digits of the pixels and labels


@dataclass(frozen=True)
class Backgrounds:
    """The background images: uint8 [N, 3, 32, 32] per set."""

    train: torch.Tensor
    test: torch.Tensor
    source: str  # "cifar10-batches" or "image-folder:<path>"
    fingerprint: str  # 16 hex digits of the pixels


def resolve_data_root(cli_value: str | os.PathLike | None = None) -> Path:
    """The data root: ``cli_value`` (``--data-root``), else ``$OOD_BENCH_DATA``,
    else ``data`` in the user cache folder of ood-bench."""
    if cli_value is not None and str(cli_value) != "":
        return Path(cli_value).expanduser()
    from_env = os.environ.get(DATA_ENV, "")
    if from_env:
        return Path(from_env).expanduser()
    return Path(platformdirs.user_cache_dir("ood-bench")) / "data"


def resolve_cache_dir() -> Path:
    """Where decoded arrays are cached: ``$OOD_BENCH_CACHE``, else the user cache
    folder of ood-bench."""
    from_env = os.environ.get(CACHE_ENV, "")
    if from_env:
        return Path(from_env).expanduser()
    return Path(platformdirs.user_cache_dir("ood-bench"))


def data_fingerprint(digits: Digits, backgrounds: Backgrounds) -> str:
    """One fingerprint (16 hex digits) for the digits and backgrounds together."""
    text = f"digits:{digits.fingerprint}|backgrounds:{backgrounds.fingerprint}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- digits -------------------------------------------------------------------


def load_digits(root: Path, download: bool = True, progress: bool = False) -> Digits:
    """The MNIST digits under ``root/MNIST/raw``, downloaded there first if
    missing and ``download`` is true; raises DataError if missing or corrupt."""
    root = Path(root)
    raw = root / "MNIST" / "raw"
    missing = [name for name in _MNIST_FILES if not (raw / name).is_file()]
    if missing:
        if not download:
            raise DataError(
                f"MNIST not found: {raw / missing[0]} is missing (expected "
                f"{_MNIST_LAYOUT}) and downloading is off; {_DATA_HINT}"
            )
        _download_digits(root)

    files = [raw / name for name in _MNIST_FILES]
    key = _cache_key("digits", "mnist-idx", root, [(str(raw), list(_MNIST_FILES))])
    cached = _read_cache("digits", key)
    if cached is not None:
        arrays, fingerprint = cached
        return Digits(
            **{name: torch.from_numpy(a) for name, a in arrays.items()},
            fingerprint=fingerprint,
        )

    start = time.perf_counter()
    dims = {path.name: _check_idx(path, *_MNIST_FILES[path.name]) for path in files}
    for prefix in ("train", "t10k"):
        n_images = dims[f"{prefix}-images-idx3-ubyte"][0]
        n_labels = dims[f"{prefix}-labels-idx1-ubyte"][0]
        if n_images != n_labels or n_images == 0:
            raise DataError(
                f"{raw / f'{prefix}-images-idx3-ubyte'} has {n_images} digits but its "
                f"labels file has {n_labels}; delete both and download them again"
            )
        if dims[f"{prefix}-images-idx3-ubyte"][1:] != (28, 28):
            raise DataError(
                f"{raw / f'{prefix}-images-idx3-ubyte'} holds images of size "
                f"{dims[f'{prefix}-images-idx3-ubyte'][1:]}, not 28x28; "
                f"it is not MNIST: replace it with the original file"
            )

    arrays = {}
    for split, train in (("train", True), ("test", False)):
        images, labels = _read_mnist(root, train)
        if int(labels.min()) < 0 or int(labels.max()) > 9:
            raise DataError(
                f"{raw / ('train' if train else 't10k')}-labels-idx1-ubyte has labels "
                f"outside 0-9; delete it and download it again"
            )
        arrays[f"{split}_images"] = images.numpy()
        arrays[f"{split}_labels"] = labels.numpy()

    fingerprint = _content_fingerprint(arrays)
    logger.info("decoded MNIST from %s in %.2fs", raw, time.perf_counter() - start)
    _write_cache("digits", key, arrays, fingerprint)
    return Digits(
        **{name: torch.from_numpy(a) for name, a in arrays.items()},
        fingerprint=fingerprint,
    )


def _download_digits(root: Path) -> None:
    import torchvision

    logger.info("downloading MNIST into %s", root)
    try:
        with _network_timeout():
            for train in (True, False):
                torchvision.datasets.MNIST(root, train=train, download=True)
    except _DOWNLOAD_ERRORS as exc:
        raise DataError(
            f"MNIST not found in {root} (expected {_MNIST_LAYOUT}) and the download "
            f"failed ({_last_line(exc)}); {_DATA_HINT}"
        ) from None


def _check_idx(path: Path, magic: int, ndim: int) -> tuple[int, ...]:
    """The dimensions in an IDX file's header, after checking its magic number
    and that its size matches them (torchvision reads short files as garbage)."""
    size = path.stat().st_size
    header_size = 4 + 4 * ndim
    with open(path, "rb") as f:
        header = f.read(header_size)
    redo = "delete it and download it again"
    if len(header) < header_size:
        raise DataError(f"{path} is truncated ({size} bytes); {redo}")
    (found,) = struct.unpack(">I", header[:4])
    if found != magic:
        raise DataError(
            f"{path} is not an IDX file of {ndim}-d uint8 data (magic number "
            f"0x{found:08x}, expected 0x{magic:08x}); {redo}"
        )
    dims = struct.unpack(f">{ndim}I", header[4:])
    expected = header_size + math.prod(dims)
    if size != expected:
        raise DataError(
            f"{path} has {size} bytes but its header says {expected}: it is "
            f"truncated or corrupt; {redo}"
        )
    return dims


def _read_mnist(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision

    try:
        dataset = torchvision.datasets.MNIST(root, train=train, download=False)
    # The headers were checked already, so a failure here means a damaged body.
    except (AssertionError, RuntimeError, ValueError, TypeError, OSError) as exc:
        raise DataError(
            f"cannot read MNIST in {root / 'MNIST' / 'raw'} ({_last_line(exc)}); "
            f"delete the files and download them again"
        ) from None
    return dataset.data.to(torch.uint8).contiguous(), dataset.targets.to(
        torch.int64
    ).contiguous()


# --- backgrounds ----------------------------------------------------------------


def load_backgrounds(
    root: Path, download: bool = True, progress: bool = False
) -> Backgrounds:
    """The background images under ``root``: the CIFAR-10 batches if present, else
    an image-folder tree, else CIFAR-10 downloaded if ``download`` is true."""
    root = Path(root)
    batches = root / "cifar-10-batches-py"
    folder = root / "CIFAR10"
    has_train, has_test = (folder / "train").is_dir(), (folder / "test").is_dir()

    if batches.is_dir():
        return _load_batches(root)
    if has_train and has_test:
        return _load_image_folder(root, folder, progress)
    if has_train != has_test:
        present, absent = ("train", "test") if has_train else ("test", "train")
        raise DataError(
            f"found {folder / present} but not {folder / absent}; an image-folder "
            f"background set needs both, each with at least one folder of images"
        )
    if not download:
        raise DataError(
            f"no backgrounds in {root}: expected {_BACKGROUND_LAYOUTS}, and "
            f"downloading is off; {_DATA_HINT}"
        )
    _download_backgrounds(root)
    return _load_batches(root)


def _download_backgrounds(root: Path) -> None:
    import torchvision

    logger.info("downloading CIFAR-10 into %s", root)
    try:
        with _network_timeout():
            torchvision.datasets.CIFAR10(root, train=True, download=True)
    except _DOWNLOAD_ERRORS as exc:
        raise DataError(
            f"no backgrounds in {root} (expected {_BACKGROUND_LAYOUTS}) and the "
            f"CIFAR-10 download failed ({_last_line(exc)}); {_DATA_HINT}"
        ) from None


def _load_batches(root: Path) -> Backgrounds:
    # The batches are read here rather than through torchvision's CIFAR10, whose
    # md5 check would refuse any batches but the published ones.
    batches = root / "cifar-10-batches-py"
    names = [name for split in _BATCH_FILES.values() for name in split]
    for name in names:
        if not (batches / name).is_file():
            raise DataError(
                f"{batches / name} is missing; delete {batches} and download "
                f"CIFAR-10 again, or {_DATA_HINT}"
            )
    key = _cache_key("backgrounds", "cifar10-batches", root, [(str(batches), names)])
    source = "cifar10-batches"
    cached = _read_cache("backgrounds", key)
    if cached is not None:
        arrays, fingerprint = cached
        return _as_backgrounds(arrays, source, fingerprint)

    start = time.perf_counter()
    arrays = {}
    for split, split_names in _BATCH_FILES.items():
        parts = [_read_batch(batches / name) for name in split_names]
        arrays[split] = np.ascontiguousarray(
            np.concatenate(parts).reshape(-1, 3, _SIZE, _SIZE)
        )
    _check_counts(arrays, batches)
    fingerprint = _content_fingerprint(arrays)
    logger.info(
        "read CIFAR-10 batches from %s in %.2fs", batches, time.perf_counter() - start
    )
    _write_cache("backgrounds", key, arrays, fingerprint)
    return _as_backgrounds(arrays, source, fingerprint)


def _as_backgrounds(arrays: dict, source: str, fingerprint: str) -> Backgrounds:
    return Backgrounds(
        torch.from_numpy(arrays["train"]),
        torch.from_numpy(arrays["test"]),
        source,
        fingerprint,
    )


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain data only, so a batch file cannot run code."""

    _ALLOWED = frozenset({"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"})

    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "numpy" and name in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")


def _read_batch(path: Path) -> np.ndarray:
    redo = f"delete {path.parent} and download CIFAR-10 again"
    try:
        with open(path, "rb") as f:
            entry = _BatchUnpickler(f, encoding="latin1").load()
        data = np.asarray(entry["data"])
    except _UNPICKLE_ERRORS as exc:
        raise DataError(
            f"{path} is not a readable CIFAR-10 batch ({_last_line(exc)}); {redo}"
        ) from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * _SIZE * _SIZE:
        raise DataError(
            f"{path} holds {data.dtype} data of shape {data.shape}, not uint8 "
            f"[N, {3 * _SIZE * _SIZE}]; {redo}"
        )
    return data


def _load_image_folder(root: Path, folder: Path, progress: bool) -> Backgrounds:
    folder = folder.resolve()
    source = f"image-folder:{folder}"
    listings = {split: _list_images(folder / split) for split in ("train", "test")}
    groups = [group for split in ("train", "test") for group in listings[split]]
    key = _cache_key("backgrounds", "image-folder", folder, groups)
    cached = _read_cache("backgrounds", key)
    if cached is not None:
        arrays, fingerprint = cached
        return _as_backgrounds(arrays, source, fingerprint)

    start = time.perf_counter()
    arrays = {}
    for split, groups in listings.items():
        paths = [
            os.path.join(directory, name)
            for directory, names in groups
            for name in names
        ]
        arrays[split] = _decode_all(paths, f"decoding {split} backgrounds", progress)
    _check_counts(arrays, folder)
    fingerprint = _content_fingerprint(arrays)
    n = sum(len(a) for a in arrays.values())
    logger.info(
        "decoded %d backgrounds from %s in %.2fs",
        n,
        folder,
        time.perf_counter() - start,
    )
    _write_cache("backgrounds", key, arrays, fingerprint)
    return _as_backgrounds(arrays, source, fingerprint)


def _list_images(split_dir: Path) -> list[tuple[str, list[str]]]:
    """The images of one split in ImageFolder's order, as (directory, sorted names)
    groups; an empty split or class folder is an error, not a smaller set."""
    try:
        classes = sorted(
            entry.name for entry in os.scandir(split_dir) if entry.is_dir()
        )
    except OSError as exc:
        raise DataError(
            f"cannot list {split_dir} ({exc.strerror}); check it is a readable folder"
        ) from None
    if not classes:
        raise DataError(
            f"{split_dir} has no folders: put the images in at least one folder "
            f"inside it, e.g. {split_dir / 'all' / '0001.jpg'}"
        )
    groups = []
    for name in classes:
        class_dir = split_dir / name
        found = 0
        for directory, _, files in sorted(os.walk(class_dir, followlinks=True)):
            images = sorted(f for f in files if f.lower().endswith(_IMAGE_EXTENSIONS))
            if images:
                groups.append((directory, images))
                found += len(images)
        if found == 0:
            raise DataError(
                f"{class_dir} has no images ({', '.join(_IMAGE_EXTENSIONS)}); "
                f"add images to it or remove it"
            )
    return groups


def _decode_all(paths: list[str], description: str, progress: bool) -> np.ndarray:
    """Decode images into one uint8 [N, 3, 32, 32] array on a thread pool
    (Pillow releases the GIL while it decodes)."""
    out = np.empty((len(paths), 3, _SIZE, _SIZE), dtype=np.uint8)
    chunk = 256
    starts = range(0, len(paths), chunk)

    def decode_chunk(begin: int) -> int:
        end = min(begin + chunk, len(paths))
        for i in range(begin, end):
            out[i] = _decode(paths[i])
        return end - begin

    workers = min(16, os.cpu_count() or 1)
    with (
        _strict_images(),
        _progress_bar(description, len(paths), progress) as advance,
        ThreadPoolExecutor(max_workers=workers) as pool,
    ):
        futures = [pool.submit(decode_chunk, begin) for begin in starts]
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                if future.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise future.exception()
                advance(future.result())
    return out


def _decode(path: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            rgb = image.convert("RGB")
    except (
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        struct.error,
        Image.DecompressionBombError,
    ) as exc:
        raise DataError(
            f"cannot decode background image {path} ({_last_line(exc)}); delete or replace it"
        ) from None
    if rgb.size != (_SIZE, _SIZE):
        # Crop to a square before shrinking, so that backgrounds keep their aspect.
        rgb = ImageOps.fit(rgb, (_SIZE, _SIZE), Image.Resampling.BICUBIC)
    return np.asarray(rgb).transpose(2, 0, 1)


@contextmanager
def _strict_images() -> Iterator[None]:
    # Pillow fills a truncated image with grey when this flag is on; a truncated
    # background must be an error instead, whatever other code has set.
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


@contextmanager
def _progress_bar(
    description: str, total: int, show: bool
) -> Iterator[Callable[[int], None]]:
    if not show:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    # Off a terminal a bar is only its last frame, which would sit on stderr
    # next to the one-line error of a failed load.
    if not console.is_terminal:
        yield lambda n: None
        return
    with Progress(console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        try:
            yield lambda n: bar.advance(task, n)
        except BaseException:
            bar.live.transient = True  # erase the stopped bar above the error
            raise


def _check_counts(arrays: dict[str, np.ndarray], where: Path) -> None:
    if len(arrays["train"]) < _MIN_TRAIN_BACKGROUNDS:
        raise DataError(
            f"{where} has {len(arrays['train'])} training backgrounds; the benchmark "
            f"needs at least {_MIN_TRAIN_BACKGROUNDS}, one per digit class"
        )
    if len(arrays["test"]) == 0:
        raise DataError(f"{where} has no test backgrounds; add at least one")


# --- cache ------------------------------------------------------------------------


def _cache_key(
    kind: str, layout: str, root: Path, groups: list[tuple[str, list[str]]]
) -> str:
    """A hash of the relative path, size and modification time of every source
    file, in ``(directory, names)`` groups; it stats the files and reads none."""
    root = Path(root).resolve()
    h = hashlib.sha256(f"{_CACHE_FORMAT}|{kind}|{layout}|{root}\n".encode())
    for directory, names in groups:
        fd = os.open(directory, os.O_RDONLY)
        try:
            stats = [os.stat(name, dir_fd=fd) for name in names]
        finally:
            os.close(fd)
        h.update(f"{os.path.relpath(directory, root)}\0".encode())
        h.update("\0".join(names).encode())
        # Packing the numbers is much faster than formatting 60,000 rows.
        numbers = [(st.st_size, st.st_mtime_ns) for st in stats]
        h.update(np.array(numbers, dtype=np.int64).tobytes())
    return h.hexdigest()[:20]


def _content_fingerprint(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        array = arrays[name]
        h.update(f"{name}:{array.dtype}:{array.shape}|".encode())
        h.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return h.hexdigest()[:16]


def _cache_entry(kind: str, key: str) -> Path:
    return resolve_cache_dir() / "sources" / f"{kind}-{key}"


def _read_cache(kind: str, key: str) -> tuple[dict[str, np.ndarray], str] | None:
    """The cached arrays and fingerprint, or None on a miss; a damaged entry is a
    miss (it is rebuilt), never a crash."""
    entry = _cache_entry(kind, key)
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        logger.info("no cached %s in %s", kind, entry)
        return None
    try:
        meta = json.loads(meta_path.read_text())
        arrays = {}
        for name, info in meta["arrays"].items():
            path = entry / f"{name}.npy"
            if path.stat().st_size != info["bytes"]:
                raise ValueError(
                    f"{path.name} has {path.stat().st_size} bytes, expected {info['bytes']}"
                )
            array = np.load(path, mmap_mode=None, allow_pickle=False)
            if list(array.shape) != info["shape"] or str(array.dtype) != info["dtype"]:
                raise ValueError(f"{path.name} holds {array.dtype} {array.shape}")
            arrays[name] = array
        fingerprint = meta["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning(
            "cached %s in %s is damaged (%s); rebuilding it", kind, entry, exc
        )
        return None
    logger.info("loaded cached %s from %s", kind, entry)
    return arrays, fingerprint


def _write_cache(
    kind: str, key: str, arrays: dict[str, np.ndarray], fingerprint: str
) -> None:
    """Store arrays atomically (temporary file, then rename), the metadata last so
    that it only ever describes complete arrays; failing to cache is not an error."""
    entry = _cache_entry(kind, key)
    try:
        entry.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": _CACHE_FORMAT,
            "kind": kind,
            "fingerprint": fingerprint,
            "arrays": {},
        }
        for name, array in arrays.items():
            path = entry / f"{name}.npy"
            _atomic_write(path, lambda f, a=array: np.save(f, a, allow_pickle=False))
            meta["arrays"][name] = {
                "shape": list(array.shape),
                "dtype": str(array.dtype),
                "bytes": path.stat().st_size,
            }
        text = json.dumps(meta, indent=1)
        _atomic_write(entry / "meta.json", lambda f: f.write(text.encode()))
    except OSError as exc:
        logger.warning(
            "cannot cache %s in %s (%s); set %s to a writable folder",
            kind,
            entry,
            exc,
            CACHE_ENV,
        )
        return
    logger.info("cached %s in %s", kind, entry)


def _atomic_write(path: Path, write: Callable) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- helpers ----------------------------------------------------------------------


@contextmanager
def _network_timeout() -> Iterator[None]:
    # torchvision opens URLs without a timeout; a dead network must fail, not hang.
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _last_line(exc: BaseException) -> str:
    """The last non-empty line of an exception's message, for one-line errors."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
