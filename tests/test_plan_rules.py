"""--rule PATTERN=SPEC: parsing, matching, first match wins, the errors, and the files that
compress writes and the rows report shows with rules (quantcli/ops/plan.py, docs/MIX.md).

Files are checked with the independent safetensors reader of test_cli_files.
"""

from __future__ import annotations

import json
import re
import shutil

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file
from test_cli_files import (
    TRANSFORMER,
    TRANSFORMER_QUANTIZED,
    _build_the_command_once,  # noqa: F401  (fixture: the command built once)
    assert_fails,
    ok,
    quantized_specs,
    read_safetensors,
    run,
)

from quantcli.core.spec import QuantSpec
from quantcli.errors import SpecError, UsageError
from quantcli.ops.plan import PRESETS, Plan, parse_rule, parse_spec
from quantcli.select import Selector

BASE = {"scheme": "absmax", "bits": 4, "granularity": "group", "group_size": 64}

# -- SPEC ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("bits=6", QuantSpec("absmax", 6, "group", group_size=64)),
        ("BITS=6, group-size=32", QuantSpec("absmax", 6, "group", group_size=32)),
        ("int8", QuantSpec("absmax", 8, "channel")),
        ("int4", QuantSpec("absmax", 4, "group", group_size=128)),
        ("uint4", QuantSpec("zeropoint", 4, "group", group_size=128)),
        ("int4,group_size=32", QuantSpec("absmax", 4, "group", group_size=32)),
        ("nf4", QuantSpec("nf4")),
        ("mxfp4", QuantSpec("mxfp4", 4, "group", group_size=32, scale_dtype="e8m0")),
        ("zeropoint", QuantSpec("zeropoint", 8, "channel")),
        ("w4a16", QuantSpec("fullrange-ct", 4, "group", group_size=128)),
        (
            "scheme=zeropoint,calibration=percentile,percentile=99.9,scale_dtype=float16",
            QuantSpec(
                "zeropoint",
                4,
                "group",
                group_size=64,
                calibration="percentile",
                percentile=99.9,
                scale_dtype="float16",
            ),
        ),  # fmt: skip
        ("granularity=channel,axis=1", QuantSpec("absmax", 4, "channel", axis=1, group_size=64)),
    ],
)
def test_spec_text(text, expected):
    assert parse_spec(text, "--rule").resolve(BASE, "--rule") == expected


def test_keep():
    spec = parse_spec("KEEP", "--rule")
    assert spec.keep and spec.resolve(BASE, "--rule") is None


def test_every_preset_is_a_valid_spec_and_every_scheme_has_one():
    from quantcli.core.schemes import SCHEMES

    for name in PRESETS:
        assert isinstance(parse_spec(name, "x").resolve(BASE, "x"), QuantSpec), name
    assert set(SCHEMES) <= set(PRESETS)
    # a preset ignores the command's options: it is the same whatever they are
    other = {"scheme": "zeropoint", "bits": 2, "granularity": "tensor"}
    assert parse_spec("int8", "x").resolve(other, "x") == QuantSpec("absmax", 8, "channel")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("bogus=1", "unknown spec key 'bogus' in --rule 'p=x': the keys are scheme, bits"),
        ("bits=four", "bad value 'four' for bits in --rule 'p=x': not an integer"),
        ("percentile=high", "bad value 'high' for percentile"),
        ("int9", "unknown spec 'int9' in --rule 'p=x'"),
        ("bits=6,int4", "a preset comes first"),
        ("keep,bits=4", "keep with options in --rule 'p=x'"),
        ("bits=4,bits=5", "bits given twice"),
    ],
)
def test_spec_text_errors(text, fragment):
    with pytest.raises(UsageError) as exc:
        parse_spec(text, "--rule 'p=x'")
    assert fragment in str(exc.value)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("bits=9", "bits 9 in --rule 'p=x': out of range; use 2 to 8"),
        ("scheme=mxfp4", "group size 64 in --rule 'p=x': mxfp4 has one scale per 32 elements; "
         "use group_size=32"),
        ("scheme=nf4,bits=6", "bits 6 in --rule 'p=x': nf4 is a 4-bit format; drop bits"),
        ("scheme=nope", "unknown scheme 'nope' in --rule 'p=x'"),
    ],
)  # fmt: skip
def test_spec_errors_are_said_of_the_rule(text, fragment):
    with pytest.raises(SpecError) as exc:
        parse_spec(text, "x").resolve(BASE, "--rule 'p=x'")
    assert fragment in str(exc.value)


