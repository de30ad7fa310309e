import pytest

from projects.cascade.export import FORMATS, deploy_metadata, export_model
from tests.helpers import (
    EXPORT_MODELS,
    build,
    eager_inference,
    export_test_images,
    noise,
    tiny_export_cfg,
)


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """
    name -> (cfg, model, {format: exported file}, {image name: (image, eager Instances)})
    for the tiny EXPORT_MODELS, made once, on first use.
    """
    cache = {}

    def get(name):
        if name not in cache:
            cfg = tiny_export_cfg(**EXPORT_MODELS[name])
            model = build(cfg, seed=0).eval()
            out = str(tmp_path_factory.mktemp(name))
            image = noise(128, 160, 0)
            files = {f: export_model(model, image, f, out, deploy_metadata(cfg)) for f in FORMATS}
            eager = {
                k: (v, eager_inference(model, v)) for k, v in export_test_images(model).items()
            }
            cache[name] = cfg, model, files, eager
        return cache[name]

    return get
