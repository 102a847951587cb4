"""GAN evaluation metrics: a registry of functions MetricContext -> dict, one module per metric.

    from imagegen_pipeline.ml.metrics import MetricContext, compute_metrics, list_metrics, append_jsonl
    out = compute_metrics(["fid", "kid", "precision_recall"], MetricContext(real_features=..., fake_features=...))
    append_jsonl(run_dir / "metrics.jsonl", {"step": step, **out})

A new metric is a new module with an `@register_metric` function, imported below.
"""

from imagegen_pipeline.ml.metrics.registry import (MetricContext, MetricUnavailable, append_jsonl, compute_metrics,
                                                   list_metrics, read_jsonl, register_metric)
from imagegen_pipeline.ml.metrics import (  # noqa: F401  (importing registers the metrics)
    augmentation, cas, concept_judge, conditional_accuracy, diversity, fid, is_domain, kid, lpips_diversity,
    lpips_memorization, memorization, ms_ssim, per_class_fid, precision_recall, projection_gap, real_floor)
from imagegen_pipeline.ml.metrics.fid import fid_from_features, frechet_distance, feature_stats
from imagegen_pipeline.ml.metrics.kid import kid_from_features
from imagegen_pipeline.ml.metrics.real_floor import real_floor_from_features

__all__ = ["MetricContext", "MetricUnavailable", "append_jsonl", "compute_metrics", "feature_stats",
           "fid_from_features", "frechet_distance", "kid_from_features", "list_metrics", "read_jsonl",
           "real_floor_from_features", "register_metric"]
