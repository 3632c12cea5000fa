import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    """A small random CNN: 32x32 RGB [0,1] -> 10 logits."""
    from advpipe.models.zoo import tiny_model

    return tiny_model(image_size=32, num_classes=10, seed=1)


@pytest.fixture(scope="session")
def batch():
    """Deterministic images in [0, 1] (with some pixels at the bounds) and int64 labels."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (12, 32, 32, 3)).astype(np.float32)
    x[:, :4] = 0.0
    x[:, -4:] = 1.0
    y = rng.integers(0, 10, 12).astype(np.int64)
    return x, y
