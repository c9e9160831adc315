"""quant's compressed-tensors exports of its number formats against compressed-tensors itself.

The library's own path is run on the same weights: ``apply_quantization_config`` with the
``quantization_config`` quant wrote, each module's scales computed by its observer helpers
(``calculate_qparams`` on the min / max of every group, ``generate_gparam`` for NVFP4's
global scale, in the weights' own dtype, as llm-compressor's min-max observer feeds them),
then ``ModelCompressor.compress_model``. Every tensor it produces must equal quant's file byte
for byte. Where they differ by design (NVFP4 on bf16 weights, quant's plain mxfp4 rule), the
difference is measured and bounded. transformers then loads quant's folders: nothing missing
or unexpected, and the weights it decompresses equal quant decompress's.
"""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
import torch
from compressed_tensors.compressors import ModelCompressor
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.quantization import (
    QuantizationArgs,
    QuantizationConfig,
    QuantizationScheme,
    apply_quantization_config,
)
from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam
from compressed_tensors.quantization.utils.helpers import maybe_pad_tensor_for_block_quant
from safetensors.torch import load_file as load_torch
from test_interop_compressed_tensors import (  # noqa: F401 (the fixture is used by name)
    _build_the_command_once,
    load,
    outputs,
    quant,
    save_llama,
)
from transformers import AutoModelForCausalLM

from quantcli.core.quantizer import quantize
from quantcli.core.spec import QuantSpec
from quantcli.io import compressed_tensors as ct
from quantcli.io.quantized_format import stored_arrays

torch.set_num_threads(1)
NUMPY = {torch.float32: np.float32, torch.bfloat16: ml_dtypes.bfloat16, torch.float16: np.float16}


# -- the library's path ----------------------------------------------------------------------


def global_scale(module: torch.nn.Module) -> None:
    """NVFP4's global scale, as llm-compressor's min-max observer sets it."""
    weight = module.weight.data
    module.weight_global_scale.data.copy_(generate_gparam(weight.amin(), weight.amax()))


def share_global_scales(model: torch.nn.Module) -> None:
    """llm-compressor's rule for the layers vLLM fuses: q/k/v of an attention block, and
    gate/up of an MLP, all take the smallest global scale of the set."""
    for module in model.modules():
        for names in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")):
            parts = [getattr(module, n, None) for n in names]
            if all(hasattr(p, "weight_global_scale") for p in parts):
                shared = torch.cat([p.weight_global_scale.data for p in parts]).min()
                for part in parts:
                    part.weight_global_scale.data.fill_(shared)


