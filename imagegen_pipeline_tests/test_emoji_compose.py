"""Composed emoji: hats on heads, glasses over eyes, ties under chins, and held-out pairs that never reach train."""

from __future__ import annotations

import csv
import json
import logging
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageDraw

from imagegen_pipeline.datasets.composition_pairs import (ACCESSORIES, HELD_OUT_PAIRS, SUBJECTS, captions_for_pair,
                                                          held_out_prompts, is_held_out)
from imagegen_pipeline.datasets.emoji import caption_group, split_of_group
from imagegen_pipeline.datasets.emoji_captions import split_captions
from imagegen_pipeline.datasets.emoji_compose import compose, import_composed
from imagegen_pipeline.ml.shard_reader import ShardReader
from imagegen_pipeline.paths import REPO_ROOT
from imagegen_pipeline_tests.conftest import run_ingest
from imagegen_pipeline_tests.test_emoji_styles import google_tgz

NPM_DIR = REPO_ROOT / "data" / "downloads"
EYE_ROW = 0.42  # the synthetic face's eyes, as a share of its height from the top
SEEDS = [("random", i) for i in range(12)] + [("numpy", i) for i in range(4)]  # compose takes either generator
jittered = pytest.mark.parametrize("seed", SEEDS, ids=[f"{k}{i}" for k, i in SEEDS])


def rng_of(seed: tuple[str, int]):
    return random.Random(seed[1]) if seed[0] == "random" else np.random.default_rng(seed[1])


def disc_face() -> Image.Image:
    """A yellow disc (diameter 56 in a 64 px RGBA) with two dark eye dots at EYE_ROW of its height."""
    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.ellipse((4, 4, 59, 59), fill=(255, 220, 0, 255))
    ey = 4 + EYE_ROW * 56
    for ex in (4 + 0.33 * 56, 4 + 0.67 * 56):
        d.ellipse((ex - 3, ey - 3, ex + 3, ey + 3), fill=(20, 20, 20, 255))
    return im


def red_rect(w: int = 40, h: int = 20) -> Image.Image:
    """A solid red rectangle with a transparent margin, as an accessory emoji would be."""
    im = Image.new("RGBA", (w + 8, h + 8), (0, 0, 0, 0))
    im.paste(Image.new("RGBA", (w, h), (230, 0, 0, 255)), (4, 4))
    return im


def rows_cols(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))


def parts(image: Image.Image) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """(red mask, the face's (top, bottom, centre x) from its yellow pixels, dark-eye mask) of a composed picture.
    The disc's widest row is never covered, so its width is its diameter."""
    a = np.asarray(image).astype(int)
    red = (a[..., 0] > 150) & (a[..., 1] < 90) & (a[..., 2] < 90)
    yellow = (a[..., 0] > 150) & (a[..., 1] > 120) & (a[..., 2] < 90)
    dark = (a[..., :3] < 80).all(axis=-1)
    ys, xs = rows_cols(yellow)
    diameter = xs[-1] - xs[0] + 1
    return red, (ys, diameter, (xs[0] + xs[-1] + 1) / 2), dark


@jittered
def test_a_hat_sits_on_top_of_the_head_centred_overlapping_only_its_top_band(seed):
    image, placement = compose(disc_face(), red_rect(), "head", rng_of(seed))
    red, (ys, diameter, cx), _ = parts(image)
    face_bottom = ys[-1] + 1
    face_top = face_bottom - diameter
    red_ys, red_xs = rows_cols(red)
    assert red_ys[0] < face_top - 3  # the hat starts above the head
    assert face_top + 0.05 * diameter <= red_ys[-1] + 1 <= face_top + 0.25 * diameter  # overlaps its top band only
    assert abs((red_xs[0] + red_xs[-1] + 1) / 2 - cx) <= 1.5
    assert 0.6 <= diameter / 64 <= 0.8  # the face shrank to make room
    assert placement["kind"] == "head" and placement["accessory_box"][3] < placement["subject_box"][1] + 0.25 * diameter


@jittered
def test_glasses_cover_the_eyes(seed):
    image, placement = compose(disc_face(), red_rect(), "eyes", rng_of(seed))
    red, (ys, diameter, cx), dark = parts(image)
    face_top = ys[0]
    eye_row = round(face_top + EYE_ROW * diameter)
    red_ys, red_xs = rows_cols(red)
    assert red_ys[0] < eye_row - 2 and red_ys[-1] > eye_row + 2  # the glasses' rows span the eye rows
    assert dark.sum() == 0  # and no eye pixel shows
    assert red_xs[0] < cx - 0.3 * diameter and red_xs[-1] > cx + 0.3 * diameter  # both eyes
    assert 0.75 * diameter - 2 <= len(red_xs) <= 0.95 * diameter + 2
    assert placement["kind"] == "eyes"


def test_without_glasses_the_synthetic_eyes_show():
    """The eye check above can fail: the eyes are visible when nothing covers them."""
    image, _ = compose(disc_face(), None, "none", random.Random(0))
    assert parts(image)[2].sum() > 10


