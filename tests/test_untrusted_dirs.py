"""A model directory is untrusted input, and a user's files are sacred.

`--overwrite` only ever replaces a Tessera model directory, an interrupted export leaves nothing
behind (and never loses the directory it was replacing), and no name in a manifest reaches outside
its model directory: not when loading, verifying, nor re-exporting (`tessera export --from`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from tessera.runtime import ModelDirectoryError, load_manifest
from tessera.runtime import manifest as manifest_mod
from tessera.cli.main import main

NAMES = [str(i) for i in range(10)]


def _edit_manifest(root: Path, edit) -> None:
    path = root / "tessera.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _listing(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path -> bytes), directories included as None."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def model_copy(tiny_dir, tmp_path) -> Path:
    dst = tmp_path / "models" / "m"
    shutil.copytree(tiny_dir, dst)
    return dst


@pytest.fixture
def outside(tmp_path) -> Path:
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("do not copy me\n")
    return secret


@pytest.fixture
def hashed(monkeypatch) -> list[Path]:
    """Records every file the manifest code hashes."""
    calls: list[Path] = []
    real = manifest_mod.sha256_file

    def recording(path, *a, **k):
        calls.append(Path(path))
        return real(path, *a, **k)

    monkeypatch.setattr(manifest_mod, "sha256_file", recording)
    return calls


# --- --overwrite never touches what is not a model directory ----------------------------------
def _thesis(tmp_path: Path) -> Path:
    d = tmp_path / "thesis"
    (d / "figures").mkdir(parents=True)
    (d / "thesis.tex").write_text("\\documentclass{book} years of work\n")
    (d / "figures" / "plot.pdf").write_bytes(bytes(range(256)))
    return d


def _hostile_outs(tmp_path: Path):
    thesis = _thesis(tmp_path)
    plain = tmp_path / "notes.txt"
    plain.write_text("a file\n")
    link = tmp_path / "link"
    link.symlink_to(thesis, target_is_directory=True)
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "tessera.json").write_text(json.dumps({"format": "something-else"}))
    (fake / "data.csv").write_text("1,2\n")
    return {"thesis": thesis, "file": plain, "symlink": link, "fake": fake}


@pytest.mark.parametrize("kind, what", [
    ("thesis", "a directory without a tessera.json manifest"),
    ("file", "a file, not a directory"),
    ("symlink", "a symlink"),
    ("fake", "is not a Tessera manifest"),
])
def test_overwrite_refuses_what_is_not_a_model_dir(tiny_models, tmp_path, kind, what):
    from tessera.export.model_dir import ExportError, ExportSpec, write_model_dir

    gpt, vq = tiny_models
    out = _hostile_outs(tmp_path)[kind]
    before = _listing(tmp_path)
    with pytest.raises(ExportError, match=f"{re.escape(what)}.*--overwrite only ever replaces a Tessera model "
                                          "directory, so nothing was touched"):
        write_model_dir(gpt, vq, out, ExportSpec("x", NAMES, overwrite=True))
    with pytest.raises(ExportError, match="already exists and is .*choose another --out"):
        write_model_dir(gpt, vq, out, ExportSpec("x", NAMES))
    assert _listing(tmp_path) == before  # byte for byte, subfolders too, no partial directory


def test_cli_overwrite_of_a_thesis_is_one_line_and_touches_nothing(tiny_dir, tmp_path, capsys):
    thesis = _thesis(tmp_path)
    before = _listing(tmp_path)
    assert main(["export", "--from", str(tiny_dir), "--out", str(thesis), "--overwrite"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a Tessera model directory" in err and "nothing was touched" in err
    assert _listing(tmp_path) == before


def test_overwrite_replaces_a_model_dir(tiny_models, model_copy):
    from tessera.export.model_dir import ExportSpec, write_model_dir

    gpt, vq = tiny_models
    (model_copy / "stale.txt").write_text("from the old directory\n")
    write_model_dir(gpt, vq, model_copy, ExportSpec("replaced", NAMES, overwrite=True))
    m = load_manifest(model_copy, verify="full")
    assert m.spec.name == "replaced" and not (model_copy / "stale.txt").exists()
    assert _hidden(model_copy.parent) == []  # no .m.old-* nor .m.partial-* left


def test_failure_mid_overwrite_keeps_the_old_dir(tiny_models, model_copy, monkeypatch):
    from tessera.export import model_dir as md

    gpt, vq = tiny_models
    before = _listing(model_copy)

    def broken(*a, **k):
        raise md.parity.ParityError("ONNX export does not match PyTorch: simulated")

    monkeypatch.setattr(md.parity, "check", broken)
    with pytest.raises(md.parity.ParityError):
        md.write_model_dir(gpt, vq, model_copy, md.ExportSpec("x", NAMES, overwrite=True))
    assert _listing(model_copy) == before and _hidden(model_copy.parent) == []


def test_failure_between_the_renames_puts_the_old_dir_back(tiny_models, model_copy, monkeypatch):
    """The finished directory cannot be moved into place: the old one, already renamed aside, returns."""
    from tessera.export import model_dir as md

    gpt, vq = tiny_models
    before = _listing(model_copy)
    real_rename = Path.rename

    def rename(self, target):
        if self.name.startswith(".m.partial-"):
            raise OSError(5, "simulated I/O error")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="simulated"):
        md.write_model_dir(gpt, vq, model_copy, md.ExportSpec("x", NAMES, overwrite=True))
    assert _listing(model_copy) == before and _hidden(model_copy.parent) == []


def test_a_foreign_dot_old_is_never_removed(tiny_models, model_copy):
    """The old directory goes to a fresh unique name: a user's `.m.old` is not ours to delete."""
    from tessera.export.model_dir import ExportSpec, write_model_dir

    gpt, vq = tiny_models
    mine = model_copy.parent / ".m.old"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine\n")
    write_model_dir(gpt, vq, model_copy, ExportSpec("x", NAMES, overwrite=True))
    assert (mine / "keep.txt").read_text() == "mine\n" and _hidden(model_copy.parent) == [".m.old"]


