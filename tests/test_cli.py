"""The command lines themselves: ``python orchestration/sweep.py`` and ``python -m emgcore``.

``--help`` and a bad flag answer before torch, Ray or MLflow load; every option says what it
takes and its default; help is plain text (no reST markup); every example a help text gives
parses and applies (``--set`` pairs to the command's config); and a ``--set`` that the config
refuses is one line naming ``--set`` and the pair, never the preset file, exit 2.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from emgcore import __main__ as cli
from emgcore.config import resolve_config, tuplify
from orchestration import sweep

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "ray", "mlflow", "pandas", "scipy")


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )


def _imported(*argv: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime *argv``: the result and the top-level packages it imported."""
    out = _run("-X", "importtime", *argv)
    mods = {
        line.split("|")[-1].strip().split(".")[0]
        for line in out.stderr.splitlines()
        if line.startswith("import time:")
    }
    return out, mods


@pytest.mark.parametrize(
    "argv",
    [
        ("orchestration/sweep.py", "--help"),
        ("orchestration/sweep.py", "kinembed", "--workers", "0"),  # a bad flag: one line, exit 2
        ("orchestration/sweep.py", "kinembed", "--subjects", "S1,,S3"),
        ("-m", "emgcore", "--help"),
        *(("-m", "emgcore", c, "--help") for c in ("demo", "kinembed", "posealign", "jepa")),
        ("-m", "emgcore", "kinembed-report", "--help"),
        ("-m", "emgcore", "demo", "--window-ms", "0"),
    ],
    ids=lambda a: " ".join(a),
)
def test_help_and_bad_flags_import_no_torch_ray_or_mlflow(argv) -> None:
    out, mods = _imported(*argv)
    assert out.returncode == (0 if "--help" in argv else 2), out.stderr[-2000:]
    assert out.stdout.strip() if "--help" in argv else "error: argument" in out.stderr
    assert not mods & set(HEAVY), sorted(mods & set(HEAVY))
    assert "emgcore" in mods or "orchestration" in mods  # the check saw the imports at all


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Every parser: the sweep's, ``python -m emgcore``'s and each of its commands'."""
    top = cli.parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return {"sweep": sweep.parser(), "emgcore": top, **sub.choices}


def test_every_option_of_every_command_has_help_naming_its_default() -> None:
    missing, no_default = [], []
    for name, p in _parsers().items():
        for a in p._actions:
            if isinstance(a, argparse._HelpAction | argparse._SubParsersAction):
                continue
            where = f"{name} {a.option_strings or a.dest}"
            if not (a.help or "").strip():
                missing.append(where)
            switch = isinstance(a, argparse._StoreTrueAction) or a.const is True
            if a.option_strings and not a.required and not switch and "default" not in a.help:
                no_default.append(where)
    assert not missing, f"options without help: {missing}"
    assert not no_default, f"options whose help does not say their default: {no_default}"


def test_help_is_plain_text() -> None:
    """No reST markup (``literal``, :func:`x`, a closing ::) in any --help."""
    markup = re.compile(r"``|:[a-z]+:`|`[^`\s]+`_?|\w::$", re.M)
    for name, p in _parsers().items():
        text = p.format_help()
        assert not markup.search(text), (name, markup.search(text).group(0))
    # and the sweep's description is its docstring, read as text
    assert "emgcore.methods.METHODS (kinembed, mae" in sweep.parser().format_help()


def test_help_text_reads_rest_as_plain_text() -> None:
    from emgcore.config import help_text

    doc = """Run ``x`` with :func:`a.b`, :class:`~pkg.mod.Cls` and :ref:`the guide <guide>`;
        see `name` too. Schema::

            key: ``kept as written``   # a literal block keeps its lines
        """
    assert help_text(doc, width=40) == (
        "Run x with a.b, Cls and the guide; see\nname too. Schema:\n\n"
        "    key: kept as written   # a literal block keeps its lines\n"
    )


