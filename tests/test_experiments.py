"""Every experiment config composes, states its protocol, and runs one short debug step of its sweep."""
from pathlib import Path

import pytest

from datacull.config import compose
from datacull.stages.sweep import sweep
from datacull.sweep import expand_grid

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "experiment").glob("*.yaml"))


def test_the_issue_s_experiments_exist():
    assert {"quickstart", "fmnist_scaling", "fmnist_metrics", "cifar10_paper", "svhn_paper",
            "imagenet_paper"} <= set(EXPERIMENTS)


def test_paper_protocols_are_the_papers():
    cifar = compose(["experiment=cifar10_paper"])
    assert (cifar.model.name, cifar.train.epochs, cifar.train.schedule) == ("resnet18_cifar", 200, "step")
    assert list(cifar.train.milestones) == [60, 120, 160] and cifar.train.gamma == 0.2
    imagenet = compose(["experiment=imagenet_paper"])
    assert (imagenet.model.name, imagenet.train.epochs, imagenet.train.batch_size) == ("resnet50", 90, 256)
    assert list(imagenet.train.milestones) == [30, 60] and imagenet.train.weight_decay == 1e-4
    assert imagenet.metric.ssp.k == 1000 and list(imagenet.sweep.policies) == ["keep_hard"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_runs_a_debug_step(name, tmp_path):
    cfg = compose([f"experiment={name}"])
    if "sweep" in cfg and name != "fashion_mnist_ssp":
        assert len(expand_grid(cfg)) >= 3
    debug = compose([f"experiment={name}", "data=digits", "encoder=pixels", "model=resnet8", "model.width=4",
                     "model.image_size=null", "train=cpu", "train.epochs=1", "sweep.metrics=[random,ssp]",
                     "sweep.sizes=[300]", "sweep.fractions=[0.5,1.0]", "sweep.seeds=[0]", "sweep.report=false",
                     "metric.ssp.k=4", f"paths.work_dir={tmp_path}", "device=cpu"])
    paths = sweep(debug)
    assert Path(paths["results"]).is_file()
