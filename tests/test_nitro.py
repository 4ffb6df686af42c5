"""Nitro-AR text-to-image (family nitro-ar): the PyTorch modules against the published layouts, the
exported graphs and the torch-free loop against the PyTorch reference loop (exactness), the manifest,
seeds, cancel, low memory and the CLI, on small random-weight models of both variants."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tessera.cli.main import main
from tessera.export.errors import ExportError
from tessera.export.nitro import (NITRO_PRESETS, NITRO_TEST_PRESETS, NitroTransformer, infer_config,
                                  load_nitro, nitro_preset_for_file, random_nitro, sample)
from tessera.export.nitro_export import random_parts as make_parts, write_nitro_dir
from tessera.runtime.errors import InvalidInputError, ModelDirectoryError
from tessera.runtime.manifest import load_manifest
from tessera.runtime.nitro import NitroPipeline, flow_schedule, image_draws, maskgit_counts
from tessera.runtime.results import CancelToken, GenerationCancelled
from tessera.runtime.schedule import cosine_counts

PRESETS = ("nitro-test-gan", "nitro-test-joint")
PROMPTS = ["a red fox in the snow", "blue cat on green grass"]
DOC = (Path(__file__).resolve().parents[1] / "docs" / "model-directory.md").read_text()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Both small variants exported once (fp32), with the PyTorch parts they came from."""
    root = tmp_path_factory.mktemp("nitro")
    out = {}
    for preset in PRESETS:
        parts = make_parts(preset)
        write_nitro_dir(parts, root / preset)
        out[preset] = (root / preset, parts)
    return out


# --- the modules --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset,params", [("Nitro-AR-512px-GAN", 323.9e6), ("Nitro-AR-512px-Joint-GAN", 474.1e6)])
def test_published_presets_have_the_published_sizes(preset, params):
    with torch.device("meta"):
        model = NitroTransformer(NITRO_PRESETS[preset])
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - params) < 0.05e6, n
    # the layouts' landmarks: the last block keeps only the image stream; the heads' names
    keys = model.state_dict().keys()
    assert "block_groups.2.3.attn.to_add_out.weight" not in keys and "block_groups.2.2.attn.to_add_out.weight" in keys
    assert "block_groups.2.3.ff_context.net.0.proj.weight" not in keys
    head = "diffloss.net.res_blocks.7." + ("mlp.fc1_g.weight" if "Joint" in preset else "adaLN_modulation.1.weight")
    assert head in keys


def test_preset_from_file_names():
    assert nitro_preset_for_file("ckpts/Nitro-AR-512px-GAN.safetensors") == "Nitro-AR-512px-GAN"
    assert nitro_preset_for_file("C:\\m\\nitro-ar-512px-joint-gan.safetensors") == "Nitro-AR-512px-Joint-GAN"
    assert nitro_preset_for_file("Nitro-AR-512px-GANx.safetensors") is None
    assert nitro_preset_for_file("model.safetensors") is None


@pytest.mark.parametrize("preset", PRESETS)
def test_checkpoints_load_strictly_and_their_config_is_read_from_shapes(preset):
    cfg = NITRO_TEST_PRESETS[preset]
    state = random_nitro(cfg, seed=3).state_dict()
    got = infer_config(state)
    fields = ("variant", "dim", "n_head", "stages", "latent_channels", "text_dim", "mlp_mult", "head_width",
              "head_depth")
    assert [getattr(got, f) for f in fields] == [getattr(cfg, f) for f in fields]
    assert cfg.variant == "gan" or got.head_mlp == cfg.head_mlp
    with pytest.raises(ExportError, match="not joint_gan" if cfg.variant == "gan" else "not gan"):
        infer_config(state, "joint_gan" if cfg.variant == "gan" else "gan")
    model = load_nitro(state, cfg)
    assert torch.equal(model.mask_token, state["mask_token"])
    broken = dict(state)
    broken.pop("context_embedder.bias")
    with pytest.raises(ExportError, match="1 missing .first: context_embedder.bias"):
        load_nitro(broken, cfg)
    extra = {**state, "projectors.0.weight": torch.zeros(1)}
    with pytest.raises(ExportError, match="unexpected"):
        load_nitro(extra, cfg)
    other = {**state, "x_proj.weight": torch.zeros(cfg.dim, cfg.latent_channels + 1)}
    with pytest.raises(ExportError, match="another shape"):
        load_nitro(other, cfg)


