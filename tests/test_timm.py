"""timm sees each entry with its own preprocessing: timm.data.resolve_data_config + create_transform give
the inputs `qsnn-zoo eval` computes (qsnn_zoo.metrics.run_model), so timm users get the same predictions."""
import numpy as np
import pytest
import torch

import qsnn_zoo
from qsnn_zoo.data import load_sample
from qsnn_zoo.metrics import run_model

timm = pytest.importorskip("timm")
from timm.data import create_transform, resolve_data_config  # noqa: E402

NAME = "alexnet_cifar10_bin_tsslbp"  # published, in checkpoints/, the cheapest to run on the CPU
PREDICTED_IMAGES = 16  # the reference backend takes about half a second per image here


def timm_inputs(model, images: np.ndarray) -> torch.Tensor:
    from PIL import Image

    transform = create_transform(**resolve_data_config(model=model))
    return torch.stack([transform(Image.fromarray(image)) for image in images])


def test_the_pretrained_cfg_states_the_entrys_preprocessing():
    entry = qsnn_zoo.get_entry(NAME)
    config = resolve_data_config(model=timm.create_model(NAME))
    assert config == {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": entry.mean, "std": entry.std,
                      "crop_pct": 1.0, "crop_mode": "center"}


def test_timm_lists_the_entries_with_weights_as_pretrained():
    for pattern in ("*_calib", "*_stbp", "*_tsslbp", "*cifar10_ter*"):
        assert timm.list_models(pattern, pretrained=True) == qsnn_zoo.list_models(pattern, pretrained=True)
    assert "vgg16_cifar100_bin_calib" in timm.list_models("vgg16_*")  # listed, but not as pretrained


def test_timm_transforms_give_the_inputs_and_predictions_of_qsnn_zoo_eval():
    entry, sample = qsnn_zoo.get_entry(NAME), load_sample()
    model = timm.create_model(NAME, pretrained=True).eval()
    from_timm = timm_inputs(model, sample.images)
    from qsnn_zoo.data import to_tensor

    torch.testing.assert_close(from_timm, to_tensor(sample.images, entry.mean, entry.std), rtol=0, atol=1e-6)

    subset = sample.subset(slice(0, PREDICTED_IMAGES))
    expected, _ = run_model(model, subset, entry.mean, entry.std, batch_size=PREDICTED_IMAGES, progress=False)
    with torch.no_grad():
        predicted = model(from_timm[:PREDICTED_IMAGES]).argmax(1).numpy()
    np.testing.assert_array_equal(predicted, expected)
