"""The composition figures on real composed emoji: the concept judge, and the gate that reads it.

Composed pictures come from the real emoji-datasource-google tarball (`make test-data`), at 32 px as the CPU text
model sees them. Two stand-in generators bracket a real one: an oracle that draws a real picture of whatever pair
it is asked for (held-out pairs included), and one that ignores its caption."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from imagegen_pipeline.datasets.composition_pairs import HELD_OUT_PAIRS, held_out_prompts
from imagegen_pipeline.datasets.emoji_compose import import_composed
from imagegen_pipeline.ml.caption_tokens import prompt_conditions
from imagegen_pipeline.ml.diffusion import DiffusionConfig
from imagegen_pipeline.ml.metrics.concept_judge import fit_concept_judge
from imagegen_pipeline.ml.quality_gate import gate_failures
from imagegen_pipeline.ml.runtime import resolve_runtime
from imagegen_pipeline.ml.text_encoder import TextEncoder
from imagegen_pipeline.paths import DataPaths
from imagegen_pipeline.stages.composition_eval import (USER_PROMPT, ComposedReal, composition_html,
                                                       evaluate_composition, seen_probe_pairs)
from imagegen_pipeline_tests.test_emoji_compose import NPM_DIR

pytestmark = pytest.mark.skipif(not (NPM_DIR / "emoji-datasource-google-16.0.0.tgz").is_file(),
                                reason="npm tarballs not fetched (make test-data)")
CFG = DiffusionConfig(resolution=32, channels=3, conditioning="text", text_tokens=16)


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> ComposedReal:
    """Every subject x (accessory + none), 3 jittered copies, google style, as 32 px uint8 (N, 3, 32, 32)."""
    root = tmp_path_factory.mktemp("compose")
    out = import_composed(DataPaths(root), styles="google", source=NPM_DIR, copies=3, limit=0)
    with open(out / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["path"].startswith("composed/")]
    images = np.stack([np.asarray(Image.open(out / r["path"]).convert("RGB").resize((32, 32), Image.Resampling.BOX))
                       for r in rows]).transpose(0, 3, 1, 2)
    return ComposedReal(np.ascontiguousarray(images), [r["subject"] for r in rows], [r["accessory"] for r in rows])


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


class PairOracle(torch.nn.Module):
    """Reads which prompt it was given (nearest prompt condition) and draws a real picture of that pair, the copy
    picked by the noise; `blind` draws one fixed picture whatever the caption."""

    def __init__(self, real: ComposedReal, encoder: TextEncoder, *, blind: bool = False):
        super().__init__()
        prompts = [(USER_PROMPT, "cat", "top hat")] + held_out_prompts() + \
            [(f"a {s} with {'' if a.endswith('s') else 'a '}{a}", s, a) for s, a in seen_probe_pairs()]
        self.conds = torch.from_numpy(prompt_conditions(CFG, [p for p, _, _ in prompts], encoder=encoder)).flatten(1)
        self.pictures = [np.flatnonzero((np.array(real.subjects) == s) & (np.array(real.accessories) == a))
                         for _, s, a in prompts]
        self.images, self.blind = torch.from_numpy(real.images).float() / 127.5 - 1, blind
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # render() asks for a parameter's device

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        which = torch.cdist(cond.flatten(1).float(), self.conds).argmin(1)
        rows = [0 if self.blind else int(self.pictures[int(w)][int(abs(zi[0]) * 1000) % len(self.pictures[int(w)])])
                for w, zi in zip(which, z)]
        return self.images[rows]


def test_the_judge_names_subject_and_accessory_of_real_composed_pictures_far_above_chance(real):
    subjects, accessories = sorted(set(real.subjects)), sorted(set(real.accessories))
    judge = fit_concept_judge(real.images, np.array([subjects.index(s) for s in real.subjects]),
                              np.array([accessories.index(a) for a in real.accessories]),
                              subject_names=subjects, accessory_names=accessories, seed=0)
    ceiling = judge.ceiling(HELD_OUT_PAIRS)
    print({k: ceiling[k] for k in ("subject_accuracy", "accessory_accuracy", "both_right", "images")},
          "held-out", ceiling["heldout"], "chance", ceiling["chance"])
    assert ceiling["chance"]["both"] < 0.004  # 24 subjects x 13 accessories
    assert ceiling["subject_accuracy"] > 0.8 and ceiling["accessory_accuracy"] > 0.8
    assert ceiling["both_right"] > 0.6 and ceiling["heldout"]["both_right"] > 0.5


@pytest.mark.slow
def test_a_text_model_that_ignores_its_caption_fails_the_gate_and_one_that_composes_passes(real, encoder, tmp_path):
    runtime = resolve_runtime("cpu")
    records = {}
    for name, blind in (("oracle", False), ("blind", True)):
        records[name] = evaluate_composition(PairOracle(real, encoder, blind=blind), CFG, real, encoder=encoder,
                                             train_images=real.images, images_per_prompt=4, seed=0,
                                             runtime=runtime, out_dir=tmp_path / name)
    oracle, blind = records["oracle"]["summary"], records["blind"]["summary"]
    print({k: (oracle[k], blind[k]) for k in ("heldout_both_right", "heldout_both_right_real", "seen_both_right",
                                               "cat_with_hat_right")})
    composition = lambda s: [f for f in gate_failures(s, conditioning="text") if "held-out pairs" in f]  # noqa: E731
    assert blind["heldout_both_right"] < 0.05 and composition(blind)
    assert oracle["heldout_both_right"] > 0.5 and oracle["cat_with_hat_right"] >= 3 and not composition(oracle)
    # the report: a grid per pictured prompt (the user's and the held-out ones), candidates over nearest images
    first = records["oracle"]["prompts"][0]
    assert first["prompt"] == USER_PROMPT and len(first["candidates"]) == 4
    assert (tmp_path / "oracle" / first["file"]).is_file()
    assert all(c["nn_rmse"] < 2.0 for c in first["candidates"]), [c["nn_rmse"] for c in first["candidates"]]
    assert "a dog with a crown" in composition_html(records["oracle"])
