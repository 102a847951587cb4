"""Emoji styles from npm packages: licence checks, broken files quarantined, offline first, several captions.

Tiny tarballs built here with the real layouts (emoji-datasource: img/<style>/64/*.png + emoji.json; lobehub:
assets/<codepoints>.svg|.webp, licence only in package.json; emojibase-data: en/data.json, LICENSE).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from imagegen_pipeline.cli import main
from imagegen_pipeline.datasets import import_dataset
from imagegen_pipeline.datasets.emoji_captions import split_captions
from imagegen_pipeline.datasets.landing import IMPORT_ERROR
from imagegen_pipeline.datasets.npm_packages import LicenseRefused
from imagegen_pipeline.ingest.manifest import build_manifest, read_manifest
from imagegen_pipeline_tests.conftest import run_ingest

MIT = "MIT License\n\nCopyright (c) 2024 Someone\n\nPermission is hereby granted, free of charge, to any person ...\n"
CC_BY_SA = "Attribution-ShareAlike 4.0 International\n\nCreative Commons Corporation ...\n"
SVG = (b'<svg width="32" height="32" viewBox="0 0 32 32" fill="none" xmlns="http://www.w3.org/2000/svg">'
       b'<circle cx="16" cy="16" r="14" fill="#FFB02E"/></svg>')
BROKEN_SVG = b'<svg width="32" height="32" xmlns="http://www.w3.org/2000/svg"><circle cx="16" cy='
OUTSIDE_SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><image href="/etc/hostname" width="9" height="9"/></svg>'
BROKEN_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"garbage" * 10
EMOJI_JSON = [  # emoji-datasource emoji.json, trimmed to the fields the importer reads
    {"name": "GRINNING FACE", "unified": "1F600", "image": "1f600.png", "short_names": ["grinning"],
     "category": "Smileys & Emotion", "subcategory": "face-smiling", "has_img_google": True},
    {"name": "THUMBS UP SIGN", "unified": "1F44D", "image": "1f44d.png", "short_names": ["+1", "thumbsup"],
     "category": "People & Body", "subcategory": "hand-fingers-closed", "has_img_google": True,
     "skin_variations": {"1F3FB": {"unified": "1F44D-1F3FB", "image": "1f44d-1f3fb.png", "has_img_google": True}}},
    {"name": "COPYRIGHT SIGN", "unified": "00A9-FE0F", "image": "00a9-fe0f.png", "short_names": ["copyright"],
     "category": "Symbols", "subcategory": "other-symbol", "has_img_google": True},
]
EMOJIBASE = [  # emojibase-data en/data.json: hexcodes without FE0F where CLDR has none
    {"label": "grinning face", "hexcode": "1F600", "tags": ["face", "grin"]},
    {"label": "thumbs up", "hexcode": "1F44D", "tags": ["+1", "hand", "thumb", "up"],
     "skins": [{"label": "thumbs up: light skin tone", "hexcode": "1F44D-1F3FB"}]},
    {"label": "copyright", "hexcode": "00A9", "tags": ["c"]},
]


def png(color=(200, 30, 30, 255)) -> bytes:
    """A 64 px emoji-like PNG: a square on a transparent background."""
    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    im.paste(Image.new("RGBA", (32, 32), color), (16, 16))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def tarball(path: Path, files: dict[str, bytes | str]) -> Path:
    """An npm tarball: every file under `package/`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            data = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def package_json(name: str, version: str, license: str | None = "MIT") -> str:
    return json.dumps({"name": name, "version": version, **({"license": license} if license else {})})


def google_tgz(src: Path, images: dict[str, bytes] | None = None) -> Path:
    images = images if images is not None else {e["image"]: png() for e in EMOJI_JSON} | {"1f44d-1f3fb.png": png()}
    return tarball(src / "emoji-datasource-google-16.0.0.tgz", {
        "package.json": package_json("emoji-datasource-google", "16.0.0"), "LICENSE": MIT,
        "emoji.json": json.dumps(EMOJI_JSON), **{f"img/google/64/{k}": v for k, v in images.items()}})


def flat_tgz(src: Path, assets: dict[str, bytes] | None = None, *, license: str | None = "MIT",
             license_file: str | None = None) -> Path:
    assets = assets if assets is not None else {"1f600.svg": SVG, "1f44d.svg": SVG, "1f44d-1f3fb.svg": SVG,
                                                "00a9-fe0f.svg": SVG}
    files = {"package.json": package_json("@lobehub/fluent-emoji-flat", "1.1.0", license), "README.md": "# flat"}
    if license_file is not None:
        files["LICENSE"] = license_file
    return tarball(src / "lobehub-fluent-emoji-flat-1.1.0.tgz", files | {f"assets/{k}": v for k, v in assets.items()})


