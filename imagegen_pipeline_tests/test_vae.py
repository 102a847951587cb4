"""The VAE family (issue 16.3): a conv encoder + the DCGAN Generator as decoder, trained on the ELBO, resumable,
exported as the same generator file, so everything downstream serves and judges it unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imagegen_pipeline.ml.dcgan import DCGANConfig, TrainData, generate, load_generator
from imagegen_pipeline.ml.dcgan.vae import Encoder, train_vae, vae_loss
from imagegen_pipeline.ml.runtime import resolve_runtime

CPU = resolve_runtime("cpu", cpu_bf16=False)
pytestmark = pytest.mark.usefixtures("one_thread")


def bars(n: int, seed: int = 0) -> TrainData:
    """Two classes of 32 px pictures a tiny model learns in a few dozen steps: a horizontal or a vertical bar
    at a random place."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 32, 32, dtype=torch.uint8)
    labels = torch.arange(n) % 2
    for i in range(n):
        at = int(torch.randint(4, 26, (1,), generator=g))
        if labels[i]:
            images[i, 0, :, at:at + 4] = 255
        else:
            images[i, 0, at:at + 4, :] = 255
    return TrainData(images, labels)


def tiny(**kw) -> DCGANConfig:
    return DCGANConfig(**{**dict(family="vae", conditioning="class", num_classes=2, ngf=8, ndf=8, z_dim=8,
                                 batch_size=16, steps=150, lr_g=3e-3, log_every=25, sample_every=75,
                                 checkpoint_every=75, num_samples=4), **kw})


def test_the_vae_learns_exports_a_generator_and_draws_the_asked_for_class(tmp_path):
    data = bars(64)
    result = train_vae(tiny(), data, out_dir=tmp_path, runtime=CPU)
    losses = [m["loss_vae"] for m in result.metrics if "loss_vae" in m]
    assert result.final_step == 150 and losses[-1] < 0.5 * losses[0]
    assert (tmp_path / "latest.pt").is_file() and result.generator_path.is_file()
    G, cfg = load_generator(result.generator_path)  # the same loader the evaluation and serving use
    assert cfg.family == "vae"
    vertical = generate(G, cfg, seeds=range(8), cond=1).astype(float)[..., 0] / 255  # (8, 32, 32)
    horizontal = generate(G, cfg, seeds=range(8), cond=0).astype(float)[..., 0] / 255
    # a vertical bar varies along x and not along y: column means spread, row means do not (and vice versa)
    assert vertical.mean(1).std(1).mean() > 2 * vertical.mean(2).std(1).mean()
    assert horizontal.mean(2).std(1).mean() > 2 * horizontal.mean(1).std(1).mean()
    assert not np.array_equal(vertical[0], vertical[1])  # seeds differ


def test_a_killed_vae_run_resumes_to_the_same_weights(tmp_path):
    data = bars(48)
    whole = train_vae(tiny(steps=40, checkpoint_every=20), data, out_dir=tmp_path / "a", runtime=CPU)
    train_vae(tiny(steps=20, checkpoint_every=20), data, out_dir=tmp_path / "b", runtime=CPU)  # "killed" at 20
    resumed = train_vae(tiny(steps=40, checkpoint_every=20), data, out_dir=tmp_path / "b", runtime=CPU)
    assert resumed.resumed_from == 20 and resumed.final_step == 40
    a, _ = load_generator(whole.generator_path)
    b, _ = load_generator(resumed.generator_path)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, msg=k)


def test_the_loss_is_the_elbo_and_a_wrong_setup_is_refused():
    x = torch.zeros(2, 1, 32, 32)
    loss, rec, kl = vae_loss(x, x + 0.5, torch.zeros(2, 4), torch.zeros(2, 4), kl_weight=1.0)
    assert rec.item() == pytest.approx(0.25 * 1024) and kl.item() == pytest.approx(0.0) and loss == rec
    _, _, kl = vae_loss(x, x, torch.ones(2, 4), torch.zeros(2, 4), kl_weight=1.0)
    assert kl.item() == pytest.approx(0.5 * 4)  # KL(N(1, 1) || N(0, 1)) = 1/2 per dimension
    mu, logvar = Encoder(tiny())(x * 2 - 1, torch.tensor([0, 1]))
    assert mu.shape == logvar.shape == (2, 8)
    with pytest.raises(ValueError, match="vae family"):
        DCGANConfig(family="vae", conditioning="text")
    with pytest.raises(ValueError, match="family must be one of"):
        DCGANConfig(family="diffusion")
