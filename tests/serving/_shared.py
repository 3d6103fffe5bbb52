"""One tiny trained run and its export, shared by every serving/export test of the session."""

from __future__ import annotations

import atexit
import functools
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

from recsys.train import CONFIG_DIR, run


def load_by_path(name: str, path: Path):
    """Import ``path`` once as module ``name`` (test directories are not packages here)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


write_processed_dataset = load_by_path(
    "recsys_tests_root_conftest", Path(__file__).resolve().parents[1] / "conftest.py"
).write_processed_dataset


def tiny_cfg(dataset_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(
            "config",
            overrides=["experiment=tiny", "data.name=generic", f"data.path={dataset_dir}", *overrides],
        )


@functools.cache
def trained_export(*overrides: str) -> tuple[Path, Path, dict]:
    """(run_dir, export_dir, index) of a 2-epoch tiny run exported at every size (4, 8, 16);
    ``overrides`` (e.g. "backbone=sasrec") are added to the run's config."""
    from recsys.export import export_run

    root = Path(tempfile.mkdtemp(prefix="recsys-serving-tests-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    dataset = write_processed_dataset(root / "dataset")
    out = run(tiny_cfg(dataset, "trainer.max_epochs=2", "trainer.optimizer.lr=0.01", *overrides), root / "run")
    run_dir = Path(out["run_dir"])
    index = export_run(run_dir, out=root / "export", parity_users=64)
    return run_dir, root / "export", index
