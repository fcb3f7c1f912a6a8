"""Tests for imgcomp.config.parsing: the shipped configs, the file format, and its error
reporting."""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
from pathlib import Path

import pytest

from imgcomp.checkpoints import log_dirs as ckpt
from imgcomp.config.parsing import (
    Config,
    ConfigError,
    config_job_name,
    config_to_text,
    load_config,
    load_config_with_notes,
)
from imgcomp.config.schema import AE_SCHEMA, PC_SCHEMA, SCHEMAS, ConfigSchema

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(
    p
    for root in ("ae_configs", "pc_configs")
    for p in (REPO / root).rglob("*")
    if p.is_file() and not p.name.startswith(".")
)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------- shipped configs


def test_shipped_configs_exist():
    names = {str(p.relative_to(REPO)) for p in SHIPPED}
    expected = {
        "ae_configs/base",
        "ae_configs/cvpr/base",
        "ae_configs/cvpr/low",
        "ae_configs/cvpr/med",
        "ae_configs/cvpr/hi",
        "pc_configs/base",
        "pc_configs/cvpr/res_shallow",
        "pc_configs/cvpr/res_shallow_64",
    }
    assert expected <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_config_loads_and_round_trips(path: Path, tmp_path: Path):
    cfg = load_config(path)
    assert len(cfg) > 0
    assert cfg.source_path == path
    text = config_to_text(cfg)
    assert text.splitlines()[0] == "# Flattened from " + path.relative_to(REPO).as_posix()
    assert "use " not in text
    flat = load_config(write(tmp_path, "flat", text))
    assert flat == cfg
    # Equality alone would accept 1 for True or a list for a tuple.
    for name, value in cfg.items():
        assert type(flat[name]) is type(value), name


def test_ae_base_values():
    cfg = load_config(REPO / "ae_configs/base")
    assert cfg.num_chan_bn == 192
    assert cfg.regularization_factor == pytest.approx(1e-2)
    assert cfg.normalization == "FIXED"
    assert cfg.distortion_to_minimize == "mse"
    assert cfg.optimizer == "ADAM"
    assert cfg.lr_schedule == "DECAY"
    assert cfg.H_target is None
    assert cfg.crop_size == (128, 128)
    assert cfg.arch == "TwoLayerNet"
    assert cfg.arch_param_B == 3
    assert cfg.arch_param_n == 128
    assert cfg.bn_momentum == pytest.approx(0.1)
    assert cfg.bn_eps == pytest.approx(1e-5)


def test_cvpr_ae_values():
    low = load_config(REPO / "ae_configs/cvpr/low")
    med = load_config(REPO / "ae_configs/cvpr/med")
    hi = load_config(REPO / "ae_configs/cvpr/hi")
    assert low.H_target == pytest.approx(0.4)
    assert med.H_target == pytest.approx(1.2)
    assert hi.H_target == pytest.approx(1.0)
    assert (low.num_chan_bn, med.num_chan_bn, hi.num_chan_bn) == (32, 32, 64)
    for cfg in (low, med, hi):
        assert cfg.crop_size == (160, 160)
        assert isinstance(cfg.crop_size, tuple)
        assert cfg.normalization == "FIXED"
        assert type(cfg.normalization) is str
        assert cfg.distortion_to_minimize == "ms_ssim"
        assert cfg.arch == "CVPR"
        assert cfg.beta == 500
        assert cfg.lr_initial == pytest.approx(8e-5)
        assert cfg.arch_param_B == 5
        # Inherited unchanged from ae_configs/base.
        assert cfg.batch_size == 30
        assert cfg.K_psnr == 100
        assert cfg.optimizer == "ADAM"
        assert cfg.heatmap is True
        assert cfg.lr_centers_factor is None
        assert cfg.quantizer_sigma == 1


