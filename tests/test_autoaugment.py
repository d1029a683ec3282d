"""The batched AutoAugment CIFAR-10 policy against torchvision's own v2.AutoAugment, image by image."""
import pytest
import torch
from torchvision.transforms import v2

from qsnn_zoo.data import load_sample
from qsnn_zoo.train.autoaugment import CIFAR10_POLICY, SIGNED, AutoAugmentCIFAR10, Plan

FILL = 128
REFERENCE = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10, fill=FILL)


@pytest.fixture(scope="module")
def images():
    """Real CIFAR images plus the cases the histogram kernels treat specially: full-range noise,
    a narrow range (autocontrast stretches, equalize remaps), constant channels (autocontrast's
    max == min, equalize's step 0) and images whose brightest value fills > 3/4 of the pixels
    (equalize's step 0 with several values)."""
    g = torch.Generator().manual_seed(0)
    real = torch.as_tensor(load_sample().images[:8]).permute(0, 3, 1, 2)
    noise = torch.randint(0, 256, (4, 3, 32, 32), generator=g, dtype=torch.uint8)
    narrow = torch.randint(90, 140, (4, 3, 32, 32), generator=g, dtype=torch.uint8)
    constant = torch.full((2, 3, 32, 32), 77, dtype=torch.uint8)
    constant[1, 1] = 200
    mostly_bright = torch.full((2, 3, 32, 32), 230, dtype=torch.uint8)
    mostly_bright[:, :, :2] = torch.randint(0, 200, (2, 3, 2, 32), generator=g, dtype=torch.uint8)
    return torch.cat([real, noise, narrow, constant, mostly_bright]).contiguous()


def _reference_op(image, op, bin_index, negative):
    """One operation as v2.AutoAugment.forward applies it, with torchvision's magnitude table."""
    magnitudes_fn, signed = REFERENCE._AUGMENTATION_SPACE[op]
    magnitudes = magnitudes_fn(10, *image.shape[-2:])
    magnitude = 0.0 if magnitudes is None else float(magnitudes[bin_index])
    if signed and negative:
        magnitude *= -1
    return REFERENCE._apply_image_or_video_transform(
        image, op, magnitude, interpolation=REFERENCE.interpolation, fill=REFERENCE._fill
    )


def _reference(image, plan, i):
    for slot, (op, _, bin_index) in enumerate(CIFAR10_POLICY[int(plan.policy[i])]):
        if plan.fires[i, slot]:
            image = _reference_op(image, op, bin_index, bool(plan.negative[i, slot]))
    return image


def test_policy_is_torchvisions_cifar10_policy():
    assert [tuple(s) for s in REFERENCE._policies] == list(CIFAR10_POLICY)
    assert SIGNED == {op for op, (_, signed) in REFERENCE._AUGMENTATION_SPACE.items() if signed} & {
        op for sub_policy in CIFAR10_POLICY for op, _, _ in sub_policy
    }


@pytest.mark.parametrize("op", sorted({op for sub_policy in CIFAR10_POLICY for op, _, _ in sub_policy}))
def test_each_operation_equals_torchvision_at_every_magnitude_and_sign(images, op):
    # Every (sub-policy, slot) that uses ``op``, both signs, every test image, in one batched call:
    # each image gets its own magnitude.
    cases = [(p, s, neg) for p, sub in enumerate(CIFAR10_POLICY) for s, (o, _, _) in enumerate(sub) if o == op
             for neg in (False, True)]
    n = len(images)
    batch = images.repeat(len(cases), 1, 1, 1)
    policy = torch.tensor([p for p, _, _ in cases]).repeat_interleave(n)
    slots = torch.tensor([s for _, s, _ in cases]).repeat_interleave(n)
    fires = torch.nn.functional.one_hot(slots, 2).bool()
    negative = torch.tensor([neg for _, _, neg in cases]).repeat_interleave(n).view(-1, 1).expand(-1, 2)
    plan = Plan(policy, fires, negative)
    out = AutoAugmentCIFAR10(fill=FILL).apply(batch, plan)
    assert out.dtype == torch.uint8 and out.shape == batch.shape
    for i, (image, result) in enumerate(zip(batch, out)):
        expected = _reference(image, plan, i)
        assert torch.equal(result, expected), (
            f"{op} (sub-policy {int(policy[i])}, negative {bool(negative[i, 0])}, image {i % n}): "
            f"{int((result.int() - expected.int()).abs().gt(0).sum())} pixels differ"
        )


def test_random_batch_equals_torchvision_applied_per_image(images):
    augment = AutoAugmentCIFAR10(fill=FILL)
    batch = images.repeat(6, 1, 1, 1)
    plan = augment.sample(len(batch), torch.Generator().manual_seed(3))
    assert plan.fires.all(dim=1).any()  # both slots, composed in order
    out = augment(batch, torch.Generator().manual_seed(3))
    assert torch.equal(out, augment.apply(batch, plan))
    for i, (image, result) in enumerate(zip(batch, out)):
        assert torch.equal(result, _reference(image, plan, i)), f"image {i}, sub-policy {int(plan.policy[i])}"


def test_draws_are_uniform_over_sub_policies_and_follow_probabilities():
    n = 5000
    plan = AutoAugmentCIFAR10().sample(n, torch.Generator().manual_seed(1))
    counts = torch.bincount(plan.policy, minlength=25).double()
    expected = n / 25
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 60  # 24 degrees of freedom: p < 1e-4 for a uniform draw
    probabilities = torch.tensor([[p for _, p, _ in sub] for sub in CIFAR10_POLICY])
    for policy in range(25):
        rate = plan.fires[plan.policy == policy].double().mean(dim=0)
        assert torch.allclose(rate, probabilities[policy].double(), atol=0.15)
    assert 0.45 < plan.negative.double().mean() < 0.55


def test_reproducible_per_seed_and_leaves_global_rng_alone(images):
    augment = AutoAugmentCIFAR10()
    rng_before = torch.get_rng_state()
    first = augment(images, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.equal(first, augment(images, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, augment(images, torch.Generator().manual_seed(6)))


def test_nothing_fires_returns_the_images(images):
    n = len(images)
    plan = Plan(torch.zeros(n, dtype=torch.long), torch.zeros(n, 2, dtype=torch.bool), torch.zeros(n, 2, dtype=torch.bool))
    assert torch.equal(AutoAugmentCIFAR10().apply(images, plan), images)


def test_bad_input_is_refused(images):
    with pytest.raises(ValueError, match="fill"):
        AutoAugmentCIFAR10(fill=300)
    with pytest.raises(ValueError, match="uint8"):
        AutoAugmentCIFAR10()(images.float(), torch.Generator())
