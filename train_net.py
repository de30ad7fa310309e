#!/usr/bin/env python
"""
Train or evaluate Cascade R-CNN with detectron2's standard trainer, from a YAML config or
a LazyConfig (.py):

    python train_net.py --config-file configs/trees/cascade_rcnn_trees.yaml
    python train_net.py --config-file configs/cascade_rcnn_R_50_FPN_1x.yaml --num-gpus 8
    python train_net.py --config-file X.yaml --num-gpus 2 MODEL.DEVICE cpu   # 2 CPU processes
    python train_net.py --config-file X.yaml --eval-only MODEL.WEIGHTS model_final.pth
    python train_net.py --config-file configs/trees/cascade_rcnn_trees.py train.max_iter=100

A bad config, dataset or checkpoint stops the run with a message naming the file, key
or image (see docs/reliability.md).
"""

import sys

import detectron2.utils.comm as comm
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils.logger import setup_logger

from projects.cascade.config_loader import load_config
from projects.cascade.demo import register_demo
from projects.cascade.engine import (
    LazyConfigTrainer,
    ReliableTrainer,
    SafeCheckpointer,
    check_launch,
    end_worker,
)
from projects.cascade.errors import InputError
from projects.cascade.evaluation import ExpectedResultsError
from projects.cascade.run_settings import is_lazy, run_settings

# At import, so that the workers `launch` starts (which import this file) register it too.
register_demo()


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    output_dir = run_settings(cfg).output_dir
    setup_logger(output_dir, distributed_rank=comm.get_rank(), name="projects.cascade")
    return cfg


def main(args):
    cfg = setup(args)
    Trainer = LazyConfigTrainer if is_lazy(cfg) else ReliableTrainer
    if args.eval_only:
        model = Trainer.build_model(cfg)
        settings = run_settings(cfg)
        SafeCheckpointer(model, save_dir=settings.output_dir).resume_or_load(
            settings.weights, resume=args.resume
        )
        results = Trainer.evaluate(cfg, model)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
    if comm.get_world_size() > 1:
        end_worker()  # a process of `launch`: its results are not returned anywhere
    return results


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    try:
        check_launch(args, load_config(args.config_file, args.opts))
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except (InputError, ExpectedResultsError) as e:
        sys.exit(f"error: {e}")
