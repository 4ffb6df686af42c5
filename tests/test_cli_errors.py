"""Every bad command line ends in one `tessera: error:` line and exit 1 (or argparse's usage error, exit
2), never a traceback, before any work: export argument errors, runaway -n / --scale, --out naming a
directory, an existing --out file, hostile or ambiguous class names, --threads, --box, and --verify auto."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tessera.cli.main import main


def refuse_model_work(monkeypatch) -> list[str]:
    """Records every model build, model write and generation the command starts: an argument error must
    come before all of them (a count, not a clock, so a slow machine cannot fail it nor a fast one hide it)."""
    import tessera.export.build as build
    import tessera.export.model_dir as model_dir
    from tessera.runtime.pipeline import Pipeline

    started: list[str] = []

    def refuse(name):
        def record(*args, **kwargs):
            started.append(name)
            raise AssertionError(f"{name} ran before the argument error")
        return record

    for module, names in ((build, ("build_gpt", "build_vq")),
                          (model_dir, ("write_model_dir", "write_model_dirs"))):
        for name in names:
            monkeypatch.setattr(module, name, refuse(name))
    for name in ("run", "stream", "generate", "generate_tokens", "decode", "edit_tokens", "inpaint", "outpaint",
                 "continue_image"):
        monkeypatch.setattr(Pipeline, name, refuse(f"Pipeline.{name}"))
    return started


@pytest.fixture
def model_work(monkeypatch) -> list[str]:
    return refuse_model_work(monkeypatch)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    (d / "two.txt").write_text("a\nb\n")
    (d / "empty.txt").write_text("")
    (d / "dupes.txt").write_text("\n".join(["x"] * 10) + "\n")
    (d / "bad.pt").write_text("not a checkpoint")
    (d / "notjson.json").write_text("nojson")
    (d / "list.json").write_text("[1, 2]")
    (d / "badcfg.json").write_text('{"dim": 7}')
    (d / "file.txt").write_text("a file where a directory belongs")
    return d


RANDOM = ["export", "--gpt", "GPT-Tiny", "--vq", "VQ-Tiny", "--random-weights"]
# (name, arguments with {d} for the inputs folder and {out} for a fresh output, expected exit, message part)
EXPORT_ERRORS = [
    ("unknown transformer preset", ["export", "--gpt", "GPT-Nope", "--vq", "VQ-Tiny", "--random-weights"], 1,
     "--gpt 'GPT-Nope' is neither a preset"),
    ("unknown tokenizer preset", ["export", "--gpt", "GPT-Tiny", "--vq", "VQ-Nope", "--random-weights"], 1,
     "--vq 'VQ-Nope' is neither a preset"),
    ("--gpt-set without =", RANDOM + ["--gpt-set", "dim"], 1, "--gpt-set 'dim' must look like KEY=VALUE"),
    ("--gpt-set unknown key", RANDOM + ["--gpt-set", "nokey=3"], 1, "unknown setting 'nokey'"),
    ("--gpt-set text for a number", RANDOM + ["--gpt-set", "dim=abc"], 1, "dim must be an integer"),
    ("--gpt-set float for an int", RANDOM + ["--gpt-set", "n_layer=1.5"], 1, "n_layer must be an integer"),
    ("--gpt-set negative", RANDOM + ["--gpt-set", "n_layer=-2"], 1, "n_layer must be >= 1"),
    ("--vq-set without =", RANDOM + ["--vq-set", "x"], 1, "--vq-set 'x' must look like KEY=VALUE"),
    ("--gpt-set inconsistent", RANDOM + ["--gpt-set", "dim=7"], 1, "dim 7 is not divisible by n_head"),
    ("config file not JSON", ["export", "--gpt", "{d}/notjson.json", "--vq", "VQ-Tiny", "--random-weights"], 1,
     "not a readable JSON config"),
    ("config file not an object", ["export", "--gpt", "{d}/list.json", "--vq", "VQ-Tiny", "--random-weights"], 1,
     "a config file holds one JSON object"),
    ("config file inconsistent", ["export", "--gpt", "{d}/badcfg.json", "--vq", "VQ-Tiny", "--random-weights"], 1,
     "dim 7 is not divisible"),
    ("missing weight file", ["export", "--gpt", "GPT-Tiny", "--vq", "VQ-Tiny", "--gpt-weights", "{d}/nope.pt",
                             "--vq-weights", "{d}/nope.pt"], 1, "--gpt-weights {d}/nope.pt is not a file"),
    ("unreadable weight file", ["export", "--gpt", "GPT-Tiny", "--vq", "VQ-Tiny", "--gpt-weights", "{d}/bad.pt",
                                "--vq-weights", "{d}/bad.pt"], 1, "bad.pt"),
    ("no source", ["export"], 1, "give --from MODEL_DIR, or both --gpt and --vq"),
    ("no weights", ["export", "--gpt", "GPT-Tiny", "--vq", "VQ-Tiny"], 1, "--random-weights"),
    ("--from with --gpt", ["export", "--from", "{d}", "--gpt", "GPT-Tiny"], 1, "--from takes its configs"),
    ("--from not a model", ["export", "--from", "{d}"], 1, "tessera.json is missing"),
    ("--from missing", ["export", "--from", "{d}/nodir"], 1, "does not exist"),
    ("--classes empty file", RANDOM + ["--classes", "{d}/empty.txt"], 1, "gives 0 class names; the transformer has 10"),
    ("--classes too few", RANDOM + ["--classes", "a,b"], 1, "gives 2 class names"),
    ("--classes duplicates", RANDOM + ["--classes", "{d}/dupes.txt"], 1, "more than once"),
    ("--classes a directory", RANDOM + ["--classes", "{d}"], 1, "is a directory"),
    ("negative --seed", RANDOM + ["--seed", "-1"], 1, "--seed must be >= 0"),
    ("--opset out of range", RANDOM + ["--opset", "99"], 1, "--opset must be 17..20"),
    ("negative --opset", RANDOM + ["--opset", "-3"], 1, "--opset must be 17..20"),
    ("--int4-block-size", RANDOM + ["--quant", "int4", "--int4-block-size", "7"], 1, "power of two >= 16"),
    ("negative threshold", RANDOM + ["--external-data-threshold", "-5"], 1, "--external-data-threshold must be"),
    ("bad --target-onnxruntime", RANDOM + ["--target-onnxruntime", "banana"], 1, "is not an onnxruntime version"),
    ("old --target-onnxruntime", RANDOM + ["--target-onnxruntime", "1.0"], 1, "older than the oldest tested"),
    ("negative --default-guidance", RANDOM + ["--default-guidance", "-2"], 1, "--default-guidance must be >= 0"),
    ("nan --default-temperature", RANDOM + ["--default-temperature", "nan"], 1, "--default-temperature must be"),
    ("negative --default-top-k", RANDOM + ["--default-top-k", "-5"], 1, "--default-top-k must be >= 0"),
    ("--default-top-p above 1", RANDOM + ["--default-top-p", "2"], 1, "--default-top-p must be in (0, 1]"),
    ("missing --extra", RANDOM + ["--extra", "{d}/nofile.md"], 1, "--extra {d}/nofile.md is not a file"),
    ("--out is a file", RANDOM + ["--out", "{d}/file.txt"], 1, "is a file"),
    ("--out a non-model directory", RANDOM + ["--overwrite", "--out", "{d}"], 1, "not a Tessera model directory"),
    ("unknown --quant", RANDOM + ["--quant", "int3"], 2, "invalid choice: 'int3'"),
    ("--seed not a number", RANDOM + ["--seed", "x"], 2, "invalid int value: 'x'"),
]


@pytest.mark.parametrize("name,argv,code,message", EXPORT_ERRORS, ids=[e[0] for e in EXPORT_ERRORS])
def test_export_argument_errors_are_one_line(name, argv, code, message, files, tmp_path, capsys, monkeypatch):
    before = sorted(p.name for p in files.iterdir())
    argv = [a.format(d=files) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    started: list[str] = []
    if name != "unreadable weight file":  # the one error found by reading the checkpoint
        started = refuse_model_work(monkeypatch)
    assert main(argv) == code
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err + captured.out
    assert message.format(d=files) in err
    if code == 1:
        assert err.startswith("tessera: error: ")
        # one line, but a checkpoint error may list details on the following lines
        assert err.count("\n") == 1 or name == "unreadable weight file"
    else:
        assert err.startswith("usage: tessera export")
    assert captured.out == ""  # nothing exported, no parity report
    assert not (tmp_path / "out").exists() and sorted(p.name for p in files.iterdir()) == before
    assert started == []  # rejected before any model is built


def _one_error(capsys, code_expected, argv):
    assert main(argv) == code_expected
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.err.startswith("tessera: error: ")
    assert captured.err.count("\n") == 1
    return captured.err


def test_runaway_counts_fail_before_generating(tiny_dir, tmp_path, capsys, model_work):
    out = str(tmp_path / "x.png")
    err = _one_error(capsys, 1, ["generate", "1", "-n", "1000000000", "--model", str(tiny_dir), "--out", out])
    assert "1000000000 images requested; at most 1024 per command" in err
    err = _one_error(capsys, 1, ["generate", "1", "2", "-n", "600", "--model", str(tiny_dir), "--out", out])
    assert "1200 images requested" in err
    err = _one_error(capsys, 1, ["generate", "1", "--scale", "100000", "--model", str(tiny_dir), "--out", out])
    assert "--scale must be 1..64, got 100000" in err
    err = _one_error(capsys, 1, ["generate", "1", "--scale", "0", "--model", str(tiny_dir), "--out", out])
    assert "--scale must be 1..64" in err
    err = _one_error(capsys, 1, ["generate", "1", "-n", "0", "--model", str(tiny_dir), "--out", out])
    assert "-n must be >= 1" in err
    # within the count limits, a sheet too large to save is refused before generating
    err = _one_error(capsys, 1, ["generate", "1", "-n", "1024", "--sheet", "--scale", "64", "--model",
                                       str(tiny_dir), "--out", out])
    assert "a sheet of 1024 images of 1024x1024 px" in err and "MP" in err
    err = _one_error(capsys, 1, ["edit", "continue", out, "--keep-rows", "1", "-n", "5000", "--model",
                                    str(tiny_dir), "--out", out])
    assert "5000 images requested; at most 1024" in err
    assert list(tmp_path.iterdir()) == [] and model_work == []


def test_out_naming_a_directory_is_an_error(tiny_dir, tmp_path, capsys):
    err = _one_error(capsys, 1, ["generate", "1", "--model", str(tiny_dir), "--out", str(tmp_path)])
    assert f"--out {tmp_path} is a directory; name an image file, e.g. --out {tmp_path / 'tessera.png'}" in err
    assert list(tmp_path.iterdir()) == []


HOSTILE = ["../../escape", "a/b", "c\\d", "..", ".hidden", "tab\tname", "ok-name", "", "über", "x" * 200]


def test_hostile_class_names_stay_inside_the_output_folder(tiny_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    manifest = json.loads((model / "tessera.json").read_text())
    manifest["classes"]["names"] = HOSTILE
    (model / "tessera.json").write_text(json.dumps(manifest))
    out_dir = tmp_path / "out" / "deep"
    out_dir.mkdir(parents=True)
    code = main(["generate", *map(str, range(10)), "--model", str(model), "--out", str(out_dir / "img.png"), "-q"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    outside = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                     if not p.is_relative_to(model) and not p.is_relative_to(out_dir) and p != model)
    assert outside == ["out"]  # nothing written beside or above the output folder
    if code == 1:  # the runtime may refuse such names at load: then a one-line error and no file
        assert captured.err.startswith("tessera: error: ") and captured.err.count("\n") == 1
        assert list(out_dir.iterdir()) == []
        return
    assert code == 0
    names = sorted(p.name for p in out_dir.iterdir())
    assert len(names) == 10 and all(n.startswith("img-") and n.endswith(".png") for n in names)
    assert all("/" not in n and "\\" not in n and ".." not in n and "\t" not in n and len(n) < 90 for n in names)
    assert "img-006-ok-name.png" in names and "img-008-über.png" in names and "img-007-class7.png" in names


def test_safe_name():
    from tessera.cli.output import safe_name

    assert safe_name("seven", "c") == "seven"
    assert safe_name("../../etc/passwd", "c") == "etc_passwd"
    assert safe_name("..", "c") == "c" and safe_name("", "c") == "c" and safe_name("\x00\x07", "c") == "c"
    assert safe_name(".bashrc", "c") == "bashrc" and safe_name("a\\b", "c") == "a_b"
    assert len(safe_name("x" * 500, "c")) == 64


def test_verify_auto_is_full_for_small_models_and_size_for_large(tiny_dir, tmp_path):
    from tessera.cli.options import FULL_VERIFY_BYTES, resolve_verify

    assert resolve_verify("auto", str(tiny_dir)) == "full"
    assert resolve_verify("size", str(tiny_dir)) == "size"
    big = tmp_path / "big"
    big.mkdir()
    (big / "tessera.json").write_text(json.dumps({"files": {"a.onnx": {"bytes": FULL_VERIFY_BYTES}}}))
    assert resolve_verify("auto", str(big)) == "size"
    (big / "tessera.json").write_text("[]")  # unreadable: full, and the loader explains the problem
    assert resolve_verify("auto", str(big)) == "full"


def test_verify_auto_catches_a_same_size_tampered_graph(tiny_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    graph = model / "tokenizer_decoder.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    graph.write_bytes(bytes(data))
    err = _one_error(capsys, 1, ["generate", "1", "--model", str(model), "--out", str(tmp_path / "x.png")])
    assert "tokenizer_decoder.onnx" in err and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("threads", ["-1", "0", "99999999999"])
def test_threads_out_of_range_is_one_line(tiny_dir, tmp_path, capsys, threads):
    err = _one_error(capsys, 1, ["generate", "1", "--model", str(tiny_dir), "--threads", threads,
                                    "--out", str(tmp_path / "x.png")])
    assert "threads must be an integer in 1..1024" in err and f"got {threads}" in err
    assert list(tmp_path.iterdir()) == []


def test_bench_threads_out_of_range_is_one_line_before_measuring(tiny_dir, capsys):
    err = _one_error(capsys, 1, ["bench", str(tiny_dir), "--threads", "-1"])
    assert "threads must be an integer in 1..1024" in err


@pytest.mark.parametrize("argv, message", [
    (["--box", "nan,0,5,5"], "the box must be four finite integers x0,y0,x1,y1 (pixels), not NaN or infinite; "
                             "got 'nan,0,5,5'"),
    (["--box", "0,0,inf,5"], "not NaN or infinite"),
    (["--box", "-5,0,5,5"], "the box -5,0,5,5 reaches outside the image (0,0,16,16)"),
    (["--box=-5,0,5,5"], "the box -5,0,5,5 reaches outside the image (0,0,16,16)"),
    (["--place", "--box", "-4,-4,8,8"], "the box -4,-4,8,8 reaches outside the model's canvas"),
])
def test_outpaint_box_errors_are_one_line(tiny_dir, tmp_path, capsys, argv, message):
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGB", (16, 16)).save(image)
    err = _one_error(capsys, 1, ["edit", "outpaint", str(image), *argv, "--model", str(tiny_dir),
                                    "--out", str(tmp_path / "out.png")])
    assert message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_an_existing_out_file_is_kept_unless_overwrite(tiny_dir, tmp_path, capsys):
    out = tmp_path / "mine.png"
    out.write_bytes(b"a user's file")
    err = _one_error(capsys, 1, ["generate", "1", "--model", str(tiny_dir), "--out", str(out), "-q"])
    assert f"{out} already exists; pass --overwrite to replace it" in err
    assert out.read_bytes() == b"a user's file"
    assert main(["generate", "1", "--model", str(tiny_dir), "--out", str(out), "-q", "--overwrite"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG" and sorted(p.name for p in tmp_path.iterdir()) == ["mine.png"]


def test_one_existing_file_among_several_outputs_stops_before_any_is_written(tiny_dir, tmp_path, capsys):
    taken = tmp_path / "d-002-two.png"
    taken.write_bytes(b"keep")
    err = _one_error(capsys, 1, ["generate", "1", "2", "-n", "2", "--model", str(tiny_dir),
                                    "--out", str(tmp_path / "d.png"), "-q"])
    assert f"{taken} already exists" in err and "--overwrite" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d-002-two.png"] and taken.read_bytes() == b"keep"


def test_edit_and_bench_outputs_are_kept_unless_overwrite(tiny_dir, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGB", (16, 16)).save(image)
    out = tmp_path / "res.png"
    out.write_bytes(b"mine")
    err = _one_error(capsys, 1, ["edit", "continue", str(image), "--keep-rows", "2", "--model", str(tiny_dir),
                                    "--out", str(out), "-q"])
    assert "already exists; pass --overwrite" in err and out.read_bytes() == b"mine"
    report = tmp_path / "run.md"
    report.write_text("last week's numbers\n")
    err = _one_error(capsys, 1, ["bench", str(tiny_dir), "--markdown", str(report), "-q"])
    assert f"{report} already exists; pass --overwrite" in err and report.read_text() == "last week's numbers\n"


def test_an_image_appearing_while_generating_is_not_replaced(tmp_path):
    from PIL import Image

    from tessera.cli.output import save_image
    from tessera.runtime import InvalidInputError

    path = tmp_path / "x.png"
    path.write_bytes(b"arrived meanwhile")
    with pytest.raises(InvalidInputError, match="appeared while this command ran; it was left alone"):
        save_image(Image.new("RGB", (4, 4)), path, overwrite=False)
    assert path.read_bytes() == b"arrived meanwhile" and sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


@pytest.fixture
def digit_names(tiny_dir, tmp_path):
    """Class names that are the ids of other classes: class '5' at id 4, '4' at id 5."""
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    manifest = json.loads((model / "tessera.json").read_text())
    names = manifest["classes"]["names"]
    names[4], names[5] = "5", "4"
    (model / "tessera.json").write_text(json.dumps(manifest))
    return model


def test_a_class_name_that_is_another_id_is_ambiguous(digit_names, tmp_path, capsys):
    out = tmp_path / "x.png"
    err = _one_error(capsys, 1, ["generate", "5", "--model", str(digit_names), "--out", str(out)])
    assert "class label '5' is ambiguous in this model: class id 5 ('4') or the class named '5' (id 4); " \
           "write id:5 or name:5" in err and not out.exists()
    # several outputs carry their class's name: id:5 is the class named '4', name:5 the class at id 4
    assert main(["generate", "id:5", "name:5", "0", "--model", str(digit_names), "--out", str(tmp_path / "d.png"),
                 "-q"]) == 0
    assert sorted(p.name for p in tmp_path.glob("d-*")) == ["d-000-4.png", "d-001-5.png", "d-002-zero.png"]
    assert main(["info", str(digit_names)]) == 0
    assert "2 class name(s) are the ids of other classes (e.g. 4=5): write id:5 or name:5" in capsys.readouterr().out


def test_class_labels_in_the_api_follow_the_same_rule(digit_names):
    from tessera.runtime import InvalidInputError, Pipeline

    pipe = Pipeline.load(digit_names, providers="cpu")
    assert pipe.labels([5, "id:5", "name:5", "name:4", np.int64(4)]).tolist() == [5, 5, 4, 5, 4]
    with pytest.raises(InvalidInputError, match="ambiguous"):
        pipe.labels(["4"])
    with pytest.raises(InvalidInputError, match="id: takes an integer id"):
        pipe.labels(["id:five"])
    with pytest.raises(InvalidInputError, match="unknown class name 'name:55'"):
        pipe.labels(["name:55"])