# -- PATTERN -------------------------------------------------------------------------------

NAMES = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.v_proj.weight",
    "model.layers.0.self_attn.v_proj.bias",
    "model.layers.10.self_attn.v_proj.weight",
    "lm_head.weight",
    "lm_head_extra.weight",
    "scalar",
]


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("*embed*", {"model.embed_tokens.weight"}),
        # a module name: the name without its last dotted component
        ("lm_head", {"lm_head.weight"}),
        ("lm_head*", {"lm_head.weight", "lm_head_extra.weight"}),
        ("*.v_proj", {NAMES[1], NAMES[2], NAMES[3]}),
        ("re:.*\\.v_proj\\.weight", {NAMES[1], NAMES[3]}),
        # a regex matches a whole name, never a part of one
        ("re:v_proj", set()),
        ("re:model\\.layers\\.(0|3)\\..*v_proj", {NAMES[1], NAMES[2]}),
        ("scalar", {"scalar"}),
        ("*Embed*", set()),  # case-sensitive, as tensor names are
    ],
)
def test_patterns(pattern, expected):
    rule = parse_rule(f"{pattern}=int8")
    assert {n for n in NAMES if rule.matches(n)} == expected


def test_rule_splits_at_the_first_equals_sign():
    rule = parse_rule("re:.*\\.v_proj\\.weight=bits=6,group_size=32")
    assert rule.pattern.text == "re:.*\\.v_proj\\.weight"
    assert rule.spec.options == (("bits", 6), ("group_size", 32))


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("int8", "bad rule 'int8' in --rule: expected PATTERN=SPEC"),
        ("=int8", "expected PATTERN=SPEC"),
        ("*embed*=", "expected PATTERN=SPEC"),
        ("re:(unclosed=int8", "bad regular expression '(unclosed' in --rule 're:(unclosed=int8'"),
    ],
)
def test_rule_errors(text, fragment):
    with pytest.raises(UsageError) as exc:
        parse_rule(text)
    assert fragment in str(exc.value)


# -- the plan's decisions ------------------------------------------------------------------


def plan_of(*rules, base=BASE, **selector):
    return Plan(Selector(QuantSpec(**base), **selector), [parse_rule(r) for r in rules], base)


def test_first_matching_rule_wins():
    plan = plan_of("*v_proj*=bits=6", "*layers.0.*=keep", "*=int8")
    choose = lambda name: plan.choose(name, np.float32, (64, 64), False)  # noqa: E731
    assert choose(NAMES[1]).spec == QuantSpec("absmax", 6, "group", group_size=64)
    assert choose("model.layers.0.mlp.up_proj.weight").reason == "kept: --rule *layers.0.*=keep"
    assert choose("lm_head.weight").spec == QuantSpec("absmax", 8, "channel")
    # the other order: the catch-all first decides everything
    plan = plan_of("*=int8", "*v_proj*=bits=6")
    assert plan.choose(NAMES[1], np.float32, (64, 64), False).spec.bits == 8


def test_rules_never_quantize_what_the_selection_keeps():
    plan = plan_of("*=int8")
    assert plan.choose("norm.weight", np.float32, (64,), False).reason == "kept: 1-D"
    assert plan.choose("ids", np.int64, (64, 64), False).reason == "kept: int"
    # --include quantizes a 1-D tensor; a per-channel rule spec falls back to per tensor
    plan = plan_of("*=int8", include=("norm.weight",))
    assert plan.choose("norm.weight", np.float32, (64,), False).spec == QuantSpec(
        "absmax", 8, "tensor"
    )


def test_a_bad_rule_fails_before_any_file_is_read():
    with pytest.raises(SpecError, match=r"bits 1 in --rule '\*=bits=1'"):
        plan_of("*=bits=1")


# -- through the CLI -----------------------------------------------------------------------

V_PROJ = {f"model.layers.{i}.self_attn.v_proj.weight" for i in range(2)}
BASE_OPTIONS = ["--bits", "4", "--granularity", "group", "--group-size", "64"]
THE_RULES = [
    "--rule", "*embed*=int8",
    "--rule", "re:.*\\.v_proj\\.weight=bits=6",
    "--rule", "lm_head=keep",
]  # fmt: skip


