"""The nerf-qat method as nerfstudio sees it (entry point ``nerfstudio.method_configs``)."""

from __future__ import annotations

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from nerfqat_plugin.datamanager import NeRFQATDataManager
from nerfqat_plugin.llff import LLFFDataParserConfig
from nerfqat_plugin.model import NeRFQATModelConfig
from nerfqat_plugin.schedulers import ExponentialLRConfig

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
