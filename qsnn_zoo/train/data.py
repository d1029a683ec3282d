"""Training data on the device: decode once, keep uint8 images there, augment whole batches there.

A CPU DataLoader with per-image PIL transforms starves a GPU that runs a small SNN; here the
decoded CIFAR images (50k x 3 KiB = 150 MiB as uint8) are moved to the device once, and every
batch is gathered, augmented and normalised there. Crop, flip, Cutout and AutoAugment
(:mod:`qsnn_zoo.train.autoaugment`) are vectorised with per-sample randomness.

All randomness comes from CPU ``torch.Generator`` objects seeded from (seed, epoch): the order
and the augmentations are the same on every device and can be resumed at any batch.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..data import ImageSet
from .autoaugment import AutoAugmentCIFAR10

ArrayLike = Union[np.ndarray, torch.Tensor]
SEED_RANGE = 2**62
CHUNK_IMAGES = 8192  # images the loader augments in one pass (about 100 MB of float32 pixels)

# docs/method.md §E.2's order: crop, flip, AutoAugment (on uint8 pixels), ToTensor, Cutout (on [0, 1] floats), Normalize.
AUGMENTATIONS = ("crop_flip", "autoaugment", "cutout")


def checked_augmentations(names: Sequence[str]) -> Tuple[str, ...]:
    """``names`` if they are known and in docs/method.md §E.2's order (:data:`AUGMENTATIONS`), each
    once; a reordered list is refused rather than silently sorted, since it would describe a different
    recipe."""
    names = tuple(names)
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; choose from {AUGMENTATIONS}")
    if list(names) != sorted(set(names), key=AUGMENTATIONS.index):
        in_order = [n for n in AUGMENTATIONS if n in names]
        raise ValueError(f"augmentations {list(names)} must appear once each in docs/method.md §E.2's order: {in_order}")
    return names


class RandomCropFlip:
    """RandomCrop(32, padding=4) with zero padding, then RandomHorizontalFlip(p=0.5), per sample.

    Offsets are drawn as torchvision draws them (top, left uniform in 0..2*padding); the crop and
    the flip are one gather over the padded batch.
    """

    def __init__(self, padding: int = 4) -> None:
        self.padding = padding

    def sample(self, batch_size: int, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(offsets [B, 2] as (top, left), flips [B] bool)``."""
        offsets = torch.randint(0, 2 * self.padding + 1, (batch_size, 2), generator=generator)
        flips = torch.rand(batch_size, generator=generator) < 0.5
        return offsets, flips

    def apply(self, images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Crops ``images [B, C, H, W]`` at ``offsets`` of the padded image and mirrors where ``flips``."""
        b, _, h, w = images.shape
        p, device = self.padding, images.device
        padded = F.pad(images, (p, p, p, p))
        offsets, flips = offsets.to(device), flips.to(device)
        columns = torch.arange(w, device=device)
        columns = torch.where(flips.view(-1, 1), columns.flip(0), columns)
        rows = offsets[:, :1] + torch.arange(h, device=device)
        columns = offsets[:, 1:] + columns
        batch = torch.arange(b, device=device).view(-1, 1, 1)
        # Advanced indices around the channel slice put their broadcast dims first: [B, H, W, C].
        return padded[batch, :, rows.view(b, h, 1), columns.view(b, 1, w)].permute(0, 3, 1, 2).contiguous()

    def draw(self, batch_size: int, height: int, width: int, generator: torch.Generator) -> Tuple[torch.Tensor, ...]:
        return self.sample(batch_size, generator)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(images, *self.sample(len(images), generator))


class Cutout:
    """One ``size`` x ``size`` hole per image, centre uniform over the image, clipped at the borders.

    As in DeVries & Taylor's code that SNN-Calibration uses, on [0, 1] pixels before Normalize:
    the hole is 0 there, so -mean/std after normalisation (docs/method.md §E.2).
    """

    def __init__(self, size: int = 16) -> None:
        self.size = size

    def sample(self, batch_size: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """Hole centres ``[B, 2]`` as (row, column)."""
        rows = torch.randint(0, height, (batch_size,), generator=generator)
        columns = torch.randint(0, width, (batch_size,), generator=generator)
        return torch.stack([rows, columns], dim=1)

    def apply(self, images: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        _, _, h, w = images.shape
        centres, half = centres.to(images.device), self.size // 2
        start = (centres - half).clamp(min=0)
        stop = torch.minimum(centres + half, torch.tensor([h, w], device=images.device))
        rows = torch.arange(h, device=images.device)
        columns = torch.arange(w, device=images.device)
        in_rows = (rows >= start[:, :1]) & (rows < stop[:, :1])
        in_columns = (columns >= start[:, 1:]) & (columns < stop[:, 1:])
        hole = in_rows.unsqueeze(2) & in_columns.unsqueeze(1)
        return images.masked_fill(hole.unsqueeze(1), 0.0)

    def draw(self, batch_size: int, height: int, width: int, generator: torch.Generator) -> Tuple[torch.Tensor, ...]:
        return (self.sample(batch_size, height, width, generator),)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _, _, h, w = images.shape
        return self.apply(images, self.sample(len(images), h, w, generator))


_PIXEL_STAGES: Dict[str, Callable[[], Callable]] = {"crop_flip": RandomCropFlip, "autoaugment": AutoAugmentCIFAR10}
_FLOAT_STAGES: Dict[str, Callable[[], Callable]] = {"cutout": Cutout}


class Augment:
    """Training augmentations by name, e.g. ``("crop_flip", "autoaugment", "cutout")`` (SNN-Calibration,
    docs/method.md §E.2) or ``("crop_flip",)`` (STBP, TSSL-BP).

    Names must follow docs/method.md §E.2's order (:data:`AUGMENTATIONS`); a reordered list is refused rather
    than silently sorted, since it would describe a different recipe. Takes uint8 ``[B, C, H, W]``
    and returns float32 pixels in [0, 1] (normalisation is the loader's).
    """

    def __init__(self, names: Union[str, Sequence[str]]) -> None:
        if isinstance(names, str):
            names = tuple(n.strip() for n in names.split(",") if n.strip())
        self.names = checked_augmentations(names)
        self.pixel_stages = [_PIXEL_STAGES[n]() for n in names if n in _PIXEL_STAGES]
        self.float_stages = [_FLOAT_STAGES[n]() for n in names if n in _FLOAT_STAGES]

    def __repr__(self) -> str:
        return f"Augment({self.names})"

    def draw(self, batch_size: int, height: int, width: int, generator: torch.Generator) -> List[Tuple[torch.Tensor, ...]]:
        """Every stage's random draws for one batch, in the order the stages consume ``generator``."""
        return [stage.draw(batch_size, height, width, generator) for stage in (*self.pixel_stages, *self.float_stages)]

    def apply(self, images: torch.Tensor, draws: Sequence[Tuple[torch.Tensor, ...]]) -> torch.Tensor:
        """The augmentations with ``draws`` (one row per image, as :meth:`draw` or
        :func:`concat_draws` give them): each stage acts on every image alone, so a whole epoch
        augmented at once equals its batches augmented one by one."""
        stages = (*self.pixel_stages, *self.float_stages)
        for stage, stage_draws in zip(stages[: len(self.pixel_stages)], draws):
            images = stage.apply(images, *stage_draws)
        x = images.float().div_(255)
        for stage, stage_draws in zip(stages[len(self.pixel_stages) :], draws[len(self.pixel_stages) :]):
            x = stage.apply(x, *stage_draws)
        return x

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _, _, height, width = images.shape
        return self.apply(images, self.draw(len(images), height, width, generator))


def concat_draws(per_batch: Sequence[List[Tuple]]) -> List[Tuple]:
    """Per-batch draws of :meth:`Augment.draw` joined along the image axis, stage by stage."""
    return [tuple(_cat(values) for values in zip(*stage)) for stage in zip(*per_batch)]


def _cat(values: Sequence) -> Union[torch.Tensor, Tuple]:
    first = values[0]
    if isinstance(first, tuple):  # a record of tensors, such as AutoAugment's Plan
        return type(first)(*(torch.cat(field) for field in zip(*values)))
    return torch.cat(values)


def _epoch_seed(seed: int, epoch: int) -> int:
    # Not seed + epoch: the trials use seeds 1000 + i (docs/method.md §E.5), so trial 1's first epoch would
    # replay trial 0's second. SeedSequence mixes the pair into one well-spread seed.
    return int(np.random.SeedSequence((seed, epoch)).generate_state(1, np.uint64)[0] % SEED_RANGE)


class DeviceLoader:
    """Batches ``(x, y)`` of a uint8 image set held on ``device``: x float32 normalised ``[B, C, H, W]``
    in ``memory_format``, y int64 ``[B]``.

    Each epoch, ``set_epoch(e)`` fixes the permutation (identical on every rank) and the
    augmentation seeds; as with DistributedSampler, iterating again without ``set_epoch``
    repeats the epoch. With ``world_size > 1`` rank r takes every world_size-th index of the
    permutation from r, after trimming to a multiple of world_size, so shards are disjoint and
    every rank has the same number of batches. Each batch draws its augmentations from its own
    generator, so ``set_epoch(e, start_batch=k)`` resumes exactly at batch k. Batches are
    augmented many at a time (:data:`CHUNK_IMAGES`); each image's augmentation is its own, so
    the result is that of augmenting batch by batch.
    """

    def __init__(
        self,
        images: ArrayLike,
        labels: ArrayLike,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Optional[Augment] = None,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        device: Union[str, torch.device] = "cpu",
        rank: int = 0,
        world_size: int = 1,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels)
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != len(mean):
            raise ValueError(
                f"images must be uint8 [N, H, W, {len(mean)}] (NHWC, as load_cifar returns them), "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..world_size-1, got rank {rank} of {world_size}")
        if batch_size < 1 or len(images) // world_size < (batch_size if drop_last else 1):
            raise ValueError(
                f"{len(images)} images over {world_size} rank(s) make no batch of {batch_size}; "
                "use more images or a smaller batch"
            )
        self.device = torch.device(device)
        self.images = images.to(self.device).permute(0, 3, 1, 2).contiguous()
        self.labels = labels.to(self.device, torch.int64)
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.batch_size = batch_size
        self.augment = augment
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.memory_format = memory_format
        self.epoch = 0
        self.start_batch = 0

    @property
    def samples_per_rank(self) -> int:
        return len(self.labels) // self.world_size

    def __len__(self) -> int:
        if self.drop_last:
            return self.samples_per_rank // self.batch_size
        return math.ceil(self.samples_per_rank / self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in 0..{len(self)}, got {start_batch}")
        self.epoch = epoch
        self.start_batch = start_batch

    def epoch_plan(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """This rank's sample indices for the epoch, and one augmentation seed per batch."""
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        n = len(self.labels)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        shard = order[self.rank : self.samples_per_rank * self.world_size : self.world_size]
        batch_seeds = torch.randint(SEED_RANGE, (self.world_size, len(self)), generator=generator)[self.rank]
        return shard, batch_seeds

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels -> (x - mean) / std, as :func:`qsnn_zoo.data.to_tensor` computes it."""
        return (x - self.mean) / self.std

    def __iter__(self):
        shard, batch_seeds = self.epoch_plan()
        shard = shard.to(self.device)
        per_chunk = max(1, CHUNK_IMAGES // self.batch_size)
        # Chunks start at fixed batch indices, so a resumed epoch augments the same groups of images.
        first_chunk = self.start_batch - self.start_batch % per_chunk
        for first in range(first_chunk, len(self), per_chunk):
            batches = range(first, min(first + per_chunk, len(self)))
            index = shard[first * self.batch_size : batches[-1] * self.batch_size + self._size(batches[-1])]
            x, y = self._prepared(index, [(self._size(b), int(batch_seeds[b])) for b in batches]), self.labels[index]
            for b in batches:
                if b >= self.start_batch:
                    rows = slice((b - first) * self.batch_size, (b - first) * self.batch_size + self._size(b))
                    yield x[rows], y[rows]

    def _size(self, batch: int) -> int:
        return min(self.batch_size, self.samples_per_rank - batch * self.batch_size)

    def _prepared(self, index: torch.Tensor, batches: Sequence[Tuple[int, int]]) -> torch.Tensor:
        """Normalised images of ``index``, each batch ``(size, seed)`` augmented with its own draws.

        One augmentation pass over many batches launches the same few dozen kernels as a pass over
        one batch, and the draws of all of them reach the device in one copy: a loader that
        augments batch by batch waits on a blocking copy per batch, which stalls the training step
        queued behind it."""
        images = self.images[index]
        if self.augment is None:
            x = images.float().div_(255)
        else:
            _, _, height, width = images.shape
            draws = [self.augment.draw(size, height, width, torch.Generator().manual_seed(seed)) for size, seed in batches]
            x = self.augment.apply(images, concat_draws(draws))
        return self.normalise(x).contiguous(memory_format=self.memory_format)


def holdout_split(image_set: ImageSet, val_size: int = 5000) -> Tuple[ImageSet, ImageSet]:
    """``(train, val)``: the last ``val_size`` training images become the validation set, so model
    selection never looks at the test set (docs/method.md §F.1)."""
    if not 0 < val_size < len(image_set):
        raise ValueError(f"val_size must be in 1..{len(image_set) - 1} for {len(image_set)} images, got {val_size}")
    cut = len(image_set) - val_size
    return image_set.subset(slice(0, cut)), image_set.subset(slice(cut, None))
