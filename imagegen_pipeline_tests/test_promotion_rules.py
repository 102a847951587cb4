"""The champion rules of `promote_if_better`, on a real MLflow registry (sqlite): a gain must beat the metric's
own noise, scores from different protocols never meet, and a failed lookup is an error, not "no champion"."""

from __future__ import annotations

import mlflow
import pytest

from imagegen_pipeline.tracking.registry import GATE_TAG, METRIC_TAG, PROTOCOL_TAG, Guard, promote_if_better
from imagegen_pipeline.tracking.store import use_store

NAME = "imagegen-generator-rules"
FID = [Guard("fid", higher_is_better=False, strict=True, spread="fid_std")]


@pytest.fixture
def client(mlflow_uri, tmp_path):
    use_store(mlflow_uri)  # tracking and registry: another test may have pointed the registry elsewhere
    c = mlflow.MlflowClient()
    c.create_registered_model(NAME)
    c.source = tmp_path  # a version needs a source folder; these tests only read its tags
    return c


def version(client, fid: float, fid_std: float, protocol: str = "quick|n=1000", **tags) -> str:
    """A version that passed the quality gate, with these scores (and `tags`: "conditioning" -> its tag)."""
    mv = client.create_model_version(NAME, source=str(client.source), run_id=None)
    for k, v in {METRIC_TAG + "fid": fid, METRIC_TAG + "fid_std": fid_std, PROTOCOL_TAG: protocol,
                 GATE_TAG: "passed", **{f"imagegen.{k}": v for k, v in tags.items()}}.items():
        client.set_model_version_tag(NAME, mv.version, k, str(v))
    return str(mv.version)


def champion(client) -> str:
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def test_a_gain_inside_the_bootstrap_noise_does_not_move_the_champion(client):
    assert promote_if_better(NAME, version(client, 30.0, 0.5), FID, client=client).promoted
    noise = promote_if_better(NAME, version(client, 29.5, 0.5), FID, client=client)  # 0.5 < 2 x 0.71
    assert not noise.promoted and "(margin 1.41)" in noise.reason and champion(client) == "1"
    real = promote_if_better(NAME, version(client, 27.0, 0.5), FID, client=client)
    assert real.promoted and real.reason == "better than v1: fid 27 vs 30 (margin 1.41)" and champion(client) == "3"


def test_scores_from_another_protocol_are_never_compared(client):
    assert promote_if_better(NAME, version(client, 30.0, 0.1, protocol="quick|n=1000"), FID, client=client).promoted
    other = promote_if_better(NAME, version(client, 5.0, 0.1, protocol="paper|n=10000"), FID, client=client)
    assert not other.promoted and "another protocol" in other.reason and champion(client) == "1"


def test_a_version_without_a_passed_gate_never_becomes_champion(client):
    """Issue 28.6: a version whose evaluation died before its gate tag was written (DiskFull, an upload error)
    became champion as the "first model". Only `imagegen.gate == passed` may take the alias, first or not."""
    ungated = client.create_model_version(NAME, source=str(client.source), run_id=None).version
    first = promote_if_better(NAME, str(ungated), [], client=client)
    assert not first.promoted and "no champion yet" in first.reason
    assert f"version {ungated} has not passed the quality gate" in first.reason
    assert "champion" not in client.get_registered_model(NAME).aliases
    assert promote_if_better(NAME, version(client, 30.0, 0.1), FID, client=client).promoted
    better = version(client, 5.0, 0.1)
    client.delete_model_version_tag(NAME, better, GATE_TAG)  # far better FID, but never judged to the end
    later = promote_if_better(NAME, better, FID, client=client)
    assert not later.promoted and "v2 stays champion" in later.reason and champion(client) == "2"


def test_a_class_champion_is_never_replaced_by_a_model_of_other_conditioning(client):
    """Issue 28.9: an unconditional model with a better FID replaced a class champion, silently changing what
    `label` means to the model server. Conditioning is compared first, and the reason says so."""
    from imagegen_pipeline.stages.evaluation import promotion_guards

    cls = version(client, 30.0, 0.1, conditioning="class")
    client.set_model_version_tag(NAME, cls, METRIC_TAG + "conditional_accuracy", "0.9")
    assert promote_if_better(NAME, cls, FID, client=client).promoted
    plain = version(client, 5.0, 0.1, conditioning="none")
    decision = promote_if_better(NAME, plain, promotion_guards(client.get_model_version(NAME, plain).tags),
                                 client=client)
    assert not decision.promoted and champion(client) == cls
    assert decision.reason == (f"kept v{cls} as champion: it is conditioned on 'class' and v{plain} on 'none'; "
                               "a model of other conditioning would change what a request's label means")


