"""Data-parallel QAT in 2 CPU processes (gloo) through nerfstudio's Trainer: ranks stay identical, observers see all
ranks' rays, and the run's checkpoint exports, evaluates and resumes in one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nerfqat_plugin.tools.ddp import known_batch, launch
from nerfqat_plugin.tools.runs import find_config
from nerfqat_plugin.tools.scenes import write_llff_scene
from tests.conftest import eval_in_process, run_ns, train_args


def test_observer_ranges_are_those_of_one_process_fed_every_rank_batch(tmp_path: Path):
    from nerfqat_plugin.nerf.mlp import NeRFMLP
    from nerfqat_plugin.quant import QuantConfig, set_quant_state

    steps = 3
    ranks = launch(tmp_path, 2, mode="observers", steps=steps)
    assert ranks[0]["buffers"] == ranks[1]["buffers"]

    def one_process(batches) -> dict:
        torch.manual_seed(42)  # the workers' seed: the same initial weights
        mlp = NeRFMLP(63, 27, QuantConfig(observer_momentum=0.25), num_layers=3, layer_width=16, skip_layer=1,
                      view_width=8).train()  # fmt: skip
        set_quant_state(mlp, active=False, observe=True)
        with torch.no_grad():
            for positions, directions in batches:
                raw, trunk = mlp.density(positions)
                mlp.color(trunk, directions)
        return {k: v.tolist() for k, v in mlp.state_dict().items() if k.endswith(("min_val", "max_val"))}

    both = [[known_batch(r, step) for r in (0, 1)] for step in range(steps)]
    union = one_process((torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in both)
    assert ranks[0]["buffers"] == union
    assert one_process(known_batch(0, step) for step in range(steps)) != union  # rank 1's rays count too


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("ddp")
    scene = write_llff_scene(work / "scene", num_images=9)
    ranks = launch(work / "run", 2, data=scene, steps=8, quant_start_step=3)
    return work, scene, ranks


def test_ranks_hold_identical_parameters_and_observer_ranges_and_only_rank_0_saves(ddp_run):
    work, _, ranks = ddp_run
    assert [r["main_process"] for r in ranks] == [True, False]
    states = [torch.load(work / "run" / f"rank{i}.pt", weights_only=True) for i in range(2)]
    assert states[0].keys() == states[1].keys()
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
    assert any(k.endswith("trunk.0.out_quant.max_val") for k in states[0]) and len(ranks[0]["sync_s"]) == 8
    checkpoints = sorted((work / "run" / "outputs" / "run" / "nerf-qat" / "run" / "nerfstudio_models").iterdir())
    assert [p.name for p in checkpoints] == ["step-000000007.ckpt"]


def test_checkpoint_of_a_two_process_run_exports_evaluates_and_resumes_in_one(ddp_run, tmp_path: Path):
    work, scene, _ = ddp_run
    config = work / "run" / "outputs" / "run" / "nerf-qat" / "run" / "config.yml"
    run_ns("ns-export-int8", "--load-config", str(config), "--output-dir", str(tmp_path / "int8"), cwd=tmp_path)
    results = {}
    for name, cfg in (("trained", config), ("int8", tmp_path / "int8" / "config.yml")):
        results[name] = eval_in_process(cfg, tmp_path / f"{name}.json")
    assert abs(results["int8"]["psnr"] - results["trained"]["psnr"]) < 0.02
    checkpoints = config.parent / "nerfstudio_models"
    data = ["llff-data", "--data", str(scene), "--downscale-factor", "4"]
    output = run_ns("ns-train", *train_args(tmp_path / "resumed", 2, ["--load-dir", str(checkpoints), *data]),
                    cwd=tmp_path)  # fmt: skip
    assert "Done loading Nerfstudio checkpoint" in output
    resumed = find_config(tmp_path / "resumed", "tiny", "nerf-qat").parent / "nerfstudio_models"
    assert [p.name for p in resumed.iterdir()] == ["step-000000009.ckpt"]  # steps 8 and 9 after the loaded 7
