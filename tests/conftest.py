"""Test setup: 8 fake CPU devices (set before JAX is imported) and tiny configs."""

import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "configs"))


@pytest.fixture
def toy_config():
    """The 2-D toy config shrunk for tests."""
    import toy2d

    config = toy2d.get_config()
    config.model.hidden = 32
    config.model.depth = 2
    config.training.batch_size = 64
    config.training.total_steps = 100
    return config


@pytest.fixture
def image_config():
    """A tiny 8x8x3 image config with the small UNet and dropout on."""
    import toy2d

    config = toy2d.get_config()
    config.data.shape = (8, 8, 3)
    config.model = dict(
        name="unet_small",
        channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        num_fourier=8,
        fourier_scale=16.0,
        dropout=0.3,
        num_classes=0,
        noise_cond_scale=1.0,
    )
    config.training.batch_size = 16
    config.training.total_steps = 100
    return config
