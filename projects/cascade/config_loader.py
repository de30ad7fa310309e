"""
The one config loader of every entry point (train_net.py, the tools, benchmarks and
experiments), for both kinds of detectron2 config: YAML (`KEY VALUE` overrides) and LazyConfig
Python files (`key=value` overrides). A bad file, override or value stops with one
`ConfigError` naming the file and key, before any model is built or worker started.
"""

import os
from typing import Callable, List, Sequence, Union

import yaml
from omegaconf import DictConfig, OmegaConf

from detectron2.config import CfgNode, LazyConfig, get_cfg
from detectron2.modeling import ROI_HEADS_REGISTRY

from .config import add_cascade_config, check_cascade_config
from .errors import ConfigError
from .modeling import CascadeRCNNROIHeads
from .run_settings import LAZY_TEST_DEFAULTS, run_settings, setting_key

__all__ = ["load_config", "register_config_keys"]

# What `load_config` adds to detectron2's defaults before it reads a YAML file.
_KEY_ADDERS: List[Callable[[CfgNode], None]] = [add_cascade_config]


def register_config_keys(add_keys: Callable[[CfgNode], None]) -> None:
    """Have `load_config` call `add_keys(cfg)` too (a backbone's keys, as `add_X_config`)."""
    if add_keys not in _KEY_ADDERS:
        _KEY_ADDERS.append(add_keys)


def _merge(source, merge):
    try:
        merge()
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {e}") from e
    except (KeyError, ValueError, AssertionError) as e:
        # yacs: KeyError for an unknown key in a file, AssertionError for one in the
        # overrides (or a missing _BASE_ file), ValueError for a value whose type differs
        # from the default's.
        raise ConfigError(f"{source}: {e.args[0] if e.args else e}") from e


def load_config(config_file: str, opts: Sequence[str] = ()) -> Union[CfgNode, DictConfig]:
    """
    The config of `config_file`, with the command-line overrides `opts`: a frozen CfgNode
    for a .yaml file (its cascade keys checked), a LazyConfig (omegaconf DictConfig) for a
    .py file (its cascade arguments are checked when the heads are built).
    """
    if not os.path.isfile(config_file):
        raise ConfigError(f"Config file {config_file} does not exist.")
    if config_file.endswith(".py"):
        return _load_lazy_config(config_file, opts)
    cfg = get_cfg()
    for add_keys in _KEY_ADDERS:
        add_keys(cfg)
    _merge(config_file, lambda: cfg.merge_from_file(config_file))
    _merge("command-line overrides", lambda: cfg.merge_from_list(list(opts)))
    name = cfg.MODEL.ROI_HEADS.NAME
    if name not in ROI_HEADS_REGISTRY:
        known = ", ".join(sorted(k for k, _ in ROI_HEADS_REGISTRY))
        raise ConfigError(
            f"{config_file}: MODEL.ROI_HEADS.NAME = {name!r} is not registered ({known})."
        )
    cascade = _is_subclass(ROI_HEADS_REGISTRY.get(name), CascadeRCNNROIHeads)
    if cascade:
        try:
            check_cascade_config(cfg)
        except ConfigError as e:
            raise ConfigError(f"{config_file}: {e}") from e
    _check_stage_eval(cfg, cascade, f"MODEL.ROI_HEADS.NAME: {cfg.MODEL.ROI_HEADS.NAME}")
    cfg.freeze()
    return cfg


def _load_lazy_config(config_file, overrides):
    try:
        cfg = LazyConfig.load(config_file)
    except Exception as e:  # the file is Python: any error of its code can come out here
        raise ConfigError(f"{config_file} cannot be loaded: {type(e).__name__}: {e}") from e
    missing = [
        k for k in ("model", "dataloader", "optimizer", "lr_multiplier", "train") if k not in cfg
    ]
    if missing:
        raise ConfigError(
            f"{config_file} defines no {', '.join(missing)}: a LazyConfig for training needs "
            "model, dataloader, optimizer, lr_multiplier and train (see detectron2's "
            "configs/common)."
        )
    if "test" not in cfg:
        cfg.test = OmegaConf.create(LAZY_TEST_DEFAULTS)
    for override in overrides:
        _check_override(cfg, override, config_file)
    try:
        LazyConfig.apply_overrides(cfg, overrides)
    except Exception as e:  # hydra's override parser, or omegaconf's type checks
        raise ConfigError(f"command-line overrides {overrides}: {e}") from e
    heads = cfg.model.get("roi_heads") or {}
    cascade = _is_subclass(heads.get("_target_"), CascadeRCNNROIHeads)
    _check_stage_eval(cfg, cascade, f"{heads.get('_target_')} (the _target_ of model.roi_heads)")
    mapper = cfg.dataloader.train.get("mapper") or {}
    if (
        cascade
        and heads.get("ignore_iof_thresh", -1.0) >= 0
        and not mapper.get("keep_crowd_regions")
    ):
        raise ConfigError(
            f"{config_file}: model.roi_heads.ignore_iof_thresh = {heads.ignore_iof_thresh} needs "
            "dataloader.train.mapper.keep_crowd_regions=True: without the crowd regions there "
            "is nothing to ignore."
        )
    return cfg


def _check_stage_eval(cfg, cascade, heads):
    """Stop at start-up, not at the first evaluation, if the per-stage evaluation cannot work."""
    if run_settings(cfg).cascade_stage_eval and not cascade:
        raise ConfigError(
            f"{setting_key(cfg, 'cascade_stage_eval')} True needs CascadeRCNNROIHeads, not "
            f"{heads}: only its stages can be evaluated one by one."
        )


def _check_override(cfg, override, config_file):
    """
    An override must set a key the config has. Only the arguments of a LazyCall (a node
    with `_target_`) may be new, since its callable takes arguments the file need not set.
    """
    key, sep, _ = override.partition("=")
    if not sep:
        raise ConfigError(f"command-line override {override!r}: expected key=value.")
    parent_key, _, leaf = key.strip().rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not OmegaConf.is_config(parent):
        raise ConfigError(
            f"command-line override {override!r}: {config_file} has no node {parent_key!r}."
        )
    if OmegaConf.is_dict(parent) and leaf not in parent and "_target_" not in parent:
        known = ", ".join(str(k) for k in parent.keys())
        where = f"{parent_key!r}" if parent_key else "the top level"
        raise ConfigError(
            f"command-line override {override!r}: {config_file} has no key {leaf!r} in "
            f"{where} (it has: {known})."
        )


def _is_subclass(target, cls):
    return isinstance(target, type) and issubclass(target, cls)