def test_pc_values():
    base = load_config(REPO / "pc_configs/base")
    shallow = load_config(REPO / "pc_configs/cvpr/res_shallow")
    shallow64 = load_config(REPO / "pc_configs/cvpr/res_shallow_64")
    assert base.kernel_size == 5
    assert base.arch == "base"
    assert shallow.kernel_size == 3
    assert shallow.arch == "res_shallow"
    assert shallow.arch_param__k == 24
    assert shallow64.arch_param__k == 64
    assert shallow64.kernel_size == 3
    assert shallow64.arch == "res_shallow"
    for cfg in (base, shallow, shallow64):
        assert cfg.arch_param__fc == 64
        assert cfg.arch_param__non_linearity == "relu"
        assert cfg.regularization_factor is None
        assert cfg.learn_pad_var is False
        assert cfg.use_centers_for_padding is True
        assert cfg.optimizer == "ADAM"
        assert cfg.lr_schedule == "DECAY"


# ---------------------------------------------------------------------------- Config object


def test_config_access():
    cfg = load_config(REPO / "ae_configs/cvpr/low")
    assert cfg["num_centers"] == cfg.num_centers == 6
    assert "num_centers" in cfg
    assert "nope" not in cfg
    assert cfg.get("nope", 7) == 7
    assert isinstance(cfg.to_dict(), dict)
    assert cfg.to_dict()["crop_size"] == (160, 160)
    with pytest.raises(AttributeError, match=r"ae_configs/cvpr/low.*'nope'"):
        _ = cfg.nope
    with pytest.raises(KeyError):
        _ = cfg["nope"]
    with pytest.raises(AttributeError):
        cfg.num_centers = 3  # type: ignore[misc]


def test_config_copy_and_pickle():
    cfg = load_config(REPO / "pc_configs/cvpr/res_shallow")
    for clone in (pickle.loads(pickle.dumps(cfg)), copy.deepcopy(cfg)):
        assert clone == cfg
        assert clone.source_path == cfg.source_path
        assert clone.kernel_size == 3


def test_to_dict_is_a_copy():
    cfg = Config({"a": [1, 2]})
    cfg.to_dict()["a"].append(3)
    assert cfg.a == [1, 2]


# ---------------------------------------------------------------------------- file format


def test_use_chain_and_overrides(tmp_path: Path):
    write(tmp_path, "base", "a = 1\nb = 2\nc = 3\n")
    write(tmp_path, "sub/mid", "use ../base\nb = 20\nd = b + a\n")
    leaf = write(tmp_path, "sub/deeper/leaf", "use ../mid\nc = 30\n")
    cfg = load_config(leaf)
    assert cfg.to_dict() == {"a": 1, "b": 20, "c": 30, "d": 21}


def test_later_use_overrides_earlier_assignments(tmp_path: Path):
    write(tmp_path, "other", "a = 2\n")
    cfg = load_config(write(tmp_path, "main", "a = 1\nuse other\n"))
    assert cfg.a == 2


def test_arithmetic_and_names(tmp_path: Path):
    text = (
        "n = 3*8*8\n"
        "h = 2*0.6\n"
        "m = -n + 2**3 - 7 // 2 + 7 % 4\n"
        "r = n / 64\n"
        "s = 'ab' + \"cd\"\n"
        "neg = -1e-3\n"
        "pos = +5\n"
        "t = (n, h)\n"
    )
    cfg = load_config(write(tmp_path, "c", text))
    assert cfg.n == 192
    assert cfg.h == pytest.approx(1.2)
    assert cfg.m == -192 + 8 - 3 + 3
    assert cfg.r == 3.0
    assert cfg.s == "abcd"
    assert cfg.neg == pytest.approx(-1e-3)
    assert cfg.pos == 5
    assert cfg.t == (192, pytest.approx(1.2))


def test_names_do_not_share_mutable_values(tmp_path: Path):
    cfg = load_config(write(tmp_path, "c", "a = [1]\nb = a\n"))
    assert cfg.a == cfg.b
    assert cfg.a is not cfg.b


