"""nerf-qat model: coarse and fine quantization-aware NeRF fields with nerfstudio samplers and renderers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Type

import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.model_components.losses import MSELoss
from nerfstudio.model_components.ray_samplers import LinearDisparitySampler, PDFSampler, UniformSampler
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, RGBRenderer
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps, misc
from torch import Tensor, nn
from torch.nn import Parameter

from nerfqat_plugin.int8_format import Int8ExportError, mlp_tensors
from nerfqat_plugin.integer_export import linear_descriptions
from nerfqat_plugin.lpips import OfflineLPIPS
from nerfqat_plugin.ndc import NDCMode, ndc_space
from nerfqat_plugin.nerf.colliders import AxisDepthCollider, scene_collider
from nerfqat_plugin.nerf.export import GRID_TENSOR, architecture, load_weights
from nerfqat_plugin.nerf.field import EncodingImpl, QuantNeRFField, nerf_encoding, view_directions
from nerfqat_plugin.nerf.mlp import NeRFMLP
from nerfqat_plugin.nerf.occupancy import OccupancyConfig, OccupancyGrid, evaluating, march
from nerfqat_plugin.qat_callbacks import apply_schedule, schedule_callbacks
from nerfqat_plugin.quant.config import QuantConfig
from nerfqat_plugin.quant.dispatch import Kernel, MatmulMode
from nerfqat_plugin.quant.layers import set_train_kernels
from nerfqat_plugin.quant.size import fp32_nbytes, num_params, quantized_nbytes

Sampler = Literal["hierarchical", "occupancy"]
STOPPING_PAYS = 0.3
"""Training stops rays early (a density pass without gradients first) while that drops at least this fraction of the
occupied samples, as measured on the batch after each grid update: the pass costs about a third of the forward and
backward passes that each dropped sample saves."""


@dataclass
class NeRFQATModelConfig(ModelConfig):
    """Vanilla NeRF whose MLPs are trained with simulated low-bit arithmetic."""

    _target: Type = field(default_factory=lambda: NeRFQATModel)
    sampler: Sampler = "occupancy"
    """Where rays are sampled. 'occupancy': one network, on evenly spaced samples that lie in cells an occupancy grid
    marks occupied, front to back until the ray is opaque (--pipeline.model.occupancy.*); the default, as it reached
    a better held-out PSNR in the same training time on fern (images_16) and on an object scene
    (benchmarks/occupancy_cpu_avx2.md). 'hierarchical': the paper's coarse network on evenly spaced samples, then
    the fine network on those and on samples drawn from the coarse weights."""
    num_coarse_samples: int = 64
    """Hierarchical sampler: uniform samples per ray for the coarse network."""
    num_importance_samples: int = 128
    """Hierarchical sampler: extra samples per ray drawn from the coarse weights; the fine network sees coarse +
    these."""
    occupancy: OccupancyConfig = field(default_factory=OccupancyConfig)
    """Occupancy sampler: the grid and the marching (used with --pipeline.model.sampler occupancy)."""
    num_layers: int = 8
    """Linear+ReLU blocks in the trunk of each MLP."""
    layer_width: int = 256
    """Width of the trunk (and of the feature layer)."""
    skip_layer: int = 4
    """Index of the trunk layer that also receives the encoded position (4: the 5th layer)."""
    view_width: int = 128
    """Width of the view-direction branch."""
    position_frequencies: int = 10
    """Frequencies of the position encoding (sin and cos of 2^k * pi * x, k < this)."""
    direction_frequencies: int = 4
    """Frequencies of the view-direction encoding."""
    encoding_implementation: EncodingImpl = "torch"
    """Positional encoding backend: 'torch', 'tcnn' (tinycudann), or 'auto' (tcnn where installed). The two order
    and scale their features differently, so a run (and its export) must be rendered with the one it trained with
    (recorded in the export and checked when it loads)."""
    background_color: Literal["random", "last_sample", "black", "white"] = "white"
    """Color of empty space behind the scene."""
    raw_noise_std: float = 1.0
    """Std of Gaussian noise added to raw density while training (1.0 as the original NeRF on real scenes)."""
    ndc: NDCMode = "auto"
    """Warp rays to normalized device coordinates (forward-facing scenes); 'auto' follows llff-data's --ndc flag."""
    lindisp: bool = False
    """Without NDC: space the coarse samples evenly in inverse depth instead of depth (NDC does this by itself)."""
    quant: QuantConfig = field(default_factory=QuantConfig)
    """Quantization spec shared by training and export."""
    quant_compile: bool = True
    """Fuse the fake-quantization arithmetic (observers, rounding, masks, scales) with torch.compile: the same codes
    and gradients in fewer passes over memory; compiled on first use (seconds), eager if compiling fails."""
    quant_fast_matmul: MatmulMode = "auto"
    """How fake-quantized layers multiply. The product of codes is exact on every path: int8 units (oneDNN on CPUs,
    in 7-bit halves where a start-up self-check finds its 8-bit product inexact, as without VNNI), bf16 operands with
    fp32 results (CUDA), or fp32; gradient products take bf16 (where native) or fp32 operands. 'auto': per layer
    shape, the fastest measured on this machine (said once in the log), never slower than fp32. True: int8/bf16
    products and bf16 gradients without measuring. False: fp32 throughout."""
    int8_weights: Optional[Path] = None
    """Integer export file to render from (ns-export-int8 sets it); the MLPs then run on its integer weights."""
    int8_kernel: Kernel = "auto"
    """Integer matmul of an export: 'int' (an integer product of codes: torch._int_mm, oneDNN, or oneDNN on 7-bit
    halves of the codes; int8 tensor cores on CUDA), 'float' (the product in fp32, any device), 'onednn' (oneDNN's
    fused int8 Linear, CPU, only where its int8 product is exact, as with VNNI), all bit-exact with the trained
    model (training rounds in oneDNN's order). 'auto': per layer shape and row count, the fastest of these measured
    on this machine (said once in the log); it takes the fused kernel only after a start-up self-check finds its
    codes equal to training's. A named kernel that is not exact or not available here falls back to 'auto'."""
    int8_compile: bool = True
    """Fuse the integer layers' elementwise steps (input quantization, requantization, the 'int' kernel's epilogue)
    with torch.compile: several times faster, compiled on first use (seconds); falls back to eager on failure."""
    cpu_tile_samples: int = 2048
    """Rendering on a CPU (ns-eval, ns-render, the viewer: no gradients), run the MLPs over this many samples at a
    time, so a tile's activations stay in the CPU's caches from layer to layer (same values; see benchmarks/ for the
    speed-up). 0: the whole batch at once. Training and GPUs always take the whole batch."""
    loss_coefficients: Dict[str, float] = field(default_factory=lambda: {"rgb_loss_coarse": 1.0, "rgb_loss_fine": 1.0})
    """Weights of the coarse and fine photometric losses."""


