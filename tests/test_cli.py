"""The `tessera` command: generate (files or a sheet), info, export, help, and its errors."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from PIL import Image

from tessera.cli.main import build_parser, main


def test_generate_one_file_per_image(tiny_dir, tmp_path, capsys):
    out = tmp_path / "digit.png"
    assert main(["generate", "3", "seven", "-n", "2", "--model", str(tiny_dir), "--out", str(out), "--seed", "4"]) == 0
    files = sorted(p.name for p in tmp_path.glob("digit-*.png"))
    assert files == ["digit-000-three.png", "digit-001-three.png", "digit-002-seven.png", "digit-003-seven.png"]
    assert Image.open(tmp_path / files[0]).size == (16, 16)
    err = capsys.readouterr().err
    assert "16/16 tokens" in err and "4 image(s)" in err


def test_generate_sheet_with_scale(tiny_dir, tmp_path):
    out = tmp_path / "sheet.png"
    assert main(["generate", "1", "2", "-n", "3", "--sheet", "--scale", "2", "--model", str(tiny_dir),
                 "--out", str(out), "-q"]) == 0
    w, h = Image.open(out).size
    assert (w, h) == (3 * 32 + 4 * 2, 2 * 32 + 3 * 2)  # 3 columns (images per class), 2 rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sheet.png"]


def test_grid_is_a_hidden_deprecated_alias_of_sheet(tiny_dir, tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["generate", "1", "2", "-n", "2", "--sheet", "--model", str(tiny_dir), "--out", str(a), "-q"]) == 0
    capsys.readouterr()
    assert main(["generate", "1", "2", "-n", "2", "--grid", "--model", str(tiny_dir), "--out", str(b), "-q"]) == 0
    assert a.read_bytes() == b.read_bytes()
    err = capsys.readouterr().err
    assert err == "tessera: warning: --grid is deprecated: use --sheet (one contact sheet); --grid-size is the token grid\n"
    help_text = subprocess.run([sys.executable, "-m", "tessera.cli", "generate", "--help"], capture_output=True,
                               text=True).stdout
    assert "--sheet" in help_text and "--grid-size" in help_text and "--grid " not in help_text


def test_same_seed_same_file(tiny_dir, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for p in (a, b):
        assert main(["generate", "5", "--model", str(tiny_dir), "--out", str(p), "--seed", "9", "-q"]) == 0
    assert a.read_bytes() == b.read_bytes()


def test_errors_are_one_line(tiny_dir, tmp_path, capsys):
    assert main(["generate", "12", "--model", str(tiny_dir), "--out", str(tmp_path / "x.png")]) == 1
    assert "class id 12 is out of range" in capsys.readouterr().err
    assert main(["generate", "1", "--model", str(tiny_dir), "--out", str(tmp_path / "no" / "x.png")]) == 1
    assert "folder" in (err := capsys.readouterr().err) and "does not exist" in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["generate", "1", "--model", str(tiny_dir), "--out", str(blocker / "x.png")]) == 1
    assert "cannot write" in capsys.readouterr().err
    assert main(["generate", "1", "--model", str(tiny_dir), "--out", str(tmp_path / "x.txt")]) == 1
    assert "must end in .png" in capsys.readouterr().err
    assert main(["generate", "1", "--model", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 1
    assert "tessera.json is missing" in capsys.readouterr().err
    from tessera.runtime import available_providers

    cuda = main(["generate", "1", "--model", str(tiny_dir), "--providers", "cuda", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    if "CUDAExecutionProvider" in available_providers():
        assert cuda == 0 and (tmp_path / "x.png").is_file()
    else:  # no CUDA here: one line that names the provider, and no image
        assert cuda == 1 and err.startswith("tessera: error: ") and err.count("\n") == 1 and "cuda" in err.lower()
        assert not (tmp_path / "x.png").exists()


def test_info(tiny_dir, capsys):
    assert main(["info", str(tiny_dir)]) == 0
    out = capsys.readouterr().out
    assert "classes      10: 0=zero" in out and "transformer.onnx" in out and "parity" in out


def test_export_command_round_trip(tiny_dir, tmp_path, capsys):
    """Re-export a directory that carries its weights: same graphs' behaviour, same manifest facts."""
    out = tmp_path / "again"
    assert main(["export", "--from", str(tiny_dir), "--out", str(out)]) == 0
    assert "parity: transformer max |logit err|" in capsys.readouterr().out
    from tessera.runtime import Pipeline

    a = Pipeline.load(tiny_dir).generate_tokens([1, 2], seed=3)
    b = Pipeline.load(out).generate_tokens([1, 2], seed=3)
    assert (a == b).all()


def test_a_re_export_keeps_the_sources_graph_form_unless_told(tiny_dir, tmp_path):
    """--from without --graph / --target-onnxruntime keeps the source's graph kind and fused operator form;
    the flags still choose another."""
    from tessera.runtime.manifest import load_manifest

    def transformer(d):
        g = load_manifest(d).spec.graph("transformer")
        return g.kind, g.min_onnxruntime

    newest = tmp_path / "newest"
    assert main(["export", "--from", str(tiny_dir), "--out", str(newest), "--target-onnxruntime", "1.32"]) == 0
    assert transformer(newest) == ("fused", "1.32")
    again = tmp_path / "again"
    assert main(["export", "--from", str(newest), "--out", str(again)]) == 0
    assert transformer(again) == ("fused", "1.32")
    portable = tmp_path / "portable"
    assert main(["export", "--from", str(newest), "--out", str(portable), "--graph", "portable"]) == 0
    assert main(["export", "--from", str(portable), "--out", str(tmp_path / "p2")]) == 0
    assert transformer(tmp_path / "p2")[0] == "portable"
    assert main(["export", "--from", str(newest), "--out", str(tmp_path / "old"), "--target-onnxruntime",
                 "1.22"]) == 0
    assert transformer(tmp_path / "old") == ("fused", "1.22")