def test_multiline_values(tmp_path: Path):
    text = (
        "lst = [\n"
        "    1,  # one\n"
        "    2,\n"
        "]\n"
        "dct = {'x': (1,\n"
        "             2),\n"
        "       'y': [3]}\n"
        "tup = (\n"
        "  'a#b',\n"
        ")\n"
        "after = 5\n"
    )
    cfg = load_config(write(tmp_path, "c", text))
    assert cfg.lst == [1, 2]
    assert cfg.dct == {"x": (1, 2), "y": [3]}
    assert cfg.tup == ("a#b",)
    assert cfg.after == 5


def test_comments_and_blank_lines(tmp_path: Path):
    text = (
        "# header comment\n"
        "\n"
        "   # indented comment\n"
        "a = 'x#y'  # trailing\n"
        'b = "it\'s # here"\n'
        "c = 'esc \\' # still a string'  # real comment\n"
        "d = 4# no space\n"
    )
    cfg = load_config(write(tmp_path, "c", text))
    assert cfg.to_dict() == {"a": "x#y", "b": "it's # here", "c": "esc ' # still a string", "d": 4}


def test_env_substitution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("IMGCOMP_TEST_DIR", "/data/imgs")
    monkeypatch.setenv("IMGCOMP_TEST_N", "7")
    monkeypatch.delenv("IMGCOMP_TEST_UNSET", raising=False)
    text = (
        "root = '$IMGCOMP_TEST_DIR$/train'\n"
        "n = $IMGCOMP_TEST_N$ * 2\n"
        "# $IMGCOMP_TEST_UNSET$ in a comment is not substituted\n"
    )
    cfg = load_config(write(tmp_path, "c", text))
    assert cfg.root == "/data/imgs/train"
    assert cfg.n == 14


def test_env_substitution_in_use_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write(tmp_path, "shared/base", "a = 1\n")
    monkeypatch.setenv("IMGCOMP_TEST_SHARED", str(tmp_path / "shared"))
    cfg = load_config(write(tmp_path, "c", "use $IMGCOMP_TEST_SHARED$/base\nb = a\n"))
    assert cfg.b == 1


def test_enum_words_via_constraint(tmp_path: Path):
    write(tmp_path, "base", "constrain mode :: OFF, FIXED\nmode = OFF\n")
    # The derived file may use any word of the base's constraint.
    cfg = load_config(write(tmp_path, "c", "use base\nmode = FIXED\n"))
    assert cfg.mode == "FIXED"
    assert type(cfg.mode) is str


def test_constraint_later_in_chain_applies(tmp_path: Path):
    # A constrain line after the assignment still allows the word and is still checked.
    cfg = load_config(write(tmp_path, "c", "mode = B\nconstrain mode :: A, B\n"))
    assert cfg.mode == "B"


def test_defined_name_wins_over_enum_word(tmp_path: Path):
    text = "A = 'value of A'\nconstrain x :: A, B\nx = A\n"
    with pytest.raises(ConfigError, match=r"c:3: .*violates"):
        load_config(write(tmp_path, "c", text))


def test_constraint_with_literals(tmp_path: Path):
    text = "constrain k :: 3, 5, 'seven'\nk = 5\nconstrain flag :: 1\n"
    assert load_config(write(tmp_path, "ok", text + "flag = 1\n")).flag == 1
    with pytest.raises(ConfigError, match=r"bad:4: .*violates"):
        # True == 1 in Python, but a bool must not satisfy an int constraint.
        load_config(write(tmp_path, "bad", text + "flag = True\n"))


def test_constraint_checked_on_final_value(tmp_path: Path):
    write(tmp_path, "base", "constrain mode :: A, B\nmode = 'C'\n")
    cfg = load_config(write(tmp_path, "c", "use base\nmode = A\n"))
    assert cfg.mode == "A"


