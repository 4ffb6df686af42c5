"""Text-to-image with a Nitro-AR model directory (family `nitro-ar`): numpy + onnxruntime only.

The loop (docs/model-directory.md, section 10) as the released model runs it:

- the prompt and the empty prompt go through the tokenizer (padded with the pad id to `max_tokens`) and
  the text encoder; with guidance the rows are [empty prompt x B ; prompts], sharing everything else;
- `gan`: `iterations` transformer calls. Each decides the next group of cells (MaskGIT's cosine counts)
  from the end of the image's random order; each decided cell's hidden state conditions the flow head,
  which turns that cell's noise into a latent token in `head_steps` Euler steps, guidance mixing the
  two rows' velocities (v_u + g (v_c - v_u));
- `joint_gan`: the global transformer and global head make one token per image; the transformer runs
  once on it tiled over the grid, and the head denoises all cells at once;
- the latent / latent_scale goes through the decoder; pixels as in section 8.

A seed names an image: image i draws, from `numpy.random.default_rng(seed_i)`, its cell order
(`permutation(cells)`), then its cells' noise (`standard_normal((cells, channels))`, float64 cast to
float32), then (joint_gan) its global token's noise (`standard_normal(channels)`).
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import InvalidInputError, ModelDirectoryError, check_finite
from .manifest import Manifest, load_manifest
from .results import CancelToken, GenerationCancelled
from .spec import NitroLoop, NitroSpec

MAX_PROMPTS = 64
MAX_PROMPT_CHARS = 10_000
# callback(iteration, iterations, latent [B, cells, C]) after each iteration; return False to stop.
NitroCallback = Callable[[int, int, np.ndarray], object]


# --- the schedules ------------------------------------------------------------------------------------------
def maskgit_counts(cells: int, iterations: int) -> list[int]:
    """Cells decided per iteration, as the released loop computes them: after iteration s (0-based), the
    first max(1, min(open - 1, floor(cells * cos(pi/2 * (s+1) / iterations)))) cells of the order stay
    open; the last iteration decides all that remain. Equals schedule.cosine_counts(256, 20) for the
    published models; may hold zeros when iterations is close to cells (such iterations are skipped)."""
    if not 1 <= iterations <= cells:
        raise InvalidInputError(f"steps (iterations) must be in 1..{cells}, got {iterations}")
    open_, out = cells, []
    for s in range(iterations):
        if s == iterations - 1:
            out.append(open_)
            break
        keep = max(1, min(open_ - 1, math.floor(cells * math.cos(math.pi / 2 * (s + 1) / iterations))))
        out.append(open_ - keep)
        open_ = keep
    return out


def flow_schedule(steps: int, num_train_timesteps: int = 1000, shift: float = 1.0,
                  floor_timesteps: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The head's Euler schedule (FlowMatchEulerDiscreteScheduler as the release sets it up): returns the
    timesteps fed to the head [steps] and the sigmas [steps + 1], float32. One step: sigma 1 -> 0. More:
    steps + 1 points linearly from T to 1 (T = num_train_timesteps, in float64) over T, shifted, to
    float32; the last point (1 / T) is where the steps end. Timestep = float32(sigma) * T in float32;
    `floor_timesteps` (joint_gan, 2+ steps) feeds floor(timestep), the update keeps the exact sigma."""
    if not 1 <= steps <= 1000:
        raise InvalidInputError(f"head steps must be in 1..1000, got {steps}")
    n = num_train_timesteps
    if steps == 1:
        sig = np.array([1.0, 0.0], np.float32)
    else:
        lin = np.linspace(1.0 * n, float(np.float32(1.0 / n)) * n, steps + 1) / n
        sig = (shift * lin / (1 + (shift - 1) * lin)).astype(np.float32)
    t = (sig[:steps] * np.float32(n)).astype(np.float32)
    if floor_timesteps and steps > 1:
        t = np.floor(t).astype(np.float32)
    return t, sig


@dataclass
class ImageDraws:
    """What a seed decides for one image."""

    order: np.ndarray  # [cells] int64, a permutation; cells are decided from its end
    noise: np.ndarray  # [cells, C] float32, each cell's flow starts here
    global_noise: np.ndarray | None = None  # [C] float32 (joint_gan)