def test_compress_with_rules_writes_each_tensors_spec(tmp_path):
    out = tmp_path / "mixed.safetensors"
    ok("compress", TRANSFORMER, "-o", out, "-q", *BASE_OPTIONS, *THE_RULES)
    arrays, meta = read_safetensors(out)
    specs = quantized_specs(meta)
    assert set(specs) == TRANSFORMER_QUANTIZED - {"lm_head.weight"}
    for name, spec in specs.items():
        got = (spec["scheme"], spec["bits"], spec["granularity"])
        if name == "model.embed_tokens.weight":
            assert got == ("absmax", 8, "channel")
        elif name in V_PROJ:
            assert got == ("absmax", 6, "group") and spec["group_size"] == 64
        else:
            assert got == ("absmax", 4, "group") and spec["group_size"] == 64
    original, _ = read_safetensors(TRANSFORMER)
    assert arrays["lm_head.weight"].tobytes() == original["lm_head.weight"].tobytes()
    # 6-bit codes of a 64-wide row: 48 bytes
    assert arrays["model.layers.0.self_attn.v_proj.weight"].shape == (64, 48)


def test_compress_table_names_each_spec_and_why_kept(tmp_path):
    result = ok("compress", TRANSFORMER, "-o", tmp_path / "m.safetensors", *BASE_OPTIONS,
                *THE_RULES)  # fmt: skip
    assert result.stdout == ""
    # the specs differ, so each row names its own (the names wrap at 100 columns)
    table = result.stderr
    assert "kept: --rule lm_head=keep" in table
    assert table.count("absmax i8 ch") == 1
    assert table.count("absmax i6 g64") == 2
    assert table.count("absmax i4 g64") == len(TRANSFORMER_QUANTIZED) - 4


def test_compress_json_with_rules(tmp_path):
    result = ok("compress", TRANSFORMER, "-o", tmp_path / "m.safetensors", "--json", "-q",
                *BASE_OPTIONS, *THE_RULES)  # fmt: skip
    rows = {t["tensor"]: t for t in json.loads(result.stdout)["tensors"]}
    assert rows["lm_head.weight"]["quantized"] is False
    assert rows["lm_head.weight"]["reason"] == "kept: --rule lm_head=keep"
    assert rows["model.layers.0.self_attn.v_proj.weight"]["spec"]["bits"] == 6


@pytest.mark.parametrize(
    "rules, fragment",
    [
        (["--rule", "*nothing*=int8"],
         "rule '*nothing*=int8' in --rule decides no tensor of "),
        (["--rule", "*norm*=int8"],
         "quant keeps every tensor it names (model.layers.0.input_layernorm.weight: kept: 1-D)"),
        (["--rule", "*=int8", "--rule", "lm_head=keep"],
         "the earlier rule '*=int8' decides every tensor it names (lm_head.weight; the first "
         "matching rule wins); put it before"),
        (["--rule", "*=bits=12"], "bits 12 in --rule '*=bits=12': out of range"),
        (["--rule", "lm_head"], "bad rule 'lm_head' in --rule: expected PATTERN=SPEC"),
        (["--rule", "*=scheme=mxfp4"], "use group_size=32"),
    ],
)  # fmt: skip
def test_rule_errors_through_the_cli(tmp_path, rules, fragment):
    out = tmp_path / "m.safetensors"
    line = assert_fails(run("compress", TRANSFORMER, "-o", out, *BASE_OPTIONS, *rules), 2, fragment)
    assert "Error: " in line
    assert not out.exists()


def test_no_match_error_shows_the_names(tmp_path):
    result = run("compress", TRANSFORMER, "-o", tmp_path / "m.safetensors", "--rule", "x=int8")
    line = assert_fails(result, 2)
    assert "matches no tensor name or module name (it holds " in line
    assert "check the names with quant inspect" in line


def test_rule_on_a_single_array_file(tmp_path):
    path = tmp_path / "w.npy"
    np.save(path, np.linspace(-1, 1, 4096, dtype=np.float32).reshape(64, 64))
    out = tmp_path / "w.q.safetensors"
    ok("compress", path, "-o", out, "-q", "--rule", "w=uint4")
    spec = quantized_specs(read_safetensors(out)[1])["w"]
    assert (spec["scheme"], spec["bits"], spec["group_size"]) == ("zeropoint", 4, 128)