# ---------------------------------------------------------------------------- job names


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("ae_configs/cvpr/low", "cvpr@low"),
        ("pc_configs/cvpr/res_shallow", "cvpr@res_shallow"),
        ("ae_configs/base", "base"),
        ("/abs/somewhere/ae_configs/a/b/c", "a@b@c"),
        ("/x/ae_configs/pc_configs/cvpr/hi", "cvpr@hi"),
        ("ae_configs/cvpr/../cvpr/hi", "cvpr@hi"),
        ("/tmp/elsewhere/myconf", "myconf"),
        (Path("pc_configs/cvpr/res_shallow_64"), "cvpr@res_shallow_64"),
    ],
)
def test_config_job_name(path: str, expected: str):
    assert config_job_name(path) == expected


# ---------------------------------------------------------------------------- errors


def assert_config_error(path: Path, lineno: int, *fragments: str,
                        schema: ConfigSchema | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, schema)
    message = str(info.value)
    assert message.startswith(f"{path}:{lineno}: "), message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def test_violated_constraint(tmp_path: Path):
    path = write(tmp_path, "c", "constrain opt :: ADAM, SGD\n\nopt = 'RMSPROP'\n")
    assert_config_error(path, 3, "opt", "RMSPROP", f"{path}:1")


def test_violated_constraint_reports_final_assignment(tmp_path: Path):
    base = write(tmp_path, "base", "constrain opt :: ADAM, SGD\nopt = ADAM\n")
    leaf = write(tmp_path, "leaf", "use base\n# comment\nopt = 'NADAM'\n")
    err = assert_config_error(leaf, 3, "NADAM")
    assert f"{base}:1" in str(err)


def test_constrained_name_never_assigned(tmp_path: Path):
    assert_config_error(write(tmp_path, "c", "a = 1\nconstrain b :: X, Y\n"), 2, "never assigned")


def test_unknown_name(tmp_path: Path):
    assert_config_error(write(tmp_path, "c", "alpha = 1\nb = 2\nc = alpah * 2\n"), 3, "alpah")


def test_unknown_word_not_in_constraint(tmp_path: Path):
    path = write(tmp_path, "c", "constrain mode :: OFF, FIXED\nmode = FIXD\n")
    assert_config_error(path, 2, "FIXD", "FIXED")


def test_unknown_name_in_multiline_value(tmp_path: Path):
    path = write(tmp_path, "c", "a = 1\nlst = [\n  a,\n  b,\n]\n")
    assert_config_error(path, 4, "'b'")


def test_syntax_error(tmp_path: Path):
    assert_config_error(write(tmp_path, "c", "a = 1\nb = (1 2)\n"), 2, "syntax error")


def test_syntax_error_in_multiline_value(tmp_path: Path):
    path = write(tmp_path, "c", "a = 1\nb = [\n  1,\n  2 3,\n]\n")
    assert_config_error(path, 4, "syntax error")


def test_unclosed_bracket(tmp_path: Path):
    assert_config_error(write(tmp_path, "c", "a = 1\nb = [1,\n2\n"), 2, "unclosed")


def test_missing_value(tmp_path: Path):
    assert_config_error(write(tmp_path, "c", "a = 1\nb =\n"), 2, "missing value")


def test_missing_use_target(tmp_path: Path):
    path = write(tmp_path, "c", "# first\nuse nonexistent_base\na = 1\n")
    assert_config_error(path, 2, "nonexistent_base")


def test_missing_use_target_reported_in_used_file(tmp_path: Path):
    mid = write(tmp_path, "mid", "a = 1\nuse gone\n")
    leaf = write(tmp_path, "leaf", "use mid\n")
    with pytest.raises(ConfigError) as info:
        load_config(leaf)
    assert str(info.value).startswith(f"{mid}:2: ")


def test_use_cycle(tmp_path: Path):
    a = write(tmp_path, "a", "use b\n")
    b = write(tmp_path, "b", "x = 1\nuse a\n")
    # Loading b enters a (b:2), whose `use b` (a:1) closes the cycle.
    with pytest.raises(ConfigError, match="cycle") as info:
        load_config(b)
    assert str(info.value).startswith(f"{a}:1: ")


