"""Datasets and few-shot episodes for meta-learning plasticity rules.

Images are always flat float32 vectors of 784 = 28*28 pixels with values in [0, 1]
times a per-dataset ``input_scale``; labels are int64 class ids.

Datasets (see :data:`DATASETS`):

* ``"digits"``: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes),
  upsampled bilinearly to 28x28. Works offline, so it is the default for tests and quick runs.
  It has a single split (``split="train"``). Upsampled digits carry much more "ink" than
  MNIST (mean squared norm ~156 vs ~88), which makes rules with Oja's term blow up, so by
  default they are rescaled to MNIST's mean squared norm (:func:`mnist_ink_scale`).
* ``"emnist"`` (balanced split, 47 classes; the paper's dataset), ``"mnist"``,
  ``"fashion-mnist"``: read from torchvision's on-disk layout under the data root
  (:func:`default_data_root`), e.g. ``<root>/EMNIST/raw/emnist-balanced-train-images-idx3-ubyte``.

An episode (one task) has M classes drawn without replacement and, per class, K training
and Q query images drawn afresh for every episode (:class:`EpisodeSampler`).

For online learning curves (one pass over a stream, batch size 1), :func:`online_stream`
gives a training stream and held-out test images.
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

DATASETS: tuple[str, ...] = ("digits", "emnist", "mnist", "fashion-mnist")

#: Mean squared L2 norm of a 784-pixel MNIST image with pixels in [0, 1]:
#: E||x||^2 = sum_i E[x_i^2] = 784 * (std^2 + mean^2), with MNIST's published pixel
#: mean 0.1307 and std 0.3081 (over all training pixels) -> ~87.8.
MNIST_MEAN_SQ_NORM: float = 784 * (0.3081**2 + 0.1307**2)

_EMNIST_URL = "https://www.nist.gov/itl/products-and-services/emnist-dataset"
_TV_SOURCES = {
    "mnist": "http://yann.lecun.com/exdb/mnist/ (or torchvision's mirrors)",
    "fashion-mnist": "https://github.com/zalandoresearch/fashion-mnist (data/fashion/*.gz)",
    "emnist": _EMNIST_URL + " (download gzip.zip and take the emnist-balanced-* files)",
}
# name -> (torchvision folder, number of classes)
_TV_INFO = {"emnist": ("EMNIST", 47), "mnist": ("MNIST", 10), "fashion-mnist": ("FashionMNIST", 10)}
_IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}  # uint8 data, 3 / 1 dims


class DatasetNotFoundError(FileNotFoundError):
    """Dataset files are missing from the data folder (and ``download`` was False)."""


class CorruptDatasetError(ValueError):
    """A dataset file exists but cannot be parsed (truncated, wrong magic number, size mismatch)."""


@dataclass(eq=False)
class Dataset:
    """An in-memory image classification dataset.

    Attributes:
        name: dataset name (one of :data:`DATASETS` for loaded data).
        images: (N, 784) float32, pixels in [0, 1] multiplied by ``input_scale``.
        labels: (N,) int64, class ids in 0..n_classes-1.
        n_classes: number of classes of the dataset (some may be absent from ``labels``).
        input_scale: factor the [0, 1] pixels were multiplied by.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    n_classes: int
    input_scale: float = 1.0
    _class_indices: list[torch.Tensor] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.images.ndim != 2 or self.labels.ndim != 1 or len(self.images) != len(self.labels):
            raise ValueError(
                f"Dataset '{self.name}': expected images (N, D) and labels (N,), got "
                f"{tuple(self.images.shape)} and {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def class_indices(self) -> list[torch.Tensor]:
        """Row indices of each class: entry c is a 1-D int64 tensor (empty if c is absent). Cached."""
        if self._class_indices is None:
            order = torch.argsort(self.labels, stable=True)
            counts = self.class_counts().tolist()
            self._class_indices = list(torch.split(order, counts))
        return self._class_indices

    def class_counts(self) -> torch.Tensor:
        """(n_classes,) int64 number of images per class."""
        return torch.bincount(self.labels, minlength=self.n_classes)


def default_data_root() -> Path:
    """Data folder: ``$LABKIT_DATA`` if set (and non-empty), else ``./data``."""
    env = os.environ.get("LABKIT_DATA")
    return Path(env).expanduser() if env else Path("data")


def mnist_ink_scale(images: torch.Tensor) -> float:
    """Factor that gives ``images`` (N, D), pixels in [0, 1], MNIST's mean squared norm.

    Returns sqrt(MNIST_MEAN_SQ_NORM / mean_n ||images[n]||^2).
    """
    mean_sq = images.double().pow(2).sum(dim=1).mean().item()
    return float((MNIST_MEAN_SQ_NORM / mean_sq) ** 0.5)


def load_dataset(
    name: str = "digits",
    root: str | Path | None = None,
    download: bool = False,
    split: str = "train",
    input_scale: float | str = "auto",
) -> Dataset:
    """Load a dataset as flat (N, 784) float32 images and (N,) int64 labels.

    Args:
        name: one of :data:`DATASETS` ("fashion_mnist" is accepted too).
        root: data folder holding torchvision's layout (``<root>/EMNIST/raw/...``);
            default :func:`default_data_root`. Unused for "digits".
        download: let torchvision download missing files (needs internet).
        split: "train" or "test". "digits" has a single split, "train" (all 1797 images);
            for disjoint meta-test tasks use :func:`split_classes` instead.
        input_scale: "auto" (digits: :func:`mnist_ink_scale`, ~0.75; others: 1.0) or a
            positive float multiplying the [0, 1] pixels.

    Raises:
        ValueError: unknown name / split / scale.
        DatasetNotFoundError: files missing and ``download`` is False.
        CorruptDatasetError: a file is truncated or malformed.
    """
    key = name.lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not (input_scale == "auto" or (isinstance(input_scale, (int, float)) and input_scale > 0)):
        raise ValueError(f"input_scale must be 'auto' or a positive number, got {input_scale!r}")

    if key == "digits":
        if split != "train":
            raise ValueError(
                "the 'digits' dataset has a single split (split='train', all 1797 images); "
                "use split_classes() for disjoint meta-train / meta-test classes"
            )
        images, labels = _load_digits()
        n_classes = 10
    else:
        images, labels = _load_torchvision(key, Path(root) if root is not None else default_data_root(),
                                           download, train=split == "train")
        n_classes = _TV_INFO[key][1]

    if input_scale == "auto":
        scale = mnist_ink_scale(images) if key == "digits" else 1.0
    else:
        scale = float(input_scale)
    if scale != 1.0:
        images = images * scale
    return Dataset(key, images, labels, n_classes, scale)


def _load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn digits, 8x8 in 0..16 -> (1797, 784) float32 in [0, 1] (bilinear upsampling), labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    big = torch.nn.functional.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    return big.clamp_(0.0, 1.0).reshape(len(big), 784), torch.as_tensor(bunch.target, dtype=torch.int64)


def _raw_files(key: str, root: Path, train: bool) -> tuple[Path, list[Path]]:
    """(raw folder, [images file, labels file, other files torchvision insists on]) in torchvision's layout.

    torchvision's MNIST / FashionMNIST refuse to load unless the train AND test files are all
    present; EMNIST needs only the requested split's two files.
    """
    folder = root / _TV_INFO[key][0] / "raw"
    if key == "emnist":
        prefixes = [f"emnist-balanced-{'train' if train else 'test'}"]
    else:
        prefixes = ["train", "t10k"] if train else ["t10k", "train"]
    return folder, [folder / f"{p}-{kind}" for p in prefixes for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]


def _check_idx(path: Path, kind: str) -> int:
    """Validate an IDX file's header and size; return its number of items."""
    advice = f"Delete {path} and obtain it again (load_dataset(..., download=True) or the CLI's --download)."
    ndim = 3 if kind == "images" else 1
    header_len = 4 * (ndim + 1)
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(header_len)
    if len(header) < header_len:
        raise CorruptDatasetError(f"{path}: file is truncated ({size} bytes, not even a header). {advice}")
    magic = int.from_bytes(header[:4], "big")
    if magic != _IDX_MAGIC[kind]:
        raise CorruptDatasetError(
            f"{path}: bad magic number 0x{magic:08x} (expected 0x{_IDX_MAGIC[kind]:08x} for IDX uint8 {kind}); "
            f"is it still gzip-compressed or the wrong file? {advice}"
        )
    dims = [int.from_bytes(header[4 * i + 4 : 4 * i + 8], "big") for i in range(ndim)]
    if kind == "images" and dims[1:] != [28, 28]:
        raise CorruptDatasetError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28. {advice}")
    expected = header_len + (dims[0] * 784 if kind == "images" else dims[0])
    if size != expected:
        raise CorruptDatasetError(
            f"{path}: size mismatch, header promises {dims[0]} {kind} ({expected} bytes) but the file has "
            f"{size} bytes (truncated download?). {advice}"
        )
    return dims[0]


def _load_torchvision(key: str, root: Path, download: bool, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Load EMNIST-balanced / MNIST / Fashion-MNIST via torchvision -> ((N, 784) in [0, 1], (N,) int64)."""
    from torchvision import datasets

    folder, needed = _raw_files(key, root, train)
    img_path, lab_path = needed[:2]
    for path in needed:  # accept the distributed .gz files: decompress them in place
        gz = path.with_name(path.name + ".gz")
        if not path.exists() and gz.exists():
            try:
                with gzip.open(gz, "rb") as src, open(path, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
                path.unlink(missing_ok=True)
                raise CorruptDatasetError(
                    f"{gz}: cannot decompress ({err}). Delete it and obtain it again (download=True / --download)."
                ) from err
    missing = [p.name for p in needed if not p.exists()]
    if missing and not download:
        raise DatasetNotFoundError(
            f"dataset '{key}' ({'train' if train else 'test'} split) not found: missing "
            f"{', '.join(missing)} in folder {folder.resolve()}. Pass --download (CLI) or download=True "
            f"to fetch it, or set LABKIT_DATA / --data-root to the folder that holds {_TV_INFO[key][0]}/raw/. "
            f"Manual download: {_TV_SOURCES[key]}; put the (gunzipped or .gz) files into {folder}/"
            + (" (torchvision needs both the train and t10k files)." if key != "emnist" else ".")
        )
    if not missing:
        n_img, n_lab = _check_idx(img_path, "images"), _check_idx(lab_path, "labels")
        if n_img != n_lab:
            raise CorruptDatasetError(
                f"{img_path} holds {n_img} images but {lab_path} holds {n_lab} labels; "
                "delete both and obtain them again (download=True / --download)."
            )

    cls = {"emnist": datasets.EMNIST, "mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[key]
    kwargs = {"split": "balanced"} if key == "emnist" else {}
    try:
        tv = cls(str(root), train=train, download=download, **kwargs)
    except (RuntimeError, AssertionError, ValueError, IndexError, OSError) as err:
        if download and missing:
            raise DatasetNotFoundError(
                f"could not download '{key}' into {folder.resolve()} ({err}). "
                f"Download it manually from {_TV_SOURCES[key]} and put the files into {folder}/."
            ) from err
        raise CorruptDatasetError(
            f"could not parse {img_path} / {lab_path}: {err!r}. Delete them and obtain them again "
            "(download=True / --download)."
        ) from err

    images, labels = tv.data, torch.as_tensor(tv.targets, dtype=torch.int64)  # (N, 28, 28) uint8, (N,)
    n_classes = _TV_INFO[key][1]
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < n_classes:
        raise CorruptDatasetError(
            f"{lab_path}: labels span {int(labels.min())}..{int(labels.max())}, expected 0..{n_classes - 1} "
            f"for '{key}'. Is it the right file? Delete it and obtain it again (download=True / --download)."
        )
    if key == "emnist":
        images = images.transpose(1, 2)  # EMNIST is stored transposed; make characters upright
    return images.reshape(len(images), 784).to(torch.float32).div_(255.0), labels


# ---------------------------------------------------------------------------- online streams


@lru_cache(maxsize=4)
def online_stream(
    dataset: str = "digits", root: str | Path | None = None, n_eval: int = 300, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Data for online learning curves: ``(x_stream, y_stream, x_eval, y_eval, n_classes)``.

    ``"digits"`` has a single split: a random ``n_eval`` of its 1797 images, drawn with a
    generator seeded by ``seed`` (same seed, same split), are held out for testing and the
    rest form the stream. Other datasets stream their whole training split and test on the
    first ``n_eval`` images of their test split (``seed`` is unused). ``root`` is as for
    :func:`load_dataset`. The stream is in file order; a learner draws its own order.

    Cached (the last 4 calls): the tensors are shared between calls, do not modify them in place.

    Raises:
        ValueError: ``n_eval`` < 1, or for digits not below the number of images.
        DatasetNotFoundError: the dataset's files are missing (nothing is downloaded).
    """
    if n_eval < 1:
        raise ValueError(f"n_eval must be at least 1, got {n_eval}")
    if dataset == "digits":
        ds = load_dataset("digits")
        if n_eval >= len(ds):
            raise ValueError(f"n_eval={n_eval} leaves no digits to stream; choose n_eval < {len(ds)}")
        perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
        ev, tr = perm[:n_eval], perm[n_eval:]
        return ds.images[tr], ds.labels[tr], ds.images[ev], ds.labels[ev], ds.n_classes
    train = load_dataset(dataset, root, split="train")
    test = load_dataset(dataset, root, split="test")
    return train.images, train.labels, test.images[:n_eval], test.labels[:n_eval], train.n_classes


@dataclass(eq=False)
class Episode:
    """One few-shot task (or T tasks stacked along a leading axis, see :func:`stack_episodes`).

    Attributes:
        x_train: (M*K, D) float training images, already in shuffled (online) order; (T, M*K, D) stacked.
        y_train: (M*K,) int64 labels; (T, M*K) stacked.
        x_query: (M*Q, D) query images, grouped by class; (T, M*Q, D) stacked.
        y_query: (M*Q,) int64 labels; (T, M*Q) stacked.
        classes: (M,) dataset class ids of this task, in label order for remapped labels; (T, M) stacked.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    classes: torch.Tensor


class EpisodeSampler:
    """Draws M-way tasks with K training and Q query images per class.

    Each call to :meth:`sample` draws M distinct classes from the usable classes, then for each
    class K+Q distinct images afresh (first K train, next Q query, never overlapping), and
    shuffles the M*K training images. All randomness comes from the given generator.

    Args:
        dataset: the images to draw from.
        M, K, Q: classes per task, training and query images per class (all >= 1).
        classes: usable class ids (e.g. a meta-train split from :func:`split_classes`);
            default: every class with at least one image.
        remap_labels: label images by their class's position 0..M-1 in ``Episode.classes``
            instead of by dataset class id.
    """

    def __init__(
        self,
        dataset: Dataset,
        M: int = 5,
        K: int = 50,
        Q: int = 10,
        classes: Sequence[int] | None = None,
        remap_labels: bool = False,
    ) -> None:
        for label, value in (("M", M), ("K", K), ("Q", Q)):
            if int(value) != value or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        counts = dataset.class_counts()
        if classes is None:
            usable = torch.nonzero(counts > 0).flatten().tolist()
            restriction = "" if len(usable) == dataset.n_classes else f" (only {len(usable)} present in the data)"
        else:
            usable = [int(c) for c in classes]
            bad = [c for c in usable if not 0 <= c < dataset.n_classes]
            if bad or len(set(usable)) != len(usable):
                raise ValueError(
                    f"classes must be distinct ids in 0..{dataset.n_classes - 1} for dataset "
                    f"'{dataset.name}', got {list(classes)}"
                )
            restriction = f" (restricted to {len(usable)} by the class split)"
        if M > len(usable):
            raise ValueError(
                f"M={M} classes per task but the dataset '{dataset.name}' has only "
                f"{dataset.n_classes} classes{restriction}; choose M <= {len(usable)}"
            )
        smallest_class = min(usable, key=lambda c: int(counts[c]))
        smallest = int(counts[smallest_class])
        if K + Q > smallest:
            raise ValueError(
                f"K+Q = {K}+{Q} = {K + Q} distinct images per class needed, but class {smallest_class} of "
                f"dataset '{dataset.name}' has only {smallest} images; choose K+Q <= {smallest}"
            )
        self.dataset, self.M, self.K, self.Q = dataset, int(M), int(K), int(Q)
        self.remap_labels = remap_labels
        self.classes = torch.tensor(usable, dtype=torch.int64)

    @property
    def n_outputs(self) -> int:
        """Output units a network needs: M if labels are remapped, else the dataset's class count."""
        return self.M if self.remap_labels else self.dataset.n_classes

    def sample(self, generator: torch.Generator) -> Episode:
        """Draw one episode; identical generator state -> identical episode."""
        M, K, Q = self.M, self.K, self.Q
        gdev = generator.device
        classes = self.classes[torch.randperm(len(self.classes), generator=generator, device=gdev).cpu()[:M]]
        by_class = self.dataset.class_indices()
        picks = []
        for c in classes.tolist():
            idx = by_class[c]
            picks.append(idx[torch.randperm(len(idx), generator=generator, device=gdev).cpu()[: K + Q]])
        picks = torch.stack(picks)  # (M, K+Q) dataset row indices
        train_idx, query_idx = picks[:, :K].reshape(-1), picks[:, K:].reshape(-1)
        order = torch.randperm(M * K, generator=generator, device=gdev).cpu()
        train_idx = train_idx[order]

        positions = torch.arange(M).repeat_interleave(K)[order]
        y_train = positions if self.remap_labels else classes[positions]
        y_query = torch.arange(M).repeat_interleave(Q)
        if not self.remap_labels:
            y_query = classes[y_query]
        images = self.dataset.images
        return Episode(
            x_train=images[train_idx.to(images.device)],
            y_train=y_train.to(images.device),
            x_query=images[query_idx.to(images.device)],
            y_query=y_query.to(images.device),
            classes=classes,
        )


def stack_episodes(episodes: Sequence[Episode]) -> Episode:
    """Stack T episodes of equal shapes along a new leading trial axis: x_train (T, M*K, D), etc."""
    if len(episodes) == 0:
        raise ValueError("stack_episodes needs at least one episode")
    fields = ("x_train", "y_train", "x_query", "y_query", "classes")
    return Episode(*(torch.stack([getattr(e, f) for e in episodes]) for f in fields))


def split_classes(n_classes: int, n_test: int, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of class ids 0..n_classes-1 into disjoint sorted (meta_train, meta_test) lists.

    ``n_test`` classes go to meta-test; 0 <= n_test < n_classes.
    """
    if not 0 <= n_test < n_classes:
        raise ValueError(f"n_test must be in 0..{n_classes - 1} for {n_classes} classes, got {n_test}")
    perm = torch.randperm(n_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[n_test:]), sorted(perm[:n_test])
