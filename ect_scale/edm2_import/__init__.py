"""Import NVIDIA's EDM2 snapshot pickles (and ECT releases in the same format) without executing their code.

    from ect_scale.edm2_import import import_edm2
    result = import_edm2("edm2-img512-s-2147483-0.130.pkl", "pretrained/edm2-img512-s-2147483-0.130.safetensors")

Layers: `unpickler` (restricted `find_class`, validating stand-ins), `snapshot` (layout -> tensors + module
records), `hparams` (init kwargs vs shapes vs attributes -> `NetworkConfig`, rebuilt and compared), `encoder`
(latent normalisation constants), `convert` (write the network file, reload and verify). See docs/import.md.
"""

from ect_scale.edm2_import.convert import ImportResult, convert_snapshot, import_edm2, verify_network_file
from ect_scale.edm2_import.encoder import describe_encoder
from ect_scale.edm2_import.hparams import check_expressible, infer_network_config, match_preset
from ect_scale.edm2_import.snapshot import Edm2Snapshot, ModuleRecord, interpret_snapshot, load_pickle, read_snapshot
from ect_scale.edm2_import.unpickler import (
    Edm2ImportError,
    ForeignObject,
    PersistentObject,
    RestrictedUnpickler,
    UnsafePickleError,
    allowed_globals,
    safe_load,
)

__all__ = [
    "import_edm2",
    "ImportResult",
    "convert_snapshot",
    "verify_network_file",
    "describe_encoder",
    "infer_network_config",
    "check_expressible",
    "match_preset",
    "read_snapshot",
    "interpret_snapshot",
    "load_pickle",
    "Edm2Snapshot",
    "ModuleRecord",
    "safe_load",
    "RestrictedUnpickler",
    "allowed_globals",
    "PersistentObject",
    "ForeignObject",
    "Edm2ImportError",
    "UnsafePickleError",
]
