"""
Config loading and launch checks for `train_net.py`. They run in the launching process,
before any worker starts, so a bad config file, override or flag stops the command
with one message naming the file, key or flag, not with a stack trace per worker.
"""
import atexit
import os
import sys

import torch
import torch.distributed as dist
import yaml

import detectron2.utils.comm as comm
from detectron2.config import get_cfg

from ..config import add_cascade_config, cascade_stage_settings
from ..errors import ConfigError

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
    """The frozen config of `config_file` with the `KEY VALUE` overrides `opts`."""
    if not os.path.isfile(config_file):
        raise ConfigError(f"Config file {config_file} does not exist.")
    cfg = get_cfg()
    add_cascade_config(cfg)
    _merge(config_file, lambda: cfg.merge_from_file(config_file))
    _merge("command-line overrides", lambda: cfg.merge_from_list(opts))
    if cfg.MODEL.ROI_HEADS.NAME == "CascadeRCNNROIHeads":
        try:
            cascade_stage_settings(cfg)
        except ValueError as e:
            raise ConfigError(f"{config_file}: {e}") from e
    cfg.freeze()
    return cfg


def check_launch(args, cfg):
    """
    `--num-gpus` counts processes per machine (as detectron2's `launch` does). With
    MODEL.DEVICE cpu they are CPU processes, which `launch` connects with gloo when
    torch sees no GPU; with MODEL.DEVICE cuda each needs a GPU of its own.
    """
    world_size = args.num_gpus * args.num_machines
    if args.num_gpus < 1 or args.num_machines < 1:
        raise ConfigError("--num-gpus and --num-machines must be at least 1.")
    try:
        device = torch.device(cfg.MODEL.DEVICE).type
    except RuntimeError as e:
        raise ConfigError(f"MODEL.DEVICE = {cfg.MODEL.DEVICE!r} is not a device: {e}") from e
    gpus = torch.cuda.device_count()
    if device == "cuda" and args.num_gpus > gpus:
        raise ConfigError(
            f"--num-gpus {args.num_gpus} with MODEL.DEVICE {cfg.MODEL.DEVICE!r} needs "
            f"{args.num_gpus} GPU(s) on this machine, but torch sees {gpus}. Add "
            f"`MODEL.DEVICE cpu` to run {args.num_gpus} CPU process(es) instead."
        )
    if device == "cpu" and world_size > 1 and gpus > 0:
        raise ConfigError(
            "MODEL.DEVICE cpu with several processes on a machine with GPUs: detectron2's "
            "launch would pick the NCCL backend, which cannot reduce CPU tensors. Hide the "
            "GPUs (CUDA_VISIBLE_DEVICES=) so that it picks gloo."
        )
    if cfg.SOLVER.AMP.ENABLED and device != "cuda":
        # detectron2's AMPTrainer asserts CUDA in every step and uses CUDA's GradScaler.
        raise ConfigError(
            f"SOLVER.AMP.ENABLED True needs MODEL.DEVICE cuda (detectron2's AMPTrainer runs "
            f"only on GPUs), but MODEL.DEVICE is {cfg.MODEL.DEVICE!r}. Set "
            "SOLVER.AMP.ENABLED False to train on the CPU."
        )
    if cfg.SOLVER.IMS_PER_BATCH % world_size:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH = {cfg.SOLVER.IMS_PER_BATCH} does not divide among "
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
