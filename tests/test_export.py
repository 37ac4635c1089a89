"""ns-export-int8: file contents and size, loading by every nerfstudio tool, fidelity, and bad input."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from nerfqat_plugin.int8_format import FORMAT_VERSION, WEIGHTS_FILE, Int8ExportError, mlp_tensors, read_file, write_file
from nerfqat_plugin.nerf.mlp import NeRFMLP
from nerfqat_plugin.quant import QuantConfig
from nerfqat_plugin.tools.runs import CommandFailed
from tests.conftest import eval_in_process, run_ns


@pytest.mark.parametrize("bits,limit", [(8, 1_230_000), (4, 640_000)])
def test_default_architecture_file_size(tmp_path: Path, bits: int, limit: int):
    """Coarse + fine original NeRF MLPs (1,191,688 parameters), written by the exporter's own writer."""
    quant = QuantConfig(weight_bits=bits)
    tensors = {}
    for prefix in ("coarse.", "fine."):
        tensors.update(mlp_tensors(NeRFMLP(63, 27, quant), prefix, quant))
    path = tmp_path / WEIGHTS_FILE
    write_file(path, tensors, {"architecture": {"num_layers": 8}, "quant": {"weight_bits": bits}})
    size = path.stat().st_size
    assert size <= limit, f"{size} bytes > {limit}"
    assert not (tmp_path / (WEIGHTS_FILE + ".tmp")).exists()


def test_export_directory_and_file_are_self_describing(exported_run: Path, trained_run: Path):
    assert sorted(p.name for p in exported_run.iterdir()) == [
        "cameras.json",
        "config.yml",
        "model.safetensors",
        "nerfstudio_models",
    ]
    with safe_open(str(exported_run / WEIGHTS_FILE), framework="pt") as f:  # the safetensors library alone
        meta = f.metadata()
        keys = set(f.keys())
        assert f.get_tensor("coarse.trunk.0.weight").dtype == torch.uint8
        assert f.get_tensor("fine.trunk.0.weight_scale").dtype == torch.bfloat16
    assert meta["format"] == "nerfqat-int8" and meta["format_version"] == str(FORMAT_VERSION)
    for key in (
        "architecture",
        "quant",
        "dataparser",
        "scene",
        "render",
        "scene_record_sha256",
        "step",
        "source_checkpoint_sha256",
    ):
        assert key in meta, key
    assert json.loads(meta["quant"])["weight_bits"] == 8
    # what a renderer needs besides the cameras, as plain JSON (the tiny preset: 8 + 8 samples, Blender near/far)
    render = json.loads(meta["render"])
    assert render["rays"] == {"kind": "near_far", "near": 2.0, "far": 6.0}
    assert (render["coarse_samples"], render["importance_samples"], render["coarse_spacing"]) == (8, 8, "linear")
    assert render["background_color"] == "white" and render["depth"] == "median"
    assert {"coarse.position_quant.qparams", "fine.view.out_quant.qparams", "fine.rgb_head.bias"} <= keys
    # the stub checkpoint holds the step and no weights
    ckpt = next((exported_run / "nerfstudio_models").glob("step-*.ckpt"))
    assert torch.load(ckpt, weights_only=True)["pipeline"] == {}


def _with_kernel(export: Path, kernel: str, dst: Path) -> Path:
    """A copy of the export whose config runs the integer layers with another kernel."""
    shutil.copytree(export, dst)
    config = yaml.load((dst / "config.yml").read_text(), Loader=yaml.Loader)
    config.output_dir = dst
    config.pipeline.model.int8_weights = dst / WEIGHTS_FILE
    config.pipeline.model.int8_kernel = kernel
    (dst / "config.yml").write_text(yaml.dump(config))
    return dst / "config.yml"


