"""Plain checks on the features stage; each returns (passed, details) like ingest/checks.py, so tests call them
directly and the Dagster asset checks stay one-liners."""

from __future__ import annotations

import numpy as np
import pandas as pd

from imagegen_pipeline.ml.embeddings_store import embedding_matrix


def accuracy_above_floor(summary: dict, floor: float) -> tuple[bool, dict]:
    """A fine-tuned extractor must reach `floor` validation accuracy; an unlabelled dataset passes with a note."""
    acc = summary.get("val_accuracy")
    if not summary.get("fine_tuned"):
        return True, {"note": f"not fine-tuned ({summary.get('reason')}); no accuracy to check", "floor": floor}
    passed = acc is not None and np.isfinite(acc) and acc >= floor
    details = {"val_accuracy": None if acc is None else float(acc), "floor": floor,
               "baseline_val_accuracy": summary.get("baseline_val_accuracy")}
    if not passed:  # what the UI and the CLI say, and the gate tag of the registered version
        measured = f"{acc:.3g}" if acc is not None and np.isfinite(acc) else "not measured"
        details["reason"] = (f"val accuracy {measured} < floor {floor:g}; train longer: finetune_epochs / "
                             "max_train_images")
    return bool(passed), details


def one_embedding_per_image(frame: pd.DataFrame, shard_hashes: list[str]) -> tuple[bool, dict]:
    """Exactly one row per accepted image (same sha256 multiset as the shards)."""
    got = frame["sha256"].tolist()
    want = set(shard_hashes)
    dup = len(got) - len(set(got))
    missing, extra = want - set(got), set(got) - want
    passed = not dup and not missing and not extra and len(got) == len(shard_hashes)
    return passed, {"embeddings": len(got), "shard_images": len(shard_hashes), "duplicate_rows": dup,
                    "missing": len(missing), "unexpected": len(extra)}


def embeddings_finite(frame: pd.DataFrame) -> tuple[bool, dict]:
    """No NaN or inf anywhere, and no all-zero vectors (a dead extractor)."""
    x = embedding_matrix(frame)
    bad = int((~np.isfinite(x)).any(axis=1).sum()) if x.size else 0
    zero = int((np.abs(x).sum(axis=1) == 0).sum()) if x.size else 0
    return bad == 0 and zero == 0 and len(frame) > 0, {"rows": len(frame), "rows_with_nan_or_inf": bad,
                                                       "all_zero_rows": zero}
