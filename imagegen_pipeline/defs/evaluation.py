"""Assets `evaluation_report` and `generator_champion`: judge the latest trained generator by FID, KID,
precision/recall and the extractor's scores, log it to the generator's MLflow run, and move the registry alias
`champion` only when the new model is better. The work is in `stages.evaluation`; the defaults are `EvalConfig`'s
and `QualityGate`'s."""


import dagster as dg
from pydantic import Field

from imagegen_pipeline.defs.artifacts import DCGAN_CHECKPOINT, IMAGE_EMBEDDINGS
from imagegen_pipeline.defs.automation import RETRAIN_WHEN_DATA_CHANGES
from imagegen_pipeline.defs.common import dataset_of
from imagegen_pipeline.defs.metadata import materialized, stage_failures
from imagegen_pipeline.defs.partitions import ONE_DATASET_PER_RUN, dataset_partitions
from imagegen_pipeline.defs.resources import ImagegenStorage, MlflowTracker
from imagegen_pipeline.ml.evaluation import PROTOCOLS, EvalConfig
from imagegen_pipeline.ml.protocols import METRIC_SETS
from imagegen_pipeline.ml.metrics import list_metrics
from imagegen_pipeline.ml.quality_gate import QualityGate
from imagegen_pipeline.stages.evaluation import EvaluationJob, evaluate_latest, promote_judged

GROUP = "evaluation"
CORE, JOB = EvalConfig(), EvaluationJob()  # the defaults: one source, checked by test_config_defaults


class EvaluationConfig(dg.Config):
    device: str = Field(default=JOB.device, description="'auto', 'cpu' or 'cuda'.")
    protocol: str = Field(default=CORE.protocol, description="'quick' (1,000 samples vs 1,000 val images) or "
                                                             "'paper' (10,000 vs 10,000: MNIST's official test "
                                                             "images). Recorded with every figure; FID falls as N "
                                                             "grows.")
    num_samples: int | None = Field(default=None, description="Generated images to judge; unset = the protocol's.")
    num_real: int | None = Field(default=None, description="Cap on real images per split (val = reference, train = "
                                                           "floor); unset = the protocol's.")
    per_class_min: int = Field(default=CORE.per_class_min, description="Per-class FID only for classes with this "
                                                                       "many images.")
    detector_batch_size: int | None = Field(default=JOB.detector_batch_size,
                                            description="Images per Inception forward pass; null = the device's "
                                                        "default (8 on CPU, 64 on CUDA).")
    seed: int = Field(default=CORE.seed, description="Noise seeds and real subsets.")
    composite_images: int = Field(default=CORE.composite_images,
                                  description="Text models: picks per held-out composite prompt ('a cat with a "
                                              "hat', 16 prompts) in the report; 0 leaves them out.")
    composite_candidates: int = Field(default=CORE.composite_candidates,
                                      description="Text models: each composite pick is the best of this many "
                                                  "candidates by the judge's prompt score.")
    composition_images: int = Field(default=CORE.composition_images,
                                    description="Text models on data with composed pictures: seeds per composition "
                                                "prompt ('a cat with a hat', every held-out pair, a seen pair per "
                                                "subject), judged by the concept judge; 0 leaves them out.")
    metric_set: str = Field(default=CORE.metric_set, description="Which metrics run: '' = the protocol's ('quick': the gate's and "
                                                    "the cheap headline ones; 'paper': all), 'quick' or 'full' "
                                                    "(adds CAS and the LPIPS scores).")
    extra_metrics: list[str] = Field(default=list(CORE.extra_metrics), description="Opt-in metrics computed besides the default set, "
                                                             "e.g. ['augmentation_gain'] (4 classifier trainings).")
    gate_min_diversity_ratio: float = Field(default=QualityGate.min_diversity_ratio,
                                            description="Quality gate: within-label diversity vs real, at least.")
    gate_min_recall: float = Field(default=QualityGate.min_recall, description="Quality gate: recall, at least.")
    gate_max_fid_over_floor: float = Field(default=QualityGate.max_fid_over_floor,
                                           description="Quality gate: FID at most this multiple of the real floor.")
    gate_max_ms_ssim_ratio: float = Field(default=QualityGate.max_ms_ssim_ratio,
                                          description="Quality gate: same-class MS-SSIM of samples vs real pairs, at "
                                                      "most (above 1: samples more alike than the data).")
    gate_min_r_precision_of_real: float = Field(default=QualityGate.min_r_precision_of_real,
                                                description="Quality gate, text models only: R-precision of samples "
                                                            "on held-out captions vs real images', at least.")
    gate_min_heldout_both_of_real: float = Field(default=QualityGate.min_heldout_both_of_real,
                                                 description="Quality gate, text models on composed data: held-out "
                                                             "pairs drawn both right vs the judge on real pictures "
                                                             "of them, at least.")

    def to_job(self) -> EvaluationJob:
        if self.protocol not in PROTOCOLS:
            raise dg.Failure(f"unknown evaluation protocol {self.protocol!r}; choose from {sorted(PROTOCOLS)}")
        named = PROTOCOLS[self.protocol]
        n = self.num_samples or named["num_samples"]
        unknown = sorted(set(self.extra_metrics) - set(list_metrics(include_opt_in=True)))
        if unknown:
            raise dg.Failure(f"unknown metrics {unknown}; choose from {list_metrics(include_opt_in=True)}")
        if self.metric_set and self.metric_set not in METRIC_SETS:
            raise dg.Failure(f"unknown metric_set {self.metric_set!r}; choose from {sorted(METRIC_SETS)}")
        if self.composite_images < 0 or self.composite_candidates < 1 or self.composition_images < 0:
            raise dg.Failure(f"composite_images and composition_images must be >= 0 and composite_candidates >= 1, "
                             f"got {self.composite_images}, {self.composition_images} and "
                             f"{self.composite_candidates}")
        return EvaluationJob(
            EvalConfig(num_samples=n, num_real=self.num_real or named["num_real"], protocol=self.protocol,
                       per_class_min=self.per_class_min, kid_subset_size=min(1000, n), seed=self.seed,
                       metric_set=self.metric_set, extra_metrics=tuple(self.extra_metrics),
                       composite_images=self.composite_images,
                       composite_candidates=self.composite_candidates, composition_images=self.composition_images),
            QualityGate(self.gate_min_diversity_ratio, self.gate_min_recall, self.gate_max_fid_over_floor,
                        self.gate_max_ms_ssim_ratio, self.gate_min_r_precision_of_real,
                        self.gate_min_heldout_both_of_real),
            device=self.device, detector_batch_size=self.detector_batch_size)