# --- the schedules -------------------------------------------------------------------------------------------
def test_iteration_counts_are_the_releases():
    assert maskgit_counts(256, 20) == [1, 3, 4, 5, 7, 8, 10, 11, 13, 13, 15, 16, 17, 17, 19, 18, 20, 19, 20, 20]
    assert maskgit_counts(256, 20) == cosine_counts(256, 20)
    for n in (1, 2, 7, 64, 256):
        assert sum(maskgit_counts(256, n)) == 256
    with pytest.raises(InvalidInputError, match="1..256"):
        maskgit_counts(256, 0)


def test_flow_schedule_is_the_schedulers():
    """Values of diffusers' FlowMatchEulerDiscreteScheduler(1000, shift 1) as the release sets it up."""
    t, s = flow_schedule(1)
    assert t.tolist() == [1000.0] and s.tolist() == [1.0, 0.0]
    t, s = flow_schedule(3)
    assert t.tolist() == [1000.0, 667.0, 334.0]
    assert s.tolist() == pytest.approx([1.0, 0.667, 0.334, 0.001], abs=1e-7)
    t, s = flow_schedule(2, floor_timesteps=True)
    assert t.tolist() == [1000.0, 500.0] and s[1] == np.float32(0.5005)
    t, _ = flow_schedule(6, floor_timesteps=True)
    assert t.tolist() == [1000.0, 833.0, 667.0, 500.0, 334.0, 167.0]


# --- exactness ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESETS)
def test_onnx_loop_matches_the_pytorch_reference(models, preset):
    """Same weights, same orders, same noise: the torch-free loop gives the reference's latent to 1e-4 of
    its scale (fp32), guidance on, two images in one call."""
    root, parts = models[preset]
    pipe = NitroPipeline.load(root, providers="cpu")
    result = pipe.run(PROMPTS, seed=11, decode_images=False)
    text, null = pipe.encode_prompts(PROMPTS)
    draws = [image_draws(s, pipe.spec.loop) for s in result.seeds]
    gnoise = np.stack([d.global_noise for d in draws]) if draws[0].global_noise is not None else None
    ref = sample(parts.model, torch.from_numpy(text), torch.from_numpy(null), np.stack([d.order for d in draws]),
                 np.stack([d.noise for d in draws]), gnoise, iterations=pipe.spec.loop.iterations,
                 guidance=pipe.spec.loop.guidance_scale).numpy()
    scale = float(np.abs(ref).max())
    assert scale > 1
    assert float(np.abs(result.latents - ref).max()) <= 1e-4 * scale
    # and the text encoder graph is the transformers model's final-norm states
    ids, mask = pipe._prompts.ids(PROMPTS + [""])
    states = parts.text_encoder(input_ids=torch.from_numpy(ids),
                                attention_mask=torch.from_numpy(mask)).last_hidden_state
    assert np.abs(states.detach().numpy() - np.concatenate([text, null])).max() < 1e-4


def test_graph_calls_follow_the_loop(models):
    gan = NitroPipeline.load(models["nitro-test-gan"][0], providers="cpu")
    r = gan.run(PROMPTS[:1], steps=5, head_steps=2, decode_images=False)
    assert r.calls == {"transformer": 5, "head": 10}
    joint = NitroPipeline.load(models["nitro-test-joint"][0], providers="cpu")
    r = joint.run(PROMPTS[:1], head_steps=3, decode_images=False)
    assert r.calls == {"global_transformer": 1, "global_head": 3, "transformer": 1, "head": 3}
    with pytest.raises(InvalidInputError, match="2 iterations"):
        joint.run(PROMPTS[:1], steps=4)


