"""
The checks of a `train_net.py` command before detectron2's `launch` starts workers (so that a
bad flag stops it with one message, not a stack trace per worker), and the clean end of a
worker.
"""

import atexit
import os
import sys
from argparse import Namespace
from typing import Union

import torch
import torch.distributed as dist
from omegaconf import DictConfig

import detectron2.utils.comm as comm
from detectron2.config import CfgNode

from ..errors import ConfigError
from ..run_settings import run_settings, setting_key, setting_override

__all__ = ["check_launch", "end_worker"]


def check_launch(args: Namespace, cfg: Union[CfgNode, DictConfig]) -> None:
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


def end_worker() -> None:
    """
    End a worker process of detectron2's `launch` once every rank is done; it does not
    return. A worker left to the interpreter's shutdown can abort after its work is done
    ("terminate called without an active exception"): a thread that torch started in C++
    calls into a Python that is finalizing. So the worker closes its process group, runs the
    exit handlers (detectron2's log files flush there) and leaves with os._exit, which skips
    the shutdown.
    """
    # No rank closes its connections while another still waits on a collective.
    comm.synchronize()
    dist.destroy_process_group()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