@dg.asset(automation_condition=RETRAIN_WHEN_DATA_CHANGES,
          partitions_def=dataset_partitions, backfill_policy=ONE_DATASET_PER_RUN,
          group_name=GROUP, kinds={"pytorch", "mlflow", "html"},
          deps=[DCGAN_CHECKPOINT, IMAGE_EMBEDDINGS],
          description="FID/KID (standard InceptionV3) against the val split, the train-vs-val floor, precision/"
                      "recall, is_domain, asked-for-class accuracy, diversity and memorisation of the latest "
                      "EMA generator, as JSON, HTML and Markdown; logged to the generator's MLflow run.")
def evaluation_report(context: dg.AssetExecutionContext, config: EvaluationConfig, storage: ImagegenStorage,
                      mlflow_tracker: MlflowTracker) -> dg.MaterializeResult:
    with stage_failures():
        return materialized(evaluate_latest(storage.paths, dataset_of(context), config.to_job(),
                                            tracker=mlflow_tracker.open(storage.paths), run_tag=context.run_id,
                                            log=context.log.info, warn=context.log.warning))


@dg.asset(automation_condition=RETRAIN_WHEN_DATA_CHANGES,
          partitions_def=dataset_partitions, backfill_policy=ONE_DATASET_PER_RUN, group_name=GROUP,
          kinds={"mlflow"}, deps=[evaluation_report],
          description="The registry alias `champion` of imagegen-generator-<dataset>: moved to the evaluated version "
                      "only if it passed the quality gate, its FID is lower beyond the noise and its asked-for-class "
                      "accuracy is not lower than the champion's. Each materialization records the decision and why.")
def generator_champion(context: dg.AssetExecutionContext, storage: ImagegenStorage,
                       mlflow_tracker: MlflowTracker) -> dg.MaterializeResult:
    with stage_failures():
        return materialized(promote_judged(storage.paths, dataset_of(context), run_tag=context.run_id,
                                           tracker=mlflow_tracker.open(storage.paths), log=context.log.info))


evaluation_assets = [evaluation_report, generator_champion]
