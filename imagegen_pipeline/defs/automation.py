"""Declarative Automation: everything downstream of a dataset's shards is retrained when the shards' content
changes. `image_shards` reports its content key as its data version, so re-ingesting the same files retrains
nothing. The `retrain_when_data_changes` sensor evaluates the conditions; like anything that trains on its own
it is off until someone turns it on (UI: Automation). The landing sensor still discovers new dataset folders."""

import dagster as dg

from imagegen_pipeline.defs.artifacts import CAPTION_EMBEDDINGS

_DEP_CHANGED = dg.AutomationCondition.data_version_changed() | dg.AutomationCondition.will_be_requested()

RETRAIN_WHEN_DATA_CHANGES = (
    dg.AutomationCondition.any_deps_match(_DEP_CHANGED).since_last_handled()
    # captions exist only for captioned datasets; every other dependency must have been materialized
    & ~dg.AutomationCondition.any_deps_missing().ignore(dg.AssetSelection.assets(CAPTION_EMBEDDINGS))
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("retrain when the data changed")

retrain_when_data_changes = dg.AutomationConditionSensorDefinition(
    "retrain_when_data_changes", target=dg.AssetSelection.all(), default_status=dg.DefaultSensorStatus.STOPPED,
    description="Retrains and re-evaluates a dataset's extractor, embeddings, DCGAN, report, gallery and champion "
                "when its shards' content changed (new, removed or edited images), one run per dataset.")
