"""AutoAugment's CIFAR-10 policy on whole uint8 batches, with one random sub-policy per image.

torchvision's ``v2.AutoAugment(CIFAR10, fill=128)`` draws one sub-policy per call, so per-image
randomness would need one call per image: ~0.7 ms of Python and a dozen tiny kernels each, which
starves a GPU. Here the draws are made for the whole batch at once and every operation runs once
per slot of the sub-policy on all the images that drew it, each with its own magnitude.

Every operation reproduces torchvision's tensor kernel bit for bit (``tests/test_autoaugment.py``
checks each one against ``v2.AutoAugment``'s own, at every magnitude the policy uses).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

# torchvision.transforms.AutoAugmentPolicy.CIFAR10 (v2.AutoAugment._get_policies): 25 sub-policies of
# two (operation, probability, magnitude bin) each. The same table as the CIFAR10Policy of
# DeepVoltaire's AutoAugment port that SNN-Calibration uses (docs/method.md §E.2).
CIFAR10_POLICY: Tuple[Tuple[Tuple[str, float, Optional[int]], Tuple[str, float, Optional[int]]], ...] = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)
NUM_BINS = 10
SLOTS = 2
# Widest parameter row of any operation: the 2x3 inverse affine matrix of the geometric ones.
PARAMETERS = 6

Kernel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def magnitude_bins(op: str, height: int, width: int) -> Optional[torch.Tensor]:
    """The magnitudes of ``op``'s 10 bins, computed as v2.AutoAugment's ``_AUGMENTATION_SPACE`` computes
    them (float32 linspace), so that the values, not only the formulas, are torchvision's."""
    if op == "ShearY":
        return torch.linspace(0.0, 0.3, NUM_BINS)
    if op == "TranslateX":
        return torch.linspace(0.0, 150.0 / 331.0 * width, NUM_BINS)
    if op == "TranslateY":
        return torch.linspace(0.0, 150.0 / 331.0 * height, NUM_BINS)
    if op == "Rotate":
        return torch.linspace(0.0, 30.0, NUM_BINS)
    if op in ("Brightness", "Color", "Contrast", "Sharpness"):
        return torch.linspace(0.0, 0.9, NUM_BINS)
    if op == "Posterize":
        return (8 - (torch.arange(NUM_BINS) / ((NUM_BINS - 1) / 4))).round().int()
    if op == "Solarize":
        return torch.linspace(1.0, 0.0, NUM_BINS)
    return None


# Operations whose magnitude gets a random sign per application.
SIGNED = frozenset({"ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"})


def _float32(value: float) -> float:
    """``value`` rounded to float32, where torchvision turns a Python float into a float32 operand."""
    return torch.tensor(value, dtype=torch.float32).item()


def _inverse_affine_matrix(
    center: Sequence[float], angle: float, translate: Sequence[float], shear: Sequence[float]
) -> Tuple[float, ...]:
    """torchvision's ``_get_inverse_affine_matrix`` at scale 1 (output pixel -> input pixel, both
    relative to the image centre), in the same double-precision steps so the float32 matrix is equal."""
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    (cx, cy), (tx, ty) = center, translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    matrix = [d, -b, 0.0, -c, a, 0.0]
    matrix[2] += matrix[0] * (-cx - tx) + matrix[1] * (-cy - ty)
    matrix[5] += matrix[3] * (-cx - tx) + matrix[4] * (-cy - ty)
    matrix[2] += cx
    matrix[5] += cy
    return tuple(_float32(m) for m in matrix)


def _shear_y(magnitude: float, height: int, width: int) -> Tuple[float, ...]:
    # F.affine(shear=[0, degrees(atan(m))], center=[0, 0]): the top-left corner stays, as in the
    # original AutoAugment's (1, 0, 0, m, 1, 0) transform.
    return _inverse_affine_matrix((-0.5 * width, -0.5 * height), 0.0, (0.0, 0.0), (0.0, math.degrees(math.atan(magnitude))))


def _translate_x(magnitude: float, height: int, width: int) -> Tuple[float, ...]:
    return _inverse_affine_matrix((0.0, 0.0), 0.0, (float(int(magnitude)), 0.0), (0.0, 0.0))