def emojibase_tgz(src: Path) -> Path:
    return tarball(src / "emojibase-data-17.0.0.tgz", {
        "package.json": package_json("emojibase-data", "17.0.0"), "LICENSE": MIT,
        "en/data.json": json.dumps(EMOJIBASE)})


def labels(folder: Path) -> dict[str, dict]:
    with open(folder / "labels.csv", newline="", encoding="utf-8") as fh:
        return {r["path"]: r for r in csv.DictReader(fh)}


@pytest.mark.parametrize("license, license_file, found", [
    (None, None, 'no licence file (LICENSE, LICENSE.md) and no package.json "license" field'),
    ("CC-BY-SA-4.0", None, "package.json license 'CC-BY-SA-4.0'"),
    ("MIT", CC_BY_SA, "LICENSE naming CC-BY-SA-4.0"),
])
def test_a_package_without_the_expected_licence_is_refused_naming_package_expected_and_found(
        paths, tmp_path, no_npm, license, license_file, found):
    src = tmp_path / "npm"
    google_tgz(src), emojibase_tgz(src)
    flat_tgz(src, license=license, license_file=license_file)
    with pytest.raises(LicenseRefused) as err:
        import_dataset("emoji", paths, source=src, styles="fluent-flat")
    msg = str(err.value)
    assert "refusing @lobehub/fluent-emoji-flat@1.1.0" in msg and "expected the MIT licence" in msg
    assert found in msg, msg
    assert not paths.raw("emoji").exists()  # nothing landed


def test_the_cli_reports_a_refused_licence_as_an_error_and_imports_nothing(paths, tmp_path, no_npm, capsys):
    src = tmp_path / "npm"
    google_tgz(src), emojibase_tgz(src), flat_tgz(src, license="GPL-3.0")
    rc = main(["--home", str(paths.home), "datasets", "import", "emoji", "--styles", "google,fluent-flat",
               "--source", str(src)])
    err = capsys.readouterr().err
    assert rc == 2 and "error: refusing @lobehub/fluent-emoji-flat@1.1.0" in err and "GPL-3.0" in err
    assert not paths.raw("emoji").exists()


def test_broken_svg_and_png_are_quarantined_with_their_reason_while_the_good_ones_import(
        paths, tmp_path, no_npm, instance):
    src = tmp_path / "npm"
    emojibase_tgz(src)
    google_tgz(src, {"1f600.png": png(), "1f44d.png": png(), "1f44d-1f3fb.png": png(), "00a9-fe0f.png": BROKEN_PNG})
    flat_tgz(src, {"1f600.svg": SVG, "1f44d.svg": BROKEN_SVG, "1f44d-1f3fb.svg": OUTSIDE_SVG, "00a9-fe0f.svg": SVG})
    out = import_dataset("emoji", paths, source=src, styles="google,fluent-flat")
    rows = labels(out)
    refused = {p: r[IMPORT_ERROR] for p, r in rows.items() if r.get(IMPORT_ERROR)}
    assert set(refused) == {"symbols/google-00a9-fe0f.png", "people-body/fluent-flat-1f44d.svg",
                            "people-body/fluent-flat-1f44d-1f3fb.svg"}
    assert "SVG refers to something outside itself" in refused["people-body/fluent-flat-1f44d-1f3fb.svg"]
    good = Image.open(out / "smileys-emotion/fluent-flat-1f600.png")
    assert (good.mode, good.size, good.getpixel((0, 0)), good.getpixel((32, 32))) == (
        "RGB", (64, 64), (255, 255, 255), (255, 176, 46))  # rendered SVG, corner composited on white

    assert run_ingest(instance, "emoji").success
    manifest = read_manifest(paths.manifest("emoji")).set_index("path")
    quarantined = manifest[manifest["status"] == "quarantined"]
    assert set(quarantined.index) == set(refused)
    svg_reason = quarantined.loc["people-body/fluent-flat-1f44d.svg", "reason"]
    png_reason = quarantined.loc["symbols/google-00a9-fe0f.png", "reason"]
    assert svg_reason.startswith("refused by the importer: @lobehub/fluent-emoji-flat@1.1.0 assets/1f44d.svg")
    assert "SVG does not render" in svg_reason
    assert "emoji-datasource-google@16.0.0 img/google/64/00a9-fe0f.png" in png_reason
    assert "does not decode as an image" in png_reason
    ok = manifest[manifest["status"] != "quarantined"]  # (identical test images are `duplicate`)
    assert len(ok) == 5  # google: 3 of 4, fluent-flat: 2 of 3
    attrs = json.loads(ok.loc["smileys-emotion/fluent-flat-1f600.png", "attributes"])  # new columns travel along
    assert attrs["source_package"] == "@lobehub/fluent-emoji-flat@1.1.0" and attrs["license"] == "MIT"
    assert split_captions(attrs["captions"])[:2] == ["grinning face", "grinning"]
    assert "Apache" in (out / "LICENSE-images.md").read_text()
    assert not no_npm.exists()


