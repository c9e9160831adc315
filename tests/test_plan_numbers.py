"""The budget's numbers on a real architecture (docs/MIX.md gives the commands and figures).

The checkpoint is LlamaForCausalLM's layout (checked against transformers) with seeded
weights scaled like a trained model's (tests/plan_model.py). At the same bits per weight the
budget's total squared error must be below the uniform spec's, below the best uniform spec
of any format measured, and below llama.cpp's Q4_K_M rule mix reproduced with quant's own
specs; the bits per weight never above the target and within 0.01 of it.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from plan_model import CONFIG, llama_tensors, q4_k_m_layers, save, use_more_bits

from quantcli.core.spec import QuantSpec
from quantcli.ops.compress import plan_compress
from quantcli.ops.plan import Budget, Plan, make_budget, parse_rule, parse_spec, reallocate
from quantcli.select import Selector

# the family of the comparison: asymmetric 4-bit blocks of 32 with float16 scales, the
# nearest of quant's specs to llama.cpp's K-quants (asymmetric sub-blocks of 32)
FAMILY = {"scheme": "zeropoint", "granularity": "group", "group_size": 32, "scale_dtype": "float16"}
# uniform specs of other formats, each also a candidate of the wide budget
OTHERS = [
    "fullrange,bits=4,granularity=group,group_size=32,scale_dtype=float16",
    "nf4,group_size=32,scale_dtype=float16",
    "nf4,group_size=16,scale_dtype=float16",
    "nvfp4",
    "mxfp4",
]


def test_the_layout_is_llamas():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG))
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert {name: a.shape for name, a in llama_tensors().items()} == expected


def test_use_more_bits_is_llama_cpps_rule():
    # first and last eighth, and every third layer in between (src/llama-quant.cpp)
    assert q4_k_m_layers(8) == [0, 3, 6, 7]
    assert [i for i in range(32) if use_more_bits(i, 32)] == [
        0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama") / "llama.safetensors"
    save(str(path))
    return str(path)


def plan_of(*rules: str) -> Plan:
    base = {**FAMILY, "bits": 4}
    return Plan(Selector(QuantSpec(**base)), [parse_rule(r) for r in rules], base)


Q4_K_M_RULES = (
    "lm_head=bits=6",
    "re:model\\.layers\\.({})\\.(self_attn\\.v_proj|mlp\\.down_proj)=bits=6".format(
        "|".join(map(str, q4_k_m_layers()))
    ),
)


@pytest.fixture(scope="module")
def measured(model):
    """Every candidate on every tensor, measured once: the family at 2..8 bits, the other
    formats, keep."""
    candidates = [f"bits={b}" for b in range(2, 9)] + OTHERS + ["keep"]
    budget = Budget(
        target_bpw=Fraction(16), candidates=tuple(parse_spec(c, "test") for c in candidates)
    )
    return plan_compress(model, plan_of(), budget)


def family_only(result):
    """The measurements restricted to the default candidates: the family's bits, keep."""
    from dataclasses import replace

    keep = {f"bits={b}" for b in range(2, 9)} | {"keep"}
    tensors = [
        replace(t, options=[o for o in t.options if o.label in keep]) for t in result.tensors
    ]
    return replace(result, tensors=tensors)


def uniform(result, label):
    """(bits per weight, total squared error) of ``label`` on every tensor."""
    options = [next(o for o in t.options if o.label == label) for t in result.tensors]
    bits = 8 * sum(o.nbytes for o in options)
    return Fraction(bits, result.elements), math.fsum(o.stats.sum_sq_error for o in options)


def test_measured_options_are_the_uniform_dry_run(model, measured):
    plain = plan_compress(model, plan_of())  # no budget: the 4-bit spec on every tensor
    bpw, error = uniform(measured, "bits=4")
    assert plain.bits_per_weight == float(bpw) == 4.75
    assert plain.stats.sum_sq_error == pytest.approx(error, rel=1e-12)


def check_budget(measured, target: Fraction, to_beat: float, margin: float):
    result = reallocate(measured, Budget(target_bpw=target))
    assert Fraction(8 * result.nbytes, result.elements) <= target
    assert float(target) - result.bits_per_weight <= 0.01
    assert result.stats.sum_sq_error < margin * to_beat
    return result