@jittered
def test_a_neck_item_sits_just_below_the_face(seed):
    image, _ = compose(disc_face(), red_rect(), "neck", rng_of(seed))
    red, (ys, diameter, cx), _ = parts(image)
    face_bottom = ys[0] + diameter
    red_ys, red_xs = rows_cols(red)
    assert face_bottom - 0.15 * diameter <= red_ys[0] < face_bottom  # its top overlaps the chin a little
    assert red_ys[-1] > face_bottom + 3
    assert abs((red_xs[0] + red_xs[-1] + 1) / 2 - cx) <= 1.5


def test_held_out_pairs_are_15_to_20_percent_and_leave_every_part_two_training_partners():
    pairs = [(s, a) for s in SUBJECTS for a in ACCESSORIES]
    held = set(HELD_OUT_PAIRS)
    assert len(held) == len(HELD_OUT_PAIRS) and held <= set(pairs)
    assert 0.15 <= len(held) / len(pairs) <= 0.20
    train = [p for p in pairs if p not in held]
    assert min(Counter(s for s, _ in train)[s] for s in SUBJECTS) >= 2
    assert min(Counter(a for _, a in train)[a] for a in ACCESSORIES) >= 2
    assert all(not is_held_out("cat", a) for a, acc in ACCESSORIES.items() if acc.kind == "head")
    assert len(SUBJECTS) >= 22 and len(ACCESSORIES) >= 11
    assert ("a dog with a crown", "dog", "crown") in held_out_prompts()


def test_every_head_accessory_is_a_hat_in_the_captions():
    assert captions_for_pair("cat", "top hat")[:3] == ["a cat with a top hat", "cat face wearing a top hat",
                                                       "a top hat on a cat"]
    assert all("a cat with a hat" in captions_for_pair("cat", a) for a, acc in ACCESSORIES.items()
               if acc.kind == "head")
    assert "a frog wearing sunglasses" in captions_for_pair("frog", "sunglasses")
    assert captions_for_pair("cat", "none") == ["a cat", "cat face"]


def labels(folder) -> dict[str, dict]:
    with open(folder / "labels.csv", newline="", encoding="utf-8") as fh:
        return {r["path"]: r for r in csv.DictReader(fh)}


@pytest.mark.skipif(not (NPM_DIR / "emoji-datasource-google-16.0.0.tgz").is_file(),
                    reason="npm tarballs not fetched (make test-data)")
def test_a_real_composed_import_keeps_held_out_pairs_out_of_the_train_shards(paths, instance, no_npm):
    out = import_composed(paths, styles="google", source=NPM_DIR, copies=1, limit=30)
    rows = labels(out)
    composed = {p: r for p, r in rows.items() if p.startswith("composed/")}
    assert len(composed) == len(SUBJECTS) * (len(ACCESSORIES) + 1) and len(rows) == len(composed) + 30
    cat_hat = rows["composed/google-cat-top-hat-0.png"]
    assert (cat_hat["caption"], cat_hat["label"], cat_hat["accessory_kind"], cat_hat["composed_from"]) == (
        "a cat with a top hat", "Animals & Nature", "head", "1F431+1F3A9")
    assert "a cat with a hat" in split_captions(cat_hat["captions"])
    assert json.loads(cat_hat["placement"])["kind"] == "head" and cat_hat["license"] == "Apache-2.0"
    assert Image.open(out / "composed/google-cat-top-hat-0.png").size == (64, 64)
    assert "Composed pictures" in (out / "LICENSE-images.md").read_text()

    assert run_ingest(instance, "emoji-compose").success
    reader = ShardReader(paths.shards("emoji-compose"))
    pair_of = lambda p: (composed[p]["subject"], composed[p]["accessory"])  # noqa: E731
    train, val = ({pair_of(p) for p in reader.read_column(s, "path") if p in composed} for s in ("train", "val"))
    assert not train & set(HELD_OUT_PAIRS)
    assert set(HELD_OUT_PAIRS) <= val
    assert ("cat", "top hat") in train
    # a face alone keeps its plain emoji's split (its captions hold the emoji's name): "mouse face" is val
    alone = {r["subject"]: r["source_split"] for r in composed.values() if r["accessory"] == "none"}
    assert alone == {s: split_of_group(caption_group(SUBJECTS[s].name)) for s in SUBJECTS} and "val" in alone.values()
    assert "a cat with a top hat" in reader.read_column("train", "caption")
    # the review page asks people about the pictures the concept judge scores: the user's prompt, then held-out pairs
    from imagegen_pipeline.review.pairs import composite_questions

    assert composite_questions(reader) == ["a cat with a hat", *(p for p, _, _ in held_out_prompts())]
    calls = no_npm.read_text().splitlines() if no_npm.exists() else []
    assert all("emojibase-data" in c for c in calls), calls  # the images came from the tarballs, offline


def test_subjects_and_accessories_a_style_lacks_are_skipped_with_a_warning(paths, tmp_path, no_npm, caplog):
    """A package with one face (grinning face = "smiley") and no accessory: the face alone lands, no crash."""
    with caplog.at_level(logging.WARNING):
        out = import_composed(paths, styles="google", source=google_tgz(tmp_path / "npm").parent, copies=2)
    composed = {p: r for p, r in labels(out).items() if p.startswith("composed/")}
    assert set(composed) == {"composed/google-smiley-none-0.png", "composed/google-smiley-none-1.png"}
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "'top hat' (1F3A9) is not in the package" in warned and "'cat' (1F431)" in warned