def as_node_modules(tgz: Path, name: str) -> None:
    """Unpack an npm tarball as `npm install` would (node_modules/<name>/, no `package/`), then drop it."""
    dest = tgz.parent / "node_modules" / name
    with tarfile.open(tgz) as tar:
        for m in tar.getmembers():
            target = dest / m.name.split("/", 1)[1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(m).read())
    tgz.unlink()


@pytest.mark.parametrize("layout", ["tarballs", "node_modules"])
def test_nothing_is_downloaded_when_the_packages_are_there_offline(paths, tmp_path, no_npm, layout):
    src = tmp_path / "npm"
    google, flat, base = google_tgz(src), flat_tgz(src), emojibase_tgz(src)
    if layout == "node_modules":
        for tgz, name in ((google, "emoji-datasource-google"), (flat, "@lobehub/fluent-emoji-flat"),
                          (base, "emojibase-data")):
            as_node_modules(tgz, name)
    out = import_dataset("emoji", paths, source=src, styles=["fluent-flat"])
    assert not no_npm.exists(), no_npm.read_text()
    rows = labels(out)
    assert {r["style"] for r in rows.values()} == {"fluent-flat"} and len(rows) == 4
    assert not any(paths.downloads.glob("*.tgz"))


def test_an_image_gets_several_captions_with_cldr_tags_and_the_name_stays_caption(paths, tmp_path, no_npm):
    src = tmp_path / "npm"
    google_tgz(src), emojibase_tgz(src)
    rows = labels(import_dataset("emoji", paths, source=src, styles="google"))
    grin = rows["smileys-emotion/google-1f600.png"]
    assert grin["caption"] == "grinning face"  # unchanged: splits and R-precision are defined on it
    assert split_captions(grin["captions"]) == ["grinning face", "grinning", "face", "grin"]
    tone = split_captions(rows["people-body/google-1f44d-1f3fb.png"]["captions"])
    assert tone[:4] == ["thumbs up sign, light skin tone", "+1, light skin tone", "thumbsup, light skin tone",
                        "thumbs up, light skin tone"]  # name, short names, CLDR label: with the tone
    assert {"hand", "thumb"} <= set(tone)  # the base emoji's CLDR tags
    copyright_ = split_captions(rows["symbols/google-00a9-fe0f.png"]["captions"])  # "00A9" in emojibase
    assert "c" in copyright_ and copyright_[0] == "copyright sign"
    assert not no_npm.exists()


def test_without_emojibase_and_npm_captions_are_name_and_short_names_and_it_says_so_once(
        paths, tmp_path, no_npm, caplog):
    src = tmp_path / "npm"
    google_tgz(src)
    with caplog.at_level(logging.WARNING):
        rows = labels(import_dataset("emoji", paths, source=src, styles="google"))
    assert split_captions(rows["smileys-emotion/google-1f600.png"]["captions"]) == ["grinning face", "grinning"]
    warned = [r.getMessage() for r in caplog.records if "CLDR" in r.getMessage()]
    assert len(warned) == 1 and "emojibase-data@17.0.0 not found" in warned[0], warned
    assert "pack emojibase-data@17.0.0" in no_npm.read_text()  # the one package absent was asked for, once
    assert len(no_npm.read_text().splitlines()) == 1


def test_unknown_and_left_out_styles_are_refused_with_the_reason(paths):
    with pytest.raises(ValueError, match="choose from google, twitter, fluent-flat, fluent-3d"):
        import_dataset("emoji", paths, styles="google,comic")
    with pytest.raises(ValueError, match="blob.*not available.*@svgmoji/blob@2.0.0"):
        import_dataset("emoji", paths, styles="blob")
    with pytest.raises(ValueError, match="CC BY-SA"):
        import_dataset("emoji", paths, styles="openmoji")


def test_the_manifest_quarantines_what_the_importer_refused_and_never_reuses_that_verdict(tmp_path):
    """An import_error row is quarantined whatever its bytes decode to; when labels.csv drops the mark, the next
    scan decodes the file again instead of keeping the importer's verdict (same size and mtime)."""
    root = tmp_path / "raw"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(png())
    (root / "a" / "y.png").write_bytes(png((0, 0, 255, 255)))
    (root / "labels.csv").write_text(f"path,caption,{IMPORT_ERROR}\na/x.png,x,renders wrong\na/y.png,y,\n")
    first, _ = build_manifest(root)
    first = first.set_index("path")
    assert first.loc["a/x.png", "status"] == "quarantined" and first.loc["a/y.png", "status"] == "ok"
    assert first.loc["a/x.png", "reason"] == "refused by the importer: renders wrong"
    (root / "labels.csv").write_text("path,caption\na/x.png,x\na/y.png,y\n")
    second, stats = build_manifest(root, previous=first.reset_index())
    assert second.set_index("path").loc["a/x.png", "status"] == "ok" and stats.decoded == 1 and stats.reused == 1