# --- seeds, guidance, cancel, memory ----------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESETS)
def test_a_seed_names_an_image(models, preset):
    pipe = NitroPipeline.load(models[preset][0], providers="cpu")
    both = pipe.run(PROMPTS, seed=5, decode_images=False).latents
    alone = pipe.run(PROMPTS[1:], seed=6, decode_images=False).latents
    assert np.abs(both[1] - alone[0]).max() < 1e-5
    other = pipe.run(PROMPTS[1:], seed=7, decode_images=False).latents
    assert np.abs(other[0] - alone[0]).max() > 1e-2
    unguided = pipe.run(PROMPTS[1:], seed=6, guidance_scale=1.0, decode_images=False).latents
    assert np.abs(unguided[0] - alone[0]).max() > 1e-2


def test_the_seed_stream_is_documented():
    """Section 10's stream: order, then cell noise (float64 normals cast), then the global noise."""
    loop = load_manifest_loop("joint_gan")
    d = image_draws(0, loop)
    rng = np.random.default_rng(0)
    assert d.order.tolist() == rng.permutation(64).tolist()
    assert np.array_equal(d.noise, rng.standard_normal((64, 32)).astype(np.float32))
    assert np.array_equal(d.global_noise, rng.standard_normal(32).astype(np.float32))


def load_manifest_loop(variant):
    from tessera.runtime.spec import NitroLoop

    return NitroLoop(variant=variant, grid=8, latent_channels=32, dim=64, iterations=2, head_steps=6,
                     guidance_scale=4.0, head_timestep="floor")


def test_previews_and_cancel(models):
    pipe = NitroPipeline.load(models["nitro-test-gan"][0], providers="cpu")
    seen = []
    pipe.run(PROMPTS[:1], steps=4, decode_images=False,
             callback=lambda it, total, lat: seen.append((it, total, int((lat != 0).any(-1).sum()))))
    assert [s[:2] for s in seen] == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert [s[2] for s in seen] == list(np.cumsum(maskgit_counts(64, 4)))  # the partial latent fills up
    with pytest.raises(GenerationCancelled) as e:
        pipe.run(PROMPTS[:1], steps=4, callback=lambda it, total, lat: it < 1)
    assert e.value.step == 2 and e.value.tokens.shape == (1, 64, 32)
    token = CancelToken()
    with pytest.raises(GenerationCancelled):
        pipe.run(PROMPTS[:1], steps=4, cancel=token, callback=lambda *a: token.cancel())
    assert pipe.run(PROMPTS[:1], steps=2, decode_images=False).latents.shape == (1, 64, 32)  # still usable


def test_low_memory_keeps_one_phase_open_and_gives_the_same_images(models):
    root = models["nitro-test-joint"][0]
    opened = []
    pipe = NitroPipeline.load(root, providers="cpu", low_memory=True)
    real = pipe.graphs.session

    def spy(name):
        opened.append((name, sorted(pipe.graphs.sessions)))
        return real(name)

    pipe.graphs.session = spy
    low = pipe.run(PROMPTS[:1], seed=2)
    for name, before in opened:
        phase = {"text_encoder": {"text_encoder"}, "decoder": {"decoder"}}.get(
            name, {"global_transformer", "global_head", "transformer", "head"})
        assert set(before) <= phase, (name, before)
    assert pipe.graphs.sessions == {}
    high = NitroPipeline.load(root, providers="cpu").run(PROMPTS[:1], seed=2)
    assert np.array_equal(low.latents, high.latents)
    assert np.array_equal(np.asarray(low.images[0]), np.asarray(high.images[0]))