def test_eval_of_export_matches_fake_quantized_run_without_the_original_checkpoint(
    exported_run: Path, trained_run: Path, tmp_path: Path
):
    def evaluate(config: Path, name: str) -> dict:  # the console script, as a user runs it
        run_ns("ns-eval", "--load-config", str(config), "--output-path", str(tmp_path / name), cwd=tmp_path)
        return json.loads((tmp_path / name).read_text())["results"]

    fq = eval_in_process(trained_run, tmp_path / "fq.json")
    exact_config = _with_kernel(exported_run, "int", tmp_path / "int-kernel")
    models = trained_run.parent / "nerfstudio_models"
    hidden = trained_run.parent / "hidden_models"
    models.rename(hidden)  # the export must not need the training checkpoint
    try:
        default = evaluate(exported_run / "config.yml", "onednn.json")  # kernel auto: oneDNN on this CPU
        exact = eval_in_process(exact_config, tmp_path / "int.json")
    finally:
        hidden.rename(models)
    assert abs(fq["psnr"] - default["psnr"]) <= 0.02, (fq["psnr"], default["psnr"])
    assert abs(fq["ssim"] - default["ssim"]) <= 1e-3
    # bit-exact by design with the _int_mm kernel: integer accumulators equal the fp32 products of codes
    assert (exact["psnr"], exact["ssim"]) == (fq["psnr"], fq["ssim"])
    assert default["model_bytes_quantized"] == fq["model_bytes_quantized"] and default["num_params"] == fq["num_params"]


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ns-render needs ffmpeg: apt-get install ffmpeg")
def test_ns_render_from_export(exported_run: Path, tmp_path: Path):
    out = tmp_path / "render"
    run_ns(
        "ns-render", "interpolate", "--load-config", str(exported_run / "config.yml"), "--output-path", str(out),
        "--output-format", "images", "--interpolation-steps", "1", "--rendered-output-names", "rgb", "depth",
        cwd=tmp_path,
    )  # fmt: skip
    assert list(out.glob("*.png")) or list(out.glob("*.jpg")), list(out.iterdir())


def _bad_copy(exported_run: Path, tmp_path: Path) -> Path:
    path = tmp_path / WEIGHTS_FILE
    shutil.copy(exported_run / WEIGHTS_FILE, path)
    return path


def test_missing_file(tmp_path: Path):
    with pytest.raises(Int8ExportError, match="not found"):
        read_file(tmp_path / "nope.safetensors")


def test_truncated_file(exported_run: Path, tmp_path: Path):
    path = _bad_copy(exported_run, tmp_path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(Int8ExportError, match="truncated or corrupt"):
        read_file(path)


def test_corrupt_header(exported_run: Path, tmp_path: Path):
    path = _bad_copy(exported_run, tmp_path)
    data = bytearray(path.read_bytes())
    data[8:20] = b"not json!!!!"
    path.write_bytes(bytes(data))
    with pytest.raises(Int8ExportError, match=str(path.name)):
        read_file(path)


def _rewrite_metadata(path: Path, **changes: str) -> None:
    tensors, meta = read_file(path)  # coded tensors decoded: the rewritten file stores them as they are
    meta.update({"coding": "{}", **changes})
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=meta)


def test_unknown_format_version(exported_run: Path, tmp_path: Path):
    path = _bad_copy(exported_run, tmp_path)
    _rewrite_metadata(path, format_version="99")
    with pytest.raises(Int8ExportError, match="unknown format version '99'"):
        read_file(path)


def test_architecture_mismatch_is_reported_when_loading(exported_run: Path, tmp_path: Path):
    from nerfqat_plugin.int8_format import load_mlp_tensors

    tensors, _ = read_file(exported_run / WEIGHTS_FILE)
    wider = NeRFMLP(63, 27, QuantConfig(), num_layers=2, layer_width=48, skip_layer=1, view_width=16)
    with pytest.raises(Int8ExportError, match="shape|architecture"):
        load_mlp_tensors(wider, tensors, "coarse.", QuantConfig(), exported_run / WEIGHTS_FILE)
    deeper = NeRFMLP(63, 27, QuantConfig(), num_layers=3, layer_width=32, skip_layer=1, view_width=16)
    with pytest.raises(Int8ExportError, match="architecture mismatch"):
        load_mlp_tensors(deeper, tensors, "coarse.", QuantConfig(), exported_run / WEIGHTS_FILE)