def test_the_defaults_help_names_are_the_methods() -> None:
    """``python -m emgcore``'s --help names each command's default data and preset without
    importing the registry: they must be the registry's."""
    from emgcore.methods import METHODS

    helps = {n: p.format_help() for n, p in _parsers().items()}
    for command, (method, data, preset) in cli.DEFAULTS.items():
        assert (METHODS[method].data, METHODS[method].preset) == (data, preset)
        assert f"(default: {data})" in " ".join(helps[command].split())
        args = cli.parser().parse_args([command])
        cli._default_data(args, command)
        assert (args.data, args.config) == (data, preset)
    # the method names the sweep accepts are the registry's (its bundled spaces, one each)
    assert {p.stem for p in sweep.SPACES.glob("*.yaml")} == set(METHODS)


def test_the_simulator_presets_help_names_are_the_presets() -> None:
    from emgcore.data import PRESETS

    text = " ".join(_parsers()["demo"].format_help().split())
    named = re.search(r"simulator preset \(([^)]*)\)", text).group(1).split(", ")
    assert named == list(PRESETS)


# -- every example a --help gives works ---------------------------------------------------------


def _examples(help_text: str) -> list[str]:
    """The ``--set`` examples in a help text, as the shell would split them."""
    text = " ".join(help_text.split())
    return [" ".join(shlex.split(m)) for m in re.findall(r"--set ('[^']*'|\S+=[^\s;]+)", text)]


@pytest.mark.parametrize("command", list(cli.SET_EXAMPLES))
def test_every_set_example_in_help_applies_to_the_commands_config(command) -> None:
    shown = _examples(next(a.help for a in _parsers()[command]._actions if a.dest == "set"))
    assert shown == [" ".join(shlex.split(e)) for e in cli.SET_EXAMPLES[command]], shown
    for example in cli.SET_EXAMPLES[command]:
        args = cli.parser().parse_args([command, "--set", *shlex.split(example)])
        cli._default_data(args, command)
        cfg = getattr(cli, f"_{command}_config")(args)
        key, _, value = shlex.split(example)[0].partition("=")
        got = cfg
        for part in key.split("."):
            got = getattr(got, part)
        assert got == tuplify(yaml.safe_load(value)), (example, got)


# (parser, option) -> how to check each "e.g." its help gives; a new example must be added here
def _sweep_opts(tmp: Path, *argv: str):
    from orchestration.driver import Sweep

    flags = ["--tracking-uri", f"sqlite:///{tmp}/m.db", "--storage-path", str(tmp)]
    return Sweep(sweep.parse([*argv, *flags]))  # checks stages and studies against the space


def _check_stages(tmp: Path) -> None:
    assert _sweep_opts(tmp, "kinembed", "--stages", "loss,architecture").opts.stages == (
        "loss",
        "architecture",
    )


def _check_subjects(tmp: Path) -> None:
    s = _sweep_opts(tmp, "kinembed", "--subjects", "S1,S3")
    assert s.space.subjects == ("S1", "S3")


def _check_study(tmp: Path) -> None:
    for study in ("data_efficiency", "batch_size"):
        assert _sweep_opts(tmp, "cpep", "--study", study).opts.study == study


def _check_cli(command: str, *argv: str) -> None:
    args = cli.parser().parse_args([command, *argv])
    cli._default_data(args, command)
    getattr(cli, f"_{command}_config")(args)


def _check_ablations(tmp: Path) -> None:
    from emgcore.methods.jepa import ABLATIONS

    assert {"emg_jepa", "supervised"} <= set(ABLATIONS)


EXAMPLES = {
    ("sweep", "--stages"): _check_stages,
    ("sweep", "--subjects"): _check_subjects,
    ("sweep", "--study"): _check_study,
    ("sweep", "--storage-path"): None,  # s3://... or an NFS path: nothing to check offline
    ("kinembed", "--set"): None,  # test_every_set_example_in_help_applies_to_the_commands_config
    ("posealign", "--set"): None,
    ("jepa", "--set"): None,
    ("kinembed", "--subjects"): lambda tmp: _check_cli("kinembed", "--subjects", "s00,s01"),
    ("kinembed", "--methods"): lambda tmp: _check_cli("kinembed", "--methods", "pca,kinembed"),
    ("posealign", "--methods"): lambda tmp: _check_cli(
        "posealign", "--methods", "emg_mae,poset,cpep"
    ),
    ("jepa", "--ablations"): _check_ablations,
}


