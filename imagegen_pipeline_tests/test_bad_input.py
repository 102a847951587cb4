"""Bad files become manifest rows with a reason; the rest of the dataset still reaches the shards."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from imagegen_pipeline.definitions import defs
from imagegen_pipeline.ingest.manifest import EmptyDataset, build_manifest, read_manifest
from imagegen_pipeline.ingest.validate import ValidationConfig, load_normalized
from imagegen_pipeline.ml.shard_reader import ShardReader
from imagegen_pipeline_tests.conftest import image_bytes, materialization_metadata, noise_png, run_ingest, write

SHARDS_ONLY = {"ops": {"image_shards": {"config": {"workers": 1}}}}


def png_declaring(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header claims a huge image (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def exif_rotated_jpeg() -> bytes:
    """A 40x20 (landscape) JPEG whose EXIF says 'rotate 90 degrees': upright it is 20x40."""
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


def sixteen_bit_png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16), value, dtype=np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def palette_png_with_transparency() -> bytes:
    im = Image.new("P", (16, 16), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (0, 0, 8, 16))  # left half red, right half index 0 = transparent
    buf = io.BytesIO()
    im.save(buf, format="PNG", transparency=0)
    return buf.getvalue()


@pytest.fixture
def bad_dataset(paths, tmp_path) -> Path:
    root = paths.raw("messy")
    good = noise_png(1)
    write(root / "cats" / "good.png", good)
    write(root / "cats" / "second copy.png", good)  # duplicate under another name
    write(root / "cats" / "ñandú 猫 photo.png", noise_png(2))  # spaces and non-ASCII
    write(root / "cats" / "truncated.png", noise_png(3, size=(64, 64))[:300])
    write(root / "dogs" / "truncated.jpg", image_bytes("JPEG", size=(64, 64))[:400])
    write(root / "dogs" / "empty.png", b"")
    write(root / "dogs" / "notes.jpg", b"this is a text file, not a JPEG\n" * 4)
    write(root / "dogs" / "bomb.png", png_declaring(100_000, 100_000))
    write(root / "dogs" / "big.png", png_declaring(8_000, 8_000))  # 64 Mpx: over our 40 Mpx limit
    write(root / "dogs" / "sixteen.png", sixteen_bit_png(51400))  # 51400 / 257 = 200
    write(root / "dogs" / "cmyk.jpg", image_bytes("JPEG", mode="CMYK", color=(0, 255, 255, 0)))
    write(root / "dogs" / "palette.png", palette_png_with_transparency())
    write(root / "dogs" / "rotated.jpg", exif_rotated_jpeg())
    write(root / "dogs" / "readme.txt", b"hello")
    outside = write(tmp_path / "outside" / "secret.png", noise_png(4))
    os.symlink(outside, root / "dogs" / "escape.png")
    return root


def test_each_bad_file_gets_a_reason_and_good_files_pass(bad_dataset):
    df, stats = build_manifest(bad_dataset, workers=1)
    by = df.set_index("path")
    reason = lambda p: by.loc[p, "reason"]  # noqa: E731
    assert by.loc["cats/good.png", "status"] == "ok"
    assert by.loc["cats/second copy.png", "status"] == "duplicate"
    assert "same content as cats/good.png" in reason("cats/second copy.png")
    assert by.loc["cats/ñandú 猫 photo.png", "status"] == "ok"
    assert "truncated" in reason("cats/truncated.png")
    assert "truncated" in reason("dogs/truncated.jpg")
    assert reason("dogs/empty.png") == "empty file (0 bytes)"
    assert "not a recognisable image" in reason("dogs/notes.jpg")
    assert "decompression bomb" in reason("dogs/bomb.png")
    assert "over the 40,000,000 limit" in reason("dogs/big.png")
    assert "unsupported file type '.txt'" in reason("dogs/readme.txt")
    assert "symlink points outside" in reason("dogs/escape.png")
    for ok in ("dogs/sixteen.png", "dogs/cmyk.jpg", "dogs/palette.png", "dogs/rotated.jpg"):
        assert by.loc[ok, "status"] == "ok", (ok, reason(ok))
    assert (by.loc["dogs/rotated.jpg", "width"], by.loc["dogs/rotated.jpg", "height"]) == (20, 40)
    assert by.loc["dogs/sixteen.png", "mode"].startswith("I")
    assert stats.counts == {"ok": 6, "duplicate": 1, "quarantined": 8}
    assert df.loc[df["status"] == "quarantined", "reason"].str.len().gt(0).all()


def test_bad_files_are_never_modified_moved_or_deleted(bad_dataset):
    before = {p: p.lstat().st_mtime_ns for p in bad_dataset.rglob("*")}
    build_manifest(bad_dataset, workers=1)
    after = {p: p.lstat().st_mtime_ns for p in bad_dataset.rglob("*")}
    assert before == after


def test_messy_dataset_ingests_through_dagster_with_converted_pixels(bad_dataset, paths, instance):
    result = run_ingest(instance, "messy", {"ops": {"raw_images": {"config": {"workers": 1}},
                                                    "image_shards": {"config": {"workers": 1, "resolution": 16,
                                                                                "channels": "RGB",
                                                                                "val_fraction": 0.0}}}})
    assert result.success
    assert all(c.passed for c in result.get_asset_check_evaluations())
    reader = ShardReader(paths.shards("messy"))
    images, _ = reader.load_split("train")
    assert images.shape == (6, 3, 16, 16)
    paths_in_shards = reader.read_column("train", "path")
    px = {p: images[i] for i, p in enumerate(paths_in_shards)}
    assert int(px["dogs/sixteen.png"].float().mean()) == 200  # 16-bit scaled by 1/257, not clipped to 255
    pal = px["dogs/palette.png"]
    assert pal[:, :, 12].tolist() == [[255] * 16] * 3  # transparent half composited on white
    assert pal[0, :, 2].tolist() == [255] * 16 and pal[1, :, 2].tolist() == [0] * 16  # opaque half stays red
    assert px["dogs/cmyk.jpg"].float().mean() > 0  # converted to RGB, not dropped
    manifest = read_manifest(paths.manifest("messy"))
    assert len(manifest) == 15


def test_empty_dataset_folder_is_a_clear_error_and_writes_no_shards(paths, instance):
    paths.raw("hollow").mkdir(parents=True)
    with pytest.raises(EmptyDataset, match="no files to ingest"):
        build_manifest(paths.raw("hollow"))
    result = run_ingest(instance, "hollow")
    assert not result.success
    failure = result.failure_data_for_node("raw_images")
    assert "no files to ingest" in str(failure.error.cause or failure.error)
    assert not paths.shards("hollow").exists()


def test_all_files_refused_means_no_shards(paths, instance):
    write(paths.raw("junk") / "a.png", b"")
    write(paths.raw("junk") / "b.jpg", b"not an image")
    result = run_ingest(instance, "junk")
    assert not result.success
    assert "every file was quarantined" in str(result.failure_data_for_node("image_shards").error)
    assert not list(paths.data.glob("shards/junk/*.parquet"))
    assert read_manifest(paths.manifest("junk"))["status"].tolist() == ["quarantined", "quarantined"]


def test_validation_limits_are_configurable(paths):
    write(paths.raw("tiny") / "four.png", image_bytes(size=(4, 4)))
    write(paths.raw("tiny") / "twelve.png", image_bytes(size=(12, 12)))
    df, _ = build_manifest(paths.raw("tiny"), cfg=ValidationConfig(min_side=8), workers=1)
    assert df.set_index("path").loc["four.png", "reason"] == "image is 4x4, smaller than 8 pixels on a side"
    df, _ = build_manifest(paths.raw("tiny"), cfg=ValidationConfig(max_pixels=100), workers=1)
    assert "over the 100 limit" in df.set_index("path").loc["twelve.png", "reason"]


def test_a_file_edited_between_validation_and_sharding_is_refused_not_sharded(tmp_path):
    """Issue 13.8: image_shards decoded the file again without re-hashing, so an edit after raw_images put
    unvalidated pixels into the shards. The bytes it decodes are now the bytes it hashes."""
    from imagegen_pipeline.ingest.shards import ShardConfig, write_shards
    from imagegen_pipeline.ingest.validate import ChangedSinceValidation

    root = tmp_path / "landing"
    for i in range(6):
        write(root / "a" / f"{i}.png", noise_png(i, mode="L"))
    manifest, _ = build_manifest(root)
    write(root / "a" / "3.png", noise_png(99, mode="L"))  # same size, other pixels
    with pytest.raises(ChangedSinceValidation, match="'a/3.png' changed after raw_images validated it"):
        write_shards(root, manifest[manifest["status"] == "ok"], tmp_path / "shards",
                     ShardConfig(resolution=16, channels="L", workers=1))


def test_a_symlink_repointed_after_validation_is_refused_not_followed_outside(tmp_path):
    """Issue 14.9: sharding read a symlink again without the checks validation made, so a link re-pointed at a
    file outside the landing folder (same bytes, so the hash matched) was read. Every read of a landing file now
    goes through one checked descriptor; FIFOs behind links are refused without blocking."""
    from imagegen_pipeline.ingest.shards import ShardConfig, write_shards
    from imagegen_pipeline.ingest.validate import ChangedSinceValidation

    root = tmp_path / "landing"
    for i in range(4):
        write(root / "a" / f"{i}.png", noise_png(i, mode="L"))
    inside = write(root / "originals" / "x.txt", noise_png(7, mode="L"))  # not an image name: only reached by link
    os.symlink(inside, root / "a" / "link.png")
    os.mkfifo(root / "originals" / "pipe")
    os.symlink(root / "originals" / "pipe", root / "a" / "pipe.png")
    manifest, _ = build_manifest(root, workers=1)
    by = manifest.set_index("path")
    assert by.loc["a/link.png", "status"] == "ok"  # a link within the landing folder is fine
    assert by.loc["a/pipe.png", "status"] == "quarantined"
    outside = write(tmp_path / "elsewhere" / "secret.png", inside.read_bytes())
    os.unlink(root / "a" / "link.png")
    os.symlink(outside, root / "a" / "link.png")
    with pytest.raises(ChangedSinceValidation, match="'a/link.png' became unreadable .*outside the landing folder"):
        write_shards(root, manifest[manifest["status"] == "ok"], tmp_path / "shards",
                     ShardConfig(resolution=16, channels="L", workers=1))


def test_rows_are_judged_again_when_the_validation_limits_change(tmp_path):
    """Issue 13.8: rows were reused on size and mtime alone, so raising min_side kept accepting small images."""
    root = tmp_path / "landing"
    for i in range(4):
        write(root / "a" / f"{i}.png", noise_png(i, size=(16, 16), mode="L"))
    first, _ = build_manifest(root, cfg=ValidationConfig(min_side=8))
    assert (first["status"] == "ok").all()
    second, stats = build_manifest(root, previous=first, cfg=ValidationConfig(min_side=20))
    assert stats.decoded == 4 and (second["status"] == "quarantined").all()
    assert second["reason"].str.contains("smaller than 20 pixels").all()
    third, stats = build_manifest(root, previous=second, cfg=ValidationConfig(min_side=20))
    assert stats.reused == 4  # same limits, unchanged files: not decoded again


def _shard_pixels(out: Path) -> dict[str, bytes]:
    import pyarrow.parquet as pq

    return {p: px for f in sorted(out.glob("*.parquet"))
            for p, px in zip(*pq.read_table(f, columns=["path", "pixels"]).to_pydict().values(), strict=True)}


@pytest.mark.parametrize("channels", ["RGB", "L"])
def test_pixels_kept_from_validation_equal_a_second_decode(bad_dataset, tmp_path, channels):
    """Issue 13.8, decode once: raw_images' one decode keeps the normalised pixels; the shards made from them
    are byte for byte the shards a second decode of every file makes (16-bit, palette, CMYK, EXIF-rotated JPEG,
    greyscale kept as L and widened to RGB)."""
    from imagegen_pipeline.ingest.pixel_store import PIXELS_FILE
    from imagegen_pipeline.ingest.shards import ShardConfig, write_shards
    from imagegen_pipeline.ingest.validate import PixelSpec

    store = tmp_path / PIXELS_FILE
    manifest, stats = build_manifest(bad_dataset, workers=1, pixels=PixelSpec(24, channels), store=store)
    assert stats.stored == 7  # the valid files, duplicate included
    ok = manifest[manifest["status"] == "ok"]
    cfg = ShardConfig(resolution=24, channels=channels, workers=1, val_fraction=0.0)
    kept = write_shards(bad_dataset, ok, tmp_path / "kept", cfg, pixels=store)
    again = write_shards(bad_dataset, ok, tmp_path / "again", cfg)
    assert kept["pixels_from"] == "raw_images validation pass"
    assert again["pixels_from"] == "decoded again from the landing files"
    assert kept["content_key"] == again["content_key"]
    assert _shard_pixels(tmp_path / "kept") == _shard_pixels(tmp_path / "again")
    assert len(_shard_pixels(tmp_path / "kept")) == 6


def test_image_shards_does_not_read_the_landing_files_again(paths, instance):
    """Issue 13.8: image_shards decoded every file a second time. With the validation pass's pixels it shards
    even after the landing files are gone, and the pixels are the validated ones."""
    root = paths.raw("once")
    originals = {f"a/{i}.png": noise_png(i, size=(20, 20), mode="L") for i in range(5)}
    for rel, data in originals.items():
        write(root / rel, data)
    assert run_ingest(instance, "once", {"ops": {"raw_images": {"config": {"workers": 1}}}}).success
    for rel in originals:
        (root / rel).unlink()
    result = defs.resolve_job_def("ingest_job").execute_in_process(
        partition_key="once", instance=instance, run_config=SHARDS_ONLY, asset_selection=[dg.AssetKey("image_shards")])
    assert result.success
    meta = materialization_metadata(result, "image_shards")
    assert meta["pixels_from"] == "raw_images validation pass"
    got = _shard_pixels(paths.shards("once"))
    assert got == {rel: load_normalized(data, resolution=64, channels="L").tobytes()
                   for rel, data in originals.items()}


def test_a_new_file_is_the_only_one_decoded_and_the_store_still_covers_all(tmp_path):
    from imagegen_pipeline.ingest.pixel_store import PIXELS_FILE, covers
    from imagegen_pipeline.ingest.validate import PixelSpec

    root, store, spec = tmp_path / "landing", tmp_path / PIXELS_FILE, PixelSpec(16, "L")
    for i in range(4):
        write(root / "a" / f"{i}.png", noise_png(i, mode="L"))
    first, _ = build_manifest(root, pixels=spec, store=store, workers=1)
    write(root / "a" / "1b.png", noise_png(10, mode="L"))  # sorts between kept rows: the merge keeps path order
    second, stats = build_manifest(root, previous=first, pixels=spec, store=store, workers=1)
    assert (stats.decoded, stats.reused, stats.stored) == (1, 4, 5)
    assert covers(store, second[second["status"] == "ok"], 16, "L")
    assert not covers(store, second[second["status"] == "ok"], 32, "L")  # another size: decode again
    third, stats = build_manifest(root, previous=second, pixels=PixelSpec(32, "L"), store=store, workers=1)
    assert (stats.decoded, stats.stored) == (5, 5)  # a store of another size is not reused
