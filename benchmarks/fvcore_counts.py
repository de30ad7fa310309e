"""Parameters and FLOPs (fvcore, through detectron2's analysis tools) of the compared models."""

import torch

from detectron2.utils.analysis import FlopCountAnalysis, parameter_count


def section_params_flops(results, name, models, inputs):
    rows = {}
    for n, model in models.items():
        with torch.no_grad():
            flops = FlopCountAnalysis(model, inputs)
            flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            total = flops.total()
            by_module = flops.by_module()  # the model is traced inside a wrapper: "model."
            roi = by_module.get("roi_heads", by_module.get("model.roi_heads", 0))
        params = parameter_count(model)
        rows[n] = {
            "params_M": params[""] / 1e6,
            "roi_heads_params_M": params["roi_heads"] / 1e6,
            "gflops": total / 1e9,
            "roi_heads_gflops": roi / 1e9,
        }
    for n in rows:
        for ref in ("builtin", "faster"):
            if ref != n:
                rows[n][f"params_x_{ref}"] = rows[n]["params_M"] / rows[ref]["params_M"]
                rows[n][f"gflops_x_{ref}"] = rows[n]["gflops"] / rows[ref]["gflops"]
    results[f"{name}/params_flops"] = rows
