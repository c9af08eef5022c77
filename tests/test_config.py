"""The dataclass -> --key=value command line: parsing, help, and one-line errors."""

import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import Literal

import pytest

from nanochat.config import ConfigError, format_config, format_help, parse, to_dict
from tests.conftest import REPO_ROOT, subprocess_env


@dataclass
class Opts:
    depth: int = 20  # number of transformer layers; width follows it
    max_seq_len: int = 2048  # context length in tokens
    matrix_lr: float = 0.02  # Muon learning rate
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"  # compute precision
    compile: bool = True  # torch.compile the model
    run: str = "dummy"  # wandb run name ('dummy' = off) # second hash stays in the help
    model_tag: str | None = None  # checkpoint folder name; None = d<depth>
    step: int | None = None  # checkpoint step; None = latest

    def __post_init__(self):
        if self.depth < 1:
            raise ValueError(f"--depth must be >= 1, got {self.depth}")


def test_defaults_and_values():
    o = parse(Opts, [])
    assert o == Opts()
    o = parse(Opts, ["--depth=4", "--matrix_lr", "0.05", "--dtype=fp32", "--compile=false", "--run=x=y"])
    assert (o.depth, o.matrix_lr, o.dtype, o.compile, o.run) == (4, 0.05, "fp32", False, "x=y")


def test_bare_bool_flag_optional_and_dash_spelling():
    o = parse(Opts, ["--compile", "--model-tag=d4", "--step=none"])
    assert o.compile is True and o.model_tag == "d4" and o.step is None
    assert parse(Opts, ["--step=300"]).step == 300


def test_integer_accepts_underscores_and_integral_exponent():
    assert parse(Opts, ["--max_seq_len=1_024"]).max_seq_len == 1024
    assert parse(Opts, ["--max_seq_len=2e3"]).max_seq_len == 2000
    with pytest.raises(ConfigError, match="expects an integer"):
        parse(Opts, ["--max_seq_len=2.5"])


def test_unknown_key_names_valid_keys_and_closest():
    with pytest.raises(ConfigError) as e:
        parse(Opts, ["--max_seqlen=5"])
    msg = str(e.value)
    assert "unknown option --max_seqlen" in msg and "did you mean --max_seq_len?" in msg
    assert "--depth" in msg and "--model_tag" in msg and "\n" not in msg


def test_unknown_key_with_hint_explains_width_follows_depth():
    with pytest.raises(ConfigError) as e:
        parse(Opts, ["--model_dim=768"])
    assert "width follows --depth" in str(e.value)


def test_class_hints_override():
    @dataclass
    class Small:
        __cli_hints__ = {"foo": "foo was renamed --bar"}
        bar: int = 1  # the bar

    with pytest.raises(ConfigError, match="foo was renamed --bar"):
        parse(Small, ["--foo=1"])


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--depth=abc"], "--depth expects an integer, got 'abc'"),
        (["--dtype=fp8"], "--dtype must be one of bf16, fp16, fp32; got 'fp8'"),
        (["--compile=maybe"], "--compile expects true/false"),
        (["--depth=2", "--depth=3"], "--depth is given twice"),
        (["depth=3"], "unexpected argument 'depth=3'"),
        (["--depth"], "--depth needs a value"),
        (["--depth=0"], "--depth must be >= 1, got 0"),
        (["--matrix_lr=fast"], "--matrix_lr expects a number"),
    ],
)
def test_bad_values_give_one_line(argv, needle):
    with pytest.raises(ConfigError) as e:
        parse(Opts, argv)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_aliases():
    @dataclass
    class Small:
        prompt: str = ""  # ask once and exit

    assert parse(Small, ["-p", "Why is the sky blue?"], aliases={"-p": "prompt"}).prompt == "Why is the sky blue?"


def test_help_lists_comments_types_and_defaults():
    text = format_help(Opts, prog="python -m scripts.x", description="Train a thing.")
    assert text.startswith("Train a thing.")
    assert "--depth" in text and "number of transformer layers; width follows it" in text
    assert "default: 20" in text and "bf16|fp16|fp32" in text
    assert "wandb run name ('dummy' = off) # second hash stays in the help" in text


def test_to_dict_and_format():
    o = parse(Opts, ["--depth=4"])
    d = to_dict(o)
    assert d["depth"] == 4 and d["model_tag"] is None and len(d) == 8
    assert "depth       = 4" in format_config(o)


def test_parse_args_exit_codes(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass
            from nanochat.config import parse_args

            @dataclass
            class Small:
                depth: int = 20  # layers

            print(parse_args(Small).depth)
            """
        )
    )

    def run(*args):
        return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=subprocess_env())

    ok = run("--depth=3")
    assert ok.returncode == 0 and ok.stdout.strip() == "3"
    bad = run("--model_dim=3")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "width follows --depth" in bad.stderr
    helped = run("--help")
    assert helped.returncode == 0 and "--depth" in helped.stdout and "layers" in helped.stdout


def test_unique_prefix_abbreviates_a_key_and_ambiguity_is_refused():
    @dataclass
    class Paths:
        out_dir: str | None = None  # where to write
        max_seq_len: int = 8  # context
        max_new_tokens: int = 4  # reply length

    assert parse(Paths, ["--out=/tmp/x"]).out_dir == "/tmp/x"  # as argparse's allow_abbrev
    assert parse(Paths, ["--max_seq=16"]).max_seq_len == 16
    with pytest.raises(ConfigError, match="--max is ambiguous: it could be --max_seq_len, --max_new_tokens"):
        parse(Paths, ["--max=3"])
    with pytest.raises(ConfigError, match="did you mean --max_seq_len"):
        parse(Paths, ["--max_sequence=3"])
