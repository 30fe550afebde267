"""MLflow conventions in one place: where runs go, how stage runs are tagged, reused and traced.

Every stage run carries `hyrax.stage`, `hyrax.config_hash` (of the config sections the stage
reads), `hyrax.code_version` and one `hyrax.input.<name> = <run_id>` per input. A FINISHED run
with the same four is reused instead of recomputed, unless `force` is given.

One module per job (each imports only those before it):
`runs` (tags, StageSpec, StageRun, reading a run), `store` (the tracking store and the
experiment), `reuse` (identity, waiting, orphans), `stage_run` (running a stage, naming runs,
resuming), `artifacts` (the artifact cache), `lineage`.
"""

from hyrax_mlops.code_version import code_version
from hyrax_mlops.tracking.artifacts import ArtifactCache
from hyrax_mlops.tracking.lineage import (
    LineageNode,
    consumers,
    find_in_lineage,
    lineage,
    lineage_lines,
)
from hyrax_mlops.tracking.reuse import WAIT_POLL_S, find_reusable, sweep_orphans
from hyrax_mlops.tracking.runs import (
    CONFIG_ARTIFACT,
    DATASET_STAGES,
    TAG_CODE_VERSION,
    TAG_CONFIG_HASH,
    TAG_ERROR,
    TAG_FINGERPRINT,
    TAG_INPUT,
    TAG_LAUNCHED,
    TAG_RESUMED_AFTER,
    TAG_REUSED,
    TAG_STAGE,
    TAG_STAGE_RUN,
    StageRun,
    StageSpec,
    get_run,
    input_run,
    run_of_input,
    say,
)
from hyrax_mlops.tracking.stage_run import (
    config_of,
    interrupted_run,
    name_hint,
    run_name,
    run_stage,
)
from hyrax_mlops.tracking.store import setup, tracking_uri, use_store

__all__ = [
    "CONFIG_ARTIFACT", "DATASET_STAGES", "TAG_CODE_VERSION", "TAG_CONFIG_HASH", "TAG_ERROR",
    "TAG_FINGERPRINT", "TAG_INPUT", "TAG_LAUNCHED", "TAG_RESUMED_AFTER", "TAG_REUSED",
    "TAG_STAGE", "TAG_STAGE_RUN", "WAIT_POLL_S", "LineageNode", "StageRun", "StageSpec",
    "ArtifactCache", "code_version", "config_of", "consumers", "find_in_lineage", "find_reusable",
    "get_run", "input_run", "interrupted_run", "lineage", "lineage_lines", "name_hint",
    "run_name", "run_of_input", "run_stage", "say", "setup", "sweep_orphans", "tracking_uri",
    "use_store",
]
