"""Every published checkpoint, loaded as users load it, scores what its card says.

The bundled sample is test rows 0-255, a subset of the 1,017 lossless rows on which the card's top-1
was measured, so the two agree within the sampling error of 256 images."""
import math

import pytest
import torch

import qsnn_zoo
from qsnn_zoo.data import load_sample, to_tensor
from qsnn_zoo.metrics import measured_top1


@pytest.mark.parametrize("name", qsnn_zoo.list_models(pretrained=True))
def test_published_checkpoint_reaches_its_card_accuracy_on_the_bundled_sample(name):
    model = qsnn_zoo.create_model(name, pretrained=True).eval()
    sample = load_sample()
    assert sample.lossless.all()
    with torch.no_grad():
        scores = torch.cat([
            model(to_tensor(sample.images[i : i + 64], model.entry.mean, model.entry.std))
            for i in range(0, len(sample), 64)
        ])
    top1 = 100 * float((scores.argmax(1) == torch.as_tensor(sample.labels)).float().mean())
    card = measured_top1(model.entry, "lossless")
    standard_error = 100 * math.sqrt(card / 100 * (1 - card / 100) / len(sample))
    assert abs(top1 - card) <= 4 * standard_error, f"{name}: {top1:.2f} % on the sample, card says {card:.2f} %"