def test_unset_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("IMGCOMP_TEST_UNSET", raising=False)
    path = write(tmp_path, "c", "a = 1\nroot = '$IMGCOMP_TEST_UNSET$/x'\n")
    assert_config_error(path, 2, "IMGCOMP_TEST_UNSET")


def test_function_call_is_rejected_not_executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def forbidden(*args: object) -> None:
        raise AssertionError("config code was executed")

    monkeypatch.setattr("os.system", forbidden)
    path = write(tmp_path, "c", "a = 1\nb = __import__('os')\n")
    assert_config_error(path, 2, "Call")
    path = write(tmp_path, "d", "a = 1\n\nb = (1, __import__('os').system('true'))\n")
    assert_config_error(path, 3, "Call")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("a.real", "Attribute"),
        ("().__class__", "Attribute"),
        ("[1, 2][0]", "Subscript"),
        ("lambda: 1", "Lambda"),
        ("[x for x in (1, 2)]", "ListComp"),
        ("{1, 2}", "Set"),
        ("1 if a else 2", "IfExp"),
        ("a < 2", "Compare"),
        ("a and a", "BoolOp"),
        ("not a", "UnaryOp"),
        ("{**{}}", "unpacking"),
        ("[*()]", "Starred"),
        ("f'{a}'", "JoinedStr"),
        ("b'x'", "literal"),
        ("...", "literal"),
    ],
)
def test_disallowed_expressions(tmp_path: Path, value: str, fragment: str):
    assert_config_error(write(tmp_path, "c", f"a = 1\nb = {value}\n"), 2, fragment)


def test_unknown_directive(tmp_path: Path):
    path = write(tmp_path, "c", "a = 1\nimport os\n")
    assert_config_error(path, 2, "unknown directive", "import os")


def test_bare_word_line_is_an_error(tmp_path: Path):
    assert_config_error(write(tmp_path, "c", "a = 1\n\nfoo\n"), 3, "unknown directive")


def test_reserved_word_assignment(tmp_path: Path):
    assert_config_error(write(tmp_path, "c", "a = 1\nNone = 2\n"), 2, "reserved")


def test_arithmetic_error(tmp_path: Path):
    assert_config_error(write(tmp_path, "c", "a = 0\nb = 1 / a\n"), 2, "cannot evaluate")
    assert_config_error(write(tmp_path, "d", "a = 'x'\nb = a - 1\n"), 2, "cannot evaluate")


def test_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope")


# ---------------------------------------------------------------------------- writing


def test_to_text_round_trip_of_awkward_values(tmp_path: Path):
    cfg = Config(
        {
            "one": (1,),
            "empty": (),
            "nested": {"k": [(-1, 2.5), None], 3: "v"},
            "dollar": "$HOME$/x$",
            "quote": 'it\'s "q" # not a comment',
            "inf": float("inf"),
            "ninf": -float("inf"),
            "flag": False,
        }
    )
    back = load_config(write(tmp_path, "flat", config_to_text(cfg)))
    assert back == cfg
    assert type(back.one) is tuple
    assert type(back.empty) is tuple
    assert back.dollar == "$HOME$/x$"


# ---------------------------------------------------------------------------- schema

# Keys of the original's configs (fab-jul/imgcomp-cvpr, code/ae_configs and code/pc_configs).
ORIGINAL_KEYS = {
    "ae": {"num_chan_bn", "regularization_factor", "normalization", "heatmap", "beta",
           "train_autoencoder", "train_probclass", "arch", "distortion_to_minimize", "K_psnr",
           "K_ms_ssim", "centers_initial_range", "num_centers", "regularization_factor_centers",
           "H_target", "crop_size", "batch_size", "lr_initial", "lr_centers_factor",
           "optimizer", "optimizer_momentum", "lr_schedule", "lr_schedule_decay_interval",
           "lr_schedule_decay_rate", "lr_schedule_decay_staircase", "arch_param_B"},
    "pc": {"arch", "kernel_size", "lr_initial", "optimizer", "optimizer_momentum",
           "lr_schedule", "lr_schedule_decay_interval", "lr_schedule_decay_rate",
           "lr_schedule_decay_staircase", "arch_param__k", "arch_param__non_linearity",
           "arch_param__fc", "regularization_factor", "learn_pad_var", "use_centers_for_padding"},
}
ORIGINAL_FIXTURE = (Path(os.environ.get("IMGCOMP_SHARED", REPO.parent / "shared"))
                    / "fixtures/original_tf1")


