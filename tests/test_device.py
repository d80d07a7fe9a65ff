"""The device is chosen at run time (CUDA when present), by both trainers; a real CUDA step only where CUDA exists.

The brief: code must also run on CUDA when present. Without a GPU these tests mock ``torch.cuda.is_available``
and check that the choice is made at run time, from ``OrganismConfig.device`` (``"auto"`` by default), before any
model is built; with a GPU, one population update runs on it and matches the CPU's.
"""

from __future__ import annotations

import pytest
import torch

from physrl.organisms import OrganismConfig
from physrl.organisms import _model


class _Chosen(Exception):
    """Raised by the mocked device choice to stop a trainer right after it chose."""


def test_auto_is_cuda_when_present_and_cpu_otherwise(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _model.pick_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _model.pick_device("auto") == torch.device("cpu")
    assert _model.pick_device("cpu") == torch.device("cpu")  # a named device is kept whatever is present
    assert OrganismConfig().device == "auto"  # the default defers the choice to run time


@pytest.mark.parametrize("trainer", ["trl", "population"])
def test_trainers_choose_the_device_at_run_time(monkeypatch, tmp_path, trainer):
    from physrl.organisms import _train, train

    asked = []

    def choose(name="auto"):
        asked.append(name)
        raise _Chosen(name)

    monkeypatch.setattr(_model, "pick_device", choose)  # the population trainer imports it when it runs
    monkeypatch.setattr(_train, "pick_device", choose)  # the TRL trainer's module-level import
    with pytest.raises(_Chosen):
        train(OrganismConfig(trainer=trainer, progress=False, stage1_cache="off"), tmp_path / "run")
    assert asked == ["auto"]


def test_grpo_args_leave_the_cpu_for_cuda(tmp_path):
    from physrl.organisms import make_family
    from physrl.organisms._train import _grpo_args

    config = OrganismConfig()
    family = make_family(config)
    assert _grpo_args(config, tmp_path, torch.device("cpu"), family).use_cpu is True
    assert _grpo_args(config, tmp_path, torch.device("cuda"), family).use_cpu is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_population_update_on_cuda_matches_cpu(tmp_path):
    import warnings

    from physrl.organisms import build_tokenizer, make_family
    from physrl.organisms._model import build_model
    from physrl.organisms._population import MemberBatch, PopulationGRPO
    from physrl.organisms._stacked import StackedLlama
    from physrl.organisms._train import _grpo_args

    config = OrganismConfig()
    family = make_family(config)
    tokenizer = build_tokenizer(family.words())
    batches = [MemberBatch([[5, 6, 7]] * 8, [[8, 9, 10, 11]] * 4 + [[9, 8]] * 4, [1.0, 0, 0, 1, 0, 1, 1, 0])
               for _ in range(2)]
    weights = {}
    for device in (torch.device("cpu"), torch.device("cuda")):
        models = [build_model(tokenizer, 64, 2, 4, seed=s).to(device) for s in (0, 1)]
        stacked = StackedLlama(models)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            grpo = PopulationGRPO(stacked, _grpo_args(config.replace(num_generations=8, groups_per_step=1),
                                                      tmp_path / device.type, device, family), tokenizer)
        grpo.step(batches)
        assert all(p.device.type == device.type for p in stacked.parameters())
        weights[device.type] = {n: p.detach().cpu() for n, p in stacked.params.items()}
    for name, w in weights["cpu"].items():
        torch.testing.assert_close(weights["cuda"][name], w, rtol=1e-4, atol=1e-6)