def test_a_class_model_may_replace_an_unconditional_champion_on_fid(client):
    """Issue 28.9: an unconditional champion has no asked-for-class accuracy, and every class candidate failed
    with "conditional_accuracy missing". The accuracy is compared only when both versions have one."""
    from imagegen_pipeline.stages.evaluation import promotion_guards

    plain = version(client, 30.0, 0.1, conditioning="none")
    assert promote_if_better(NAME, plain, FID, client=client).promoted
    cls = version(client, 20.0, 0.1, conditioning="class")
    client.set_model_version_tag(NAME, cls, METRIC_TAG + "conditional_accuracy", "0.9")
    decision = promote_if_better(NAME, cls, promotion_guards(client.get_model_version(NAME, cls).tags),
                                 client=client)
    assert decision.promoted and decision.reason == "better than v1: fid 20 vs 30 (margin 0.283)"
    assert champion(client) == cls


def test_a_registry_that_cannot_be_read_fails_instead_of_promoting(client, monkeypatch):
    """A momentarily locked database used to read as "no champion yet": the (worse) candidate became champion."""
    promote_if_better(NAME, version(client, 30.0, 0.1), FID, client=client)
    worse = version(client, 90.0, 0.1)
    locked_once = []

    def flaky(original):
        def call(*args, **kwargs):
            if not locked_once:
                locked_once.append(True)
                raise mlflow.exceptions.MlflowException("(sqlite3.OperationalError) database is locked")
            return original(*args, **kwargs)
        return call

    for method in ("get_model_version_by_alias", "get_registered_model"):
        monkeypatch.setattr(client, method, flaky(getattr(client, method)))
    with pytest.raises(mlflow.exceptions.MlflowException, match="database is locked"):
        promote_if_better(NAME, worse, FID, client=client)
    assert locked_once and champion(client) == "1"


def test_a_registered_version_whose_files_are_gone_is_an_error_naming_it(client, tmp_path):
    """Issue 14.4: evaluating a version whose artifact the store lost failed deep inside MLflow or yaml. It now
    names the version, the artifact and the way out."""
    from imagegen_pipeline.tracking.registry import MissingArtifact, download_model_artifact

    (client.source / "MLmodel").write_text("flavors:\n  python_function:\n    artifacts:\n      generator:\n"
                                           "        path: artifacts/generator.safetensors\n")
    lost_file = version(client, 30.0, 0.1)  # its MLmodel lists a file that is not there
    with pytest.raises(MissingArtifact, match=rf"models:/{NAME}/{lost_file}: its artifact 'generator' cannot be "
                                              r"read .*generator.safetensors is not among its files.*Restore"):
        download_model_artifact(NAME, lost_file, "generator", tmp_path / "a")
    gone = client.create_model_version(NAME, source=str(tmp_path / "deleted-folder"), run_id=None).version
    with pytest.raises(MissingArtifact, match=rf"models:/{NAME}/{gone}: its artifact 'generator'"):
        download_model_artifact(NAME, str(gone), "generator", tmp_path / "b")


def test_the_gate_rejects_samples_far_more_alike_than_real_pairs_in_ms_ssim():
    """Issue 16.1: MS-SSIM diversity feeds the quality gate. Figures from this repo's MNIST models: the demo
    champion 1.06 x real passes; a collapsed 20-step model (2.33 x) fails with the reason."""
    from imagegen_pipeline.ml.quality_gate import QualityGate, gate_failures

    healthy = {"diversity_ratio": 0.88, "recall": 0.6, "fid": 23.0, "real_floor_fid": 11.4, "ms_ssim_ratio": 1.06}
    assert gate_failures(healthy) == []
    [reason] = gate_failures({**healthy, "ms_ssim_ratio": 2.33})
    assert reason == "same-class MS-SSIM 2.33 x real > 1.5 (collapse)"
    assert gate_failures({**healthy, "ms_ssim_ratio": 2.33}, QualityGate(max_ms_ssim_ratio=3.0)) == []


HEALTHY = {"diversity_ratio": 0.88, "recall": 0.6, "fid": 23.0, "real_floor_fid": 11.4, "ms_ssim_ratio": 1.06}