def test_eval_of_export_with_mismatched_metadata_fails_with_one_clear_line(exported_run: Path, tmp_path: Path):
    out = tmp_path / "copy"
    shutil.copytree(exported_run, out)
    _rewrite_metadata(out / WEIGHTS_FILE, architecture=json.dumps({"num_layers": 9}))
    cfg = out / "config.yml"
    config = yaml.load(cfg.read_text(), Loader=yaml.Loader)
    config.pipeline.model.int8_weights = out / WEIGHTS_FILE
    config.output_dir = out
    cfg.write_text(yaml.dump(config))
    with pytest.raises(CommandFailed, match="does not match the config"):
        run_ns("ns-eval", "--load-config", str(cfg), "--output-path", str(tmp_path / "x.json"), cwd=tmp_path)


def test_export_cli_errors_leave_no_partial_output(tmp_path: Path, exported_run: Path, trained_run: Path, capsys):
    """The console script once (its exit status and message), then its entry point in this process for the rest."""
    from nerfqat_plugin.export import ExportInt8

    missing = tmp_path / "missing" / "config.yml"
    with pytest.raises(CommandFailed, match="config file not found"):
        run_ns("ns-export-int8", "--load-config", str(missing), "--output-dir", str(tmp_path / "o1"), cwd=tmp_path)
    assert not (tmp_path / "o1").exists()

    def refused(expected: str, **kwargs) -> None:
        with pytest.raises(SystemExit) as exit_info:
            ExportInt8(load_config=trained_run, **kwargs).main()
        assert exit_info.value.code == 1
        assert expected in " ".join(capsys.readouterr().out.split())  # rich wraps long lines

    refused("already exists", output_dir=exported_run)
    assert struct.unpack("<Q", (exported_run / WEIGHTS_FILE).read_bytes()[:8])[0] > 0  # untouched, still valid
    refused("holds the run being exported", output_dir=trained_run.parent.parent, overwrite=True)
    assert trained_run.is_file()