def test_export_needs_weights_or_explicit_random(tmp_path, capsys):
    assert main(["export", "--gpt", "GPT-Tiny", "--vq", "VQ-Tiny", "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tessera: error: --gpt-weights and --vq-weights not given") and "--random-weights" in err
    assert not (tmp_path / "m").exists()


def test_help_is_friendly():
    r = subprocess.run([sys.executable, "-m", "tessera.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "generate" in r.stdout and "examples:" in r.stdout and "viewer" in r.stdout
    r = subprocess.run([sys.executable, "-m", "tessera.cli", "generate", "--help"], capture_output=True, text=True)
    assert "--guidance" in r.stdout and "--seed" in r.stdout and "(default: None)" not in r.stdout


def test_help_shows_the_selected_models_real_defaults(tiny_dir, capsys):
    """The tiny model records guidance 2.0 and top-k 16; the shipped model's guidance is read from its manifest."""
    assert main(["generate", "--model", str(tiny_dir), "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "default: the model's, 2 for tiny" in out and "default: the model's, 16 for tiny" in out
    assert main(["edit", "inpaint", "--model", str(tiny_dir), "--help"]) == 0
    assert "default: the model's, 2 for tiny" in " ".join(capsys.readouterr().out.split())
    from tessera.models import default_model_dir

    shipped = json.loads((default_model_dir() / "tessera.json").read_text())
    assert main(["generate", "--help"]) == 0
    g = shipped["generation_defaults"]["guidance_scale"]
    assert f"default: the model's, {g:g} for {shipped['name']}" in " ".join(capsys.readouterr().out.split())
    assert main(["generate", "--model", "/no/such/dir", "--help"]) == 0  # unreadable: the generic text
    assert "default: the model's; e.g. guidance 3.0 for the shipped model" in " ".join(capsys.readouterr().out.split())


def test_every_option_of_every_command_has_help():
    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{path} {name}")
            elif action.help != argparse.SUPPRESS:
                yield path, action

    actions = list(walk(build_parser(["--help"]), "tessera"))
    commands = {path for path, _ in actions}
    assert {"tessera generate", "tessera info", "tessera export", "tessera edit inpaint", "tessera edit outpaint",
            "tessera edit continue", "tessera viewer"} <= commands
    missing = [(path, action.option_strings or action.dest) for path, action in actions if not action.help]
    assert missing == []


def test_version(capsys):
    import tessera

    assert tessera.__version__ not in ("", "0+unknown")
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"tessera {tessera.__version__}\n"
    # The installed console script, found where this interpreter installs scripts (not on PATH:
    # an unactivated venv's bin/ is not there).
    script = Path(sysconfig.get_path("scripts")) / ("tessera.exe" if os.name == "nt" else "tessera")
    assert script.is_file(), f"no `tessera` console script at {script}; reinstall: pip install -e ."
    r = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == f"tessera {tessera.__version__}\n"


def test_usage_errors_exit_2_and_no_command_prints_help(capsys):
    assert main(["generate"]) == 2  # no class
    assert "the following arguments are required: classes" in capsys.readouterr().err
    assert main([]) == 2
    assert "usage: tessera" in capsys.readouterr().out


def test_reexport_keeps_weights_and_extra_files(tiny_dir, tmp_path):
    """`--from` keeps the weights and the card/sample files of its source unless replaced."""
    import json

    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# card v1\n")
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["export", "--from", str(tiny_dir), "--out", str(first), "--extra", str(card)]) == 0
    assert main(["export", "--from", str(first), "--out", str(second)]) == 0
    files = json.loads((second / "tessera.json").read_text())["files"]
    assert {"MODEL_CARD.md", "gpt.safetensors", "vq.safetensors"} <= set(files)
    assert (second / "MODEL_CARD.md").read_text() == "# card v1\n"


def test_provider_and_session_options(tiny_dir, tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["generate", "5", "--model", str(tiny_dir), "--out", str(a), "--seed", "9", "-q"]) == 0
    assert main(["generate", "5", "--model", str(tiny_dir), "--out", str(b), "--seed", "9", "-q", "--providers", "cpu",
                 "--session-option", "intra_op_num_threads=1", "--session-option",
                 "session.intra_op.allow_spinning=0", "--provider-option", "arena_extend_strategy=kSameAsRequested"]) == 0
    assert a.read_bytes() == b.read_bytes()  # options change how, never what
    capsys.readouterr()
    assert main(["generate", "5", "--model", str(tiny_dir), "--out", str(b), "--session-option", "threads"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'threads' is not of the form key=value" in err
    assert main(["generate", "5", "--model", str(tiny_dir), "--out", str(b), "--session-option", "no_such=1"]) == 1
    assert "unknown session option 'no_such'" in capsys.readouterr().err


def test_generate_summary_names_the_provider_that_ran(tiny_dir, tmp_path, capsys):
    assert main(["generate", "5", "--model", str(tiny_dir), "--out", str(tmp_path / "a.png")]) == 0
    assert "on CPUExecutionProvider" in capsys.readouterr().err
