"""
What the engine reads from a config, for both kinds detectron2 has: a YAML `CfgNode` and a
LazyConfig (Python file). Everything else in engine/ reads these, not the config, so that
one trainer, one set of launch checks and one evaluation serve both.
"""

from typing import Dict, List, NamedTuple

from omegaconf import OmegaConf

from detectron2.config import CfgNode

__all__ = [
    "RunSettings",
    "run_settings",
    "setting_key",
    "setting_override",
    "is_lazy",
    "LAZY_TEST_DEFAULTS",
]

# The LazyConfig counterpart of the YAML keys TEST.CASCADE_STAGE_EVAL, TEST.EXPECTED_RESULTS
# and TEST.AUG; `load_config` adds it to a LazyConfig that has no `test` node (detectron2's
# own LazyConfigs have none).
LAZY_TEST_DEFAULTS = {
    "cascade_stage_eval": False,
    "expected_results": [],
    "aug": {
        "enabled": False,
        "min_sizes": [400, 500, 600, 700, 800, 900, 1000, 1100, 1200],
        "max_size": 4000,
        "flip": True,
    },
}


class RunSettings(NamedTuple):
    output_dir: str
    device: str
    seed: int  # < 0: draw one
    max_iter: int
    total_batch_size: int
    amp: bool
    weights: str  # loaded before training or evaluation, unless resuming
    cascade_stage_eval: bool
    expected_results: List  # [task, metric, expected, tolerance] each
    test_time_augmentation: bool
    augmentation: Dict  # min_sizes, max_size, flip of the test-time augmentation
    test_datasets: List[str]


# Where each setting lives, for error messages: (YAML key, LazyConfig key).
_KEYS = {
    "output_dir": ("OUTPUT_DIR", "train.output_dir"),
    "device": ("MODEL.DEVICE", "train.device"),
    "seed": ("SEED", "train.seed"),
    "max_iter": ("SOLVER.MAX_ITER", "train.max_iter"),
    "total_batch_size": ("SOLVER.IMS_PER_BATCH", "dataloader.train.total_batch_size"),
    "amp": ("SOLVER.AMP.ENABLED", "train.amp.enabled"),
    "weights": ("MODEL.WEIGHTS", "train.init_checkpoint"),
    "cascade_stage_eval": ("TEST.CASCADE_STAGE_EVAL", "test.cascade_stage_eval"),
    "expected_results": ("TEST.EXPECTED_RESULTS", "test.expected_results"),
    "test_time_augmentation": ("TEST.AUG.ENABLED", "test.aug.enabled"),
}


def setting_key(cfg, field: str) -> str:
    """The config key of RunSettings' `field` in `cfg`'s kind of config."""
    return _KEYS[field][is_lazy(cfg)]


def setting_override(cfg, field: str, value) -> str:
    """The command-line override that sets `field` to `value`, in `cfg`'s kind of config."""
    key = setting_key(cfg, field)
    return f"{key}={value}" if is_lazy(cfg) else f"{key} {value}"


def is_lazy(cfg) -> bool:
    return not isinstance(cfg, CfgNode)


def run_settings(cfg) -> RunSettings:
    if not is_lazy(cfg):
        return RunSettings(
            output_dir=cfg.OUTPUT_DIR,
            device=cfg.MODEL.DEVICE,
            seed=cfg.SEED,
            max_iter=cfg.SOLVER.MAX_ITER,
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            amp=cfg.SOLVER.AMP.ENABLED,
            weights=cfg.MODEL.WEIGHTS,
            cascade_stage_eval=cfg.TEST.CASCADE_STAGE_EVAL,
            expected_results=list(cfg.TEST.EXPECTED_RESULTS),
            test_time_augmentation=cfg.TEST.AUG.ENABLED,
            augmentation={
                "min_sizes": cfg.TEST.AUG.MIN_SIZES,
                "max_size": cfg.TEST.AUG.MAX_SIZE,
                "flip": cfg.TEST.AUG.FLIP,
            },
            test_datasets=list(cfg.DATASETS.TEST),
        )
    train, test = cfg.train, cfg.test
    names = cfg.dataloader.test.dataset.names
    return RunSettings(
        output_dir=train.output_dir,
        device=train.device,
        seed=train.get("seed", -1),
        max_iter=train.max_iter,
        total_batch_size=cfg.dataloader.train.total_batch_size,
        amp=train.amp.enabled,
        weights=train.init_checkpoint,
        cascade_stage_eval=test.cascade_stage_eval,
        expected_results=OmegaConf.to_container(test.expected_results),
        test_time_augmentation=test.aug.enabled,
        augmentation={k: test.aug[k] for k in ("min_sizes", "max_size", "flip")},
        test_datasets=[names] if isinstance(names, str) else list(names),
    )