def kind_of(path: Path) -> str:
    """ae or pc, from the config's folder (ae_configs/...) or name (ae_tiny, pc_config)."""
    for part in reversed(path.parts):
        if part[:3] in ("ae_", "pc_"):
            return part[:2]
    raise AssertionError(f"kind of {path}?")


def log_dirs() -> list[Path]:
    """Every log dir of ours here (shipped, logs_ab/ if present) and the original's fixture."""
    dirs = [p.parent for root in ("ckpts", "logs_ab") for p in (REPO / root).glob("*/ckpts")]
    return sorted(dirs) + sorted(p.parent for p in ORIGINAL_FIXTURE.glob("*/ckpts"))


def cvpr_leaf(tmp_path: Path, lines: str, name: str = "leaf") -> Path:
    return write(tmp_path, name, f"use {REPO}/ae_configs/cvpr/base\n# a comment\n{lines}")


def test_schema_defaults_are_the_base_files():
    for schema in (AE_SCHEMA, PC_SCHEMA):
        base_path = REPO / f"{schema.kind}_configs/base"
        base = load_config(base_path, schema)
        declared = {k.name: k.default for k in schema.keys.values() if k.name in base}
        assert {k: base[k] for k in declared} == declared
        for name, default in declared.items():
            assert type(base[name]) is type(default), name
        # pc_configs/base has never set optimizer_momentum (the original's sets 0.9).
        unset = {"pc": {"optimizer_momentum"}, "ae": set()}[schema.kind]
        assert set(base) == set(schema.keys) - unset | set(schema.unused_original_keys)
        # The words of each `constrain` line are those of the key's type.
        for name, words in re.findall(r"^constrain (\w+) :: (.*)$", base_path.read_text(), re.M):
            assert tuple(w.strip() for w in words.split(",")) == schema.keys[name].type.choices


def test_every_key_the_code_reads_is_declared():
    declared = set(AE_SCHEMA.keys) | set(PC_SCHEMA.keys)
    config_api = {"source_path", "to_dict", "items", "keys", "values", "get"}
    read = set()
    for source in set((REPO / "imgcomp").rglob("*.py")) - {REPO / "imgcomp/config/parsing.py"}:
        text = source.read_text()
        read |= set(re.findall(r"\b(?:ae_cfg|pc_cfg|cfg|ae|pc)\.([A-Za-z_]\w*)", text))
        read |= set(re.findall(r"\b(?:ae_cfg|pc_cfg|cfg)\.get\(\"(\w+)\"", text))
    assert "lr_centers_factor" in read and "K_mse" in read  # the patterns see the code
    assert read - config_api <= declared


def test_keys_of_the_original_are_declared_or_ignored():
    for kind, keys in ORIGINAL_KEYS.items():
        schema = SCHEMAS[kind]
        assert keys - set(schema.keys) == set(schema.unused_original_keys)
    assert set(PC_SCHEMA.unused_original_keys) == {
        "arch_param__non_linearity", "arch_param__fc", "learn_pad_var"}
    assert not AE_SCHEMA.unused_original_keys


def test_legacy_keys_are_declared_values():
    for legacy, schema in ((ckpt.LEGACY_AE_KEYS, AE_SCHEMA), (ckpt.LEGACY_PC_KEYS, PC_SCHEMA)):
        for name, value in legacy.items():
            assert name in schema.keys and schema.type_problem(name, value) is None, name


