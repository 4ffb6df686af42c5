"""`tessera export` shows its stages on stderr (--quiet: nothing), and loads weights from the Hugging
Face Hub's local cache (hf://OWNER/REPO/FILE), tested offline against a cache laid out here."""
from __future__ import annotations

import io
import re
import sys

import pytest

from tessera.cli.main import main
from tessera.cli.output import StageProgress

RANDOM = ["export", "--gpt", "GPT-Tiny", "--vq", "VQ-Tiny", "--random-weights"]


def _stages(err: str) -> list[str]:
    return re.findall(r"^export: (\w+)(?: \([^)]*\))? done in \d+\.\ds$", err, re.M)


def test_export_reports_its_stages_in_order(tmp_path, capsys):
    assert main([*RANDOM, "--quant", "int4", "--out", str(tmp_path / "m")]) == 0
    captured = capsys.readouterr()
    # int4: the fp32 graphs are checked before they are quantized, the variant after
    assert _stages(captured.err) == ["load", "export", "parity", "quantize", "parity", "write"]
    assert "export: parity (int4) done in" in captured.err
    assert "export: " not in captured.out and "parity: transformer" in captured.out  # the summary stays on stdout


def test_export_quiet_prints_no_stages(tmp_path, capsys):
    assert main([*RANDOM, "--quiet", "--out", str(tmp_path / "m")]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "exported 1 model directory" in captured.out


def test_library_reports_through_the_callback_only(tiny_models, tmp_path, capsys):
    from tessera.export.model_dir import ExportSpec, write_model_dir

    gpt, vq = tiny_models
    events = []
    write_model_dir(gpt, vq, tmp_path / "m", ExportSpec("m", [str(i) for i in range(10)]),
                    progress=lambda *e: events.append(e[:2]))
    assert events == [("export", "start"), ("export", "done"), ("parity", "start"), ("parity", "done"),
                      ("write", "start"), ("write", "done")]
    write_model_dir(gpt, vq, tmp_path / "n", ExportSpec("n", [str(i) for i in range(10)]))
    assert capsys.readouterr() == ("", "")  # library code prints nothing by itself


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_terminal_redraws_one_line():
    stream = _Tty()
    p = StageProgress(stream=stream)
    for stage in ("load", "export"):
        p(stage, "start", "")
        p(stage, "done", "")
    assert "\n" not in stream.getvalue() and stream.getvalue().count("\r") == 4
    p("write", "start", "out")
    p("write", "done", "out")  # the directory is written: the summary that follows starts a new line
    assert stream.getvalue().endswith("\n") and "export: write (out) done in" in stream.getvalue()
    p.finish()
    assert stream.getvalue().count("\n") == 1
    failed = _Tty()
    p = StageProgress(stream=failed)
    p("parity", "start", "fp32")
    p("parity", "failed", "fp32")
    assert failed.getvalue().endswith("\r\x1b[K")  # erased: the error line stands alone
    plain = io.StringIO()
    p = StageProgress(stream=plain)
    p("load", "start", "")
    p("load", "failed", "")
    assert plain.getvalue() == ""


def test_failed_export_prints_only_the_error_line(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main([*RANDOM, "--gpt-weights", str(bad), "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tessera: error: ") and "export: " not in err


# --- the Hugging Face Hub ----------------------------------------------------------------------
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache(tmp_path, monkeypatch):
    """A Hub cache holding owner/repo's gpt.safetensors (random GPT-Tiny weights), offline."""
    import torch
    from safetensors.torch import save_file

    from tessera.export.build import build_gpt
    from tessera.export.config import gpt_preset

    home = tmp_path / "hf"
    cache = home / "hub"
    repo = cache / "models--owner--repo"
    (repo / "snapshots" / SNAPSHOT).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SNAPSHOT)
    state = {k: v.contiguous() for k, v in build_gpt(gpt_preset("GPT-Tiny"), None, seed=7).state_dict().items()}
    save_file(state, str(repo / "snapshots" / SNAPSHOT / "gpt.safetensors"))
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if "huggingface_hub" in sys.modules:  # it reads the environment once, at import
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_HOME", str(home))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return state, torch


def test_weights_from_the_hub_cache_offline(tmp_path, monkeypatch, capsys):
    state, torch = _hub_cache(tmp_path, monkeypatch)
    out = tmp_path / "m"
    assert main(["export", "--gpt", "GPT-Tiny", "--gpt-weights", "hf://owner/repo/gpt.safetensors",
                 "--vq", "VQ-Tiny", "--random-weights", "--include-weights", "--quiet", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    from safetensors.torch import load_file

    written = load_file(str(out / "gpt.safetensors"))
    assert written.keys() == state.keys() and all(torch.equal(written[k], state[k]) for k in state)


def test_hub_file_not_cached_offline_is_one_line(tmp_path, monkeypatch, capsys):
    _hub_cache(tmp_path, monkeypatch)
    assert main([*RANDOM, "--gpt-weights", "hf://owner/repo/missing.safetensors", "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tessera: error: --gpt-weights hf://owner/repo/missing.safetensors: not in the local Hub "
                          "cache") and "HF_HUB_OFFLINE" in err and err.count("\n") == 1
    assert not (tmp_path / "m").exists()


def test_hub_needs_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    assert main([*RANDOM, "--vq-weights", "hf://owner/repo/vq.pt", "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert "pip install 'tessera-ar[hub]'" in err and err.count("\n") == 1


@pytest.mark.parametrize("spec", ["hf://owner/repo", "hf://owner//file.pt", "hf://"])
def test_bad_hub_address(tmp_path, capsys, spec):
    assert main([*RANDOM, "--gpt-weights", spec, "--out", str(tmp_path / "m")]) == 1
    assert "hf://OWNER/REPO/FILE" in capsys.readouterr().err