def image_draws(seed: int, loop: NitroLoop) -> ImageDraws:
    """Image `seed`'s order and noise (module docstring: the stream)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(loop.cells).astype(np.int64)
    noise = rng.standard_normal((loop.cells, loop.latent_channels)).astype(np.float32)
    g = rng.standard_normal(loop.latent_channels).astype(np.float32) if loop.variant == "joint_gan" else None
    return ImageDraws(order, noise, g)


# --- running graphs -----------------------------------------------------------------------------------------
class _Graphs:
    """Opens the model's graphs on demand; with `low_memory`, only the graphs of the current phase stay open
    (the text encoder, then the loop's graphs, then the decoder)."""

    def __init__(self, manifest: Manifest, providers: list[str], threads: int | None, low_memory: bool):
        self.manifest, self.providers, self.threads, self.low_memory = manifest, providers, threads, low_memory
        self.sessions: dict = {}
        self.lock = threading.Lock()
        self.calls: dict[str, int] = {}

    def session(self, name: str):
        with self.lock:  # a graph is opened once, whichever thread asks first
            s = self.sessions.get(name)
            if s is None:
                from .session import open_session

                s = self.sessions[name] = open_session(self.manifest.graph_path(name), self.providers, self.threads)
            return s

    def run(self, name: str, feeds: dict) -> np.ndarray:
        out = self.session(name).run(None, feeds)[0]
        self.calls[name] = self.calls.get(name, 0) + 1
        return check_finite(out, name)

    def keep_only(self, names: Sequence[str]) -> None:
        """Low-memory mode: close every open graph not in `names`."""
        if self.low_memory:
            with self.lock:
                for n in [n for n in self.sessions if n not in names]:
                    del self.sessions[n]

    def close(self) -> None:
        with self.lock:
            self.sessions.clear()


def _guided(v: np.ndarray, rows: int, scale: float) -> np.ndarray:
    """[uncond ; cond] velocities -> v_u + scale (v_c - v_u), float32."""
    vu, vc = v[:rows], v[rows:]
    return vu + np.float32(scale) * (vc - vu)


def _flow(run_head: Callable[[np.ndarray, np.ndarray], np.ndarray], noise: np.ndarray, steps: int, loop: NitroLoop,
          guidance: float, check: Callable[[], None]) -> np.ndarray:
    """Euler steps of a head from `noise`; `run_head(x, t)` gives velocities for x (doubled when guided)."""
    t_list, sig = flow_schedule(steps, loop.num_train_timesteps, loop.shift, loop.head_timestep == "floor")
    x = noise.astype(np.float32)
    guided = guidance != 1.0
    for i in range(steps):
        check()
        xin = np.concatenate([x, x]) if guided else x
        v = run_head(xin, np.full(xin.shape[0], t_list[i], np.float32))
        if guided:
            v = _guided(v, x.shape[0], guidance)
        x = x + (sig[i + 1] - sig[i]) * v
    return x.astype(np.float32)


def sample_latents(graphs: _Graphs, loop: NitroLoop, text: np.ndarray, null_text: np.ndarray,
                   draws: list[ImageDraws], guidance: float, iterations: int | None = None,
                   head_steps: int | None = None, callback: NitroCallback | None = None,
                   cancel: CancelToken | None = None, stop: threading.Event | None = None) -> np.ndarray:
    """The sampling loop on the graphs: text [B, T, H] (the prompts' states), null_text [1, T, H] (the
    empty prompt's) -> latent tokens [B, cells, C] (row-major cells)."""
    b, cells, ch = text.shape[0], loop.cells, loop.latent_channels
    guided = guidance != 1.0  # as the release: any scale but 1 runs the empty-prompt rows
    ctx = np.concatenate([np.repeat(null_text, b, 0), text]) if guided else text
    ctx = ctx.astype(np.float32)
    steps = head_steps or loop.head_steps
    state = {"iteration": 0, "latent": None}
    total = 2 if loop.variant == "joint_gan" else (iterations or loop.iterations)

    def check():
        if (cancel is not None and cancel.cancelled) or (stop is not None and stop.is_set()):
            lat = state["latent"]
            raise GenerationCancelled(state["iteration"], total, None if lat is None else lat.copy())

    def report(it: int, latent: np.ndarray):
        state["iteration"], state["latent"] = it + 1, latent
        if callback is not None and callback(it, total, latent.copy()) is False:
            raise GenerationCancelled(it + 1, total, latent.copy())

    def rows(x):
        return np.concatenate([x, x]) if guided else x

    if loop.variant == "joint_gan":
        if iterations not in (None, 2):
            raise InvalidInputError(f"a joint_gan model runs 2 iterations (a global token, then one joint pass); "
                                    f"got steps={iterations}: leave --steps unset")
        check()
        zg = graphs.run("global_transformer", {"text": ctx})
        gnoise = np.stack([d.global_noise for d in draws])[:, None]
        g = _flow(lambda x, t: graphs.run("global_head", {"x": x, "t": t, "z": zg}), gnoise, steps, loop, guidance,
                  check)
        tokens = np.ascontiguousarray(np.broadcast_to(g, (b, cells, ch)))
        report(0, tokens)
        check()
        h = graphs.run("transformer", {"tokens": rows(tokens), "mask": rows(np.zeros((b, cells), np.float32)),
                                       "text": ctx})
        noise = np.stack([d.noise for d in draws])
        out = _flow(lambda x, t: graphs.run("head", {"x": x, "t": t, "z": h}), noise, steps, loop, guidance, check)
        report(1, out)
        return out

    counts = maskgit_counts(cells, iterations or loop.iterations)
    tokens = np.zeros((b, cells, ch), np.float32)
    masked = np.ones((b, cells), np.float32)
    orders = np.stack([d.order for d in draws])
    noise = np.stack([d.noise for d in draws])
    done = 0
    for it, count in enumerate(counts):
        if count:
            check()
            h = graphs.run("transformer", {"tokens": rows(tokens), "mask": rows(masked), "text": ctx})
            sel = np.zeros((b, cells), bool)
            for r in range(b):
                sel[r, orders[r, cells - done - count:cells - done]] = True
            ri, ci = np.nonzero(sel)  # image-major, cells ascending
            z = np.concatenate([h[:b][ri, ci], h[b:][ri, ci]]) if guided else h[ri, ci]
            x = _flow(lambda x, t: graphs.run("head", {"x": x, "t": t, "z": z}), noise[ri, ci], steps, loop,
                      guidance, check)
            tokens[ri, ci] = x
            masked[ri, ci] = 0
            done += count
        report(it, tokens)
    return tokens


# --- prompts ---------------------------------------------------------------------------------------------
class PromptEncoder:
    """Prompt strings -> the text encoder's states, through the tokenizer file the model ships."""

    def __init__(self, manifest: Manifest):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            from .errors import ExtraNotInstalledError

            raise ExtraNotInstalledError("text-to-image models need the tokenizers package: "
                                         "pip install 'tessera-ar[text]'") from None
        spec: NitroSpec = manifest.spec
        path = manifest.root / spec.text.tokenizer
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:
            raise ModelDirectoryError(f"{path} is not a readable tokenizers file ({str(e)[:200]}); "
                                      "re-export the model") from None
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.max_tokens, self.pad = spec.text.max_tokens, spec.text.pad_token_id

    def ids(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """[B, max_tokens] ids (the tokenizer's, special tokens included, cut to max_tokens, then padded
        with the pad id) and the attention mask (1 on the prompt's tokens)."""
        ids = np.full((len(prompts), self.max_tokens), self.pad, np.int64)
        mask = np.zeros((len(prompts), self.max_tokens), np.int64)
        for i, p in enumerate(prompts):
            got = self.tokenizer.encode(p).ids[:self.max_tokens]
            ids[i, :len(got)] = got
            mask[i, :len(got)] = 1
        return ids, mask


def check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise InvalidInputError("prompts must be a non-empty list of strings, e.g. ['a red fox in the snow']")
    if len(prompts) > MAX_PROMPTS:
        raise InvalidInputError(f"at most {MAX_PROMPTS} prompts per call, got {len(prompts)}; split the call")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InvalidInputError(f"prompt {i} must be a string, got {type(p).__name__}")
        if len(p) > MAX_PROMPT_CHARS:
            raise InvalidInputError(f"prompt {i} has {len(p)} characters, more than {MAX_PROMPT_CHARS}; shorten it")
    return list(prompts)


# --- images ----------------------------------------------------------------------------------------------
def latent_grid(latent: np.ndarray, grid: int) -> np.ndarray:
    """[B, cells, C] row-major tokens -> the decoder's [B, C, grid, grid]."""
    return np.ascontiguousarray(latent.reshape(latent.shape[0], grid, grid, -1).transpose(0, 3, 1, 2))


def to_pixels(x: np.ndarray) -> np.ndarray:
    """Decoder output [B, C, H, W] in [-1, 1] -> uint8 [B, H, W, C] (docs/model-directory.md, section 8)."""
    x = x.astype(np.float32)
    px = np.clip(np.floor((x + 1) * np.float32(127.5) + np.float32(0.5)), 0, 255)
    return px.astype(np.uint8).transpose(0, 2, 3, 1)


def latent_preview(latent: np.ndarray, grid: int, scale: int = 8) -> list:
    """A cheap look at a partial latent without the decoder: its first three channels as RGB (each image
    normalised by its decided cells' spread), undecided cells grey, `scale` pixels per cell."""
    from PIL import Image

    out = []
    for lat in latent:
        rgb = lat[:, :3].reshape(grid, grid, 3)
        decided = np.abs(lat).sum(-1).reshape(grid, grid) > 0
        s = rgb[decided].std() if decided.any() else 1.0
        pix = np.where(decided[..., None], np.clip(rgb / (3 * (s or 1.0)) * 127.5 + 127.5, 0, 255), 128.0)
        im = Image.fromarray(pix.astype(np.uint8), "RGB")
        out.append(im.resize((grid * scale, grid * scale), Image.NEAREST))
    return out


# --- the pipeline ----------------------------------------------------------------------------------------
@dataclass
class TextToImageResult:
    latents: np.ndarray  # [B, cells, C]
    seeds: list[int]
    images: list | None = None
    timings: dict = field(default_factory=dict)
    calls: dict = field(default_factory=dict)


class NitroPipeline:
    """A loaded text-to-image model directory: `generate(prompts=[...])` -> PIL images.

    >>> pipe = NitroPipeline.load("nitro-ar-gan")
    >>> pipe.generate(prompts=["a red fox in the snow"], seed=3)[0].save("fox.png")

    Safe to share between an app's threads: one generation runs at a time (its phases open and close graphs
    under low_memory, and its graph-call counts are its own); a call from another thread waits for it.
    `interrupt()` and a call's CancelToken act at once, from any thread.
    """

    def __init__(self, manifest: Manifest, providers: list[str], threads: int | None = None,
                 low_memory: bool = False):
        if not manifest.text_to_image:
            raise InvalidInputError(f"{manifest.root} is a class-conditional model; open it with Pipeline")
        self.manifest = manifest
        self.spec: NitroSpec = manifest.spec
        self.graphs = _Graphs(manifest, providers, threads, low_memory)
        self._prompts: PromptEncoder | None = None
        self._stop = threading.Event()
        self._busy = threading.RLock()  # one generation (or encode / decode) at a time

    @classmethod
    def load(cls, model_dir: str | Path, providers: str | list[str] = "auto", threads: int | None = None,
             verify: str = "full", low_memory: bool = False) -> "NitroPipeline":
        """Open a `nitro-ar` model directory. low_memory: keep only the graphs of the running phase open
        (the text encoder, then the loop's graphs, then the decoder): a lower peak, graphs reopened per call."""
        from .providers import resolve_providers

        return cls(load_manifest(model_dir, verify=verify), resolve_providers(providers), threads, low_memory)

    @property
    def low_memory(self) -> bool:
        return self.graphs.low_memory

    @property
    def image_size(self) -> tuple[int, int]:
        return self.spec.image_size

    @property
    def graph_providers(self) -> dict[str, str]:
        return {n: s.get_providers()[0] for n, s in self.graphs.sessions.items()}

    def interrupt(self) -> None:
        """Stop the running generation (from any thread) before its next graph call; later calls run."""
        self._stop.set()

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(states [B, T, H] of the prompts, states [1, T, H] of the empty prompt)."""
        with self._busy:
            if self._prompts is None:
                self._prompts = PromptEncoder(self.manifest)
            ids, mask = self._prompts.ids(list(prompts) + [""])
            self.graphs.keep_only(["text_encoder"])
            states = self.graphs.run("text_encoder", {"input_ids": ids, "attention_mask": mask}).astype(np.float32)
        return states[:-1], states[-1:]

    def decode(self, latents: np.ndarray) -> list:
        """Latent tokens [B, cells, C] -> PIL images, one decoder call per image (the decoder's peak
        memory grows with the batch)."""
        from PIL import Image

        scale = np.float32(self.spec.decoder.latent_scale)
        images = []
        with self._busy:
            self.graphs.keep_only(["decoder"])
            for lat in latents:
                x = self.graphs.run("decoder", {"latent": latent_grid(lat[None].astype(np.float32) / scale,
                                                                      self.spec.loop.grid)})
                px = to_pixels(x)[0]
                images.append(Image.fromarray(px[..., 0], "L") if px.shape[-1] == 1
                              else Image.fromarray(px[..., :3], "RGB"))
        return images

    def run(self, prompts: Sequence[str] | str, seed: int | Sequence[int] = 0, guidance_scale: float | None = None,
            steps: int | None = None, head_steps: int | None = None, callback: NitroCallback | None = None,
            cancel: CancelToken | None = None, decode_images: bool = True,
            draws: list[ImageDraws] | None = None) -> TextToImageResult:
        """Prompts -> a TextToImageResult (latents, seeds, images, timings, graph calls).

        Args:
            prompts: a prompt or a list of them (image i is prompt i).
            seed: image i has seed + i (or seeds[i] for a list): a seed names an image.
            guidance_scale: on the heads' velocities; 1 turns guidance off (default: the model's).
            steps: gan: transformer iterations (default: the model's, 20 for the published one).
            head_steps: Euler steps of the flow head per decision (default: the model's).
            callback: `callback(iteration, iterations, latent)` after each iteration; False stops.
            cancel: a CancelToken; `cancel.cancel()` from any thread stops before the next graph call.
            draws: replaces what the seeds draw (orders and noise), for exactness tests.
        """
        prompts = check_prompts(prompts)
        loop = self.spec.loop
        seeds = _seeds(seed, len(prompts))
        g = loop.guidance_scale if guidance_scale is None else guidance_scale
        if not isinstance(g, (int, float)) or isinstance(g, bool) or not 0 <= g <= 1e6 or g != g:
            raise InvalidInputError(f"guidance_scale must be a number in 0..1e6, got {g!r}")
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool)):
            raise InvalidInputError(f"steps must be an int, got {steps!r}")
        if loop.variant == "gan":
            maskgit_counts(loop.cells, steps or loop.iterations)  # validates the range
        elif steps not in (None, 2):
            raise InvalidInputError(f"a joint_gan model runs 2 iterations (a global token, then one joint pass); "
                                    f"got steps={steps}: leave steps unset")
        if head_steps is not None and (not isinstance(head_steps, int) or isinstance(head_steps, bool)
                                       or not 1 <= head_steps <= 1000):
            raise InvalidInputError(f"head_steps must be an int in 1..1000, got {head_steps!r}")
        with self._busy:
            return self._run_locked(prompts, seeds, float(g), steps, head_steps, callback, cancel, decode_images,
                                    draws)

    def _run_locked(self, prompts, seeds, g, steps, head_steps, callback, cancel, decode_images,
                    draws) -> TextToImageResult:
        loop = self.spec.loop
        self._stop.clear()
        timings = {}
        t0 = time.perf_counter()
        text, null = self.encode_prompts(prompts)
        timings["text"] = time.perf_counter() - t0
        draws = draws or [image_draws(s, loop) for s in seeds]
        t0 = time.perf_counter()
        self.graphs.keep_only(["transformer", "head", "global_transformer", "global_head"])
        calls0 = dict(self.graphs.calls)
        latents = sample_latents(self.graphs, loop, text, null, draws, g, steps, head_steps, callback,
                                 cancel, self._stop)
        timings["latents"] = time.perf_counter() - t0
        result = TextToImageResult(latents=latents, seeds=seeds, timings=timings,
                                   calls={k: v - calls0.get(k, 0) for k, v in self.graphs.calls.items()
                                          if v - calls0.get(k, 0)})
        if decode_images:
            t0 = time.perf_counter()
            result.images = self.decode(latents)
            timings["images"] = time.perf_counter() - t0
        self.graphs.keep_only([])
        return result

    def generate(self, prompts: Sequence[str] | str, seed: int | Sequence[int] = 0, guidance_scale: float | None = None,
                 steps: int | None = None, head_steps: int | None = None, callback: NitroCallback | None = None,
                 cancel: CancelToken | None = None) -> list:
        """Prompts -> PIL images (see `run`)."""
        return self.run(prompts, seed, guidance_scale, steps, head_steps, callback, cancel).images

    def release(self) -> None:
        self.graphs.close()


def _seeds(seed, n: int) -> list[int]:
    if isinstance(seed, (list, tuple)):
        if len(seed) != n:
            raise InvalidInputError(f"{len(seed)} seeds for {n} prompts; give one seed per prompt or one int")
        seeds = list(seed)
    else:
        seeds = [seed + i for i in range(n)] if isinstance(seed, int) and not isinstance(seed, bool) else [seed]
    for s in seeds:
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < 2 ** 63:
            raise InvalidInputError(f"a seed must be an int in 0..2^63-1, got {s!r}")
    return seeds