def test_the_gate_asks_prompt_fidelity_of_text_models_only():
    """Issue 27.3: a text model fails when its R-precision is missing or under min_r_precision_of_real (0.3) x
    the real images' R-precision under the same judge; class and unconditional models are not asked for one."""
    from imagegen_pipeline.ml.quality_gate import QualityGate, gate_failures

    assert gate_failures(HEALTHY, conditioning="class") == [] == gate_failures(HEALTHY, conditioning="none")
    assert gate_failures(HEALTHY) == []  # callers that do not say: not a text model
    [missing] = gate_failures(HEALTHY, conditioning="text")
    assert missing.startswith("text model without prompt fidelity: r_precision or r_precision_real missing")
    assert "caption_embeddings" in missing
    assert gate_failures({**HEALTHY, "r_precision": 0.2}, conditioning="text")[0].startswith("text model without")
    assert gate_failures({**HEALTHY, "r_precision": 0.08, "r_precision_real": 0.26}, conditioning="text") == []
    [low] = gate_failures({**HEALTHY, "r_precision": 0.077, "r_precision_real": 0.26}, conditioning="text")
    assert low == ("pictures do not follow their prompts: R-precision 0.077 is 30% of real images' 0.260 < 30% "
                   "(a model that ignores its text scores about chance)")
    assert gate_failures({**HEALTHY, "r_precision": float("nan"), "r_precision_real": 0.26}, conditioning="text")
    loose = QualityGate(min_r_precision_of_real=0.01)
    assert gate_failures({**HEALTHY, "r_precision": 0.01, "r_precision_real": 0.26}, loose, conditioning="text") == []


def test_a_text_model_that_ignores_its_prompts_is_rejected_with_the_reason():
    """The R-precision a text-ignoring model really gets (the evaluation's own text_r_precision, on a synthetic
    judge where real held-out images are faithful): at chance, 1/40, and the gate says why it is rejected. A
    faithful model passes."""
    import numpy as np

    from imagegen_pipeline.ml.evaluation import text_r_precision
    from imagegen_pipeline.ml.prompt_score import CaptionBank
    from imagegen_pipeline.ml.quality_gate import gate_failures

    rng = np.random.default_rng(0)
    img_c, txt_c = rng.normal(size=(40, 16)), rng.normal(size=(40, 8))  # 40 topics: image and caption centres
    topic = np.repeat(np.arange(40), 3)
    bank = CaptionBank(img_c[topic] + 0.1 * rng.normal(size=(120, 16)),
                       txt_c[topic] + 0.1 * rng.normal(size=(120, 8)), [f"topic {t}" for t in topic])
    ignoring = np.repeat(img_c[:1], 40, axis=0)  # the same picture whatever the caption
    figures = text_r_precision(bank, ignoring, txt_c, real_embeddings=img_c, neighbours=3)
    assert figures["r_precision"] == figures["r_precision_chance"] == 1 / 40 and figures["r_precision_real"] == 1.0
    [reason] = gate_failures({**HEALTHY, **figures}, conditioning="text")
    assert reason.startswith("pictures do not follow their prompts: R-precision 0.025 is 2% of real images' 1.000")
    faithful = text_r_precision(bank, img_c, txt_c, real_embeddings=img_c, neighbours=3)
    assert gate_failures({**HEALTHY, **faithful}, conditioning="text") == []


def test_the_gate_asks_text_models_on_composed_pictures_to_draw_held_out_pairs():
    """A text model whose results carry held-out-pair figures (the concept judge's heldout_both_right beside its
    real ceiling heldout_both_right_real) fails under min_heldout_both_of_real (0.5) x the ceiling: at chance
    (1/30) it is rejected with the reason, at 80% of the ceiling it passes; a missing ceiling fails and says so;
    results without the figures, and class models, are judged as before."""
    from imagegen_pipeline.ml.quality_gate import QualityGate, gate_failures

    text = {**HEALTHY, "r_precision": 0.2, "r_precision_real": 0.26}  # passes every other check
    assert gate_failures(text, conditioning="text") == []  # no composed pictures: unchanged
    assert gate_failures({**text, "heldout_both_right": 0.76, "heldout_both_right_real": 0.95},
                         conditioning="text") == []
    [chance] = gate_failures({**text, "heldout_both_right": 1 / 30, "heldout_both_right_real": 0.95},
                             conditioning="text")
    assert chance == ("held-out pairs are not drawn: both right on 0.033 of held-out-pair samples, 4% of the "
                      "judge's 0.950 on real pictures < 50% (a model that ignores its text scores about chance, one "
                      "that only copies trained pairs about 0)")
    [no_ceiling] = gate_failures({**text, "heldout_both_right": 0.76}, conditioning="text")
    assert no_ceiling.startswith("held-out pairs without a real ceiling: heldout_both_right_real is None")
    [no_samples] = gate_failures({**text, "heldout_both_right": None, "heldout_both_right_real": 0.95},
                                 conditioning="text")
    assert no_samples.startswith("composed pictures without a held-out figure")
    assert gate_failures({**text, "heldout_both_right": 1 / 30, "heldout_both_right_real": 0.95},
                         conditioning="class") == []
    loose = QualityGate(min_heldout_both_of_real=0.03)
    assert gate_failures({**text, "heldout_both_right": 1 / 30, "heldout_both_right_real": 0.95}, loose,
                         conditioning="text") == []