def test_below_the_uniform_spec_at_its_bits_per_weight(measured):
    family = family_only(measured)
    for bits in (3, 4, 5):
        bpw, error = uniform(family, f"bits={bits}")
        check_budget(family, bpw, error, 0.95)


def test_below_llama_cpps_q4_k_m_mix_at_its_bits_per_weight(model, measured):
    mix = plan_compress(model, plan_of(*Q4_K_M_RULES))
    six = {t.name for t in mix.tensors if t.chosen.spec.bits == 6}
    assert six == {"lm_head.weight"} | {
        f"model.layers.{i}.{role}.weight"
        for i in (0, 3, 6, 7)
        for role in ("self_attn.v_proj", "mlp.down_proj")
    }
    target = Fraction(8 * mix.nbytes, mix.elements)
    result = check_budget(family_only(measured), target, mix.stats.sum_sq_error, 0.75)
    assert {t.chosen.label for t in result.tensors} <= {f"bits={b}" for b in range(2, 9)} | {"keep"}


@pytest.mark.parametrize("target", ["4.5", "4.75", "5"])
def test_below_the_best_uniform_spec_of_any_format(measured, target):
    target = Fraction(target)
    labels = [f"bits={b}" for b in range(2, 9)] + OTHERS
    fitting = [uniform(measured, label) for label in labels]
    best = min(error for bpw, error in fitting if bpw <= target)
    check_budget(measured, target, best, 0.99)


def test_max_size_on_the_real_layout(measured):
    limit = 4_000_000
    result = reallocate(family_only(measured), make_budget(max_size=str(limit)))
    assert limit - 2000 < result.total_bytes <= limit


# the figures of docs/MIX.md: (candidates, target or None for the uniform spec) -> (bits per
# weight, total squared error)
UNIFORM = {3: (3.75, 200.68), 4: (4.75, 45.679), 5: (5.75, 10.825)}
BUDGET = {3: (3.75, 176.09), 4: (4.75, 39.809), 5: (5.75, 9.362)}
Q4_K_M = (5.1389, 37.671)
Q4_K_M_BUDGET = ("5.1388", 5.1366, 24.300)
WIDE = {"4.5": (4.4996, 37.20), "4.75": (4.7496, 27.04), "5": (4.9996, 21.21)}


def test_the_figures_of_the_docs(model, measured):
    family = family_only(measured)

    def close(result_bpw, result_error, bpw, error):
        assert result_bpw == pytest.approx(bpw, abs=1e-4)
        assert result_error == pytest.approx(error, rel=5e-4)

    for bits, (bpw, error) in UNIFORM.items():
        close(*map(float, uniform(family, f"bits={bits}")), bpw, error)
        budget = reallocate(family, make_budget(target_bpw=bpw))
        close(budget.bits_per_weight, budget.stats.sum_sq_error, *BUDGET[bits])
    mix = plan_compress(model, plan_of(*Q4_K_M_RULES))
    close(mix.bits_per_weight, mix.stats.sum_sq_error, *Q4_K_M)
    target, bpw, error = Q4_K_M_BUDGET
    budget = reallocate(family, make_budget(target_bpw=float(target)))
    close(budget.bits_per_weight, budget.stats.sum_sq_error, bpw, error)
    for target, (bpw, error) in WIDE.items():
        budget = reallocate(measured, make_budget(target_bpw=float(target)))
        close(budget.bits_per_weight, budget.stats.sum_sq_error, bpw, error)
    others = {label: uniform(measured, label) for label in OTHERS}
    assert float(others["nvfp4"][0]) == pytest.approx(4.5003, abs=1e-4)
    assert others["nvfp4"][1] == pytest.approx(38.82, rel=5e-4)
    assert others["nf4,group_size=16,scale_dtype=float16"][1] == pytest.approx(31.49, rel=5e-4)
    assert others["nf4,group_size=32,scale_dtype=float16"][1] == pytest.approx(44.39, rel=5e-4)