def _translate_y(magnitude: float, height: int, width: int) -> Tuple[float, ...]:
    return _inverse_affine_matrix((0.0, 0.0), 0.0, (0.0, float(int(magnitude))), (0.0, 0.0))


def _rotate(magnitude: float, height: int, width: int) -> Tuple[float, ...]:
    # F.rotate turns counter-clockwise and affine clockwise, hence -angle (after rotate's own % 360).
    return _inverse_affine_matrix((0.0, 0.0), -(magnitude % 360), (0.0, 0.0), (0.0, 0.0))


def _blend_factors(magnitude: float, height: int, width: int) -> Tuple[float, ...]:
    # _blend(image, other, ratio) = image * ratio + other * (1 - ratio), both factors float32.
    ratio = 1.0 + magnitude
    return _float32(ratio), _float32(1.0 - ratio)


def _posterize_mask(magnitude: float, height: int, width: int) -> Tuple[float, ...]:
    bits = int(magnitude)
    return (float(((1 << bits) - 1) << (8 - bits)),)


def _solarize_threshold(magnitude: float, height: int, width: int) -> Tuple[float, ...]:
    # ``image >= 255 * m`` compares in float32, the result type of uint8 and a Python float.
    return (_float32(255 * magnitude),)


def _no_parameters(magnitude: float, height: int, width: int) -> Tuple[float, ...]:
    return ()


def _sampling_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """torchvision's ``_affine_grid`` for a batch of matrices ``[N, 2, 3]``: pixel-centred coordinates
    first, normalised after the matrix product (unlike ``F.affine_grid``), so the nearest pixels match."""
    device = theta.device
    base = torch.empty(1, height, width, 3, device=device)
    base[..., 0].copy_(torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width, device=device))
    base[..., 1].copy_(torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height, device=device).unsqueeze(-1))
    base[..., 2].fill_(1)
    scaled = theta.transpose(1, 2).div(torch.tensor([0.5 * width, 0.5 * height], device=device))
    base = base.view(1, height * width, 3).expand(len(theta), -1, -1)
    return base.bmm(scaled).view(len(theta), height, width, 2)


def _warp(images: torch.Tensor, parameters: torch.Tensor, fill: int) -> torch.Tensor:
    """ShearY, TranslateX/Y and Rotate in one nearest-neighbour warp with per-image inverse matrices;
    pixels that map outside the image get ``fill`` (torchvision's mask-channel method)."""
    n, c, h, w = images.shape
    theta = parameters.float().view(n, 2, 3)
    pixels = torch.cat([images.float(), images.new_ones(n, 1, h, w, dtype=torch.float32)], dim=1)
    sampled = F.grid_sample(pixels, _sampling_grid(theta, h, w), mode="nearest", padding_mode="zeros", align_corners=False)
    sampled, inside = sampled[:, :c], sampled[:, c:]
    return torch.where(inside < 0.5, float(fill), sampled).round_().to(torch.uint8)


