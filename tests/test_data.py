import pytest
import torch

from support import make_mnist
from dcgan.train.data import DataError, epoch_indices, load_mnist_uint8, steps_per_epoch, to_training_images


def test_real_loader_reads_idx_files(mnist_root):
    train = load_mnist_uint8(mnist_root, train=True)
    test = load_mnist_uint8(mnist_root, train=False)
    assert train.shape == (512, 28, 28) and test.shape == (128, 28, 28) and train.dtype == torch.uint8


@pytest.mark.parametrize("size", [28, 32, 64])
def test_training_images_resized_once_and_scaled(mnist_root, size):
    digits = load_mnist_uint8(mnist_root)
    images = to_training_images(digits, size, chunk=100)   # several chunks
    assert images.shape == (512, 1, size, size) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert images.min() == -1                               # black background maps to -1
    if size == 28:
        assert torch.equal(images, digits.unsqueeze(1).float() / 127.5 - 1)


def test_missing_data_names_the_files(tmp_path):
    with pytest.raises(DataError) as err:
        load_mnist_uint8(tmp_path, download=False)
    message = str(err.value)
    assert "train-images-idx3-ubyte" in message and str(tmp_path / "MNIST" / "raw") in message and "\n" not in message


def test_corrupt_data_is_one_line(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(DataError, match="could not be read") as err:
        load_mnist_uint8(tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_shards_are_disjoint_and_equal_sized(world):
    n, batch = 1000, 64
    shards = [epoch_indices(n, batch, rank, world, seed=3, epoch=1) for rank in range(world)]
    steps = steps_per_epoch(n, batch)
    assert all(s.shape == (steps, batch // world) for s in shards)      # every rank runs the same steps
    everything = torch.cat([s.flatten() for s in shards])
    assert len(set(everything.tolist())) == steps * batch               # disjoint, no repeats
    # Rank r's slice of global batch s is the r-th part of the single-process batch s.
    single = epoch_indices(n, batch, 0, 1, seed=3, epoch=1)
    assert torch.equal(torch.cat([s[5] for s in shards]), single[5])


def test_shuffle_changes_per_epoch_and_is_seeded():
    a = epoch_indices(1000, 50, 0, 1, seed=0, epoch=0)
    assert torch.equal(a, epoch_indices(1000, 50, 0, 1, seed=0, epoch=0))
    assert not torch.equal(a, epoch_indices(1000, 50, 0, 1, seed=0, epoch=1))
    assert not torch.equal(a, epoch_indices(1000, 50, 0, 1, seed=1, epoch=0))
