"""QuantSpec: validation, aliases, derived facts, labels and the dict round trip."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from quantcli.core import QuantSpec, param_shape, quantize
from quantcli.errors import QuantError, SpecError, UsageError


def test_defaults_are_the_guides():
    spec = QuantSpec()
    assert (spec.scheme, spec.bits, spec.granularity, spec.axis) == ("absmax", 8, "channel", 0)
    assert (spec.calibration, spec.percentile, spec.scale_dtype) == ("minmax", 99.99, "float32")
    assert spec.group_size == 128


@pytest.mark.parametrize("bits", [1, 9, 0, -8, 16])
def test_bits_out_of_range_rejected(bits):
    with pytest.raises(SpecError, match=rf"bits {bits}\b.*use 2 to 8"):
        QuantSpec(bits=bits)


@pytest.mark.parametrize("bits", [8.0, "8", True])
def test_bits_must_be_an_integer(bits):
    with pytest.raises(SpecError, match="not an integer"):
        QuantSpec(bits=bits)


@pytest.mark.parametrize("bits", range(2, 9))
def test_bits_2_to_8_accepted(bits):
    assert QuantSpec(bits=bits).bits == bits


def test_spec_error_is_a_usage_error():
    # the CLI maps UsageError to exit code 2
    assert issubclass(SpecError, UsageError) and issubclass(SpecError, QuantError)
    assert SpecError.exit_code == 2


@pytest.mark.parametrize("p", [50, 50.0, 0, -1, 100.5, 101, math.nan, math.inf, -math.inf])
def test_percentile_outside_50_100_rejected(p):
    with pytest.raises(SpecError, match=r"percentile .* must be in \(50, 100\]"):
        QuantSpec(calibration="percentile", percentile=p)


@pytest.mark.parametrize("p", [50.0001, 90, 99.99, 99.999, 100])
def test_percentile_inside_accepted(p):
    spec = QuantSpec(calibration="percentile", percentile=p)
    assert spec.percentile == float(p) and isinstance(spec.percentile, float)


def test_percentile_is_validated_even_with_minmax():
    with pytest.raises(SpecError):
        QuantSpec(calibration="minmax", percentile=50)


@pytest.mark.parametrize("group_size", [0, -1, -128])
def test_group_size_below_one_rejected(group_size):
    with pytest.raises(SpecError, match=rf"group size {group_size}\b.*at least 1"):
        QuantSpec(granularity="group", group_size=group_size)


@pytest.mark.parametrize("group_size", [32.0, "32", True])
def test_group_size_must_be_an_integer(group_size):
    with pytest.raises(SpecError, match="not an integer"):
        QuantSpec(granularity="group", group_size=group_size)


def test_group_size_one_accepted():
    assert QuantSpec(granularity="group", group_size=1).group_size == 1


@pytest.mark.parametrize(
    "field, value",
    [
        ("scheme", "q4_k"),
        ("granularity", "row"),
        ("calibration", "mse"),
        ("scale_dtype", "float64"),
        ("axis", 0.0),
    ],
)
def test_unknown_values_rejected(field, value):
    with pytest.raises(SpecError):
        QuantSpec(**{field: value})


@pytest.mark.parametrize(
    "alias, scheme",
    [
        ("symmetric", "absmax"),
        ("asymmetric", "zeropoint"),
        ("absmax", "absmax"),
        ("zeropoint", "zeropoint"),
        ("Symmetric", "absmax"),
        ("ASYMMETRIC", "zeropoint"),
    ],
)
def test_scheme_aliases(alias, scheme):
    spec = QuantSpec(scheme=alias)
    assert spec.scheme == scheme
    assert spec == QuantSpec(scheme=scheme)


def test_code_range_and_signedness():
    for bits in range(2, 9):
        absmax = QuantSpec(scheme="absmax", bits=bits)
        zeropoint = QuantSpec(scheme="zeropoint", bits=bits)
        qmax = 2 ** (bits - 1) - 1
        assert absmax.code_range == (-qmax, qmax)
        assert zeropoint.code_range == (0, 2**bits - 1)
        assert absmax.signed and not absmax.has_zero_point
        assert not zeropoint.signed and zeropoint.has_zero_point


# -- axis against a tensor's shape --------------------------------------------------------


@pytest.mark.parametrize(
    "shape, axis",
    [((4, 5), 2), ((4, 5), -3), ((7,), 1), ((7,), -2), ((), 1), ((), -2), ((2, 3, 4), 3)],
)
def test_axis_out_of_range_rejected(shape, axis):
    spec = QuantSpec(granularity="channel", axis=axis)
    with pytest.raises(SpecError, match=rf"axis {axis} out of range in w\.q: it has {len(shape)}"):
        spec.for_tensor(shape, "w.q")
    with pytest.raises(SpecError, match=f"axis {axis} out of range"):
        quantize(np.zeros(shape, np.float32), spec)


@pytest.mark.parametrize(
    "shape, axis, resolved",
    [((4, 5), -1, 1), ((4, 5), -2, 0), ((4, 5), 1, 1), ((2, 3, 4), -2, 1), ((), -1, 0), ((), 0, 0)],
)
def test_axis_resolved_to_non_negative(shape, axis, resolved):
    spec = QuantSpec(granularity="channel", axis=axis).for_tensor(shape)
    assert spec.axis == resolved
    qt = quantize(np.ones(shape, np.float32), QuantSpec(granularity="channel", axis=axis))
    assert qt.spec.axis == resolved


def test_axis_ignored_unless_per_channel():
    # tensor and group granularity do not use the axis, so any axis fits any shape
    for gran in ("tensor", "group"):
        spec = QuantSpec(granularity=gran, axis=5)
        assert spec.for_tensor((3, 4)) == spec
        assert quantize(np.ones((3, 4), np.float32), spec).scale.shape == param_shape((3, 4), spec)


def test_param_shapes():
    ch0 = QuantSpec(granularity="channel", axis=0)
    ch1 = QuantSpec(granularity="channel", axis=-1)
    assert param_shape((6, 5), QuantSpec(granularity="tensor")) == (1, 1)
    assert param_shape((6, 5), ch0) == (6, 1)
    assert param_shape((6, 5), ch1) == (1, 5)
    assert param_shape((2, 6, 5), QuantSpec(granularity="channel", axis=1)) == (1, 6, 1)
    assert param_shape((3, 256), QuantSpec(granularity="group", group_size=128)) == (3, 2)
    assert param_shape((3, 257), QuantSpec(granularity="group", group_size=128)) == (3, 3)
    assert param_shape((3, 5), QuantSpec(granularity="group", group_size=128)) == (3, 1)
    assert param_shape((), QuantSpec(granularity="tensor")) == (1,)
    assert param_shape((), ch0) == (1,)


# -- label and dict round trip -----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, label",
    [
        ({}, "absmax int8 channel(0)"),
        (
            {"scheme": "asymmetric", "bits": 4, "granularity": "group", "group_size": 128},
            "zeropoint uint4 group(128)",
        ),
        ({"granularity": "tensor", "bits": 3}, "absmax int3 tensor"),
        ({"granularity": "channel", "axis": 1}, "absmax int8 channel(1)"),
        (
            {"scheme": "zeropoint", "calibration": "percentile", "percentile": 99.9},
            "zeropoint uint8 channel(0) p99.9",
        ),
        ({"calibration": "percentile"}, "absmax int8 channel(0) p99.99"),
        ({"scale_dtype": "float16"}, "absmax int8 channel(0) float16 scales"),
        (
            {"granularity": "group", "group_size": 32, "scale_dtype": "bfloat16"},
            "absmax int8 group(32) bfloat16 scales",
        ),
    ],
)
def test_label(kwargs, label):
    assert QuantSpec(**kwargs).label() == label


def test_label_after_axis_resolution():
    spec = QuantSpec(granularity="channel", axis=-1)
    assert spec.label() == "absmax int8 channel(-1)"
    assert spec.for_tensor((4, 5)).label() == "absmax int8 channel(1)"


ROUND_TRIP_SPECS = [
    QuantSpec(),
    QuantSpec(scheme="zeropoint", bits=2, granularity="tensor"),
    QuantSpec(scheme="symmetric", bits=5, granularity="channel", axis=-1, scale_dtype="bfloat16"),
    QuantSpec(granularity="group", group_size=7, calibration="percentile", percentile=99.5),
    QuantSpec(scheme="asymmetric", granularity="group", group_size=1, scale_dtype="float16"),
]


@pytest.mark.parametrize("spec", ROUND_TRIP_SPECS, ids=lambda s: s.label())
def test_dict_round_trip(spec):
    data = spec.to_dict()
    assert set(data) == {
        "scheme",
        "bits",
        "granularity",
        "axis",
        "group_size",
        "calibration",
        "percentile",
        "scale_dtype",
    }
    assert data["scheme"] in ("absmax", "zeropoint")  # aliases are stored canonical
    back = QuantSpec.from_dict(data)
    assert back == spec
    assert back.to_dict() == data


def test_dict_survives_json():
    import json

    for spec in ROUND_TRIP_SPECS:
        assert QuantSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_from_dict_ignores_unknown_keys_and_fills_defaults():
    spec = QuantSpec.from_dict({"bits": 4, "format_version": 3, "comment": "x"})
    assert spec == QuantSpec(bits=4)


def test_from_dict_validates():
    with pytest.raises(SpecError):
        QuantSpec.from_dict({**QuantSpec().to_dict(), "bits": 9})
    with pytest.raises(SpecError):
        QuantSpec.from_dict({**QuantSpec().to_dict(), "percentile": 0})


def test_spec_is_frozen_and_hashable():
    spec = QuantSpec()
    with pytest.raises(AttributeError):
        spec.bits = 4  # type: ignore[misc]
    assert len({QuantSpec(), QuantSpec(scheme="symmetric"), QuantSpec(bits=4)}) == 2


def test_core_exports_load_lazily_and_name_the_functions():
    """inspect's imports leave the quantization code unloaded (start-up time), and the
    package's names are the functions whatever was imported first."""
    code = (
        "import sys\n"
        "import quantcli.ops.inspect_file\n"
        "assert 'quantcli.core.quantizer' not in sys.modules, 'quantizer loaded'\n"
        "import quantcli.core.quantizer\n"
        "from quantcli.core import quantize, QuantizedTensor, ErrorStats, pack\n"
        "assert callable(quantize) and quantize.__module__ == 'quantcli.core.quantizer'\n"
        "import quantcli.core as core\n"
        "assert sorted(core.__all__) == core.__all__ and 'quantize' in dir(core)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
