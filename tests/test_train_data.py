"""The on-device training data pipeline: loader order and shards, augmentations, holdout split."""
import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from qsnn_zoo.data import ImageSet, load_sample, to_tensor
from qsnn_zoo.train.data import Augment, AutoAugmentCIFAR10, Cutout, DeviceLoader, RandomCropFlip, holdout_split

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


@pytest.fixture(scope="module")
def sample():
    return load_sample().subset(slice(0, 48))


def _loader(images, labels, **kwargs):
    kwargs.setdefault("batch_size", 8)
    return DeviceLoader(images, labels, mean=MEAN, std=STD, **kwargs)


def _epoch(loader, epoch, start_batch=0):
    loader.set_epoch(epoch, start_batch)
    return list(loader)


def _same_batches(a, b):
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


def test_loader_is_deterministic_per_seed_and_epoch_and_resumable(sample):
    augment = Augment(("crop_flip", "autoaugment", "cutout"))
    make = lambda seed: _loader(sample.images, sample.labels, augment=augment, seed=seed)  # noqa: E731
    rng_before = torch.get_rng_state()
    first = _epoch(make(1000), 3)
    assert torch.equal(torch.get_rng_state(), rng_before)  # AutoAugment's draws leave the global RNG alone
    assert _same_batches(first, _epoch(make(1000), 3))
    assert not _same_batches(first, _epoch(make(1000), 4))
    assert not _same_batches(first, _epoch(make(1001), 3))
    assert _same_batches(first[2:], _epoch(make(1000), 3, start_batch=2))


def test_seed_and_epoch_do_not_alias(sample):
    # Trials use seeds 1000 + i: trial 1's epoch 0 must not replay trial 0's epoch 1.
    labels = np.arange(len(sample))
    order = lambda seed, epoch: torch.cat([y for _, y in _epoch(_loader(sample.images, labels, seed=seed), epoch)])  # noqa: E731
    assert not torch.equal(order(1001, 0), order(1000, 1))