@pytest.mark.parametrize("path", [*SHIPPED, *sorted((REPO / "tests/configs").iterdir())],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_every_config_file_passes_its_schema(path: Path, capsys: pytest.CaptureFixture):
    cfg = load_config(path, SCHEMAS[kind_of(path)], note_unused=False)
    assert cfg == load_config(path)  # checking changes no value
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("log_dir", log_dirs(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_log_dir_config_loads(log_dir: Path, capsys: pytest.CaptureFixture):
    ae, pc = ckpt.read_configs(log_dir)
    assert ae.arch == "CVPR" and pc.arch == "res_shallow"
    assert capsys.readouterr() == ("", "")  # log dirs load silently


def test_original_flattened_configs_load(tmp_path: Path, capsys: pytest.CaptureFixture):
    metas = sorted(ORIGINAL_FIXTURE.glob("*/oracle/meta.json"))
    if not metas:
        pytest.skip("original_tf1 fixture not available (set IMGCOMP_SHARED)")
    meta = json.loads(metas[0].read_text())
    for kind in ("ae", "pc"):
        assert set(meta[f"{kind}_config"]) == ORIGINAL_KEYS[kind]
        path = write(tmp_path, f"{kind}_config", config_to_text(Config(meta[f"{kind}_config"])))
        assert load_config(path, SCHEMAS[kind]) == Config(meta[f"{kind}_config"])
    assert capsys.readouterr().out.count("note:") == 1  # the pc config's unused keys


def test_misspelled_key_names_file_line_and_suggestion(tmp_path: Path):
    path = cvpr_leaf(tmp_path, "lr_intial = 1e-3\n")
    assert_config_error(path, 3, "unknown ae config key 'lr_intial'",
                        "did you mean 'lr_initial'?", schema=AE_SCHEMA)
    assert load_config(path).lr_intial == 1e-3  # without a schema, any name is a value


def test_unknown_key_without_a_close_one(tmp_path: Path):
    err = assert_config_error(cvpr_leaf(tmp_path, "zzz = 1\n"), 3, "'zzz'", schema=AE_SCHEMA)
    assert "did you mean" not in str(err)


def test_unknown_key_is_reported_in_the_file_that_sets_it(tmp_path: Path):
    mid = cvpr_leaf(tmp_path, "batch_size = 8\nnum_centres = 5\n", "mid")
    leaf = write(tmp_path, "leaf", "use mid\nbatch_size = 4\n")
    with pytest.raises(ConfigError, match="did you mean 'num_centers'") as info:
        load_config(leaf, AE_SCHEMA)
    assert str(info.value).startswith(f"{mid}:4: ")


def test_swapped_configs_are_named(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"pc_configs/base:\d+: 'kernel_size' is a key of pc "
                       r"configs, not of ae configs"):
        load_config(REPO / "pc_configs/cvpr/res_shallow", AE_SCHEMA)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("crop_size = 128", "crop_size = 128: expected a pair (int, int), got int"),
        ("crop_size = (128, 128.5)", "expected a pair (int, int)"),
        ("centers_initial_range = (-2, 2, 3)", "expected a pair (float, float)"),
        ("heatmap = 1", "heatmap = 1: expected bool (True or False), got int"),
        ("batch_size = True", "batch_size = True: expected int, got bool"),
        ("batch_size = 30.0", "expected int, got float"),
        ("lr_initial = '1e-3'", "lr_initial = '1e-3': expected float, got str"),
        ("beta = False", "expected float, got bool"),
        ("H_target = 'high'", "expected float or None, got str"),
        ("arch = None", "arch = None: expected str, got NoneType"),
    ],
)
def test_wrong_type_names_file_line_key_and_type(tmp_path: Path, line: str, expected: str):
    assert_config_error(cvpr_leaf(tmp_path, f"{line}\n"), 3, expected, schema=AE_SCHEMA)


def test_wrong_type_is_reported_at_the_last_assignment(tmp_path: Path):
    mid = cvpr_leaf(tmp_path, "batch_size = 'eight'\n", "mid")
    leaf = write(tmp_path, "leaf", f"use {mid.name}\n\nbatch_size = '4'\n")
    assert_config_error(leaf, 3, "batch_size = '4'", schema=AE_SCHEMA)


def test_enum_outside_a_constraint_is_checked(tmp_path: Path):
    # A flattened config has no `constrain` lines: the schema knows the words.
    flat = config_to_text(load_config(REPO / "pc_configs/cvpr/res_shallow"))
    path = write(tmp_path, "pc_config", flat.replace("objective = 'total_loss'",
                                                     "objective = 'H_rael'"))
    line = flat.splitlines().index("objective = 'total_loss'") + 1
    assert_config_error(path, line, "expected one of total_loss, H_real", schema=PC_SCHEMA)


def test_ints_are_accepted_as_floats_and_kept(tmp_path: Path):
    cfg = load_config(cvpr_leaf(tmp_path, "lr_initial = 1\nH_target = 2\nK_mse = 0\n"),
                      AE_SCHEMA)
    assert (cfg.lr_initial, cfg.H_target, cfg.K_mse) == (1, 2, 0)
    assert type(cfg.lr_initial) is int  # as written: flattened configs stay byte-identical


def test_unused_key_of_the_original_is_accepted_and_noted_once(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    path = write(tmp_path, "pc", f"use {REPO}/pc_configs/cvpr/res_shallow\nlearn_pad_var = True\n")
    cfg = load_config(path, PC_SCHEMA)
    assert cfg.learn_pad_var is True
    out = capsys.readouterr().out
    assert out == (f"note: {path}: arch_param__non_linearity, arch_param__fc, learn_pad_var: "
                   "keys of the original's pc configs that the port does not use; ignored\n")
    load_config(path, PC_SCHEMA, note_unused=False)
    load_config(REPO / "ae_configs/cvpr/med", AE_SCHEMA)
    assert capsys.readouterr().out == ""
    # The notes returned instead, for train.py's console log: nothing printed.
    assert load_config_with_notes(path, PC_SCHEMA) == (cfg, [out.removeprefix("note: ").strip()])
    assert load_config_with_notes(REPO / "ae_configs/cvpr/med", AE_SCHEMA)[1] == []
    assert load_config_with_notes(path)[1] == []  # without a schema no key is unused
    assert capsys.readouterr().out == ""


def test_log_dir_with_a_misspelled_key_is_refused(tmp_path: Path, tiny_configs):
    ckpt_dir = tmp_path / "0101_0000 a b" / "ckpts"
    ckpt_dir.mkdir(parents=True)
    ckpt.write_configs(ckpt_dir, *tiny_configs)
    pc_text = (ckpt_dir / "pc_config").read_text()
    (ckpt_dir / "pc_config").write_text(pc_text.replace("kernel_size", "kernel_sise"))
    with pytest.raises(ConfigError, match=r"pc_config:\d+: .*'kernel_sise' \(did you mean "
                       r"'kernel_size'\?\)"):
        ckpt.read_configs(ckpt_dir)


def test_flattened_configs_name_their_source_relative_to_the_config_root(tmp_path):
    """A flattened config says where it came from without the paths of the machine it was
    written on: from the ae_configs / pc_configs root on, or the file name alone."""
    cfg = load_config(REPO / "ae_configs/cvpr/med", AE_SCHEMA)
    assert config_to_text(cfg).splitlines()[0] == "# Flattened from ae_configs/cvpr/med"
    loose = tmp_path / "my_config"
    loose.write_text("num_chan_bn = 8\n")
    assert config_to_text(load_config(loose, AE_SCHEMA)).splitlines()[0] \
        == "# Flattened from my_config"
    for flattened in REPO.glob("ckpts/*/ckpts/*_config"):
        first = flattened.read_text().splitlines()[0]
        assert first.startswith("# Flattened from ") and not first.split()[-1].startswith("/")
