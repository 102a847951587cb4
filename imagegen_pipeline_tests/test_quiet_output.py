"""Issue 29.2: what `make demo` and the CLI print is what a user can act on: no MLflow signature or input-example
warnings, no artifact-download progress bars in a log, no prompt re-ranking note when no prompt was given."""

from __future__ import annotations

import logging
import warnings

import mlflow
import numpy as np
import pandas as pd
import pytest

from imagegen_pipeline.cli import main
from imagegen_pipeline.ml.dcgan import DCGANConfig, Generator, export_generator
from imagegen_pipeline.ml.extractor import ExtractorNet
from imagegen_pipeline.ml.extractor.analysis import save_extractor
from imagegen_pipeline.stages import dcgan as dcgan_stage
from imagegen_pipeline.stages import extractor as extractor_stage
from imagegen_pipeline.tracking.tracker import Tracker

PROGRESS_VAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
NAMES = ["zero", "one"]
# what the dcgan stage registers as the generator's input example (stages/dcgan.py `_register`)
EXAMPLE = pd.DataFrame({"label": ["zero"], "prompt": [None], "seed": [0], "count": [1]})
UNACTIONABLE = ("type hints", "input example was not provided", "Integer columns", "Failed to infer")


def _register_toy(paths, *, extractor: bool = False) -> None:
    """A tiny class-conditional generator (and extractor) registered through the Tracker with the stages' own
    arguments: imagegen-generator-toy v1 @champion (and imagegen-extractor-toy v1)."""
    cfg = DCGANConfig(ngf=8, ndf=8, conditioning="class", num_classes=2, extra={"class_names": NAMES})
    generator_file = export_generator(Generator(cfg), cfg, paths.home / "toy-generator")
    tracker = Tracker.for_paths(paths)
    with tracker.run("toy", run_name="toy") as run:
        run.register_code_model(code_file=dcgan_stage.SERVING_CODE, artifacts={"generator": str(generator_file)},
                                name="imagegen-generator-toy", example=EXAMPLE, params={"format": "png"},
                                metadata={"dataset": "toy", "conditioning": "class", "family": "dcgan"})
        if extractor:
            model_file = save_extractor(paths.home / "extractor.safetensors", ExtractorNet(2, input_size=32),
                                        {"class_names": NAMES})
            run.register_code_model(code_file=extractor_stage.SERVING_CODE, artifacts={"extractor": str(model_file)},
                                    name="imagegen-extractor-toy", example=extractor_stage.serving_example((1, 32, 32)),
                                    metadata={"dataset": "toy"})
    tracker.client().set_registered_model_alias("imagegen-generator-toy", "champion", "1")


def _unset_progress_var(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset for this test and unset again after it (whatever the CLI sets in between)."""
    monkeypatch.setenv(PROGRESS_VAR, "x")
    monkeypatch.delenv(PROGRESS_VAR)


def test_registering_and_loading_the_pyfuncs_gives_no_signature_warning_and_keeps_the_request_format(
        paths, mlflow_uri, caplog):
    """MLflow 3 warned "Add type hints to the `predict` method" for both pyfuncs and "An input example was not
    provided" for the generator, at every registration and load; the typed `predict` and the logged example stop
    that, and the served request/response format stays the one `imagegen serve` documents."""
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        _register_toy(paths, extractor=True)
        generator = mlflow.pyfunc.load_model("models:/imagegen-generator-toy/1")
        extractor = mlflow.pyfunc.load_model("models:/imagegen-extractor-toy/1")
    said = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [s for s in said if any(u in s for u in UNACTIONABLE)], said

    pngs = generator.predict(pd.DataFrame({"label": ["one"], "seed": [7], "count": [2]}), params={"format": "png"})
    assert list(pngs.columns) == ["label", "seed", "png_base64"] and pngs["seed"].tolist() == [7, 8]
    array = generator.predict(pd.DataFrame({"label": ["zero"], "seed": [0], "count": [3]}), params={"format": "array"})
    assert (array.dtype, array.shape) == (np.uint8, (3, 32, 32, 1))
    assert generator.metadata.signature is not None and generator.metadata.signature.params is not None
    out = extractor.predict(np.zeros((2, 1, 32, 32), np.uint8))
    assert (out["embedding"].shape, out["probs"].shape) == ((2, 1280), (2, 2))


def test_artifact_download_progress_bars_are_off_off_a_terminal_unless_the_user_turned_them_on(
        paths, mlflow_uri, capfd, monkeypatch):
    """`make demo` printed MLflow's "Downloading artifacts" bar for every registration and load (138 files at a time);
    in a log (stderr not a terminal) the stages and the CLI turn it off; a user who set the variable keeps it."""
    _unset_progress_var(monkeypatch)
    _register_toy(paths)  # the stages' path: Tracker -> MLflow log_model, which downloads what it logged
    assert main(["--home", str(paths.home), "generate", "--dataset", "toy", "--label", "one", "--n", "2",
                 "--out", str(paths.home / "a.png")]) == 0
    quiet = capfd.readouterr().err
    assert "Downloading artifacts" not in quiet, quiet

    monkeypatch.setenv(PROGRESS_VAR, "true")  # the user asked for the bars
    assert main(["--home", str(paths.home), "presets"]) == 0
    _register_toy(paths)
    assert "Downloading artifacts" in capfd.readouterr().err


def test_generate_by_label_says_nothing_about_prompt_re_ranking_unless_a_prompt_was_given(paths, mlflow_uri, capfd):
    """`imagegen generate --dataset mnist --label 7` printed "note: not scored (no .../captions.parquet) ... to
    re-rank by prompt" though there was no prompt; the note belongs only to a run that was given one."""
    _register_toy(paths)
    capfd.readouterr()
    assert main(["--home", str(paths.home), "generate", "--dataset", "toy", "--label", "one", "--n", "2",
                 "--out", str(paths.home / "a.png")]) == 0
    out, err = capfd.readouterr()
    assert "not scored" not in err and "re-rank" not in err, err
    assert "wrote" in out and (paths.home / "a.png").is_file()

    assert main(["--home", str(paths.home), "generate", "a round one", "--dataset", "toy", "--label", "one", "--n",
                 "2", "--out", str(paths.home / "b.png")]) == 0
    assert "note: not scored" in capfd.readouterr().err  # asked to re-rank by a prompt, and told why it could not


def test_loading_the_definitions_prints_no_beta_warning_for_the_backfill_policy():
    """Every process that loads the definitions (the CLI, the code server, each run) printed dagster's BetaWarning
    for `backfill_policy` once per asset: 11 lines at the top of `make demo` that a user cannot act on."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-W", "default", "-c", "import imagegen_pipeline.definitions"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "backfill_policy" not in out.stderr, out.stderr[-2000:]
