"""
`pip install -e .` and `pip install .` of the checkout into an environment that already has
detectron2 (and torch): the package then imports from any folder, finds the demos' data
through $DETECTRON2_DATASETS, shares the `projects` namespace with other projects, and a wheel
of it carries the C++ source that the parallel RoIAlign is compiled from.
"""

import shutil
import subprocess
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO, env

pytestmark = pytest.mark.e2e


def _checkout_copy(destination):
    """The files git tracks, as a fresh clone of this working tree has them."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    for name in filter(None, files):
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    return destination


def _new_user_env(root):
    """A new venv that sees this one's packages (torch, detectron2) but not this project."""
    venv.create(root / "env", with_pip=True)
    python = root / "env" / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # A .pth line adds a folder to sys.path; the .pth files inside that folder (this
    # venv's editable install of the project) are not read, so the project is not there.
    (site / "detectron2_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # The setuptools that venv bundles is older than the environment's and would shadow it.
    subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=True)
    return python, root


@pytest.fixture(scope="module")
def user_env(tmp_path_factory):
    return _new_user_env(tmp_path_factory.mktemp("user_env"))


def _run(cmd, cwd):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_editable_install_imports_from_another_folder(user_env, tmp_path):
    python, root = user_env
    probe = "import projects.cascade as c; print(c.__file__)"
    failed = subprocess.run([python, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert failed.returncode != 0 and "No module named 'projects'" in failed.stderr

    checkout = _checkout_copy(root / "checkout")
    _run(
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "-e",
            str(checkout),
        ],
        cwd=tmp_path,
    )
    printed = _run(
        [python, "-c", probe + "; import detectron2; print(detectron2.__file__)"], cwd=tmp_path
    )
    package, detectron2 = printed.split()
    assert package == str(checkout / "projects" / "cascade" / "__init__.py")
    assert detectron2.startswith(sysconfig.get_paths()["purelib"]), (
        "detectron2 is the environment's"
    )
    # Importing registers the head, as train_net.py and the configs expect.
    _run(
        [
            python,
            "-c",
            "import projects.cascade; from detectron2.modeling import ROI_HEADS_REGISTRY; "
            "assert 'CascadeRCNNROIHeads' in ROI_HEADS_REGISTRY",
        ],
        cwd=tmp_path,
    )


def test_wheel_carries_the_cpp_source(user_env, tmp_path):
    python, root = user_env
    checkout = _checkout_copy(tmp_path / "checkout")
    _run(
        [
            python,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "wheel"),
            str(checkout),
        ],
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "projects/cascade/layers/csrc/roi_align_cpu.cpp" in names
    assert "projects/cascade/modeling/roi_heads/cascade_roi_heads.py" in names
    assert not any(n.startswith(("tests/", "tools/", "configs/")) for n in names)


def test_install_works_from_another_folder_data_included(tmp_path, trees_prepared):
    """A non-editable install: nothing of the checkout is read, and the data is found."""
    python, root = _new_user_env(tmp_path / "user_env")
    checkout = _checkout_copy(root / "checkout")
    pip = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation"]
    _run([*pip, str(checkout)], cwd=tmp_path)
    shutil.rmtree(checkout)  # the installed copy must stand alone

    # Another detectron2 project in the same namespace, elsewhere on sys.path.
    other = tmp_path / "other_project" / "projects" / "other"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("NAME = 'other'\n")
    probe = f"""
import sys
sys.path.append({str(tmp_path / "other_project")!r})
import projects, projects.cascade, projects.other
assert getattr(projects, "__file__", None) is None, "projects must be a namespace package"
assert projects.other.NAME == "other"
print(projects.cascade.__file__)
from detectron2.data import DatasetCatalog
from projects.cascade.demo import register_demo
register_demo()
print(len(DatasetCatalog.get("trees_val")))
"""
    environment = {**env(), "DETECTRON2_DATASETS": str(trees_prepared.parent)}
    proc = subprocess.run(
        [python, "-c", probe], cwd=tmp_path, env=environment, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    installed, images = proc.stdout.split()
    assert "site-packages" in installed and not installed.startswith(str(REPO))
    assert int(images) == 10  # trees_val's tiles
