"""
Config loading and launch checks for `train_net.py`. They run in the launching process,
before any worker starts, so a bad config file, override or flag stops the command
with one message naming the file, key or flag, not with a stack trace per worker.
Both kinds of detectron2 config load here: YAML (`KEY VALUE` overrides) and LazyConfig
Python files (`key=value` overrides).
"""

import atexit
import os
import sys

import torch
import torch.distributed as dist
import yaml
from omegaconf import OmegaConf

import detectron2.utils.comm as comm
from detectron2.config import LazyConfig, get_cfg
from detectron2.modeling import ROI_HEADS_REGISTRY

from ..config import (
    add_cascade_config,
    cascade_head_arguments,
    cascade_stage_settings,
    check_head_arguments,
)
from ..errors import ConfigError
from ..modeling import CascadeRCNNROIHeads
from .run_settings import LAZY_TEST_DEFAULTS, run_settings, setting_key, setting_override

__all__ = ["load_config", "check_launch", "end_worker"]


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


def load_config(config_file, opts):
    """
    The config of `config_file`, with the command-line overrides `opts`: a frozen CfgNode
    for a .yaml file, a LazyConfig (omegaconf DictConfig) for a .py file.
    """
    if not os.path.isfile(config_file):
        raise ConfigError(f"Config file {config_file} does not exist.")
    if config_file.endswith(".py"):
        return _load_lazy_config(config_file, opts)
    cfg = get_cfg()
    add_cascade_config(cfg)
    _merge(config_file, lambda: cfg.merge_from_file(config_file))
    _merge("command-line overrides", lambda: cfg.merge_from_list(opts))
    name = cfg.MODEL.ROI_HEADS.NAME
    if name not in ROI_HEADS_REGISTRY:
        known = ", ".join(sorted(k for k, _ in ROI_HEADS_REGISTRY))
        raise ConfigError(
            f"{config_file}: MODEL.ROI_HEADS.NAME = {name!r} is not registered ({known})."
        )
    cascade = _is_subclass(ROI_HEADS_REGISTRY.get(name), CascadeRCNNROIHeads)
    if cascade:
        try:
            cascade_stage_settings(cfg)
            cascade_head_arguments(cfg)
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
    if cascade:
        try:
            check_head_arguments(**heads)
        except ConfigError as e:
            raise ConfigError(f"{config_file}: model.roi_heads: {e}") from e
    _check_stage_eval(cfg, cascade, f"model.roi_heads._target_ {heads.get('_target_')}")
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


def check_launch(args, cfg):
    """
    `--num-gpus` counts processes per machine (as detectron2's `launch` does). With
    device cpu they are CPU processes, which `launch` connects with gloo when torch sees
    no GPU; with device cuda each needs a GPU of its own.
    """
    settings, key = run_settings(cfg), lambda field: setting_key(cfg, field)
    world_size = args.num_gpus * args.num_machines
    if args.num_gpus < 1 or args.num_machines < 1:
        raise ConfigError("--num-gpus and --num-machines must be at least 1.")
    try:
        device = torch.device(settings.device).type
    except RuntimeError as e:
        raise ConfigError(f"{key('device')} = {settings.device!r} is not a device: {e}") from e
    gpus = torch.cuda.device_count()
    if device == "cuda" and args.num_gpus > gpus:
        raise ConfigError(
            f"--num-gpus {args.num_gpus} with {key('device')} {settings.device!r} needs "
            f"{args.num_gpus} GPU(s) on this machine, but torch sees {gpus}. Add "
            f"`{setting_override(cfg, 'device', 'cpu')}` to run {args.num_gpus} CPU process(es) "
            "instead."
        )
    if device == "cpu" and world_size > 1 and gpus > 0:
        raise ConfigError(
            f"{key('device')} cpu with several processes on a machine with GPUs: detectron2's "
            "launch would pick the NCCL backend, which cannot reduce CPU tensors. Hide the "
            "GPUs (CUDA_VISIBLE_DEVICES=) so that it picks gloo."
        )
    if settings.amp and device != "cuda":
        # detectron2's AMPTrainer asserts CUDA in every step and uses CUDA's GradScaler.
        raise ConfigError(
            f"{key('amp')} True needs {key('device')} cuda (detectron2's AMPTrainer runs "
            f"only on GPUs), but {key('device')} is {settings.device!r}. Set "
            f"{key('amp')} False to train on the CPU."
        )
    if settings.total_batch_size % world_size:
        raise ConfigError(
            f"{key('total_batch_size')} = {settings.total_batch_size} does not divide among "
            f"{world_size} processes."
        )


def end_worker():
    """
    End a worker process of detectron2's `launch` once every rank is done; it does not
    return. Left to the interpreter's shutdown, a worker could abort after finishing its
    work (SIGABRT, "terminate called without an active exception", in 2 of 5 full test
    runs, also with the process group destroyed first): a thread that
    torch starts in C++ calls into a Python that is finalizing. So the worker closes its
    process group, runs the exit handlers (detectron2's log files flush there) and leaves
    with os._exit, which skips the shutdown.
    """
    # No rank closes its connections while another still waits on a collective.
    comm.synchronize()
    dist.destroy_process_group()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
