"""Named presets: every field exists on its asset's Config, and each GPU preset's DCGAN takes its first steps on
CPU with the preset's own architecture and loss settings (CI has no GPU; the full runs are for a GPU box)."""

from __future__ import annotations

import pytest
import torch

from imagegen_pipeline.defs.dcgan import DcganTrainConfig
from imagegen_pipeline.defs.evaluation import EvaluationConfig
from imagegen_pipeline.defs.extractor import FeatureExtractorConfig, ImageEmbeddingsConfig
from imagegen_pipeline.defs.gallery import SampleGalleryConfig
from imagegen_pipeline.ml.dcgan import TrainData, train_dcgan
from imagegen_pipeline.ml.runtime import resolve_runtime
from imagegen_pipeline.presets import PRESETS, preset_run_config
from imagegen_pipeline.stages.dcgan import model_config

CONFIGS = {"feature_extractor": FeatureExtractorConfig, "image_embeddings": ImageEmbeddingsConfig,
           "dcgan_checkpoint": DcganTrainConfig, "evaluation_report": EvaluationConfig,
           "sample_gallery": SampleGalleryConfig}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_field_is_a_field_of_its_assets_config(name):
    for op, section in preset_run_config(name)["ops"].items():
        CONFIGS[op](**section["config"])  # pydantic refuses unknown or mistyped fields
        assert set(section["config"]) <= set(CONFIGS[op].model_fields), (name, op)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="gpu-mnist"):
        preset_run_config("gpu-mnsit")


@pytest.mark.parametrize("name", [n for n in sorted(PRESETS) if n.startswith("gpu-")])
def test_gpu_preset_dcgan_takes_its_first_steps_on_cpu(name, tmp_path, one_thread):
    over = preset_run_config(name)["ops"]["dcgan_checkpoint"]["config"]
    config = DcganTrainConfig(**{**over, "device": "cpu", "steps": 2, "batch_size": 4, "compile": False})
    text = over["conditioning"] == "text"
    shape = (3, 64, 64) if text else (1, 32, 32)
    cfg = model_config(config.to_job(), resolution=shape[1], channels=shape[0], conditioning=over["conditioning"],
                       num_classes=10 if over["conditioning"] == "class" else 0, extra={"dataset": "presettest"})
    if text:
        cfg = cfg.replace(text_dim=16)
    g = torch.Generator().manual_seed(0)
    data = TrainData(torch.randint(0, 256, (8, *shape), dtype=torch.uint8, generator=g),
                     torch.arange(8) % 10, torch.randn(8, 16, generator=g))
    result = train_dcgan(cfg, data, out_dir=tmp_path, runtime=resolve_runtime("cpu"))
    assert result.final_step == 2 and (tmp_path / "generator.safetensors").is_file()
    # what was trained, read back from its files: the generator's last layer maps ngf channels to the image's,
    # and the optimizer ran at the preset's learning rate
    from safetensors.torch import load_file

    shapes = {tuple(w.shape) for w in load_file(tmp_path / "generator.safetensors").values()}
    assert (over["ngf"], shape[0], 4, 4) in shapes, sorted(shapes)
    state = torch.load(tmp_path / "latest.pt", map_location="cpu", weights_only=True)
    assert [g["lr"] for g in state["opt_g"]["param_groups"]] == [over["lr_g"]]
    assert (state["config"]["loss"], state["config"]["diffaugment"]) == (config.loss, over.get("diffaugment", ""))


def test_cli_layers_flags_over_the_config_file_over_the_preset(tmp_path):
    from imagegen_pipeline.cli import _run_config, build_parser

    f = tmp_path / "run.yaml"
    f.write_text("ops:\n  dcgan_checkpoint:\n    config:\n      ngf: 48\n      batch_size: 32\n")
    args = build_parser().parse_args(["train", "mnist", "--preset", "gpu-mnist", "--config", str(f), "--steps", "7"])
    ops = _run_config(args, {"dcgan_checkpoint": ("steps", "batch_size", "ngf")})["ops"]
    dcgan = ops["dcgan_checkpoint"]["config"]
    assert (dcgan["steps"], dcgan["ngf"], dcgan["batch_size"], dcgan["ema_beta"]) == (7, 48, 32, 0.999)
    assert ops["evaluation_report"]["config"]["protocol"] == "paper"


@pytest.mark.parametrize("job,preset", [("train_job", "gpu-mnist"), ("features_job", "gpu-fashion-mnist"),
                                        ("pipeline_job", "gpu-mnist-uncond"), ("text_job", "gpu-emoji-text")])
def test_each_job_accepts_the_part_of_a_preset_it_runs(job, preset):
    import dagster as dg

    from imagegen_pipeline.defs.launch import job_run_config
    from imagegen_pipeline.definitions import defs

    job_def = defs.resolve_job_def(job)
    config = job_run_config(job_def, preset_run_config(preset))
    assert dg.validate_run_config(job_def, config)  # raises on a section for an op the job does not run
    assert config["ops"] and all(job_def.graph.has_node_named(op) for op in config["ops"])


def test_the_cpu_text_preset_is_a_diffusion_model_that_trains_on_cpu(tmp_path, one_thread):
    """Issue 27: `cpu-emoji-text` is the text diffusion model (the old DCGAN stays reachable as
    cpu-emoji-text-dcgan); its DiffusionConfig builds from the preset and takes its first steps on 32 px RGB."""
    from imagegen_pipeline.ml.diffusion import DiffusionConfig, load_diffusion, train_diffusion

    over = preset_run_config("cpu-emoji-text")["ops"]["dcgan_checkpoint"]["config"]
    job = DcganTrainConfig(**{**over, "steps": 2, "batch_size": 4}).to_job()
    cfg = model_config(job, resolution=32, channels=3, conditioning="text", num_classes=0,
                       extra={"dataset": "presettest"}).replace(text_dim=16)
    assert isinstance(cfg, DiffusionConfig) and (cfg.patch, cfg.lr, cfg.guidance) == (2, over["lr_g"], 3.0)
    assert job.cpu_threads == 1
    g = torch.Generator().manual_seed(0)
    data = TrainData(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g), None,
                     torch.randn(8, 16, generator=g))
    result = train_diffusion(cfg.replace(sample_steps=2, num_samples=2), data, out_dir=tmp_path,
                             runtime=resolve_runtime("cpu"))
    model, loaded = load_diffusion(result.generator_path)
    assert result.final_step == 2 and loaded.patch == 2 and model.guidance == 3.0
    assert preset_run_config("cpu-emoji-text-dcgan")["ops"]["dcgan_checkpoint"]["config"]["steps"] == 20_000