def observe(module: torch.nn.Module) -> None:
    """Set ``module``'s scales as llm-compressor's min-max observer does: compressed-tensors'
    calculate_qparams on the min / max of each group, in the weight's dtype."""
    args = module.quantization_scheme.weights
    weight = module.weight.data
    g = module.weight_global_scale.data if args.strategy == "tensor_group" else None
    if args.strategy in ("group", "tensor_group"):
        groups = weight.unflatten(-1, (weight.shape[1] // args.group_size, args.group_size))
        lo, hi = groups.amin(-1), groups.amax(-1)
    elif args.strategy == "channel":
        lo, hi = weight.amin(-1, keepdim=True), weight.amax(-1, keepdim=True)
    elif args.strategy == "block":
        # the library pads partial edge blocks with zeros, which leave amax as it is
        r, c = args.block_structure
        padded = maybe_pad_tensor_for_block_quant(weight, (r, c))
        tiles = padded.unflatten(0, (-1, r)).unflatten(-1, (-1, c))  # [R, r, C, c]
        lo, hi = tiles.amin(dim=(1, 3)), tiles.amax(dim=(1, 3))
    else:
        lo, hi = weight.amin().reshape(1), weight.amax().reshape(1)
    scale, zero_point = calculate_qparams(lo, hi, args, global_scale=g)
    module.weight_scale.data.copy_(scale)
    if not args.symmetric:
        module.weight_zero_point.data.copy_(zero_point)


def library_compress(model: torch.nn.Module, quantization_config: dict) -> ModelCompressor:
    """Quantize and compress ``model`` in place with the library, by the config quant wrote."""
    config = QuantizationConfig.model_validate(
        {**quantization_config, "quantization_status": "initialized"}
    )
    apply_quantization_config(model, config, show_progress=False)
    quantized = [m for m in model.modules() if getattr(m, "quantization_scheme", None)]
    for module in quantized:
        if module.quantization_scheme.weights.strategy == "tensor_group":
            global_scale(module)
    share_global_scales(model)
    for module in quantized:
        observe(module)
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    return compressor


def as_torch(array: np.ndarray) -> torch.Tensor:
    """A NumPy array as a torch tensor of the same dtype and bytes (bf16 and fp8 included)."""
    array = np.ascontiguousarray(array)
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    if array.dtype == ml_dtypes.float8_e4m3fn:
        return torch.from_numpy(array.view(np.uint8)).view(torch.float8_e4m3fn)
    return torch.from_numpy(array)


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    # flattened first: torch leaves a [n, 1] tensor with stride (1, n) as it is in contiguous()
    return (
        a.contiguous()
        .reshape(-1)
        .view(torch.uint8)
        .equal(b.contiguous().reshape(-1).view(torch.uint8))
    )


def single(x: np.ndarray, spec: QuantSpec, dtype: torch.dtype):
    """quant's arrays for one weight ``x`` (float32 values, cast to ``dtype``) and the
    library's state dict for a Linear holding the same weight."""
    weight = torch.from_numpy(x).to(dtype)
    xn = weight.float().numpy().astype(NUMPY[dtype])
    spec = ct.export_spec(spec, xn.dtype, "m.weight", xn.shape)
    qt = quantize(xn, spec, "m.weight", packed=True)
    ours = dict(ct.stored_arrays("m.weight", spec, xn.shape, stored_arrays("m.weight", qt)))
    linear = torch.nn.Linear(x.shape[1], x.shape[0], bias=False, dtype=dtype)
    linear.weight.data = weight.clone()
    model = torch.nn.Sequential()
    model.add_module("m", linear)
    qc = ct.quantization_config([(spec, ["m"])], [])
    compressor = library_compress(model, qc)
    theirs = {f"m.{k}": v for k, v in linear.state_dict().items()}
    return spec, ours, theirs, compressor, qc


def gaussian(shape=(96, 256), seed=0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_t(4, shape) * 0.02
    x[5] = 0  # a row of zeros: the library's scale is eps there
    x[9, :32] = 0  # and a group of zeros
    return x.astype(np.float32)


# -- bytes -----------------------------------------------------------------------------------

EQUAL = [
    *[
        (QuantSpec("fullrange-ct", b, g, group_size=64), d)
        for b in (4, 8)
        for g in ("channel", "group")
        for d in (torch.float32, torch.bfloat16, torch.float16)
    ],
    *[
        (QuantSpec("zeropoint-ct", b, g, group_size=64), d)
        for b in (4, 8)
        for g in ("channel", "group")
        for d in (torch.float32, torch.bfloat16, torch.float16)
    ],
    *[
        (QuantSpec("fp8", granularity=g), d)
        for g in ("channel", "tensor")
        for d in (torch.float32, torch.bfloat16, torch.float16)
    ],
    *[
        (QuantSpec("fp8", granularity="block", block_size=b), d)
        for b in ((32, 64), (64, 96))  # 96 x 256: whole blocks, and partial ones both ways
        for d in (torch.float32, torch.bfloat16, torch.float16)
    ],
    (QuantSpec("nvfp4"), torch.float32),
    (QuantSpec("mxfp4-ct"), torch.float32),
    (QuantSpec("mxfp4-ct"), torch.bfloat16),
]


@pytest.mark.parametrize(
    "spec, dtype", EQUAL, ids=lambda v: v.short_label() if isinstance(v, QuantSpec) else str(v)
)
def test_bytes_equal_the_library_compressor(spec, dtype):
    spec, ours, theirs, compressor, qc = single(gaussian(seed=spec.bits), spec, dtype)
    assert set(theirs) == set(ours)
    for name, tensor in theirs.items():
        assert same_bytes(as_torch(ours[name]), tensor), name
    # the format the library infers for the same scheme is the one quant names
    assert compressor.quantization_config.format == qc["format"]
    (group,) = qc["config_groups"].values()
    assert QuantizationArgs.model_validate(group["weights"]) == (
        compressor.quantization_config.config_groups["group_0"].weights
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_block_of_zeros_gets_the_librarys_scale(dtype):
    """A block of zeros: quant keeps scale 1, the library writes its dtype's epsilon; the
    export writes the library's value (every code of the block is 0 either way)."""
    x = gaussian(seed=3)
    x[32:64, 64:128] = 0  # block (1, 1) of 32 x 64
    spec = QuantSpec("fp8", granularity="block", block_size=(32, 64))
    spec, ours, theirs, _, _ = single(x, spec, dtype)
    eps = torch.finfo(dtype).eps
    assert float(theirs["m.weight_scale"][1, 1]) == eps
    for name, tensor in theirs.items():
        assert same_bytes(as_torch(ours[name]), tensor), name


def test_torch_divides_bf16_and_f16_as_float32_rounded():
    """The rule fullrange-ct and fp8 follow for bf16 / f16 models: torch's x / s in bf16
    (f16) is the float32 quotient rounded to bf16 (f16)."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal(1_000_000).astype(np.float32))
    s = torch.from_numpy(np.exp(rng.uniform(-12, 4, 1_000_000)).astype(np.float32))
    for dtype in (torch.bfloat16, torch.float16):
        a, b = x.to(dtype), s.to(dtype)
        theirs = (a / b).float().numpy()
        with np.errstate(over="ignore"):  # beyond f16's range: inf, as torch gives
            ours = (a.float().numpy() / b.float().numpy()).astype(NUMPY[dtype])
        ours = ours.astype(np.float32)
        assert np.array_equal(theirs, ours)


def test_nvfp4_on_bf16_weights_differs_where_the_library_rounds_in_bf16():
    """The library computes 2688 / amax and amax_block / 6 in bf16 for bf16 weights; quant in
    float32. Measured here (96 x 256 Student-t weights): the global scale differs by bf16
    rounding (6752 against 6779.586), block scales in 5.3% of blocks, code bytes in 2.6%;
    each is still a valid NVFP4 encoding of the same weights."""
    _, ours, theirs, _, _ = single(gaussian(seed=4), QuantSpec("nvfp4"), torch.bfloat16)
    g_ours, g_theirs = ours["m.weight_global_scale"][0], float(theirs["m.weight_global_scale"][0])
    assert g_ours != g_theirs and abs(g_ours / g_theirs - 1) < 2**-7  # within a bf16 step
    scale_ours = ours["m.weight_scale"].view(np.uint8)
    scale_theirs = theirs["m.weight_scale"].view(torch.uint8).numpy()
    assert 0 < np.mean(scale_ours != scale_theirs) < 0.1
    codes_differ = np.mean(ours["m.weight_packed"] != theirs["m.weight_packed"].numpy())
    assert 0 < codes_differ < 0.1


def test_plain_mxfp4_differs_only_where_the_exponent_rules_disagree():
    """mxfp4 (OCP's floor rule) and mxfp4-ct (the library's) choose another exponent only
    for blocks whose largest magnitude has a mantissa of 1.75 or more; elsewhere the bytes
    are the library's."""
    x = gaussian(seed=5)
    _, ours, theirs, _, _ = single(x, QuantSpec("mxfp4"), torch.float32)
    mine, lib = ours["m.weight_scale"].astype(np.int16), theirs["m.weight_scale"].numpy()
    mantissa = np.frexp(np.abs(x.reshape(96, -1, 32)).max(-1))[0]
    rounds_up = mantissa >= 0.875
    assert rounds_up.any() and np.array_equal(lib - mine, rounds_up.astype(np.int16))
    same_blocks = np.repeat(~rounds_up, 16, axis=1)  # 16 bytes of codes a block
    assert np.array_equal(
        ours["m.weight_packed"][same_blocks], theirs["m.weight_packed"].numpy()[same_blocks]
    )


def test_negative_zero_is_the_one_nvfp4_code_that_differs():
    """A weight that is exactly -0.0: quant's E2M1 code keeps the sign (8, as ml_dtypes'
    cast does), the library's CPU path writes 0. Both decode to zero."""
    x = gaussian(seed=6)
    x[0, 3] = -0.0
    _, ours, theirs, _, _ = single(x, QuantSpec("nvfp4"), torch.float32)
    a, b = ours["m.weight_packed"], theirs["m.weight_packed"].numpy()
    assert (a != b).sum() == 1 and a[0, 1] >> 4 == 8 and b[0, 1] >> 4 == 0


@pytest.mark.parametrize(
    "spec", [QuantSpec("fullrange", 4, "group", group_size=32), QuantSpec("absmax", 8, "channel")]
)
def test_the_compressor_given_quants_scales_writes_quants_bytes(spec):
    """fullrange's scales are negative where a group's largest value is positive: the
    library's compress(x, scale) divides by them as quant does."""
    x = gaussian(seed=7)
    spec = ct.export_spec(spec, np.dtype(np.float32), "m.weight", x.shape)
    qt = quantize(x, spec, "m.weight", packed=True)
    arrays = dict(ct.stored_arrays("m.weight", spec, x.shape, stored_arrays("m.weight", qt)))
    scheme = QuantizationScheme(
        targets=["Linear"], weights=QuantizationArgs(**ct.weight_args(spec))
    )
    state = {
        "weight": torch.from_numpy(x),
        "weight_scale": torch.from_numpy(arrays["m.weight_scale"]),
    }
    out = PackedQuantizationCompressor.compress(state, scheme)
    assert out["weight_packed"].numpy().tobytes() == arrays["m.weight_packed"].tobytes()
    assert (arrays["m.weight_scale"] < 0).any() == (spec.scheme == "fullrange")


# -- whole model folders ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheme, dtype",
    [
        (
            (
                "--scheme",
                "fullrange-ct",
                "--bits",
                "4",
                "--granularity",
                "group",
                "--group-size",
                "32",
            ),
            torch.bfloat16,
        ),
        (("--scheme", "fp8"), torch.bfloat16),
        (("--scheme", "fp8", "--granularity", "block", "--block-size", "32x48"), torch.bfloat16),
        (("--scheme", "nvfp4"), torch.float32),
        (("--scheme", "mxfp4-ct"), torch.bfloat16),
        (("--scheme", "zeropoint-ct", "--bits", "4", "--group-size", "32"), torch.bfloat16),
    ],
    ids=[
        "fullrange-ct-bf16",
        "fp8-bf16",
        "fp8-block-bf16",
        "nvfp4-f32",
        "mxfp4-ct-bf16",
        "zeropoint-ct-bf16",
    ],
)
def test_a_model_folder_is_the_librarys_byte_for_byte(tmp_path, scheme, dtype):
    """quant compress on a folder against the library quantizing and compressing the same
    model by the config quant wrote (targets included): every tensor of the file."""
    src = save_llama(tmp_path / "llama", dtype=dtype)
    out = tmp_path / "q"
    quant("compress", src, "-o", out, *scheme, "-q")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype)
    library_compress(model, qc)
    theirs = model.state_dict()
    ours = load_torch(str(out / "model.safetensors"))
    assert set(ours) - set(theirs) == set()
    quantized = [
        n for n in ours if n.endswith(("_packed", "_scale")) or ours[n].dtype == torch.float8_e4m3fn
    ]
    assert len(quantized) >= 14
    for name, tensor in ours.items():
        assert same_bytes(tensor, theirs[name]), name


# -- transformers loads them -----------------------------------------------------------------


@pytest.mark.parametrize(
    "scheme, dtype, load_dtype",
    [
        (("--scheme", "fp8"), torch.float32, None),
        (("--scheme", "fp8", "--granularity", "tensor"), torch.bfloat16, None),
        (("--scheme", "fp8", "--granularity", "block", "--block-size", "32"), torch.float32, None),
        # searched block scales: the same layout, only other scales
        (("--scheme", "nvfp4", "--search", "mse"), torch.bfloat16, None),
        (("--scheme", "nvfp4"), torch.float32, torch.bfloat16),
        (("--scheme", "mxfp4-ct", "--search", "mse"), torch.bfloat16, None),
        (
            (
                "--scheme",
                "fullrange",
                "--bits",
                "4",
                "--granularity",
                "group",
                "--group-size",
                "32",
            ),
            torch.float32,
            None,
        ),
    ],
    ids=[
        "fp8",
        "fp8-tensor-bf16",
        "fp8-block",
        "nvfp4-bf16-searched",
        "nvfp4-f32-as-bf16",
        "mxfp4-ct-bf16-searched",
        "fullrange",
    ],
)
def test_transformers_loads_the_export_as_quant_decompresses_it(
    tmp_path, scheme, dtype, load_dtype
):
    src = save_llama(tmp_path / "llama", dtype=dtype)
    out, restored = tmp_path / "q", tmp_path / "r"
    quant("compress", src, "-o", out, *scheme, "-q")
    as_dtype = [] if load_dtype is None else ["--dtype", "bfloat16"]
    quant("decompress", out, "-o", restored, *as_dtype, "-q")
    kwargs = {} if load_dtype is None else {"dtype": load_dtype}
    model = load(AutoModelForCausalLM, out, **kwargs)
    x = outputs(model)  # the first forward pass decompresses
    state = model.state_dict()
    back = load_torch(str(restored / "model.safetensors"))
    checked = 0
    for name, tensor in back.items():
        if name.startswith("model.layers.") and name.endswith("_proj.weight"):  # quantized
            assert state[name].dtype == tensor.dtype, name
            assert torch.equal(state[name], tensor), name
            checked += 1
    assert checked == 14
    reference = load(AutoModelForCausalLM, src, **kwargs)
    cosine = torch.nn.functional.cosine_similarity(x.flatten(), outputs(reference).flatten(), 0)
    assert cosine > 0.98, float(cosine)


def test_fused_layers_share_one_nvfp4_global_scale(tmp_path):
    """vLLM loads q/k/v (gate/up) as one layer with one global scale, the largest of its
    parts': quant gives them the smallest global scale of the set, llm-compressor's rule,
    which is each part's own only for the part with the largest magnitude."""
    src = save_llama(tmp_path / "llama", dtype=torch.bfloat16)
    out = tmp_path / "q"
    quant("compress", src, "-o", out, "--scheme", "nvfp4", "-q")
    tensors = load_torch(str(out / "model.safetensors"))
    # quant computes the global scale in float32 whatever the weights' dtype
    float_model = {n: t.float() for n, t in load_torch(str(src / "model.safetensors")).items()}
    for parent, parts in (
        ("self_attn.", ("q_proj", "k_proj", "v_proj")),
        ("mlp.", ("gate_proj", "up_proj")),
    ):
        names = [f"model.layers.1.{parent}{p}.weight" for p in parts]
        shared = {float(tensors[n + "_global_scale"][0]) for n in names}
        own = [
            float(generate_gparam(float_model[n].amin(), float_model[n].amax())[0]) for n in names
        ]
        assert len(set(own)) > 1 and shared == {min(own)}
    assert float(tensors["model.layers.1.self_attn.o_proj.weight_global_scale"][0]) == float(
        generate_gparam(
            float_model["model.layers.1.self_attn.o_proj.weight"].amin(),
            float_model["model.layers.1.self_attn.o_proj.weight"].amax(),
        )[0]
    )
