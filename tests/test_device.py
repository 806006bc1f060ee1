"""`wsi_ats.device`: where the nets run, and pixels staged on the device as uint8."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi_ats.device import select_device, to_device


def test_to_device_keeps_uint8_pixels_unchanged_on_the_cpu():
    patches = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    x = to_device(patches, torch.device("cpu"))
    assert x.dtype == torch.uint8 and x.shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(x.numpy(), patches)


def test_to_device_rejects_float_images():
    with pytest.raises(ValueError, match="uint8"):
        to_device(np.zeros((1, 4, 4, 3), np.float32), torch.device("cpu"))


def test_asking_for_missing_cuda_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_device("cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_device_lands_on_cuda_equal_to_cpu():
    patches = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    x = to_device(patches, torch.device("cuda"))
    assert x.device.type == "cuda"
    np.testing.assert_array_equal(x.cpu().numpy(), patches)
