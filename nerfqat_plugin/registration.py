"""The methods as nerfstudio sees them (entry points ``nerfstudio.method_configs``): nerf-qat and nerfacto-qat."""

from __future__ import annotations

from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from nerfqat_plugin.datamanager import NeRFQATDataManager
from nerfqat_plugin.llff import LLFFDataParserConfig
from nerfqat_plugin.nerf.model import NeRFQATModelConfig
from nerfqat_plugin.nerfacto.model import NerfactoQATModelConfig
from nerfqat_plugin.schedulers import ExponentialLRConfig
from nerfqat_plugin.startup import patch_external_method_check

patch_external_method_check()  # nerfstudio's method list builds in ~12 s less (startup.py)

MAX_ITERATIONS = 50000

nerf_qat = MethodSpecification(
    config=TrainerConfig(
        method_name="nerf-qat",
        max_num_iterations=MAX_ITERATIONS,
        steps_per_eval_batch=500,
        steps_per_save=2000,
        mixed_precision=False,
        pipeline=VanillaPipelineConfig(
            datamanager=VanillaDataManagerConfig(
                _target=NeRFQATDataManager,
                dataparser=LLFFDataParserConfig(),
                train_num_rays_per_batch=1024,
                eval_num_rays_per_batch=1024,
            ),
            model=NeRFQATModelConfig(),
        ),
        optimizers={
            "fields": {
                "optimizer": AdamOptimizerConfig(lr=5e-4, eps=1e-8),
                "scheduler": ExponentialLRConfig(lr_final=5e-5, max_steps=MAX_ITERATIONS),
            }
        },
        viewer=ViewerConfig(num_rays_per_chunk=4096),
        vis="viewer+tensorboard",
    ),
    description="Vanilla NeRF with quantization-aware training (fused Linear+ReLU, int8 export).",
)


NERFACTO_ITERATIONS = 30000


def _nerfacto_optimizers():
    """nerfstudio's nerfacto optimizers, with schedules that load under ``weights_only`` (``schedulers``)."""
    return {
        "proposal_networks": {
            "optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15),
            "scheduler": ExponentialLRConfig(lr_final=1e-4, max_steps=200000),
        },
        "fields": {
            "optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15),
            "scheduler": ExponentialLRConfig(lr_final=1e-4, max_steps=200000),
        },
        "camera_opt": {
            "optimizer": AdamOptimizerConfig(lr=1e-3, eps=1e-15),
            "scheduler": ExponentialLRConfig(lr_final=1e-4, max_steps=5000),
        },
    }


nerfacto_qat = MethodSpecification(
    config=TrainerConfig(
        method_name="nerfacto-qat",
        max_num_iterations=NERFACTO_ITERATIONS,
        steps_per_eval_batch=500,
        steps_per_save=2000,
        mixed_precision=False,  # fp16 products of codes are not exact
        pipeline=VanillaPipelineConfig(
            datamanager=VanillaDataManagerConfig(
                _target=NeRFQATDataManager,
                dataparser=LLFFDataParserConfig(ndc=False),  # nerfacto contracts unbounded space instead
                train_num_rays_per_batch=4096,
                eval_num_rays_per_batch=4096,
            ),
            model=NerfactoQATModelConfig(
                eval_num_rays_per_chunk=1 << 15,
                average_init_density=0.01,
                camera_optimizer=CameraOptimizerConfig(mode="SO3xR3"),
            ),
        ),
        optimizers=_nerfacto_optimizers(),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    ),
    description="nerfstudio's nerfacto with quantization-aware hash grids (2-8 bits per level) and w8a8 MLPs.",
)
