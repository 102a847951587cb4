"""The concept judge, on a synthetic composed set (6 subject faces x 5 accessories, "none" included, drawn with
numpy at 32x32 RGB): it names subject and accessory of real pictures it never fit on, a generator that ignores
its caption scores about chance, and the quality gate rejects a text model that cannot draw held-out pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imagegen_pipeline.ml.metrics import MetricContext, compute_metrics, list_metrics
from imagegen_pipeline.ml.metrics.concept_judge import ConceptSet, concept_scores, fit_concept_judge
from imagegen_pipeline.ml.quality_gate import gate_failures

SUBJECTS = ["red disc", "blue disc", "green square", "yellow square", "purple diamond", "cyan ring"]
ACCESSORIES = ["none", "top hat", "crown", "sunglasses", "necktie"]
HELDOUT = [("red disc", "crown"), ("green square", "sunglasses"), ("cyan ring", "top hat"),
           ("yellow square", "none"), ("purple diamond", "necktie"), ("blue disc", "top hat")]
FACE = {0: (220, 40, 40), 1: (40, 60, 220), 2: (40, 180, 60), 3: (230, 210, 40), 4: (150, 50, 200), 5: (40, 200, 210)}


def compose(subjects: np.ndarray, accessories: np.ndarray, seed: int) -> np.ndarray:
    """uint8 (N, 3, 32, 32): a coloured face (disc, square, diamond or ring) on a noisy light background, and its
    accessory, a block above (top hat: black and tall, crown: gold and flat), over the eyes (sunglasses: black) or
    below (necktie: red); the whole picture at a random offset of up to 3 px."""
    rng = np.random.default_rng(seed)
    n = len(subjects)
    out = rng.integers(215, 256, (n, 32, 32, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:32, :32]
    for k, (s, a) in enumerate(zip(subjects, accessories)):
        cy, cx = 17 + rng.integers(-3, 4), 16 + rng.integers(-3, 4)
        d, img = np.hypot(yy - cy, xx - cx), out[k]
        face = {0: d <= 7, 1: d <= 7, 2: (abs(yy - cy) <= 6) & (abs(xx - cx) <= 6), 3: (abs(yy - cy) <= 6) &
                (abs(xx - cx) <= 6), 4: abs(yy - cy) + abs(xx - cx) <= 8, 5: (d <= 7) & (d >= 4)}[int(s)]
        img[face] = np.clip(np.array(FACE[int(s)]) + rng.integers(-20, 21, 3), 0, 255)
        if a == 1:
            img[max(cy - 14, 0):cy - 7, cx - 4:cx + 5] = 20
        elif a == 2:
            img[cy - 10:cy - 7, cx - 6:cx + 7] = (240, 180, 0)
        elif a == 3:
            img[cy - 3:cy, cx - 7:cx + 8] = 10
        elif a == 4:
            img[cy + 8:min(cy + 15, 32), cx - 2:cx + 3] = (200, 0, 0)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def every_pair(per_pair: int) -> tuple[np.ndarray, np.ndarray]:
    """(subjects, accessories): each of the 30 pairs per_pair times."""
    pairs = np.repeat(np.arange(len(SUBJECTS) * len(ACCESSORIES)), per_pair)
    return pairs // len(ACCESSORIES), pairs % len(ACCESSORIES)


def heldout_rows(subjects: np.ndarray, accessories: np.ndarray) -> np.ndarray:
    codes = {SUBJECTS.index(s) * len(ACCESSORIES) + ACCESSORIES.index(a) for s, a in HELDOUT}
    return np.isin(subjects * len(ACCESSORIES) + accessories, sorted(codes))


@pytest.fixture(scope="module")
def real():
    s, a = every_pair(100)  # 3,000 real composed pictures
    return ConceptSet(compose(s, a, seed=1), s, a, SUBJECTS, ACCESSORIES)


@pytest.fixture(scope="module")
def judge(real):
    return fit_concept_judge(real.images, real.subjects, real.accessories, subject_names=SUBJECTS,
                             accessory_names=ACCESSORIES, seed=0)


def asked() -> tuple[np.ndarray, np.ndarray]:
    return every_pair(10)  # 300 captions, every pair asked for 10 times


def test_the_judge_names_subject_and_accessory_of_real_pictures_it_never_fit_on(judge):
    """Its ceiling (kept-back real pictures): both right far above chance (1/30), on seen and held-out pairs
    alike, and the record is strict JSON."""
    ceiling = judge.ceiling(HELDOUT)
    assert judge.chance() == {"subject": round(1 / 6, 4), "accessory": 0.2, "both": round(1 / 30, 4)}
    assert ceiling["images"] == 600 and ceiling["fit_images"] == 2400  # 20% of each pair's 100 kept back
    assert ceiling["both_right"] > 0.8, ceiling
    assert ceiling["heldout"]["images"] == 6 * 20 and ceiling["seen"]["images"] == 24 * 20
    assert ceiling["heldout"]["both_right"] > 0.8 and ceiling["seen"]["both_right"] > 0.8, ceiling
    assert json.loads(json.dumps(ceiling, allow_nan=False)) == ceiling


def test_fresh_drawings_of_the_asked_pair_score_near_the_ceiling(judge):
    """Generated pictures are not the real ones: new offsets and noise, the same concepts, still judged right."""
    s, a = asked()
    scores = concept_scores(judge, compose(s, a, seed=99), s, a)
    assert set(scores) == {"subject_accuracy", "accessory_accuracy", "both_right"}
    assert scores["both_right"] > 0.8 and scores["subject_accuracy"] > 0.9 and scores["accessory_accuracy"] > 0.85


@pytest.mark.parametrize("generator", ["one pair whatever the caption", "noise"])
def test_a_generator_that_ignores_its_caption_scores_near_chance(judge, generator):
    """Asked for every pair equally, a caption-blind generator gets about 1/30 both right."""
    s, a = asked()
    rng = np.random.default_rng(5)
    fake = (compose(np.full_like(s, 2), np.full_like(a, 3), seed=7) if generator != "noise"
            else rng.integers(0, 256, (len(s), 3, 32, 32)).astype(np.uint8))
    scores = concept_scores(judge, fake, s, a)
    assert scores["both_right"] <= 0.08, scores  # chance 0.033; the constant pair is right on its 10 asks
    assert scores["subject_accuracy"] <= 0.25 and scores["accessory_accuracy"] <= 0.3, scores


def test_predictions_are_deterministic_whatever_the_batch_and_fitting_is_reproducible(judge, real):
    """Eval mode, no augmentation at predict time: the same pictures give the same answer in any batching; the
    same seed fits the same judge and leaves the global random state alone."""
    images = real.images[::7]
    s1, a1 = judge.predict(images)
    s2, a2 = judge.predict(images, batch_size=13)
    assert (s1 == s2).all() and (a1 == a2).all() and s1.shape == a1.shape == (len(images),)
    ps, pa = judge.probabilities(images)
    assert ps.shape == (len(images), 6) and pa.shape == (len(images), 5)
    assert np.allclose(ps.sum(1), 1, atol=1e-5) and np.allclose(pa.sum(1), 1, atol=1e-5)
    state = np.random.get_state()
    small = dict(subject_names=SUBJECTS, accessory_names=ACCESSORIES, seed=3,
                 config=type(judge.config)(steps=30))
    one, two = (fit_concept_judge(real.images[::4], real.subjects[::4], real.accessories[::4], **small)
                for _ in range(2))
    assert all((one.kept_back[k] == two.kept_back[k]).all() for k in one.kept_back)
    assert all(np.array_equal(p.detach(), q.detach()) for p, q in zip(one.model.parameters(),
                                                                       two.model.parameters()))
    assert np.array_equal(np.random.get_state()[1], state[1])


def test_the_metric_is_opt_in_and_skipped_with_its_reason_without_composed_pictures():
    assert "concept_judge" not in list_metrics() and "concept_judge" in list_metrics(include_opt_in=True)
    out = compute_metrics(["concept_judge"], MetricContext())
    assert out["results"] == {} and "concept_real, concept_fake" in out["skipped"]["concept_judge"]


HEALTHY = {"diversity_ratio": 0.88, "recall": 0.6, "fid": 23.0, "real_floor_fid": 11.4, "ms_ssim_ratio": 1.06,
           "r_precision": 0.2, "r_precision_real": 0.26}  # a text model that passes every other check


def judged(judge, real, fake_images, s, a, **extra) -> dict:
    ctx = MetricContext(concept_real=real, concept_fake=ConceptSet(fake_images, s, a, SUBJECTS, ACCESSORIES),
                        concept_heldout_pairs=HELDOUT, extra={"concept_judge": judge, **extra})
    out = compute_metrics(["concept_judge"], ctx, skip_unavailable=False)
    return out["results"]


def test_a_text_model_that_cannot_draw_held_out_pairs_fails_the_gate_with_the_reason(judge, real):
    """The metric's own figures into the gate: a model that draws the seen partner of each asked subject (right
    face, wrong accessory on every held-out pair) is rejected for composition; one that draws what it is asked
    for passes; without held-out pairs named the gate judges the text model as before."""
    s, a = asked()
    held = heldout_rows(s, a)
    faithful = judged(judge, real, compose(s, a, seed=11), s, a)
    assert faithful["heldout_images"] == 60 and faithful["heldout_both_right_real"] > 0.8
    assert faithful["heldout_both_right"] > 0.8 and faithful["concept_both_right"] > 0.8
    assert faithful["concept_chance_both"] == round(1 / 30, 4) and faithful["concept_ceiling"]["heldout"]
    assert gate_failures({**HEALTHY, **faithful}, conditioning="text") == []

    seen_only = np.where(held, (a + 1) % len(ACCESSORIES), a)  # swaps each held-out pair for a seen one
    assert not heldout_rows(s, seen_only).any()
    copier = judged(judge, real, compose(s, seen_only, seed=11), s, a)
    assert copier["heldout_both_right"] <= 0.05 and copier["seen_both_right"] > 0.8
    [reason] = gate_failures({**HEALTHY, **copier}, conditioning="text")
    assert reason.startswith("held-out pairs are not drawn: both right on ")

    unnamed = MetricContext(concept_real=real, concept_fake=ConceptSet(compose(s, seen_only, seed=11), s, a,
                                                                       SUBJECTS, ACCESSORIES),
                            extra={"concept_judge": judge})
    plain = compute_metrics(["concept_judge"], unnamed, skip_unavailable=False)["results"]
    assert "heldout_both_right" not in plain and "concept_both_right" in plain
    assert gate_failures({**HEALTHY, **plain}, conditioning="text") == []


def test_the_right_kind_of_accessory_in_its_place_is_counted_apart_from_the_exact_one(judge, real):
    """A model that puts a hat on every asked-for head but the other hat (top hat <-> crown) has every held-out
    pair wrong by both-right and right by subject-and-kind; one that swaps a hat for a tie is wrong by both."""
    s, a = asked()
    groups = {"top hat": "head", "crown": "head", "sunglasses": "eyes", "necktie": "neck"}
    other_hat = np.select([a == 1, a == 2], [2, 1], a)  # top hat (1) <-> crown (2)
    swapped = judged(judge, real, compose(s, other_hat, seed=11), s, a, concept_accessory_groups=groups)
    hats = np.isin(a, [1, 2])
    assert swapped["concept_accessory_accuracy"] <= 1 - hats.mean() + 0.05
    assert swapped["heldout_subject_and_kind_right"] > 0.8 and swapped["seen_subject_and_kind_right"] > 0.8
    tie_for_hat = np.where(hats, 4, a)
    wrong = judged(judge, real, compose(s, tie_for_hat, seed=11), s, a, concept_accessory_groups=groups)
    held = heldout_rows(s, a)
    assert wrong["heldout_subject_and_kind_right"] <= 1 - hats[held].mean() + 0.1
    assert "heldout_subject_and_kind_right" not in judged(judge, real, compose(s, a, seed=11), s, a)


def test_training_pictures_are_moved_by_a_few_pixels_each_their_own_way():
    """The augmentation: a lone bright pixel lands within max_shift of where it was, not in the same place in
    every picture; max_shift 0 leaves pictures alone."""
    import torch

    from imagegen_pipeline.ml.metrics.concept_judge import shifted

    x = torch.zeros(64, 3, 32, 32)
    x[:, :, 16, 16] = 1.0
    moved = shifted(x, 2, torch.Generator().manual_seed(0))
    assert moved.shape == x.shape and torch.equal(shifted(x, 0, torch.Generator()), x)
    where = [tuple(int(v) for v in torch.nonzero(m[0])[0]) for m in moved]
    assert all(abs(r - 16) <= 2 and abs(c - 16) <= 2 for r, c in where) and len(set(where)) > 10
    assert all(torch.nonzero(m[0]).shape[0] == 1 and torch.equal(m[0], m[2]) for m in moved)