# --- SIGTERM: the export cleans up after itself ------------------------------------------------
@pytest.fixture
def default_sigterm():
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("SIGTERM has a handler in this test process")
    yield
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the previous handler is restored


def test_sigterm_mid_export_leaves_nothing(tiny_models, model_copy, monkeypatch, default_sigterm):
    from tessera.export import model_dir as md

    gpt, vq = tiny_models
    before = _listing(model_copy)
    monkeypatch.setattr(md.parity, "check", lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(SystemExit) as e:
        md.write_model_dir(gpt, vq, model_copy, md.ExportSpec("x", NAMES, overwrite=True))
    assert e.value.code == 128 + signal.SIGTERM
    assert _listing(model_copy) == before and _hidden(model_copy.parent) == []


def test_sigterm_while_moving_into_place_waits_for_the_move(tiny_models, model_copy, monkeypatch,
                                                            default_sigterm):
    from tessera.export import model_dir as md

    gpt, vq = tiny_models
    real_install = md._install

    def install(tmp, out, *rest):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_install(tmp, out, *rest)

    monkeypatch.setattr(md, "_install", install)
    with pytest.raises(SystemExit):
        md.write_model_dir(gpt, vq, model_copy, md.ExportSpec("moved", NAMES, overwrite=True))
    assert load_manifest(model_copy, verify="full").spec.name == "moved"
    assert _hidden(model_copy.parent) == []


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except OSError:
            pass
        pid += 1


def test_stale_partials_of_dead_exports_are_removed(tmp_path):
    from tessera.export.model_dir import prepare_output

    out = tmp_path / "m"
    old = time.time() - 2 * 3600

    def partial(name: str, age: float | None = old) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "transformer.onnx").write_bytes(b"x")
        if age is not None:
            for p in (d / "transformer.onnx", d):
                os.utime(p, (age, age))
        return d

    dead = partial(f".m.partial-{_dead_pid()}-abc_0xyz")
    legacy = partial(".m.partial-k2j4x9_q")  # written before partial names carried a pid
    recent = partial(f".m.partial-{_dead_pid()}-recent00", age=None)
    alive = partial(f".m.partial-{os.getppid()}-alive000")
    other = partial(f".mm.partial-{_dead_pid()}-otherdir")
    lookalike = partial(".m.partial-not-a-mkdtemp-name")
    link = tmp_path / f".m.partial-{_dead_pid()}-symlink0"
    link.symlink_to(other, target_is_directory=True)
    with pytest.warns(RuntimeWarning) as caught:
        prepare_output(out, overwrite=False)
    said = [str(w.message) for w in caught]
    assert any(m.startswith("removed 2 partial directories of killed exports to m") for m in said), said
    assert any(f"{recent.name} beside m looks left by a killed export" in m for m in said), said
    assert not dead.exists() and not legacy.exists()
    for kept in (recent, alive, other, lookalike, link):
        assert kept.exists() or kept.is_symlink(), kept
    assert (other / "transformer.onnx").exists()  # the symlink's target was not followed


