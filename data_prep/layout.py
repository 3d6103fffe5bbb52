"""The on-disk layout of a processed dataset: the one contract between data_prep and recsys.

A processed dataset directory holds::

    manifest.json            counts before/after every filter, parameters, source hashes, versions
    items.parquet            item_idx:int32 (1..N), item_id:str (original id), text:str,
                             image_path:str|null  -- one row per item, sorted by item_idx;
                             optional cat_<field>:list[str] categorical values (genres, year, ...)
    users.parquet            user_idx:int32 (1..U), user_id:str (original id)
    sequences.parquet        user_idx:int32, item_idx:list[int32], timestamp:list[int64]
                             -- the whole chronological sequence of each user (stable tie-break)
    features/<modality>.safetensors
                             tensor "features": float32 (N+1, F), row 0 = padding (zeros);
                             tensor "mask": bool (N+1,) True where the item has this modality;
                             metadata: fingerprint, encoder, dim, ...
    features/categorical.safetensors
                             (when items.parquet has cat_* columns) per field: "<field>.ids" int64
                             (nnz,) vocabulary indices and "<field>.offsets" int64 (N+2,), the bag of
                             item i = ids[offsets[i]:offsets[i+1]] (item 0: empty); metadata "fields"
                             and "vocab.<field>" (JSON lists), fingerprint

Index 0 is padding everywhere. Leave-one-out split of a sequence s (len >= 3):
train input/targets come from s[:-2], validation target = s[-2] (input s[:-2]),
test target = s[-1] (input s[:-1], which includes the validation item).
"""

from __future__ import annotations

import json
from pathlib import Path

MANIFEST = "manifest.json"
ITEMS = "items.parquet"
USERS = "users.parquet"
SEQUENCES = "sequences.parquet"
FEATURES_DIR = "features"
PIPELINE_VERSION = "1"  # of the feature tables' fingerprints: a change re-encodes every table
# of the dataset directory's files: 2 added items.parquet cat_* columns and features/categorical
DATASET_VERSION = 2
PADDING_IDX = 0
CATEGORY_PREFIX = "cat_"  # items.parquet columns of categorical values
CATEGORICAL = "categorical"  # the modality name of the categorical bags
MIN_SEQUENCE_LENGTH = 3  # leave-one-out needs one train item, one validation item, one test item


def feature_file(modality: str) -> str:
    """Relative path of the feature table of one modality (e.g. ``features/text.safetensors``)."""
    return f"{FEATURES_DIR}/{modality}.safetensors"


def is_current(directory: Path) -> bool:
    """True when ``directory`` holds a processed dataset written at :data:`DATASET_VERSION` or later
    (an older one is rebuilt by ``recsys-prep``; its unchanged feature tables are reused)."""
    try:
        manifest = json.loads((Path(directory) / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return int(manifest.get("dataset_version", 1)) >= DATASET_VERSION