def test_one_pipeline_serves_app_threads(models):
    """Threads sharing one low-memory pipeline (whose phases close each other's graphs) get the images a
    pipeline of their own gives, with their own graph-call counts."""
    import threading

    root = models["nitro-test-gan"][0]
    alone = [NitroPipeline.load(root, providers="cpu").run(PROMPTS[i % 2], seed=i) for i in range(4)]
    shared, got, errors = NitroPipeline.load(root, providers="cpu", low_memory=True), {}, []

    def work(i):
        try:
            got[i] = shared.run(PROMPTS[i % 2], seed=i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors and len(got) == 4
    for i, want in enumerate(alone):
        assert np.array_equal(got[i].latents, want.latents)
        assert np.array_equal(np.asarray(got[i].images[0]), np.asarray(want.images[0]))
        assert got[i].calls == want.calls


def test_bad_input_is_one_clear_error(models):
    pipe = NitroPipeline.load(models["nitro-test-gan"][0], providers="cpu")
    for kwargs, match in (({"prompts": []}, "non-empty"), ({"prompts": [3]}, "must be a string"),
                          ({"prompts": ["x"], "steps": 65}, "1..64"), ({"prompts": ["x"], "head_steps": 0}, "1..1000"),
                          ({"prompts": ["x"], "guidance_scale": -1.0}, "guidance_scale"),
                          ({"prompts": ["x", "y"], "seed": [1]}, "one seed per prompt")):
        with pytest.raises(InvalidInputError, match=match):
            pipe.run(**kwargs)


# --- the manifest ------------------------------------------------------------------------------------------
def test_manifest_is_checked(models, tmp_path):
    root = models["nitro-test-gan"][0]
    m = load_manifest(root)
    assert m.text_to_image and m.spec.loop.variant == "gan" and m.spec.image_size == (64, 64)
    data = json.loads((root / "tessera.json").read_text())
    copy = tmp_path / "m"
    shutil.copytree(root, copy)
    for edit, match in ((lambda d: d["graphs"].pop("head"), "graphs.head is missing"),
                        (lambda d: d["nitro"].update(variant="maskgit"), "nitro.variant must be one of"),
                        (lambda d: d["nitro"].update(grid=10), "multiple of 4"),
                        (lambda d: d["graphs"]["head"].update(inputs=["x"]), "must take"),
                        (lambda d: d["text"].update(tokenizer="../t.json"), "plain file name"),
                        (lambda d: d["nitro"].update(extra=1), "not a field")):
        d = json.loads(json.dumps(data))
        edit(d)
        (copy / "tessera.json").write_text(json.dumps(d))
        with pytest.raises(ModelDirectoryError, match=match):
            load_manifest(copy, verify="none")


def _keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and key not in ("export", "exported_by", "parity", "files", "weights") \
                and not key.endswith(".options"):
            out |= _keys(v, key)
        else:
            out.add(key)
    return out


def test_every_manifest_field_is_documented(models):
    section = DOC.split("## 10.")[1]
    for preset in PRESETS:
        data = json.loads((models[preset][0] / "tessera.json").read_text())
        keys = {k if not k.startswith("graphs.") else "graphs.<name>." + k.split(".", 2)[2] for k in _keys(data)}
        missing = sorted(k for k in keys if f"`{k}`" not in section and f"`{k}`" not in DOC)
        assert not missing, f"fields missing from docs/model-directory.md: {missing}"
    for name in ("text_encoder", "transformer", "head", "global_transformer", "global_head", "decoder"):
        assert f"`{name}`" in section


def test_int8_variant_records_each_graphs_error(models, tmp_path):
    spec = write_nitro_dir(make_parts("nitro-test-joint"), tmp_path / "int8", precision="int8", text_encoder_bits=4)
    parity = spec.info["parity"]["quantized_vs_fp32"]
    assert set(parity) == {"text_encoder", "global_transformer", "global_head", "transformer", "head"}
    assert all(0 < p["relative"] < 0.5 for p in parity.values())
    assert spec.graph("text_encoder").precision == "int4" and spec.graph("transformer").precision == "int8"
    assert spec.graph("decoder").precision == "fp32"
    pipe = NitroPipeline.load(tmp_path / "int8", providers="cpu")
    fp32 = NitroPipeline.load(models["nitro-test-joint"][0], providers="cpu")
    a = pipe.run(PROMPTS[:1], seed=1, decode_images=False).latents
    b = fp32.run(PROMPTS[:1], seed=1, decode_images=False).latents
    assert math.isfinite(float(np.abs(a - b).max()))
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.5  # the same image, roughly


# --- the command line --------------------------------------------------------------------------------------
def test_cli_generates_from_prompts(models, tmp_path, capsys):
    root = models["nitro-test-gan"][0]
    out = tmp_path / "fox.png"
    assert main(["generate", "a red fox in the snow", "--model", str(root), "--out", str(out), "--seed", "3",
                 "--steps", "4", "-q", "--preview-dir", str(tmp_path / "frames")]) == 0
    from PIL import Image

    assert Image.open(out).size == (64, 64)
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [f"frame-00{i}.png" for i in range(1, 5)]
    pipe = NitroPipeline.load(root, providers="cpu")
    assert np.array_equal(np.asarray(Image.open(out)),
                          np.asarray(pipe.generate(["a red fox in the snow"], seed=3, steps=4)[0]))
    assert main(["generate", "a", "b", "--model", str(root), "--out", str(tmp_path / "s.png"), "--steps", "2",
                 "-q", "-n", "2"]) == 0
    assert len(list(tmp_path.glob("s-00*.png"))) == 4
    assert main(["generate", "a fox", "--model", str(root), "--top-k", "5", "--out", str(tmp_path / "x.png")]) == 1
    assert "--top-k is an option of class-conditional" in capsys.readouterr().err
    assert main(["info", str(root)]) == 0
    shown = capsys.readouterr().out
    assert "Nitro-AR gan: 20 iterations, 3 head steps, guidance 4" in shown and "transformer.onnx" in shown


def test_cli_exports_a_checkpoint_file(tmp_path, capsys):
    """`tessera export --nitro-weights FILE`: the variant and shapes come from the weights (strictly loaded);
    a preset that says otherwise is one error line."""
    from safetensors.torch import save_file

    model = random_nitro(NITRO_TEST_PRESETS["nitro-test-joint"], seed=4)
    weights = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    out = tmp_path / "m"
    assert main(["export", "--nitro-weights", str(weights), "--nitro-preset", "nitro-test-joint", "--random-weights",
                 "--out", str(out), "-q"]) == 0
    pipe = NitroPipeline.load(out, providers="cpu")
    assert pipe.spec.loop.variant == "joint_gan" and pipe.spec.loop.grid == 8
    text, null = pipe.encode_prompts(PROMPTS[:1])
    d = image_draws(0, pipe.spec.loop)
    ref = sample(model, torch.from_numpy(text), torch.from_numpy(null), d.order[None], d.noise[None],
                 d.global_noise[None]).numpy()
    assert np.abs(pipe.run(PROMPTS[:1], seed=0, decode_images=False).latents - ref).max() <= 1e-4 * np.abs(ref).max()
    assert main(["export", "--nitro-weights", str(weights), "--nitro-preset", "nitro-test-gan", "--random-weights",
                 "--out", str(tmp_path / "x")]) == 1
    assert "holds a joint_gan model, but --nitro-preset says nitro-test-gan" in capsys.readouterr().err
    assert main(["export", "--nitro-weights", str(weights), "--out", str(tmp_path / "y")]) == 1
    assert "--text-encoder and --dcae not given" in capsys.readouterr().err


def test_pipeline_load_opens_a_text_to_image_model(models):
    from tessera.runtime import Pipeline

    pipe = Pipeline.load(models["nitro-test-gan"][0], providers="cpu")
    assert isinstance(pipe, NitroPipeline)
    images = pipe.generate(prompts=["a red fox in the snow"], seed=1, steps=3)
    assert len(images) == 1 and images[0].size == (64, 64)


def test_decoder_export_normalises_negative_transpose_axes(tmp_path):
    """diffusers' DC-AE uses movedim(-1, 1), which traces to Transpose perm [0, -1, 1, 2] that onnxruntime
    refuses: the exported decoder has the non-negative axes and runs."""
    import onnx
    import onnxruntime as ort

    from tessera.export.nitro_export import export_decoder

    class ChannelsLast(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 3, 1)

        def forward(self, latent):
            y = self.conv(latent).movedim(1, -1) * 2.0  # [B, H, W, C]
            return y.movedim(-1, 1)

    module = ChannelsLast().eval()
    path = tmp_path / "decoder.onnx"
    export_decoder(module, path, 4, 8)
    perms = [list(a.ints) for n in onnx.load(str(path)).graph.node if n.op_type == "Transpose"
             for a in n.attribute if a.name == "perm"]
    assert perms and all(v >= 0 for p in perms for v in p)
    x = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"latent": x})[0]
    assert np.abs(got - module(torch.from_numpy(x)).detach().numpy()).max() < 1e-5
