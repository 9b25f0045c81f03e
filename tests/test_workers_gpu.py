"""On a Ray cluster with GPUs the final fine-tune runs there, as a Ray task on one GPU.

The cluster here is a Ray instance started by the test with one *logical* GPU (Ray
counts resources; the task still computes on the CPU when CUDA is absent): what is
checked is that the fine-tune was scheduled on the cluster, in another process, and
that its result is the model the run returns.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from rlprune import api, data, train
from rlprune.workers import ray_available


@pytest.fixture()
def ray_with_a_gpu() -> Iterator[None]:
    if not ray_available():
        pytest.skip("Ray is not installed (pip install 'rlprune[ray]')")
    import ray

    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


def test_the_fine_tune_runs_on_a_gpu_of_the_cluster(ray_with_a_gpu: None,
                                                    trained_digits_cnn: nn.Module,
                                                    digits: data.Splits) -> None:
    res = api.prune(trained_digits_cnn, digits, "params<=0.3", method="random", episodes=4,
                    finetune_epochs=1, ray="auto", workers=1, progress=False)
    where = res.search.extra["parallel"]["finetune"]
    assert where["pid"] != os.getpid()  # another process, scheduled by Ray
    # what came back is what the run returns and reports
    assert res.accuracy["pruned"] == pytest.approx(train.evaluate(res.model, digits.test))
    assert res.accuracy["pruned"] > res.accuracy["pruned_before_finetune"] - 0.02
    assert torch.isfinite(torch.cat([p.flatten() for p in res.model.parameters()])).all()