def test_report_applies_rules_in_every_configuration():
    result = ok("report", TRANSFORMER, "--format", "json", "--per-tensor", "--bits", "4",
                "--bits", "8", "--scheme", "absmax", "--granularity", "channel",
                "--rule", "*v_proj*=bits=6", "--rule", "lm_head=keep")  # fmt: skip
    doc = json.loads(result.stdout)
    kept = {k["tensor"]: k["reason"] for k in doc["kept"]}
    assert kept["lm_head.weight"] == "kept: --rule lm_head=keep"
    v_rows = [r for r in doc["results"] if r["tensor"] in V_PROJ]
    assert len(v_rows) == 4 and {r["bits"] for r in v_rows} == {6}
    # each configuration's summary holds the rule's tensors at their rule's spec
    for summary in doc["summary"]:
        rows = [r for r in doc["results"] if r["tensor"] not in V_PROJ]
        rows = [r for r in rows if r["bits"] == summary["bits"]]
        assert summary["tensors"] == len(rows) + 2
        total = sum(r["bytes"] for r in rows) + sum(r["bytes"] for r in v_rows) / 2
        assert summary["bits_per_weight"] == pytest.approx(
            8 * total / (sum(r["elements"] for r in rows) + 2 * 64 * 64)
        )


def test_report_rule_errors():
    assert_fails(run("report", TRANSFORMER, "--rule", "*nope*=int8"), 2, "decides no tensor")
    line = assert_fails(
        run("report", TRANSFORMER, "--rule", "*=int8", "--hist", "lm_head.weight"), 2
    )
    assert "--rule with --hist" in line


def test_report_against_refuses_rules(tmp_path):
    out = tmp_path / "q.safetensors"
    ok("compress", TRANSFORMER, "-o", out, "-q")
    line = assert_fails(run("report", TRANSFORMER, "--against", out, "--rule", "*=int8"), 2)
    assert "--rule with --against" in line


# -- a container that holds fewer specs: compressed-tensors ----------------------------------


@pytest.fixture
def model_folder(tmp_path):
    """A tiny Llama-like model folder (config.json beside the weights)."""
    folder = tmp_path / "model"
    folder.mkdir()
    rng = np.random.default_rng(5)
    bf16 = lambda *shape: rng.normal(0, 0.02, shape).astype(ml_dtypes.bfloat16)  # noqa: E731
    tensors = {"model.embed_tokens.weight": bf16(100, 64), "lm_head.weight": bf16(100, 64)}
    for i in range(2):
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[f"model.layers.{i}.self_attn.{name}.weight"] = bf16(64, 64)
        tensors[f"model.layers.{i}.input_layernorm.weight"] = bf16(64)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {"model_type": "llama", "vocab_size": 100, "architectures": ["LlamaForCausalLM"]}
    (folder / "config.json").write_text(json.dumps(config))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_compressed_tensors_holds_a_mix_of_4_and_8_bits(model_folder, tmp_path):
    out = tmp_path / "ct"
    ok("compress", model_folder, "-o", out, "-q", "--bits", "4", "--granularity", "group",
       "--group-size", "32", "--rule", "*v_proj=int8")  # fmt: skip
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    bits = {
        target: group["weights"]["num_bits"]
        for group in config["config_groups"].values()
        for target in group["targets"]
    }
    v_targets = [t for t in bits if "v_proj" in t]
    assert len(v_targets) == 2 and {bits[t] for t in v_targets} == {8}
    assert {bits[t] for t in bits if "v_proj" not in t} == {4}


def test_compressed_tensors_refuses_a_mix_it_cannot_hold(model_folder, tmp_path):
    out = tmp_path / "ct"
    # 6-bit codes: the container's own one-line error, naming the tensor
    line = assert_fails(
        run("compress", model_folder, "-o", out, "--bits", "4", "--granularity", "group",
            "--group-size", "32", "--rule", "*v_proj=bits=6"),
        2,
    )  # fmt: skip
    assert re.search(r"6-bit codes in tensor model\.layers\.\d\.self_attn\.v_proj\.weight: "
                     r"compressed-tensors", line)  # fmt: skip
    # the output head stays float in compressed-tensors: a rule that only names it decides nothing
    line = assert_fails(run("compress", model_folder, "-o", out, "--rule", "lm_head=int8"), 2)
    assert "the output keeps what it names (lm_head.weight: kept: output head)" in line
    assert "use --format quant" in line
    assert not out.exists()
    # in quant's own format the same rule quantizes it
    ok("compress", model_folder, "-o", out, "-q", "--format", "quant", "--rule", "lm_head=int8")
