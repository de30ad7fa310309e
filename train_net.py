#!/usr/bin/env python
"""
Train or evaluate Cascade R-CNN with detectron2's standard trainer.

    python train_net.py --config-file configs/trees/cascade_rcnn_trees.yaml
    python train_net.py --config-file configs/cascade_rcnn_R_50_FPN_1x.yaml --num-gpus 8
    python train_net.py --config-file X.yaml --num-gpus 2 MODEL.DEVICE cpu   # 2 CPU processes
    python train_net.py --config-file X.yaml --eval-only MODEL.WEIGHTS model_final.pth

A bad config, dataset or checkpoint stops the run with a message naming the file, key
or image (see README, "Reliability").
"""
import os
import sys

import detectron2.utils.comm as comm
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import DatasetEvaluators
from detectron2.utils.logger import setup_logger

from projects.cascade.engine.checkpoint import SafeCheckpointer
from projects.cascade.engine.launch import check_launch, end_worker, load_config
from projects.cascade.errors import InputError
from projects.cascade.evaluation import COCOEvaluatorAtIoUs
from projects.cascade.evaluation.expected_results import ExpectedResultsError, check_expected_results
from projects.cascade.evaluation.stage_evaluation import CascadeStageEvaluator, check_stage_eval_config
from projects.cascade.modeling.stage_outputs import CascadeStageOutputs
from projects.cascade.engine.trainer import ReliableTrainer


class Trainer(ReliableTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator = COCOEvaluatorAtIoUs(dataset_name, output_dir=output_folder)
        if not cfg.TEST.CASCADE_STAGE_EVAL:
            return evaluator
        return DatasetEvaluators([evaluator, CascadeStageEvaluator(dataset_name, output_folder)])

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        if cfg.TEST.CASCADE_STAGE_EVAL:
            # One inference pass yields the detections of every stage and ensemble too.
            model = CascadeStageOutputs(model)
        return super().test(cfg, model, evaluators)


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    check_stage_eval_config(cfg)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="projects.cascade")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        SafeCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            check_expected_results(cfg, results)
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