def _per_image(values: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return values.to(dtype).view(-1, 1, 1, 1)


def _blend(images: torch.Tensor, other: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend``: ``images.mul(ratio).add_(other, alpha=1 - ratio)`` per image.

    The add with alpha is a fused multiply-add in torch's kernels (CUDA, and CPUs with FMA). float64
    holds that sum exactly here (integers or float32 values below 2**9, factors' last bit >= 2**-37),
    so rounding it once to float32 gives the fused result bit for bit with a per-image alpha.
    """
    ratio, alpha = _per_image(parameters[:, 0]), _per_image(parameters[:, 1], torch.float64)
    scaled = images.float().mul(ratio).double()
    return scaled.add_(other.double().mul(alpha)).float().clamp_(0, 255).to(torch.uint8)


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    """The floored float grayscale the colour kernels blend with; uint8 conversion floors it."""
    return TF.rgb_to_grayscale(images).float()


def _brightness(images: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
    return images.float().mul(_per_image(parameters[:, 0])).clamp_(0, 255).to(torch.uint8)


def _color(images: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
    return _blend(images, _grayscale(images), parameters)


def _contrast(images: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
    # The float32 mean is exact: the sum of 1024 values <= 255 stays below 2**24.
    return _blend(images, _grayscale(images).mean(dim=(-3, -2, -1), keepdim=True), parameters)


def _sharpness(images: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
    """Blend with the 3x3 smoothing (1s around, 5 in the middle, / 13) of the interior; the one-pixel
    border is left as it is, as in torchvision."""
    pixels = images.int()
    rows = pixels[..., :-2, :] + pixels[..., 1:-1, :] + pixels[..., 2:, :]
    weighted = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:] + 4 * pixels[..., 1:-1, 1:-1]
    # torchvision rounds a float32 convolution; weighted / 13 is never within 1/26 of a .5, so
    # rounding it in integers, (2k + 13) // 26, gives the same pixels without a convolution.
    blurred = torch.div(2 * weighted + 13, 26, rounding_mode="floor")
    out = images.float()
    interior = out[..., 1:-1, 1:-1]
    alpha = _per_image(parameters[:, 1], torch.float64)
    # torchvision: interior.add_(blurred - interior, alpha=1 - ratio), fused as in _blend.
    interior.copy_(interior.double().add_((blurred - pixels[..., 1:-1, 1:-1]).double().mul_(alpha)).float())
    return out.clamp_(0, 255).to(torch.uint8)


def _posterize(images: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
    return images & _per_image(parameters[:, 0], torch.uint8)


def _solarize(images: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
    return torch.where(images.float() >= _per_image(parameters[:, 0]), images.bitwise_not(), images)


def _parameter_free(kernel: Callable[[torch.Tensor], torch.Tensor]) -> Kernel:
    # torchvision's AutoContrast, Equalize and Invert kernels already work per image on a batch.
    return lambda images, parameters: kernel(images)


class Operation(NamedTuple):
    kernel: str  # operations with the same kernel share one batched call per slot
    parameters: Callable[[float, int, int], Tuple[float, ...]]  # (signed magnitude, height, width) -> row


OPERATIONS: Dict[str, Operation] = {
    "ShearY": Operation("warp", _shear_y),
    "TranslateX": Operation("warp", _translate_x),
    "TranslateY": Operation("warp", _translate_y),
    "Rotate": Operation("warp", _rotate),
    "Brightness": Operation("brightness", _blend_factors),
    "Color": Operation("color", _blend_factors),
    "Contrast": Operation("contrast", _blend_factors),
    "Sharpness": Operation("sharpness", _blend_factors),
    "Posterize": Operation("posterize", _posterize_mask),
    "Solarize": Operation("solarize", _solarize_threshold),
    "AutoContrast": Operation("autocontrast", _no_parameters),
    "Equalize": Operation("equalize", _no_parameters),
    "Invert": Operation("invert", _no_parameters),
}


class Plan(NamedTuple):
    """One batch's draws, on the CPU: ``policy [B]`` sub-policy index, ``fires [B, 2]`` whether each
    of its two operations runs, ``negative [B, 2]`` whether a signed magnitude is negated."""

    policy: torch.Tensor
    fires: torch.Tensor
    negative: torch.Tensor


class _Table(NamedTuple):
    kernels: torch.Tensor  # [25, 2] index into the kernel names, on the CPU
    parameters: torch.Tensor  # [25 * 2 * 2, PARAMETERS] float64 rows by (policy, slot, negative), on the device


class AutoAugmentCIFAR10:
    """AutoAugment's CIFAR-10 policy with fill 128, one random sub-policy per image, for uint8
    ``[B, C, H, W]`` batches on any device.

    Draws as torchvision's ``v2.AutoAugment(CIFAR10, fill=128)`` draws per call: a sub-policy uniform
    over 25, each operation when rand <= p, a signed magnitude negated when rand <= 0.5; but from the
    loader's generator, so batches are reproducible and the global random state is untouched.

    Same 25 sub-policies, probabilities and magnitude bins as the CIFAR10Policy (DeepVoltaire's
    AutoAugment port) that SNN-Calibration uses. Differences, all small: shear uses nearest
    interpolation here, bicubic there; the solarize thresholds are 255*(1 - k/9) here,
    256*(1 - k/9) there; equalize/autocontrast/sharpness are torchvision's tensor kernels, not
    PIL's; an operation fires when rand <= p here, rand < p there.
    """

    def __init__(self, fill: int = 128) -> None:
        if not 0 <= fill <= 255:
            raise ValueError(f"fill must be a uint8 pixel value in 0..255, got {fill}")
        self.fill = fill
        self.kernels: Dict[str, Kernel] = {
            "warp": partial(_warp, fill=fill),
            "brightness": _brightness,
            "color": _color,
            "contrast": _contrast,
            "sharpness": _sharpness,
            "posterize": _posterize,
            "solarize": _solarize,
            "autocontrast": _parameter_free(TF.autocontrast),
            "equalize": _parameter_free(TF.equalize),
            "invert": _parameter_free(TF.invert),
        }
        self.kernel_names = tuple(self.kernels)
        self.probabilities = torch.tensor([[p for _, p, _ in sub_policy] for sub_policy in CIFAR10_POLICY])
        self._tables: Dict[Tuple[torch.device, int, int], _Table] = {}

    def __repr__(self) -> str:
        return f"AutoAugmentCIFAR10(fill={self.fill})"

    def sample(self, batch_size: int, generator: torch.Generator) -> Plan:
        policy = torch.randint(len(CIFAR10_POLICY), (batch_size,), generator=generator)
        fires = torch.rand(batch_size, SLOTS, generator=generator) <= self.probabilities[policy]
        negative = torch.rand(batch_size, SLOTS, generator=generator) <= 0.5
        return Plan(policy, fires, negative)

    def _table(self, device: torch.device, height: int, width: int) -> _Table:
        """Kernel index and parameter row of every (sub-policy, slot, sign): the magnitudes are
        discrete, so the exact double-precision parameters are computed once per image size."""
        key = (device, height, width)
        if key not in self._tables:
            kernels, rows = [], []
            for sub_policy in CIFAR10_POLICY:
                kernels.append([self.kernel_names.index(OPERATIONS[op].kernel) for op, _, _ in sub_policy])
                for op, _, bin_index in sub_policy:
                    bins = magnitude_bins(op, height, width)
                    magnitude = 0.0 if bins is None else float(bins[bin_index])
                    for negative in (False, True):
                        signed = -magnitude if negative and op in SIGNED else magnitude
                        row = OPERATIONS[op].parameters(signed, height, width)
                        rows.append(row + (0.0,) * (PARAMETERS - len(row)))
            parameters = torch.tensor(rows, dtype=torch.float64, device=device)
            self._tables[key] = _Table(torch.tensor(kernels), parameters)
        return self._tables[key]

    def apply(self, images: torch.Tensor, plan: Plan) -> torch.Tensor:
        """``images`` uint8 ``[B, C, H, W]`` with each image's sub-policy applied as ``plan`` says."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"AutoAugment takes uint8 [B, C, H, W] images, got {images.dtype} {tuple(images.shape)}")
        _, _, height, width = images.shape
        table = self._table(images.device, height, width)
        # Group the images by (slot, kernel) on the CPU and move all groups to the device in one copy,
        # so that no group size has to be read back from the device.
        groups, members, rows = [], [], []
        start, skipped = 0, len(self.kernel_names)
        for slot in range(SLOTS):
            kernel_of_image = torch.where(plan.fires[:, slot], table.kernels[plan.policy, slot], skipped)
            counts = torch.bincount(kernel_of_image, minlength=skipped + 1).tolist()
            fired = torch.argsort(kernel_of_image, stable=True)[: len(kernel_of_image) - counts[skipped]]
            members.append(fired)
            rows.append((plan.policy[fired] * SLOTS + slot) * 2 + plan.negative[fired, slot])
            for kernel, count in enumerate(counts[:skipped]):
                if count:
                    groups.append((self.kernel_names[kernel], start, start + count))
                start += count
        if not groups:
            return images
        members, rows = torch.stack([torch.cat(members), torch.cat(rows)]).to(images.device)
        out = images.clone()
        for kernel, begin, end in groups:
            index = members[begin:end]
            out.index_copy_(0, index, self.kernels[kernel](out[index], table.parameters[rows[begin:end]]))
        return out

    def draw(self, batch_size: int, height: int, width: int, generator: torch.Generator) -> Tuple[Plan]:
        return (self.sample(batch_size, generator),)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(images, self.sample(len(images), generator))
