"""
COCO metrics of every cascade stage alone and of every ensemble of stages, from the one
inference pass of the main evaluation (TEST.CASCADE_STAGE_EVAL), as the paper's Table 4
reports them.
"""

import contextlib
import io
import itertools
import json
import logging
import os
from collections import OrderedDict

from tabulate import tabulate

from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..modeling.stage_outputs import STAGES_KEY
from .coco_evaluation import COCOEvaluatorAtIoUs

__all__ = ["CascadeStageEvaluator", "TASK", "COLUMNS"]

TASK = "cascade_stages"
COLUMNS = ("AP", "AP50", "AP60", "AP70", "AP75", "AP80", "AP85", "AP90", "AP95")
ROWS_EXPLAINED = (
    '"k": stage k alone (its boxes, its own scores). '
    '"1~k": stage k\'s boxes scored by the ensemble of stages 1..k '
    '(MODEL.ROI_BOX_CASCADE_HEAD.TEST_SCORE, or "mean" where that is "last").'
)

logger = logging.getLogger(__name__)


class CascadeStageEvaluator(COCOEvaluatorAtIoUs):
    """
    Gives each set of detections that `CascadeStageOutputs` adds to the model's outputs
    the box metrics of `COCOEvaluatorAtIoUs`. It is that evaluator, run once per set, so
    that gathering across processes, category ids and COCOeval are those of the main
    evaluation: the last ensemble's row equals the main evaluation's numbers.

    `evaluate` returns {"cascade_stages": {"<set>/<metric>": value}} ("3/AP90",
    "1~3/AP"), which the trainer logs and stores in metrics.json as
    "cascade_stages/3/AP90", and writes the table to cascade_stages.json and
    cascade_stages.md in `output_dir`.
    """

    def __init__(self, dataset_name, output_dir, distributed=True):
        super().__init__(
            dataset_name, tasks=("bbox",), distributed=distributed, output_dir=output_dir
        )
        # COCOEvaluator would write each set's detections over the main evaluation's
        # coco_instances_results.json; this evaluator writes its tables instead.
        self._tables_dir, self._output_dir = output_dir, None

    def process(self, inputs, outputs):
        for input, output in zip(inputs, outputs):
            if STAGES_KEY not in output:
                raise ValueError(
                    "CascadeStageEvaluator needs the per-stage detections that "
                    "CascadeStageOutputs adds to the model's outputs; evaluate the model "
                    "wrapped in it (train_net.py does so with TEST.CASCADE_STAGE_EVAL True)."
                )
            sets = {
                name: instances_to_coco_json(instances.to(self._cpu_device), input["image_id"])
                for name, instances in output[STAGES_KEY].items()
            }
            self._predictions.append({"image_id": input["image_id"], "sets": sets})

    def evaluate(self, img_ids=None):
        predictions = self._predictions
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        if not predictions or not self._do_evaluation:
            logger.warning("No per-stage predictions, or no annotations to evaluate them on.")
            return {}

        rows = OrderedDict()
        for name in predictions[0]["sets"]:
            per_image = [
                {"image_id": p["image_id"], "instances": p["sets"][name]} for p in predictions
            ]
            self._results = OrderedDict()
            with quiet_coco(self._logger):
                self._eval_predictions(per_image, img_ids=img_ids)
            rows[name] = {column: self._results["bbox"][column] for column in COLUMNS}
        self._write_tables(rows)
        return {TASK: {f"{name}/{c}": v for name, row in rows.items() for c, v in row.items()}}

    def _write_tables(self, rows):
        dataset = self._metadata.name
        table = tabulate(
            [[name, *row.values()] for name, row in rows.items()],
            headers=["stages", *COLUMNS],
            tablefmt="pipe",
            floatfmt=".1f",
        )
        logger.info(f"Cascade stages on {dataset} (COCO box AP, %). {ROWS_EXPLAINED}\n{table}")
        if not self._tables_dir:
            return
        PathManager.mkdirs(self._tables_dir)
        summary = {"dataset": dataset, "rows_explained": ROWS_EXPLAINED, "rows": rows}
        with PathManager.open(os.path.join(self._tables_dir, f"{TASK}.json"), "w") as f:
            json.dump(summary, f, indent=2)
        with PathManager.open(os.path.join(self._tables_dir, f"{TASK}.md"), "w") as f:
            f.write(f"COCO box AP (%) on {dataset}. {ROWS_EXPLAINED}\n\n{table}\n")


@contextlib.contextmanager
def quiet_coco(coco_logger):
    """
    COCOeval prints a summary and COCOEvaluator logs tables for every set; the one table
    of all sets replaces them.
    """
    level = coco_logger.level
    coco_logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        coco_logger.setLevel(level)