# --- names in the manifest stay inside the model directory -------------------------------------
def _files_entry(root: Path, name: str, data: bytes) -> None:
    def edit(m):
        m["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    _edit_manifest(root, edit)


def _outside_file(m: Path, outside: Path):
    _files_entry(m, "../outside/secret.txt", outside.read_bytes())


def _absolute_file(m: Path, outside: Path):
    _files_entry(m, str(outside), outside.read_bytes())


def _etc_passwd(m: Path, outside: Path):
    _files_entry(m, "/etc/passwd", b"root:x:0:0::/root:/bin/sh\n")


def _symlink_out(m: Path, outside: Path):
    (m / "card.md").symlink_to(outside)
    _files_entry(m, "card.md", outside.read_bytes())


def _graph_symlink_out(m: Path, outside: Path):
    real = outside.parent / "transformer.onnx"
    shutil.move(m / "transformer.onnx", real)
    (m / "transformer.onnx").symlink_to(real)


def _graph_outside(m: Path, outside: Path):
    shutil.copy(m / "transformer.onnx", outside.parent / "other.onnx")
    _edit_manifest(m, lambda d: d["graphs"]["transformer"].update(file="../outside/other.onnx"))


def _graph_absolute(m: Path, outside: Path):
    shutil.copy(m / "transformer.onnx", outside.parent / "other.onnx")
    _edit_manifest(m, lambda d: d["graphs"]["transformer"].update(file=str(outside.parent / "other.onnx")))


def _graph_unlisted(m: Path, outside: Path):
    _edit_manifest(m, lambda d: d["files"].pop("transformer.onnx"))


def _external_data_outside(m: Path, outside: Path):
    _edit_manifest(m, lambda d: d["graphs"]["transformer"].update(external_data="../outside/secret.txt"))


def _weights_outside(m: Path, outside: Path):
    _edit_manifest(m, lambda d: d["weights"].update(transformer="../../outside/secret.txt"))


def _weights_unlisted(m: Path, outside: Path):
    _edit_manifest(m, lambda d: d["files"].pop("gpt.safetensors"))


def _set_entry(name, value):
    return lambda m, outside: _edit_manifest(m, lambda d: d["files"].__setitem__(name, value))


def _set_field(field, value):
    return lambda m, outside: _edit_manifest(m, lambda d: d["files"]["vq.safetensors"].__setitem__(field, value))


HOSTILE = [
    ("files-dotdot", _outside_file, 'files["../outside/secret.txt"]: not a plain file name inside the model directory'),
    ("files-absolute", _absolute_file, "not a plain file name inside the model directory"),
    ("files-etc-passwd", _etc_passwd, 'files["/etc/passwd"]: not a plain file name inside the model directory'),
    ("files-symlink-out", _symlink_out, 'files["card.md"]: \'card.md\' is a symlink to .* outside the model directory'),
    ("graph-symlink-out", _graph_symlink_out, 'files["transformer.onnx"]: .* outside the model directory'),
    ("files-empty", _set_entry("", {"sha256": "0" * 64, "bytes": 0}), 'files[""]: not a plain file name'),
    ("files-dot", _set_entry(".", {"sha256": "0" * 64, "bytes": 0}), 'files["."]: not a plain file name'),
    ("files-backslash", _set_entry("..\\x", {"sha256": "0" * 64, "bytes": 0}), "not a plain file name"),
    ("files-drive", _set_entry("C:x", {"sha256": "0" * 64, "bytes": 0}), 'files["C:x"]: not a plain file name'),
    ("graph-dotdot", _graph_outside, 'graphs["transformer"]["file"]: not a plain file name inside the model directory'),
    ("graph-absolute", _graph_absolute, 'graphs["transformer"]["file"]: not a plain file name'),
    ("graph-not-a-str", lambda m, o: _edit_manifest(m, lambda d: d["graphs"]["transformer"].update(file=5)),
     'graphs["transformer"]["file"]: not a plain file name'),
    ("graph-unlisted", _graph_unlisted,
     "graphs[\"transformer\"][\"file\"]: 'transformer.onnx' is not listed in 'files'"),
    ("external-data-dotdot", _external_data_outside, 'graphs["transformer"]["external_data"]: not a plain file name'),
    ("weights-dotdot", _weights_outside, 'weights["transformer"]: not a plain file name'),
    ("weights-unlisted", _weights_unlisted, "weights[\"transformer\"]: 'gpt.safetensors' is not listed in 'files'"),
    ("bytes-str", _set_field("bytes", "12"), 'files["vq.safetensors"]["bytes"]: expected a size in bytes'),
    ("bytes-negative", _set_field("bytes", -1), 'files["vq.safetensors"]["bytes"]: expected a size in bytes'),
    ("bytes-bool", _set_field("bytes", True), 'files["vq.safetensors"]["bytes"]: expected a size in bytes'),
    ("sha-bad", _set_field("sha256", "xyz"), 'files["vq.safetensors"]["sha256"]: expected 64 hex digits'),
    ("sha-missing", lambda m, o: _edit_manifest(m, lambda d: d["files"]["vq.safetensors"].pop("sha256")),
     'files["vq.safetensors"]["sha256"]: expected 64 hex digits'),
    ("entry-not-object", _set_entry("vq.safetensors", 12), 'files["vq.safetensors"]: expected'),
    ("files-not-object", lambda m, o: _edit_manifest(m, lambda d: d.update(files=["transformer.onnx"])),
     "'files' is not an object"),
]


@pytest.mark.parametrize("verify", ["full", "size", "none"])
@pytest.mark.parametrize("case, make, message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_manifest_is_refused_before_any_file_is_read(model_copy, outside, hashed, case, make, message,
                                                             verify):
    make(model_copy, outside)
    pattern = ".*".join(re.escape(part) for part in message.split(".*"))  # literal, but for .*
    with pytest.raises(ModelDirectoryError, match=pattern):
        load_manifest(model_copy, verify=verify)
    assert hashed == []  # refused on the names alone: nothing hashed, inside or out


def test_symlinks_inside_the_directory_are_fine(model_copy, hashed):
    (model_copy / "transformer.onnx").rename(model_copy / "real-transformer.onnx")
    (model_copy / "transformer.onnx").symlink_to("real-transformer.onnx")
    assert load_manifest(model_copy, verify="full").graph_path("transformer").name == "transformer.onnx"
    assert model_copy / "transformer.onnx" in hashed


def test_graph_path_checks_the_directory_again_when_a_graph_opens(model_copy, outside):
    """The manifest is read once; a graph file swapped for a symlink out of the directory after loading
    is refused when the graph opens."""
    m = load_manifest(model_copy, verify="none")
    assert m.graph_path("transformer") == model_copy / "transformer.onnx"
    _graph_symlink_out(model_copy, outside)
    with pytest.raises(ModelDirectoryError, match=re.escape('graphs["transformer"]["file"]: \'transformer.onnx\' '
                                                            'is a symlink to') + ".*outside the model directory"):
        m.graph_path("transformer")


def test_pipeline_refuses_a_graph_outside(model_copy, outside):
    from tessera.runtime import Pipeline

    _graph_outside(model_copy, outside)
    with pytest.raises(ModelDirectoryError, match="not a plain file name"):
        Pipeline.load(model_copy, verify="none")


# --- tessera export --from DIR reads only DIR ----------------------------------------------------
@pytest.mark.parametrize("make, field", [
    (lambda m, s: _files_entry(m, "../../outside/secret.txt", s.read_bytes()), 'files["../../outside/secret.txt"]'),
    (_weights_outside, 'weights["transformer"]'),
])
def test_reexport_copies_nothing_from_outside(model_copy, outside, tmp_path, capsys, make, field):
    make(model_copy, outside)
    out = tmp_path / "again"
    assert main(["export", "--from", str(model_copy), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert f"{field}: not a plain file name inside the model directory" in err and len(err.splitlines()) == 1
    assert not out.exists() and _hidden(tmp_path) == []
    assert not list(tmp_path.rglob("secret.txt"))[1:]  # the one secret, nowhere else


def test_carried_extras_uses_the_runtime_name_check(model_copy):
    from tessera.export.cli import carried_extras

    from dataclasses import replace

    from tessera.runtime.spec import FileEntry

    spec = load_manifest(model_copy, verify="none").spec  # a spec built in code skips the reader's checks
    hostile = replace(spec, files={**spec.files, "../../outside/secret.txt": FileEntry("0" * 64, 1)})
    with pytest.raises(ModelDirectoryError, match="not a plain file name"):
        carried_extras(model_copy, hostile, set())


def test_reexport_of_a_dir_without_weights_is_one_clear_line(model_copy, tmp_path, capsys):
    from tessera.export.build import load_model_dir
    from tessera.export.model_dir import ExportError

    def drop_weights(d):
        for name in d["weights"].values():
            d["files"].pop(name)
        d["weights"] = {}

    _edit_manifest(model_copy, drop_weights)
    for name in ("gpt.safetensors", "vq.safetensors"):
        (model_copy / name).unlink()
    with pytest.raises(ExportError, match="exported without its PyTorch weights"):
        load_model_dir(model_copy)
    out = tmp_path / "again"
    assert main(["export", "--from", str(model_copy), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--include-weights" in err and "original checkpoints" in err
    assert not out.exists()


@pytest.mark.parametrize("name", ["transformer.onnx", "gpt.safetensors", "tessera.json", "transformer.onnx.data"])
def test_extra_file_cannot_replace_the_models_own_files(tiny_models, tmp_path, name):
    from tessera.export.model_dir import ExportError, ExportSpec, write_model_dir

    gpt, vq = tiny_models
    extra = tmp_path / "src" / name
    extra.parent.mkdir()
    extra.write_bytes(b"not a graph")
    with pytest.raises(ExportError, match="would replace the model's own"):
        write_model_dir(gpt, vq, tmp_path / "m", ExportSpec("x", [str(i) for i in range(10)], extra_files=[extra]))
    assert not (tmp_path / "m").exists() and _hidden(tmp_path) == []


def test_installed_copy_without_the_pytorch_weights_loads_but_cannot_reexport(tiny_dir, tmp_path, capsys):
    """The wheel leaves the export-only weights out; present weights are still verified."""
    from tessera.runtime import Pipeline

    d = tmp_path / "installed"
    shutil.copytree(tiny_dir, d)
    (d / "gpt.safetensors").unlink()
    assert Pipeline.load(d, providers="cpu", verify="full").generate_tokens([1], seed=0).shape[0] == 1
    assert main(["export", "--from", str(d), "--out", str(tmp_path / "again")]) == 1
    assert "gpt.safetensors are not there" in capsys.readouterr().err
    (d / "vq.safetensors").write_bytes(b"tampered")
    with pytest.raises(ModelDirectoryError, match="vq.safetensors"):
        load_manifest(d, verify="size")


# --- a graph swapped for another kind is refused at load, in one line ---------------------------
@pytest.fixture(scope="module")
def codebook128_dir(tmp_path_factory) -> Path:
    """A tiny model whose tokenizer has 128 codes (the shared tiny models have 64)."""
    from tessera.export.build import build_gpt, build_vq
    from tessera.export.config import GPTConfig, VQConfig, gpt_preset, vq_preset
    from tessera.export.model_dir import ExportSpec, write_model_dir

    gpt = build_gpt(GPTConfig(**{**gpt_preset("GPT-Tiny").to_dict(), "vocab_size": 128}), None, seed=3)
    vq = build_vq(VQConfig(**{**vq_preset("VQ-Tiny").to_dict(), "codebook_size": 128, "usage_slots": 128}), None,
                  seed=4)
    return write_model_dir(gpt, vq, tmp_path_factory.mktemp("cb128") / "m", ExportSpec("cb128", NAMES))


def _swap_graph(src: Path, into: Path, name: str) -> None:
    """Put `src`'s graph file `name` into the model directory `into`, its manifest checksums updated
    (a careful tamperer, or an honest mistake while copying files between directories)."""
    shutil.copy(src / name, into / name)
    data = (into / name).read_bytes()
    _files_entry(into, name, data)


def test_portable_transformer_in_a_fused_dir_is_refused_at_load(model_copy, portable_dir, tmp_path, capfd):
    from tessera.runtime import Pipeline

    _swap_graph(portable_dir, model_copy, "transformer.onnx")
    with pytest.raises(ModelDirectoryError, match=r"its transformer graph \(transformer.onnx\) fails the load's "
                                                  r"probe call .*kind fused, kv_cache shared-buffer.*re-export"):
        Pipeline.load(model_copy, providers="cpu")
    capfd.readouterr()
    out = tmp_path / "x.png"
    assert main(["generate", "1", "--model", str(model_copy), "--out", str(out)]) == 1
    err = capfd.readouterr().err  # file descriptor 2: onnxruntime's own log lines would land here
    assert err.startswith("tessera: error: ") and err.count("\n") == 1 and "fails the load's probe call" in err
    assert not out.exists()


def test_decoder_of_a_smaller_codebook_is_refused_at_load(codebook128_dir, tiny_dir, tmp_path, capfd):
    from tessera.runtime import Pipeline

    m = tmp_path / "m"
    shutil.copytree(codebook128_dir, m)
    _swap_graph(tiny_dir, m, "tokenizer_decoder.onnx")  # 64 codes where the manifest says 128
    with pytest.raises(ModelDirectoryError, match=r"its tokenizer_decoder graph \(tokenizer_decoder.onnx\) does not "
                                                  r"fit the manifest: it fails on codes 0..127 of the manifest's "
                                                  r"codebook of 128 .*re-export"):
        Pipeline.load(m, providers="cpu")
    capfd.readouterr()
    assert main(["generate", "1", "--model", str(m), "--out", str(tmp_path / "x.png")]) == 1
    err = capfd.readouterr().err
    assert err.startswith("tessera: error: ") and err.count("\n") == 1 and "codebook of 128" in err


def test_encoder_of_another_codebook_is_one_line_at_its_first_use(model_copy, codebook128_dir):
    from tessera.runtime import Pipeline

    _swap_graph(codebook128_dir, model_copy, "tokenizer_encoder.onnx")  # codes up to 127 for a 64-code model
    pipe = Pipeline.load(model_copy, providers="cpu")
    picture = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    with pytest.raises(ModelDirectoryError, match=r"its tokenizer_encoder graph \(tokenizer_encoder.onnx\) does not "
                                                  r"fit the manifest: it gives codes \d+..\d+, outside the manifest's "
                                                  "codebook of 64"):
        pipe.outpaint(picture, (4, 4, 12, 12), 1)
    assert pipe.generate_tokens([1]).shape == (1, 4, 4)  # generation, which needs no encoder, still works


# --- SIGKILL: the watchdog cleans up what the export cannot ---------------------------------------
_STALLED_EXPORT = """
import sys, time
from pathlib import Path
from tessera.export.build import build_gpt, build_vq
from tessera.export.config import gpt_preset, vq_preset
from tessera.export import model_dir as md

out, where = Path(sys.argv[1]), sys.argv[2]

def stall(*a, **k):
    print("stalled", flush=True)
    time.sleep(600)

if where == "parity":
    md.parity.check = stall
else:  # between renaming the old directory aside and moving the new one in
    real = Path.rename
    def rename(self, target):
        if self.name.startswith(f".{out.name}.partial-"):
            stall()
        return real(self, target)
    Path.rename = rename
md.write_model_dir(build_gpt(gpt_preset("GPT-Tiny"), None, seed=1), build_vq(vq_preset("VQ-Tiny"), None, seed=2),
                   out, md.ExportSpec("new", [str(i) for i in range(10)], overwrite=True))
"""


def _kill_stalled_export(out: Path, where: str) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _STALLED_EXPORT, str(out), where], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "stalled"
        assert [p for p in _hidden(out.parent) if ".partial-" in p]  # the partial directory is there
    finally:
        proc.kill()  # SIGKILL: no handler, no cleanup in the process itself
        proc.wait()
        proc.stdout.close()


def _settled(folder: Path, timeout_s: float = 60.0) -> list[str]:
    """The hidden names in `folder` once the watchdog has had time to act (it does at once; this waits
    for a loaded machine, not for a duration the test relies on)."""
    deadline = time.monotonic() + timeout_s
    while _hidden(folder) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _hidden(folder)


def test_sigkilled_export_leaves_nothing(tmp_path):
    out = tmp_path / "m"
    _kill_stalled_export(out, "parity")
    assert _settled(tmp_path) == [] and not out.exists()


def test_sigkill_between_the_renames_puts_the_old_dir_back(model_copy):
    before = _listing(model_copy)
    _kill_stalled_export(model_copy, "install")
    assert _settled(model_copy.parent) == []
    assert _listing(model_copy) == before  # the old model directory, byte for byte, where it was
