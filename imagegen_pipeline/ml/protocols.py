"""Named evaluation protocols: how many samples are judged against how many real images, and which metrics run.
FID falls as N grows, so a figure only compares with figures of the same protocol, and every report records
which one it used.

The quick protocol runs the metrics that decide (the quality gate's inputs and the promotion's FID and asked-for-
class accuracy) and those that cost only arithmetic on features every evaluation computes anyway (KID, per-class
FID, the in-domain IS, extractor-space diversity and nearest-training-image distance). The ones that run networks
of their own and that nothing downstream reads (CAS trains a classifier on samples, LPIPS runs AlexNet over
pairs and nearest neighbours) are in the `full` set, which the paper protocol runs and any evaluation may ask for
(`metric_set: full`, or by name). A report lists what its protocol left out under Skipped.
"""

from __future__ import annotations

# registry names whose results quality_gate.gate_failures and stages/evaluation.promotion_guards read
GATE_METRICS = ("fid", "real_floor", "precision_recall", "diversity_ratio", "ms_ssim_diversity",
                "conditional_accuracy")
# ... and the figures the report headlines that need no network beyond the Inception and the extractor
QUICK_METRICS = GATE_METRICS + ("kid", "per_class_fid", "is_domain", "diversity", "memorization")
FULL = "full"  # every default-registered metric (list_metrics())
METRIC_SETS: dict[str, tuple[str, ...] | None] = {"quick": QUICK_METRICS, FULL: None}

PROTOCOLS: dict[str, dict] = {
    "quick": {"num_samples": 1000, "num_real": 1000, "metrics": "quick"},  # the asset default: minutes on 2 CPU cores
    # published FIDs: 10k samples against the 10k official test images (MNIST/Fashion-MNIST keep them in val)
    "paper": {"num_samples": 10_000, "num_real": 10_000, "metrics": FULL},
}


def metric_set(name: str, every: list[str]) -> tuple[str, ...]:
    """The metrics of a named set (METRIC_SETS), out of `every` (list_metrics(): the default-registered ones)."""
    named = METRIC_SETS[name]
    return tuple(every) if named is None else tuple(m for m in named if m in every)


def protocol_metric_set(protocol: str) -> str:
    """The metric set a protocol runs unless told otherwise (an unknown name: the full set)."""
    return PROTOCOLS.get(protocol, {}).get("metrics", FULL)