class NeRFQATModel(Model):
    """Coarse-to-fine NeRF with fake-quantized MLPs (or an export's integer MLPs)."""

    config: NeRFQATModelConfig

    def populate_modules(self) -> None:
        cfg = self.config
        metadata = self.kwargs.get("metadata") or {}
        self.ndc = ndc_space(cfg.ndc, metadata)
        """The NDC space rays are rendered in (forward-facing scenes), or None."""
        self.collider = scene_collider(self.ndc, metadata, cfg.collider_params)
        hierarchical = cfg.sampler == "hierarchical"
        self.field_coarse: Optional[QuantNeRFField] = self._make_field() if hierarchical else None
        self.field_fine = self._make_field()
        lindisp = cfg.lindisp and self.ndc is None
        if lindisp and not self.collider.near_plane > 0:  # type: ignore[operator]
            raise ValueError(f"--pipeline.model.lindisp needs a near plane > 0, got {self.collider.near_plane}")
        sampler = LinearDisparitySampler if lindisp else UniformSampler
        self.sampler_uniform = sampler(num_samples=cfg.num_coarse_samples if hierarchical else cfg.occupancy.samples)
        """The evenly spaced samples: the coarse pass's, or the bins the occupancy sampler marches through."""
        self.sampler_pdf = PDFSampler(num_samples=cfg.num_importance_samples) if hierarchical else None
        self.grid = None if hierarchical else OccupancyGrid(self.scene_box.aabb, cfg.occupancy)
        self._measure_stopping = True
        """Training: whether the next batch measures the samples its early stop drops (after each grid update)."""
        self._stopping_pays = True
        """Training: whether the last measurement found early stopping worth its pass without gradients."""
        self.renderer_rgb = RGBRenderer(background_color=cfg.background_color)
        self.renderer_accumulation = AccumulationRenderer()
        self.renderer_depth = DepthRenderer()
        self.rgb_loss = MSELoss()

        from torchmetrics.functional import structural_similarity_index_measure
        from torchmetrics.image import PeakSignalNoiseRatio

        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = structural_similarity_index_measure
        self.lpips = OfflineLPIPS()
        if cfg.int8_weights is not None:
            self.load_export(Path(cfg.int8_weights))
        set_train_kernels(self, compile=cfg.quant_compile, matmul=cfg.quant_fast_matmul)
        self.update_to_step(0)

    def _make_field(self) -> QuantNeRFField:
        cfg = self.config
        pos_enc = nerf_encoding(3, cfg.position_frequencies, cfg.encoding_implementation)
        dir_enc = nerf_encoding(3, cfg.direction_frequencies, cfg.encoding_implementation)
        mlp = NeRFMLP(
            position_dim=pos_enc.get_out_dim(),
            direction_dim=dir_enc.get_out_dim(),
            quant=cfg.quant,
            num_layers=cfg.num_layers,
            layer_width=cfg.layer_width,
            skip_layer=cfg.skip_layer,
            view_width=cfg.view_width,
        )
        return QuantNeRFField(
            mlp, pos_enc, dir_enc, raw_noise_std=cfg.raw_noise_std, cpu_tile_samples=cfg.cpu_tile_samples
        )

    @property
    def fields(self) -> Dict[str, QuantNeRFField]:
        """The fields the sampler uses by name: 'coarse' and 'fine' (hierarchical), or 'fine' alone (occupancy)."""
        named = {"coarse": self.field_coarse, "fine": self.field_fine}
        return {name: f for name, f in named.items() if f is not None}

    @property
    def named_mlps(self) -> Dict[str, nn.Module]:
        """The MLPs by their tensor-name prefix in the export ('coarse.', 'fine.')."""
        return {f"{name}.": f.mlp for name, f in self.fields.items()}

    @property
    def mlps(self) -> Tuple[nn.Module, ...]:
        """The MLPs the sampler uses (coarse and fine, or the occupancy sampler's one)."""
        return tuple(self.named_mlps.values())

    # --- the integer export (integer_export.IntegerExport) ---

    def export_refusal(self) -> Optional[str]:
        return None

    @torch.no_grad()
    def export_tensors(self) -> Dict[str, Tensor]:
        """Each MLP's integer Linear tensors (``int8_format.mlp_tensors``) and, with the occupancy sampler, the
        grid's bitfield."""
        tensors: Dict[str, Tensor] = {}
        for prefix, mlp in self.named_mlps.items():
            tensors.update(mlp_tensors(mlp, prefix, self.config.quant))
        if self.grid is not None:
            tensors[GRID_TENSOR] = self.grid.packed()
        return tensors

    def export_metadata(self) -> Dict[str, object]:
        return {"architecture": architecture(self.config, self.field_fine.encoding), "render": self.render_settings()}

    def export_descriptions(self) -> Dict[str, Tuple[str, str]]:
        described = linear_descriptions(self.named_mlps, self.config.quant.weight_bits)
        if self.grid is not None:
            r = self.grid.resolution
            described[GRID_TENSOR] = (f"{r}x{r}x{r}", f"bitfield, zlib ({self.grid.occupied_fraction():.1%} occupied)")
        return described

    def fp32_bytes(self) -> float:
        return self.size_metrics()["model_bytes_fp32"]

    def load_export(self, path: Path) -> None:
        """The MLPs become integer ones holding the file's weights (``nerf.export.load_weights``, which checks the
        architecture and quantization), and the occupancy grid takes the file's bitfield."""
        cfg = self.config
        arch = architecture(cfg, self.field_fine.encoding)
        tensors = load_weights(path, self.named_mlps, arch, cfg.quant, cfg.int8_kernel, cfg.int8_compile)
        self._load_grid(tensors, path)

    def _load_grid(self, tensors: Dict[str, Tensor], path: Path) -> None:
        """The occupancy grid of an integer export (its bitfield), checked against the sampler the config names."""
        if (GRID_TENSOR in tensors) != (self.grid is not None):
            has = "has an occupancy grid" if GRID_TENSOR in tensors else "has no occupancy grid"
            raise Int8ExportError(f"{path}: the file {has}, the config's sampler is {self.config.sampler!r}")
        if self.grid is not None:
            try:
                self.grid.load_packed(tensors[GRID_TENSOR], str(path))
            except ValueError as err:
                raise Int8ExportError(str(err)) from None

    def update_to_step(self, step: int) -> None:
        """The QAT schedule (``qat_callbacks.apply_schedule``)."""
        apply_schedule(self, self.config.quant, step)

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> List[TrainingCallback]:
        callbacks = schedule_callbacks(self)
        if self.grid is not None:  # after update_to_step: the grid sees the density as this step computes it
            callbacks.append(
                TrainingCallback(
                    where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                    update_every_num_iters=self.config.occupancy.update_every,
                    func=self.update_grid,
                )
            )
        return callbacks

    def update_grid(self, step: int) -> None:
        """Update the occupancy grid from the network's density (fake-quantized once QAT is on), observers still;
        the next training batch measures again whether stopping rays early pays."""
        assert self.grid is not None
        field_ = self.field_fine
        with evaluating(field_):
            self.grid.update(field_.density_at, step)
        self._measure_stopping = True

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        return {"fields": [p for f in self.fields.values() for p in f.parameters()]}

    # --- outputs ------------------------------------------------------------------------------------------------

    def _density_scale(self, ray_samples) -> Optional[Tensor]:
        """What a field's density is multiplied by per unit of the ray parameter: NDC directions are not unit length
        (a step dt covers |d| dt of NDC space); None elsewhere."""
        if self.ndc is not None:
            return ray_samples.frustums.directions.norm(dim=-1, keepdim=True)
        return None

    def _composite(
        self, ray_samples, density: Tensor, rgb: Tensor, scale: Optional[Tensor] = None
    ) -> Tuple[Dict[str, Tensor], Tensor]:
        """Weights and outputs of per-sample density and colour; ``scale``: ``_density_scale(ray_samples)`` where the
        caller has it already."""
        if scale is None:
            scale = self._density_scale(ray_samples)
        if scale is not None:
            density = density * scale
        weights = ray_samples.get_weights(density)
        rendered = {
            "rgb": self.renderer_rgb(rgb=rgb, weights=weights),
            "accumulation": self.renderer_accumulation(weights),
            "depth": self.renderer_depth(weights, ray_samples),
        }
        return rendered, weights

    def _render(self, field_: QuantNeRFField, ray_samples) -> Tuple[Dict[str, Tensor], Tensor]:
        out = field_(ray_samples)
        return self._composite(ray_samples, out[FieldHeadNames.DENSITY], out[FieldHeadNames.RGB])

    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:  # type: ignore[override]
        if self.grid is not None:
            return self._occupancy_outputs(ray_bundle)
        assert self.field_coarse is not None and self.sampler_pdf is not None
        samples_coarse = self.sampler_uniform(ray_bundle)
        coarse, weights_coarse = self._render(self.field_coarse, samples_coarse)
        samples_fine = self.sampler_pdf(ray_bundle, samples_coarse, weights_coarse)
        fine, _ = self._render(self.field_fine, samples_fine)
        outputs = dict(fine)
        outputs.update({f"{k}_coarse": v for k, v in coarse.items()})
        return outputs

    def _occupancy_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        """The occupancy sampler (see ``occupancy``): the network on the samples in occupied cells in front of the
        point where each ray turns opaque, packed; every other sample has zero density. Outputs as the fine pass's,
        and "mlp_samples": the samples each ray evaluated."""
        assert self.grid is not None
        cfg = self.config.occupancy
        samples = self.sampler_uniform(ray_bundle)
        positions, directions = samples.frustums.get_positions(), view_directions(samples)
        keep = self.grid.occupied(positions)
        lengths = samples.deltas[..., 0]
        scale = self._density_scale(samples)
        if scale is not None:
            lengths = lengths * scale[..., 0]
        field_ = self.field_fine

        def evaluate(mask: Tensor, columns: slice) -> Dict[str, Tensor]:  # no gradients: the packed points alone
            density, rgb = field_.points(positions[:, columns][mask], directions[:, columns][mask])
            return {"density": density, "rgb": rgb}

        if torch.is_grad_enabled():
            if cfg.early_stop > 0 and (self._measure_stopping or self._stopping_pays):
                # where rays turn opaque: densities without gradients, noise or observers
                def density(mask: Tensor, columns: slice) -> Dict[str, Tensor]:
                    return {"density": field_.density_at(positions[:, columns][mask])}

                occupied = keep.sum()
                with evaluating(field_):
                    _, keep = march(keep, lengths, density, {"density": 1}, cfg.early_stop, cfg.segment)
                if self._measure_stopping:  # the pass costs about a third of what each sample it drops saves
                    self._stopping_pays = bool(keep.sum() <= occupied * (1 - STOPPING_PAYS))
                    self._measure_stopping = False
            if not bool(keep.any()):  # a batch of empty rays still gives the loss a path to the weights
                keep = keep.clone()
                keep[0, 0] = True
            out = field_(samples[keep])
            density, rgb = (_scatter(keep, out[head]) for head in (FieldHeadNames.DENSITY, FieldHeadNames.RGB))
        else:
            dense, keep = march(keep, lengths, evaluate, {"density": 1, "rgb": 3}, cfg.early_stop, cfg.segment)
            density, rgb = dense["density"], dense["rgb"]
        outputs, _ = self._composite(samples, density, rgb, scale)
        outputs["mlp_samples"] = keep.sum(dim=-1, keepdim=True).float()
        return outputs

    # --- losses and metrics -------------------------------------------------------------------------------------

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        image = batch["image"].to(outputs["rgb"].device)
        losses = {}
        passes = (("rgb_loss_coarse", "_coarse"), ("rgb_loss_fine", ""))
        for name, suffix in passes if self.field_coarse is not None else passes[1:]:
            pred, gt = self.renderer_rgb.blend_background_for_loss_computation(
                pred_image=outputs["rgb" + suffix],
                pred_accumulation=outputs["accumulation" + suffix],
                gt_image=image,
            )
            losses[name] = self.rgb_loss(gt, pred)
        return misc.scale_dict(losses, self.config.loss_coefficients)

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        image = batch["image"].to(outputs["rgb"].device)
        image = self.renderer_rgb.blend_background(image)
        return {"psnr": self.psnr(outputs["rgb"], image)}

    def render_settings(self) -> Dict[str, object]:
        """How this model turns a camera's rays into an image, as plain data: the export's ``render`` metadata, which
        docs/int8-format.md (section 5) specifies and docs/int8_decoder.py renders from without config.yml."""
        collider = self.collider
        if self.ndc is not None:
            rays: Dict[str, object] = {"kind": "ndc", **asdict(self.ndc)}
        else:
            kind = "axis_depth" if isinstance(collider, AxisDepthCollider) else "near_far"
            rays = {"kind": kind, "near": float(collider.near_plane), "far": float(collider.far_plane)}  # type: ignore[arg-type]
        spacing = "disparity" if isinstance(self.sampler_uniform, LinearDisparitySampler) else "linear"
        settings: Dict[str, object] = {"rays": rays, "sampler": self.config.sampler}
        if self.grid is None:
            assert self.sampler_pdf is not None
            settings.update(
                coarse_samples=int(self.config.num_coarse_samples),
                coarse_spacing=spacing,
                importance_samples=int(self.config.num_importance_samples),
                histogram_padding=float(self.sampler_pdf.histogram_padding),
                include_original=bool(self.sampler_pdf.include_original),
            )
        else:
            cfg = self.config.occupancy
            settings.update(
                samples=int(cfg.samples),
                spacing=spacing,
                grid={"resolution": self.grid.resolution, "aabb": self.grid.aabb.tolist()},
                early_stop=float(cfg.early_stop),
                segment=int(cfg.segment),
            )
        settings.update(background_color=self.config.background_color, depth=self.renderer_depth.method)
        return settings

    def size_metrics(self) -> Dict[str, float]:
        """Parameter count and model size in bytes, fp32 and at the quantized bit widths (the MLPs the sampler uses;
        with an occupancy grid, its compressed bitfield counts in both sizes)."""
        mlps = self.mlps
        grid = float(self.grid.packed().numel()) if self.grid is not None else 0.0
        return {
            "num_params": float(sum(num_params(m) for m in mlps)),
            "model_bytes_fp32": float(sum(fp32_nbytes(m) for m in mlps)) + grid,
            "model_bytes_quantized": float(sum(quantized_nbytes(m, self.config.quant) for m in mlps)) + grid,
        }

    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        image = self.renderer_rgb.blend_background(batch["image"].to(outputs["rgb"].device))
        # depth colormap over the range rays are sampled in: [0, 1] in NDC, else the collider's planes
        near_far = {"near_plane": self.collider.near_plane, "far_plane": self.collider.far_plane}

        def depth_image(suffix: str) -> Tensor:
            return colormaps.apply_depth_colormap(
                outputs["depth" + suffix], accumulation=outputs["accumulation" + suffix], **near_far
            )

        suffixes = ("_coarse", "") if self.field_coarse is not None else ("",)  # coarse pass first, then fine
        images = {
            "img": torch.cat([image, *(outputs["rgb" + s] for s in suffixes)], dim=1),
            "accumulation": torch.cat([colormaps.apply_colormap(outputs["accumulation" + s]) for s in suffixes], dim=1),
            "depth": torch.cat([depth_image(s) for s in suffixes], dim=1),
        }

        def nchw(x: Tensor) -> Tensor:
            return torch.moveaxis(x, -1, 0)[None, ...]

        gt, fine = nchw(image), nchw(outputs["rgb"])
        metrics: Dict[str, float] = {"psnr": float(self.psnr(fine, gt)), "ssim": float(self.ssim(fine, gt))}  # type: ignore[arg-type]
        if self.field_coarse is not None:
            coarse = nchw(outputs["rgb_coarse"])
            metrics["coarse_psnr"] = float(self.psnr(coarse, gt))
            metrics["coarse_ssim"] = float(self.ssim(coarse, gt))  # type: ignore[arg-type]
        if "mlp_samples" in outputs:
            metrics["mlp_samples_per_ray"] = float(outputs["mlp_samples"].mean())
        lpips = self.lpips(fine, gt)
        if lpips is not None:
            metrics["lpips"] = lpips
        metrics.update(self.size_metrics())
        return metrics, images


def _scatter(mask: Tensor, packed: Tensor) -> Tensor:
    """Packed per-sample values [n, c] at the True places of ``mask`` [rays, bins], zero elsewhere (with gradients)."""
    c = packed.shape[-1]
    return packed.new_zeros(*mask.shape, c).masked_scatter(mask[..., None].expand(*mask.shape, c), packed)
