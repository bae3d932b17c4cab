"""Tests for labkit.data: loading (offline digits, tiny IDX files in torchvision's layout), errors, episodes."""

from __future__ import annotations

import gzip
import struct
from collections import Counter
from pathlib import Path

import pytest
import torch

from labkit.data import (
    DATASETS,
    MNIST_MEAN_SQ_NORM,
    CorruptDatasetError,
    Dataset,
    DatasetNotFoundError,
    EpisodeSampler,
    default_data_root,
    load_dataset,
    mnist_ink_scale,
    online_stream,
    split_classes,
    stack_episodes,
)

# ---------------------------------------------------------------- helpers


def write_idx_images(path: Path, images: torch.Tensor) -> None:
    """IDX3 uint8: magic 0x00000803, big-endian (N, 28, 28), then the pixels."""
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 0x00000803, n, h, w) + images.to(torch.uint8).numpy().tobytes())


def write_idx_labels(path: Path, labels: torch.Tensor) -> None:
    """IDX1 uint8: magic 0x00000801, big-endian N, then the labels."""
    path.write_bytes(struct.pack(">II", 0x00000801, len(labels)) + labels.to(torch.uint8).numpy().tobytes())


LAYOUT = {  # name -> (folder, [(images file, labels file) per split])
    "emnist": ("EMNIST", [("emnist-balanced-train-images-idx3-ubyte", "emnist-balanced-train-labels-idx1-ubyte"),
                          ("emnist-balanced-test-images-idx3-ubyte", "emnist-balanced-test-labels-idx1-ubyte")]),
    "mnist": ("MNIST", [("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]),
    "fashion-mnist": ("FashionMNIST", [("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                                       ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]),
}
CLASSES_IN_FILES = (0, 3, 9)  # a few classes, 12 images each
PER_CLASS = 12


def tiny_split(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(CLASSES_IN_FILES).repeat_interleave(PER_CLASS)
    images = torch.randint(0, 256, (len(labels), 28, 28), generator=g, dtype=torch.uint8)
    images[0] = 0
    images[0, 0, 5] = 255  # one bright pixel at row 0, column 5 (checks EMNIST's transpose)
    images[1] = 255
    return images, labels


def write_tiny_dataset(root: Path, name: str, gz: bool = False) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Write train and test IDX files for `name` under root in torchvision's layout; return the raw data."""
    folder, splits = LAYOUT[name]
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, (img_name, lab_name), seed in zip(("train", "test"), splits, (1, 2)):
        images, labels = tiny_split(seed)
        write_idx_images(raw / img_name, images)
        write_idx_labels(raw / lab_name, labels)
        if gz:
            for fname in (img_name, lab_name):
                (raw / (fname + ".gz")).write_bytes(gzip.compress((raw / fname).read_bytes()))
                (raw / fname).unlink()
        data[split] = (images, labels)
    return data


def indexed_dataset(n_classes: int = 8, per_class: int = 30) -> Dataset:
    """Dataset whose image row i is [i, label, 0, ...], so rows identify dataset indices."""
    labels = torch.arange(n_classes).repeat(per_class)  # interleaved classes
    images = torch.zeros(len(labels), 784)
    images[:, 0] = torch.arange(len(labels), dtype=torch.float32)
    images[:, 1] = labels.float()
    return Dataset("indexed", images, labels, n_classes, 1.0)


def rows(x: torch.Tensor) -> list[int]:
    return x[..., 0].long().tolist()


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


# ---------------------------------------------------------------- digits


def test_digits_load_offline_as_flat_images_in_unit_range_times_scale(digits):
    assert digits.name == "digits" and digits.n_classes == 10
    assert digits.images.shape == (1797, 784) and digits.images.dtype == torch.float32
    assert digits.labels.shape == (1797,) and digits.labels.dtype == torch.int64
    assert set(digits.labels.tolist()) == set(range(10))
    assert digits.images.min() >= 0 and digits.images.max() <= 1.0 * digits.input_scale + 1e-6


def test_digits_auto_scale_matches_mnist_mean_ink(digits):
    unscaled = load_dataset("digits", input_scale=1.0)
    assert unscaled.images.pow(2).sum(1).mean() > 150  # upsampled digits carry much more ink than MNIST
    assert 0.7 < digits.input_scale < 0.8
    assert digits.input_scale == pytest.approx(mnist_ink_scale(unscaled.images))
    assert digits.images.pow(2).sum(1).mean().item() == pytest.approx(MNIST_MEAN_SQ_NORM, rel=1e-4)
    assert torch.allclose(digits.images, unscaled.images * digits.input_scale)


def test_mnist_mean_sq_norm_comes_from_published_pixel_statistics():
    assert MNIST_MEAN_SQ_NORM == pytest.approx(784 * (0.3081**2 + 0.1307**2))
    assert MNIST_MEAN_SQ_NORM == pytest.approx(87.8, abs=0.05)


def test_explicit_input_scale_multiplies_pixels():
    half = load_dataset("digits", input_scale=0.5)
    assert half.input_scale == 0.5 and half.images.max().item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="input_scale"):
        load_dataset("digits", input_scale=-1.0)


def test_digits_has_a_single_split():
    with pytest.raises(ValueError, match="single split"):
        load_dataset("digits", split="test")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", split="validation")


def test_unknown_dataset_name_lists_allowed_names():
    with pytest.raises(ValueError) as err:
        load_dataset("cifar10")
    for name in DATASETS:
        assert name in str(err.value)


def test_class_indices_partition_the_dataset(digits):
    groups = digits.class_indices()
    assert len(groups) == 10 and digits.class_indices() is groups  # cached
    assert torch.equal(digits.class_counts(), torch.tensor([len(g) for g in groups]))
    for c, g in enumerate(groups):
        assert (digits.labels[g] == c).all()
    assert sorted(torch.cat(groups).tolist()) == list(range(len(digits)))


# ---------------------------------------------------------------- torchvision layouts


@pytest.mark.parametrize("name", ["emnist", "mnist", "fashion-mnist"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_idx_files_in_torchvision_layout_load_as_flat_unit_range_images(tmp_path, name, split):
    raw = write_tiny_dataset(tmp_path, name)[split]
    ds = load_dataset(name, root=tmp_path, split=split)
    n = len(CLASSES_IN_FILES) * PER_CLASS
    assert ds.images.shape == (n, 784) and ds.images.dtype == torch.float32
    assert ds.labels.dtype == torch.int64 and torch.equal(ds.labels, raw[1].long())
    assert ds.n_classes == (47 if name == "emnist" else 10) and ds.input_scale == 1.0
    assert ds.images.min() >= 0 and ds.images.max() <= 1
    assert ds.images[1].eq(1).all()  # 255 -> 1.0


def test_emnist_images_are_transposed_upright_and_mnist_are_not(tmp_path):
    write_tiny_dataset(tmp_path, "emnist")
    write_tiny_dataset(tmp_path, "mnist")
    emnist = load_dataset("emnist", root=tmp_path).images[0].view(28, 28)
    mnist = load_dataset("mnist", root=tmp_path).images[0].view(28, 28)
    assert emnist[5, 0] == 1 and emnist.sum() == 1  # stored (0, 5) -> upright (5, 0)
    assert mnist[0, 5] == 1 and mnist.sum() == 1


def test_gzipped_files_are_accepted(tmp_path):
    raw = write_tiny_dataset(tmp_path, "mnist", gz=True)["train"]
    ds = load_dataset("mnist", root=tmp_path)
    assert torch.equal(ds.labels, raw[1].long())


def test_missing_files_error_names_files_folder_and_download(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("emnist", root=tmp_path)
    msg = str(err.value)
    assert "emnist-balanced-train-images-idx3-ubyte" in msg and "emnist-balanced-train-labels-idx1-ubyte" in msg
    assert str((tmp_path / "EMNIST" / "raw").resolve()) in msg
    assert "download" in msg and "LABKIT_DATA" in msg and "nist.gov" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_missing_test_files_are_named_because_torchvision_mnist_needs_both_splits(tmp_path):
    write_tiny_dataset(tmp_path, "mnist")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte") as err:
        load_dataset("mnist", root=tmp_path)
    assert "train-images" not in str(err.value)


def test_truncated_file_raises_corrupt_dataset_error_naming_it(tmp_path):
    write_tiny_dataset(tmp_path, "emnist")
    path = tmp_path / "EMNIST" / "raw" / "emnist-balanced-train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CorruptDatasetError, match="emnist-balanced-train-images-idx3-ubyte") as err:
        load_dataset("emnist", root=tmp_path)
    assert "Delete" in str(err.value)


def test_bad_magic_number_raises_corrupt_dataset_error(tmp_path):
    write_tiny_dataset(tmp_path, "fashion-mnist")
    path = tmp_path / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte"
    path.write_bytes(struct.pack(">I", 0x00000803) + path.read_bytes()[4:])
    with pytest.raises(CorruptDatasetError, match="magic"):
        load_dataset("fashion-mnist", root=tmp_path)


def test_image_and_label_count_mismatch_raises_corrupt_dataset_error(tmp_path):
    write_tiny_dataset(tmp_path, "mnist")
    write_idx_labels(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte", torch.zeros(5, dtype=torch.uint8))
    with pytest.raises(CorruptDatasetError, match="labels"):
        load_dataset("mnist", root=tmp_path)


def test_truncated_gzip_raises_corrupt_dataset_error(tmp_path):
    write_tiny_dataset(tmp_path, "emnist", gz=True)
    gz = tmp_path / "EMNIST" / "raw" / "emnist-balanced-train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:100])
    with pytest.raises(CorruptDatasetError, match="idx3-ubyte.gz"):
        load_dataset("emnist", root=tmp_path)
    assert not gz.with_suffix("").exists()  # no half-written file left behind


def test_labkit_data_env_var_sets_default_root(tmp_path, monkeypatch):
    monkeypatch.delenv("LABKIT_DATA", raising=False)
    assert default_data_root() == Path("data")
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    write_tiny_dataset(tmp_path, "emnist")
    assert len(load_dataset("emnist")) == len(CLASSES_IN_FILES) * PER_CLASS


# ---------------------------------------------------------------- online streams


def test_online_stream_digits_holds_out_a_seeded_disjoint_test_set(digits):
    x, y, x_eval, y_eval, n_classes = online_stream("digits", n_eval=300, seed=0)
    assert x.shape == (1797 - 300, 784) and x_eval.shape == (300, 784) and n_classes == 10
    assert y.shape == (1497,) and y_eval.shape == (300,) and y.dtype == torch.int64
    def images(t):
        return Counter(r.numpy().tobytes() for r in t)

    assert images(x) + images(x_eval) == images(digits.images)  # a partition of the 1797 images
    again = online_stream("digits", n_eval=300, seed=0)
    assert torch.equal(again[2], x_eval)
    other = online_stream("digits", n_eval=300, seed=1)
    assert not torch.equal(other[2], x_eval)


def test_online_stream_streams_the_train_split_and_tests_on_the_first_test_images(tmp_path):
    data = write_tiny_dataset(tmp_path, "mnist")
    x, y, x_eval, y_eval, n_classes = online_stream("mnist", tmp_path, n_eval=5)
    assert n_classes == 10 and x.shape == (len(data["train"][1]), 784) and x_eval.shape == (5, 784)
    assert torch.equal(y, data["train"][1]) and torch.equal(y_eval, data["test"][1][:5])


def test_online_stream_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError):
        online_stream("mnist", tmp_path / "empty", n_eval=5)
    with pytest.raises(ValueError, match="n_eval must be at least 1"):
        online_stream("digits", n_eval=0)
    with pytest.raises(ValueError, match="leaves no digits to stream"):
        online_stream("digits", n_eval=1797)


# ---------------------------------------------------------------- episodes


def test_episode_shapes_and_dtypes(digits):
    ep = EpisodeSampler(digits, M=5, K=50, Q=10).sample(torch.Generator().manual_seed(0))
    assert ep.x_train.shape == (250, 784) and ep.x_query.shape == (50, 784)
    assert ep.y_train.shape == (250,) and ep.y_query.shape == (50,) and ep.classes.shape == (5,)
    assert ep.y_train.dtype == ep.y_query.dtype == ep.classes.dtype == torch.int64
    assert ep.x_train.dtype == torch.float32


def test_classes_are_drawn_without_replacement():
    sampler = EpisodeSampler(indexed_dataset(), M=8, K=3, Q=2)  # M = all classes: any repeat would show
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert sorted(sampler.sample(g).classes.tolist()) == list(range(8))
    small = EpisodeSampler(indexed_dataset(), M=3, K=3, Q=2)
    assert all(len(set(small.sample(g).classes.tolist())) == 3 for _ in range(50))


def test_train_and_query_images_never_overlap_and_have_K_and_Q_per_class():
    ds = indexed_dataset()
    sampler = EpisodeSampler(ds, M=4, K=20, Q=10)  # K+Q = all 30 images of each class
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        ep = sampler.sample(g)
        train, query = rows(ep.x_train), rows(ep.x_query)
        assert len(set(train)) == len(train) and len(set(query)) == len(query)
        assert not set(train) & set(query)
        assert torch.equal(ds.labels[train], ep.y_train) and torch.equal(ds.labels[query], ep.y_query)
        for c in ep.classes.tolist():
            assert (ep.y_train == c).sum() == 20 and (ep.y_query == c).sum() == 10


def test_training_order_is_shuffled_not_grouped_by_class(digits):
    ep = EpisodeSampler(digits, M=5, K=50, Q=10).sample(torch.Generator().manual_seed(2))
    changes = (ep.y_train[1:] != ep.y_train[:-1]).sum().item()
    assert changes > 100  # grouped order would change class only 4 times; random order ~200 times
    assert set(ep.y_train[:25].tolist()) != {ep.y_train[0].item()}


def test_same_generator_seed_gives_identical_episode_whatever_the_global_seed(digits):
    sampler = EpisodeSampler(digits)
    torch.manual_seed(1)
    a = sampler.sample(torch.Generator().manual_seed(42))
    torch.manual_seed(2)
    b = sampler.sample(torch.Generator().manual_seed(42))
    for f in ("x_train", "y_train", "x_query", "y_query", "classes"):
        assert torch.equal(getattr(a, f), getattr(b, f))


def test_different_seeds_give_different_episodes(digits):
    sampler = EpisodeSampler(digits)
    a = sampler.sample(torch.Generator().manual_seed(0))
    b = sampler.sample(torch.Generator().manual_seed(1))
    assert not torch.equal(a.x_train, b.x_train)


def test_images_of_a_class_are_drawn_afresh_each_episode():
    sampler = EpisodeSampler(indexed_dataset(n_classes=2, per_class=60), M=2, K=5, Q=2)
    g = torch.Generator().manual_seed(3)
    draws = {tuple(sorted(rows(sampler.sample(g).x_train))) for _ in range(10)}
    assert len(draws) == 10


def test_remap_labels_gives_positions_0_to_M_minus_1(digits):
    sampler = EpisodeSampler(digits, M=5, K=10, Q=4, remap_labels=True)
    assert sampler.n_outputs == 5 and EpisodeSampler(digits).n_outputs == 10
    ep = sampler.sample(torch.Generator().manual_seed(4))
    assert sorted(set(ep.y_train.tolist())) == list(range(5)) and sorted(set(ep.y_query.tolist())) == list(range(5))
    original = EpisodeSampler(digits, M=5, K=10, Q=4).sample(torch.Generator().manual_seed(4))
    assert torch.equal(ep.x_train, original.x_train)  # same draw, only the labels differ
    assert torch.equal(ep.classes[ep.y_train], original.y_train)
    assert torch.equal(ep.classes[ep.y_query], original.y_query)


def test_stack_episodes_adds_leading_trial_axis(digits):
    sampler = EpisodeSampler(digits, M=3, K=4, Q=2)
    g = torch.Generator().manual_seed(5)
    eps = [sampler.sample(g) for _ in range(6)]
    st = stack_episodes(eps)
    assert st.x_train.shape == (6, 12, 784) and st.y_train.shape == (6, 12)
    assert st.x_query.shape == (6, 6, 784) and st.y_query.shape == (6, 6) and st.classes.shape == (6, 3)
    assert torch.equal(st.x_train[4], eps[4].x_train)


def test_split_classes_is_disjoint_covering_and_seeded():
    train, test = split_classes(47, 10, seed=0)
    assert len(test) == 10 and len(train) == 37 and not set(train) & set(test)
    assert sorted(train + test) == list(range(47))
    assert split_classes(47, 10, seed=0) == (train, test)
    assert split_classes(47, 10, seed=1) != (train, test)
    with pytest.raises(ValueError):
        split_classes(10, 10, seed=0)


def test_sampler_restricted_to_classes_only_draws_those(digits):
    train, test = split_classes(10, 3, seed=0)
    sampler = EpisodeSampler(digits, M=5, K=5, Q=2, classes=train)
    g = torch.Generator().manual_seed(6)
    seen = set()
    for _ in range(30):
        ep = sampler.sample(g)
        assert set(ep.classes.tolist()) <= set(train) and set(ep.y_train.tolist()) <= set(train)
        seen |= set(ep.classes.tolist())
    assert seen == set(train)


def test_M_larger_than_usable_classes_is_rejected_with_the_limit(digits):
    with pytest.raises(ValueError, match="M=12 .* only 10 classes; choose M <= 10"):
        EpisodeSampler(digits, M=12)
    with pytest.raises(ValueError, match=r"restricted to 8 by the class split\); choose M <= 8"):
        EpisodeSampler(digits, M=9, classes=split_classes(10, 2, seed=0)[0])


def test_classes_absent_from_the_data_are_not_drawn(tmp_path):
    write_tiny_dataset(tmp_path, "emnist")
    ds = load_dataset("emnist", root=tmp_path)  # 3 of the 47 classes present
    sampler = EpisodeSampler(ds, M=3, K=8, Q=4)
    assert sampler.n_outputs == 47
    assert sorted(sampler.sample(torch.Generator().manual_seed(0)).classes.tolist()) == list(CLASSES_IN_FILES)
    with pytest.raises(ValueError, match=r"only 47 classes \(only 3 present in the data\); choose M <= 3"):
        EpisodeSampler(ds, M=4, K=8, Q=4)


def test_K_plus_Q_larger_than_smallest_class_is_rejected_with_the_limit(digits):
    smallest = int(digits.class_counts().min())  # 174
    EpisodeSampler(digits, K=smallest - 10, Q=10)
    with pytest.raises(ValueError, match=f"choose K\\+Q <= {smallest}"):
        EpisodeSampler(digits, K=smallest - 9, Q=10)


@pytest.mark.parametrize("kwargs", [dict(M=0), dict(K=0), dict(Q=-1), dict(classes=[1, 1, 2]), dict(classes=[3, 10])])
def test_invalid_sampler_arguments_are_rejected(digits, kwargs):
    with pytest.raises(ValueError):
        EpisodeSampler(digits, **{"M": 2, **kwargs})
