"""The paper configs resolve to the iCT constants of docs/objectives.md, one by one."""

import pytest

from cmjax.config.hparams import TrainHParams, validate_config
from cmjax.config.loading import load_config

COMMON = dict(
    sigma_min=0.002, sigma_max=80.0, rho=7.0, sigma_data=0.5, s0=10, s1=1280, p_mean=-1.1, p_std=2.0
)


@pytest.fixture(params=["cifar10_ict", "cifar10_ict:deep", "imagenet64_ict", "imagenet64_ict:deep"])
def paper(request):
    config = load_config(request.param)
    return request.param, config, TrainHParams.from_config(config)


@pytest.mark.parametrize("name", sorted(COMMON))
def test_ict_schedule_constant(paper, name):
    _, _, hp = paper
    assert getattr(hp.objective.schedule, name) == COMMON[name]


def test_optimizer_is_radam_1e4_no_warmup_no_clipping(paper):
    _, _, hp = paper
    assert (hp.optim.name, hp.optim.learning_rate) == ("radam", 1e-4)
    assert (hp.optim.warmup_steps, hp.optim.grad_clip_norm) == (0, 0.0)
    assert (hp.optim.b1, hp.optim.b2, hp.optim.eps) == (0.9, 0.999, 1e-8)


def test_loss_is_pseudo_huber_with_ict_weighting(paper):
    spec, _, hp = paper
    assert (hp.objective.loss_name, hp.objective.weighting) == ("pseudo_huber", "ict")
    assert round(hp.objective.loss_c, 4) == (0.0299 if spec.startswith("cifar") else 0.0599)


def test_batch_steps_ema_dropout_and_conditioning(paper):
    spec, config, hp = paper
    if spec.startswith("cifar"):
        want = dict(
            batch=1024,
            steps=400_000,
            ema=(0.99993,),
            dropout=0.3,
            classes=0,
            noise_scale=1.0,
            shape=(32, 32, 3),
        )
    else:
        want = dict(
            batch=4096,
            steps=800_000,
            ema=(0.99997,),
            dropout=0.2,
            classes=1000,
            noise_scale=1000.0,
            shape=(64, 64, 3),
        )
    assert config.training.batch_size == want["batch"]
    assert hp.objective.schedule.total_steps == want["steps"]
    assert hp.ema_rates == want["ema"]
    assert config.model.dropout == want["dropout"]
    assert hp.num_classes == config.model.num_classes == want["classes"]
    assert hp.objective.noise_cond_scale == want["noise_scale"]
    assert hp.data_shape == want["shape"]
    assert config.data.random_flip is True


def test_network_settings():
    cifar = load_config("cifar10_ict").model
    assert (cifar.nf, tuple(cifar.ch_mult), cifar.num_res_blocks) == (128, (2, 2, 2), 4)
    assert (tuple(cifar.attn_resolutions), tuple(cifar.fir_kernel)) == ((16,), (1, 3, 3, 1))
    assert (cifar.fourier_scale, cifar.init_scale, cifar.skip_rescale) == (0.02, 0.0, True)
    assert load_config("cifar10_ict:deep").model.num_res_blocks == 8
    adm = load_config("imagenet64_ict").model
    assert (adm.model_channels, tuple(adm.channel_mult), adm.num_res_blocks) == (
        192,
        (1, 2, 3, 4),
        3,
    )
    assert (tuple(adm.attn_resolutions), adm.num_head_channels) == ((32, 16, 8), 64)
    assert adm.use_scale_shift_norm is False


@pytest.mark.parametrize(
    "spec",
    [
        "default",
        "default:tiny",
        "toy2d",
        "cifar10_ict:tiny",
        "imagenet64_ict:tiny",
        "cifar10_cd:tiny",
        "imagenet64_cd:tiny",
        "cifar10_edm:ncsnpp",
    ],
)
def test_shipped_configs_validate(spec):
    validate_config(load_config(spec))