def test_failure_while_writing_leaves_nothing_behind(tmp_path: Path, trained_run: Path, monkeypatch):
    import nerfqat_plugin.export as export

    def broken_write(path, tensors, metadata, code=True):
        path.write_bytes(b"partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(export, "write_file", broken_write)
    with pytest.raises(OSError, match="simulated"):
        export.ExportInt8(load_config=trained_run, output_dir=tmp_path / "out").run()
    assert list(tmp_path.iterdir()) == []  # neither the output nor the staging directory is left


def _raw_file(path: Path) -> tuple:
    """The tensors and metadata as stored (coded tensors not decoded), with the safetensors library alone."""
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _coded_file(tmp_path: Path) -> tuple:
    """A file of one compressible code tensor (peaked codes, as trained weights), one incompressible and a float."""
    g = torch.Generator().manual_seed(0)
    peaked = (torch.randn(40_000, generator=g) * 6 + 128).round().clamp(0, 255).to(torch.uint8)
    noise = torch.randint(0, 256, (3000,), generator=g, dtype=torch.uint8)
    tensors = {"a.weight": peaked, "b.weight": noise, "a.bias": torch.randn(7, generator=g)}
    path = tmp_path / WEIGHTS_FILE
    stored = write_file(path, tensors, {"architecture": {"num_layers": 8}, "quant": {"weight_bits": 8}})
    return path, tensors, stored


def test_coded_tensors_are_smaller_and_decode_to_the_same_bytes(tmp_path: Path):
    from nerfqat_plugin import coding

    path, tensors, stored = _coded_file(tmp_path)
    raw, meta = _raw_file(path)
    coded = json.loads(meta["coding"])
    assert list(coded) == ["a.weight"] and coded["a.weight"]["shape"] == [40_000]  # the noise stays raw
    assert coded["a.weight"]["codec"] in coding.CODECS
    assert raw["a.weight"].numel() == stored["a.weight"] < 0.6 * 40_000  # ~4.6 bits a code
    streams = coding.encode_all(tensors["a.weight"].numpy().tobytes())
    assert stored["a.weight"] == min(len(stream) for stream in streams.values())  # the smaller codec's
    assert stored["b.weight"] == 3000 and torch.equal(raw["b.weight"], tensors["b.weight"])
    decoded, _ = read_file(path)
    assert decoded.keys() == tensors.keys()
    assert all(torch.equal(decoded[k], tensors[k]) for k in tensors)
    uncoded = tmp_path / "uncoded.safetensors"
    write_file(uncoded, tensors, {}, code=False)
    assert json.loads(_raw_file(uncoded)[1]["coding"]) == {}
    assert path.stat().st_size < uncoded.stat().st_size - 15_000


@pytest.mark.parametrize("codec", ["xz", "zstd"])
@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda b: b[: len(b) // 2], "truncated"),  # the stream cut short
        (lambda b: b[:100] + bytes([b[100] ^ 0x10]) + b[101:], "checksum|Corrupt"),  # one bit of the content flipped
        (lambda b: b + b"\x00", "follow the"),
    ],
)
def test_every_codec_refuses_a_truncated_altered_or_overlong_stream(codec: str, damage, message: str):
    from nerfqat_plugin import coding

    data = bytes(range(256)) * 20 + bytes(3000)
    stream = coding.encode_all(data)[codec]
    assert coding.decode(codec, stream, len(data)) == data
    with pytest.raises(coding.CodingError, match=message):
        coding.decode(codec, damage(stream), len(data))
    with pytest.raises(coding.CodingError, match=f"{len(data) + 1} expected"):
        coding.decode(codec, stream, len(data) + 1)


def test_a_tampered_coded_tensor_or_coding_metadata_fails_with_one_clear_line(tmp_path: Path):
    from safetensors.torch import save_file

    path, _, _ = _coded_file(tmp_path)
    raw, meta = _raw_file(path)
    stream = bytes(raw["a.weight"].numpy().tobytes())
    raw["a.weight"] = torch.frombuffer(bytearray(stream[: len(stream) // 2]), dtype=torch.uint8)
    save_file(raw, str(path), metadata=meta)
    with pytest.raises(Int8ExportError, match="truncated") as info:
        read_file(path)
    assert "a.weight" in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)
    raw["a.weight"] = torch.frombuffer(bytearray(stream), dtype=torch.uint8)
    for coding_meta, message in (
        ({"a.weight": {"codec": "gzip", "shape": [40_000]}}, "unknown codec 'gzip'"),
        ({"c.weight": {"codec": "xz", "shape": [3]}}, "'c.weight' is missing"),
        ("{not json", "'coding' metadata"),
    ):
        text = coding_meta if isinstance(coding_meta, str) else json.dumps(coding_meta)
        save_file(raw, str(path), metadata={**meta, "coding": text})
        with pytest.raises(Int8ExportError, match=message):
            read_file(path)


def test_an_export_of_format_version_1_keeps_loading(exported_run: Path, tmp_path: Path):
    """A version 1 file (every tensor as it is, no coding key), as exports were written before coded tensors."""
    from safetensors.torch import save_file

    tensors, meta = read_file(exported_run / WEIGHTS_FILE)
    old = tmp_path / "v1"
    shutil.copytree(exported_run, old)
    del meta["coding"]
    save_file(tensors, str(old / WEIGHTS_FILE), metadata={**meta, "format_version": "1"})
    assert "coding" not in _raw_file(old / WEIGHTS_FILE)[1]
    now = eval_in_process(exported_run / "config.yml", tmp_path / "v2.json")
    before = eval_in_process(old / "config.yml", tmp_path / "v1.json")
    assert (before["psnr"], before["ssim"]) == (now["psnr"], now["ssim"])