def test_ranks_take_disjoint_equal_shards_of_one_permutation(sample):
    labels = np.arange(len(sample))  # labels as sample ids
    n, world = 47, 3
    shards = []
    for rank in range(world):
        loader = _loader(sample.images[:n], labels[:n], batch_size=5, rank=rank, world_size=world, seed=7)
        batches = _epoch(loader, 2)
        assert len(batches) == len(loader) == (n // world) // 5
        shards.append(torch.cat([y for _, y in batches]))
    ids = torch.cat(shards)
    assert len(set(ids.tolist())) == len(ids) == world * ((n // world) // 5 * 5)
    single = _loader(sample.images[:n], labels[:n], batch_size=1, seed=7)
    single.set_epoch(2)
    order, _ = single.epoch_plan()
    for rank, shard in enumerate(shards):
        assert torch.equal(shard, order[rank::world][: len(shard)])


def test_loader_without_augmentation_normalises_as_to_tensor(sample):
    loader = _loader(sample.images, sample.labels, shuffle=False, drop_last=False, batch_size=20)
    batches = _epoch(loader, 0)
    assert len(loader) == len(batches) == 3
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, to_tensor(sample.images, MEAN, STD))
    assert torch.equal(y, torch.as_tensor(sample.labels))


def test_channels_last_batches_hold_the_same_values(sample):
    augment = Augment(("crop_flip", "autoaugment", "cutout"))
    make = lambda fmt: _loader(sample.images, sample.labels, augment=augment, seed=3, memory_format=fmt)  # noqa: E731
    dense, channels_last = _epoch(make(torch.contiguous_format), 0), _epoch(make(torch.channels_last), 0)
    assert _same_batches(dense, channels_last)
    assert all(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() for x, _ in channels_last)


def test_crop_flip_equals_torchvision_for_given_offsets_and_flips(sample):
    images = torch.as_tensor(sample.images[:6]).permute(0, 3, 1, 2).contiguous()
    offsets = torch.tensor([[0, 0], [8, 8], [3, 5], [8, 0], [1, 7], [4, 4]])
    flips = torch.tensor([False, True, True, False, True, False])
    out = RandomCropFlip(padding=4).apply(images, offsets, flips)
    for image, (top, left), flip, result in zip(images, offsets.tolist(), flips, out):
        expected = TF.crop(TF.pad(image, [4]), top, left, 32, 32)
        if flip:
            expected = TF.horizontal_flip(expected)
        assert torch.equal(result, expected)


def test_crop_flip_draws_every_offset_and_both_flips():
    offsets, flips = RandomCropFlip(padding=4).sample(2000, torch.Generator().manual_seed(0))
    assert set(offsets.flatten().tolist()) == set(range(9))
    assert 0.4 < flips.float().mean() < 0.6


def test_cutout_hole_is_16x16_and_clipped_at_borders():
    images = torch.ones(3, 3, 32, 32)
    centres = torch.tensor([[16, 16], [0, 0], [31, 5]])
    out = Cutout(size=16).apply(images, centres)
    holes = out == 0
    assert torch.equal(holes[:, 0], holes[:, 2])  # the same hole in every channel
    assert holes[0, 0, 8:24, 8:24].all() and holes[0, 0].sum() == 256
    assert holes[1, 0, 0:8, 0:8].all() and holes[1, 0].sum() == 64
    assert holes[2, 0, 23:32, 0:13].all() and holes[2, 0].sum() == 9 * 13


def test_cutout_zeroes_pixels_before_normalisation():
    white = np.full((4, 32, 32, 3), 255, dtype=np.uint8)
    loader = _loader(white, np.zeros(4, dtype=np.int64), batch_size=4, augment=Augment("cutout"))
    (x, _), = _epoch(loader, 0)
    pixels = x * torch.tensor(STD).view(1, -1, 1, 1) + torch.tensor(MEAN).view(1, -1, 1, 1)
    hole = pixels[:, 0].abs() < 1e-5
    assert torch.allclose(pixels[:, 0][~hole], torch.tensor(1.0), atol=1e-5)
    assert all(64 <= int(h.sum()) <= 256 for h in hole)


def test_autoaugment_keeps_uint8_shape_and_draws_per_image(sample):
    image = torch.as_tensor(sample.images[0]).permute(2, 0, 1)
    batch = image.expand(32, -1, -1, -1).contiguous()
    out = AutoAugmentCIFAR10()(batch, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == batch.shape
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) > 4  # one policy per call would make all 32 copies identical
    again = AutoAugmentCIFAR10()(batch, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_augment_names_are_checked():
    assert Augment("crop_flip, cutout").names == ("crop_flip", "cutout")
    with pytest.raises(ValueError, match="unknown augmentation"):
        Augment(("crop", "flip"))
    with pytest.raises(ValueError, match="docs/method.md §E.2's order"):
        Augment(("cutout", "crop_flip"))
    with pytest.raises(ValueError, match="docs/method.md §E.2's order"):
        Augment(("crop_flip", "crop_flip"))


def test_loader_refuses_bad_input(sample):
    with pytest.raises(ValueError, match="uint8"):
        _loader(sample.images.astype(np.float32), sample.labels)
    with pytest.raises(ValueError, match="make no batch"):
        _loader(sample.images[:4], sample.labels[:4], batch_size=8)
    with pytest.raises(ValueError, match="rank"):
        _loader(sample.images, sample.labels, rank=2, world_size=2)


def test_holdout_split_takes_the_last_images():
    images = np.arange(10 * 32 * 32 * 3, dtype=np.uint8).reshape(10, 32, 32, 3)
    data = ImageSet(images, np.arange(10), None, "test")
    train, val = holdout_split(data, val_size=3)
    assert train.labels.tolist() == list(range(7)) and val.labels.tolist() == [7, 8, 9]
    assert np.array_equal(val.images, images[7:])
    with pytest.raises(ValueError, match="val_size"):
        holdout_split(data, val_size=10)


def test_chunked_epoch_equals_batch_by_batch_augmentation(sample, monkeypatch):
    """The loader augments many batches in one pass; each batch must still be what augmenting it
    alone, with its own generator, gives (the recipe's definition of the data)."""
    import qsnn_zoo.train.data as train_data

    augment = Augment(("crop_flip", "autoaugment", "cutout"))
    monkeypatch.setattr(train_data, "CHUNK_IMAGES", 24)  # 3 batches of 8 per pass, 2 passes
    loader = _loader(sample.images, sample.labels, augment=augment, seed=11)
    chunked = _epoch(loader, 1)
    shard, seeds = loader.epoch_plan()
    images = torch.as_tensor(sample.images).permute(0, 3, 1, 2).contiguous()
    mean, std = torch.tensor(MEAN).view(1, -1, 1, 1), torch.tensor(STD).view(1, -1, 1, 1)
    for b, (x, y) in enumerate(chunked):
        index = shard[b * 8 : (b + 1) * 8]
        alone = augment(images[index], torch.Generator().manual_seed(int(seeds[b])))
        assert torch.equal(x, (alone - mean) / std)
        assert torch.equal(y, torch.as_tensor(sample.labels)[index].long())
    assert _same_batches(chunked[4:], _epoch(loader, 1, start_batch=4))  # resumed inside the second pass