def test_every_example_in_a_help_text_is_checked(tmp_path) -> None:
    given = {
        (name, a.option_strings[0] if a.option_strings else a.dest)
        for name, p in _parsers().items()
        for a in p._actions
        if "e.g." in (a.help or "")
    }
    assert given == set(EXAMPLES), f"examples to add to EXAMPLES: {given - set(EXAMPLES)}"
    for check in EXAMPLES.values():
        if check is not None:
            check(tmp_path)


# -- a --set the config refuses names --set -----------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (
            # the example jepa --help gave: a posealign key (jepa's config has no 'gestures')
            ["jepa", "--set", "gestures.tune_users=1"],
            "error: --set gestures.tune_users=1: field 'gestures.tune_users': unknown section "
            "'gestures'; known: ['data', 'head', 'jepa', 'pretrain', 'seeds']",
        ),
        (
            ["kinembed", "--set", "kinembed.epochs=ten"],
            "error: --set kinembed.epochs=ten: field 'kinembed.epochs': expected an integer, got "
            "'ten'",
        ),
    ],
)
def test_a_bad_set_is_one_line_naming_set_exit_2(argv, want) -> None:
    out = _run("-m", "emgcore", *argv)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [want]


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (
            ["posealign", "--set", "cpep.epochs=5", "--set", "cpep.nosuch=1"],
            "--set cpep.nosuch=1: field 'cpep.nosuch': unknown key; known: [",
        ),
        (
            ["kinembed", "--set", "kinembed.emg_hidden=[64, abc]"],
            "--set kinembed.emg_hidden=[64, abc]: field 'kinembed.emg_hidden[1]': expected an "
            "integer, got 'abc'",
        ),
        (
            ["kinembed", "--set", "seeds=[]", "--set", "kinembed.epochs=5"],
            "--set seeds=[]: field 'seeds': needs at least one seed",
        ),
        (["jepa", "--set", "head=3"], "--set head=3: field 'head': must be a mapping"),
        (["kinembed", "--set", "=3"], "--set =3: field '--set': expected KEY=VALUE"),
        (
            ["kinembed", "--subjects", "S4,S5", "--set", "exclude_subjects=[S4]"],
            "--subjects S4,S5: field 'subjects': ['S4'] are also in exclude_subjects",
        ),
    ],
)
def test_set_errors_name_the_pair_not_the_preset(argv, want, capsys, tmp_path) -> None:
    # no data there: a config that wrongly passed would stop at loading, never train
    code = cli.main([*argv, "--data", str(tmp_path / "none"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {want}"), err
    assert "presets" not in err[0] and ".yaml" not in err[0]


def test_a_smoke_preset_runs_on_the_smoke_size_unless_told() -> None:
    """``--config <method>-smoke`` on the method's simulator simulates what ``sweep.py --smoke``
    does (posealign-smoke took 4.5 min on 8 users' 20-s recordings); flags given win, and
    another config or another simulator keeps its own size."""
    from emgcore.methods import METHODS

    def sim(command: str, *argv: str) -> dict:
        args = cli.parser().parse_args([command, *argv])
        cli._default_data(args, command)
        return cli._sim_overrides(args, command)

    for command, (method, _, _) in cli.DEFAULTS.items():
        smoke = dict(METHODS[method].smoke_sim)
        assert sim(command, "--config", METHODS[method].smoke_preset) == smoke
        assert sim(command, "--config", METHODS[method].smoke_preset, "--sim-subjects", "3") == (
            smoke | {"n_subjects": 3}
        )
        by_path = str(resolve_config(METHODS[method].smoke_preset))  # the same file, by path
        assert sim(command, "--config", by_path) == smoke
        other = sim(command, "--config", METHODS[method].smoke_preset, "--data", "myo-like")
        assert other == cli.SIM_DEFAULTS.get(command, {})
    assert sim("kinembed") == {} and sim("jepa", "--duration", "5") == {"duration_s": 5.0}
    assert sim("posealign") == {"n_subjects": 8}  # its splits take 8 users
