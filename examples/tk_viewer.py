"""A Tkinter window around the Tessera runtime: pick a class, press Generate, watch the image
appear row by row.

    python examples/tk_viewer.py [--model DIR] [--scale 8]

Generation runs in a worker thread that drives `Pipeline.stream` (one step per token, a preview
frame every `--every` tokens); the frames go through a queue that the Tk main loop drains with
`after` (Tk calls stay on the main thread). Stop cancels the generation through a `CancelToken`
(it ends within one token; the pipeline stays usable). Stdlib Tkinter + Pillow only.

`--headless-test OUT.png` is the hook for tests: the window generates once for `--class`, saves
the image last drawn on the canvas to OUT.png and prints one JSON line of statistics
(frames drawn, the PhotoImage's size, whether the last frame equals the returned image), then exits.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import queue
import sys
import threading

import tkinter as tk
from tkinter import ttk

import numpy as np
from PIL import Image

from tessera.runtime import CancelToken, GenerationCancelled, Pipeline


def photo_from(image: Image.Image, scale: int) -> tk.PhotoImage:
    """PIL image -> Tk PhotoImage through PNG bytes (no PIL.ImageTk needed)."""
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return tk.PhotoImage(data=base64.b64encode(buf.getvalue()).decode("ascii"), format="png")


class Viewer:
    def __init__(self, root: tk.Tk, pipe: Pipeline, scale: int = 8, every="row"):
        self.root, self.pipe, self.scale, self.every = root, pipe, scale, every
        self.frames: "queue.Queue" = queue.Queue()
        self.worker: threading.Thread | None = None
        self.drawn = 0
        self.last_frame: Image.Image | None = None
        self.result: list[Image.Image] | None = None
        self.error: BaseException | None = None
        self.on_done = None
        self.cancel: CancelToken | None = None

        root.title(f"Tessera — {pipe.manifest.root.name}")
        bar = ttk.Frame(root, padding=6)
        bar.pack(side=tk.TOP, fill=tk.X)
        ttk.Label(bar, text="class").pack(side=tk.LEFT)
        self.class_var = tk.StringVar(value=pipe.class_names[0] if pipe.class_names else "0")
        self.picker = ttk.Combobox(bar, textvariable=self.class_var, values=pipe.class_names, width=12)
        self.picker.pack(side=tk.LEFT, padx=4)
        ttk.Label(bar, text="seed").pack(side=tk.LEFT)
        self.seed_var = tk.IntVar(value=0)
        ttk.Spinbox(bar, from_=0, to=2**31 - 1, textvariable=self.seed_var, width=8).pack(side=tk.LEFT, padx=4)
        self.button = ttk.Button(bar, text="Generate", command=self.generate)
        self.button.pack(side=tk.LEFT, padx=4)
        self.stop_button = ttk.Button(bar, text="Stop", command=self.stop)
        self.stop_button.pack(side=tk.LEFT, padx=4)
        self.stop_button.state(["disabled"])
        self.status = tk.StringVar(value="ready")
        ttk.Label(root, textvariable=self.status, padding=(6, 0)).pack(side=tk.BOTTOM, fill=tk.X)
        h, w = pipe.image_size
        self.canvas = tk.Canvas(root, width=w * scale, height=h * scale, background="#808080", highlightthickness=0)
        self.canvas.pack(padx=6, pady=6)
        self.photo = photo_from(Image.new("RGB", (w, h), (128, 128, 128)), scale)
        self.item = self.canvas.create_image(0, 0, anchor=tk.NW, image=self.photo)

    # --- worker thread ---------------------------------------------------------------------
    def generate(self) -> None:
        if self.worker is not None and self.worker.is_alive():
            return
        label, seed = self.class_var.get().strip(), int(self.seed_var.get())
        self.button.state(["disabled"])
        self.status.set(f"generating {label} ...")
        self.result = None
        self.cancel = CancelToken()
        self.stop_button.state(["!disabled"])
        self.worker = threading.Thread(target=self._run, args=(label, seed, self.cancel), daemon=True)
        self.worker.start()
        self.root.after(15, self._drain)

    def stop(self) -> None:
        if self.cancel is not None:
            self.cancel.cancel()  # the worker's stream raises GenerationCancelled within one token

    def _run(self, label: str, seed: int, cancel: CancelToken) -> None:
        try:
            for step in self.pipe.stream([label], seed=seed, preview_every=self.every, cancel=cancel):
                if step.images:  # a preview frame; the last step carries the final image
                    self.frames.put((step.step, step.total, step.images[0]))
            self.frames.put(("done", step.result.images))
        except GenerationCancelled as e:
            self.frames.put(("cancelled", e))
        except BaseException as e:  # shown in the status line
            self.frames.put(("error", e))

    # --- main thread -------------------------------------------------------------------------
    def _drain(self) -> None:
        latest, finished = None, None
        while True:
            try:
                item = self.frames.get_nowait()
            except queue.Empty:
                break
            if item[0] in ("done", "error", "cancelled"):
                finished = item
            else:
                latest = item
        if latest is not None:
            step, total, image = latest
            self.show(image)
            self.status.set(f"{step}/{total} tokens")
        if finished is None:
            self.root.after(15, self._drain)
            return
        self.button.state(["!disabled"])
        self.stop_button.state(["disabled"])
        if finished[0] == "cancelled":
            self.status.set(f"stopped after {finished[1].step}/{finished[1].total} tokens")
        elif finished[0] == "error":
            self.error = finished[1]
            self.status.set(f"error: {finished[1]}")
        else:
            self.result = finished[1]
            self.status.set(f"done: {self.class_var.get()}, seed {self.seed_var.get()}")
        if self.on_done:
            self.on_done()

    def show(self, image: Image.Image) -> None:
        self.photo = photo_from(image, self.scale)  # keep a reference: Tk does not
        self.canvas.itemconfigure(self.item, image=self.photo)
        self.last_frame = image
        self.drawn += 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model directory (default: the shipped model)")
    p.add_argument("--scale", type=int, default=8, help="display upscaling")
    p.add_argument("--every", default="row", help="tokens per preview frame, 'row' or 'auto'")
    p.add_argument("--class", dest="class_label", default=None, help="initial class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--headless-test", metavar="OUT.png",
                   help="generate once, save the last drawn frame, print statistics as JSON, exit")
    p.add_argument("--timeout", type=float, default=60, help="--headless-test gives up after this many seconds")
    a = p.parse_args(argv)
    every = int(a.every) if str(a.every).isdigit() else a.every
    pipe = Pipeline.load(a.model, providers="cpu" if a.headless_test else "auto")
    root = tk.Tk()
    viewer = Viewer(root, pipe, a.scale, every)
    if a.class_label is not None:
        viewer.class_var.set(a.class_label)
    viewer.seed_var.set(a.seed)
    if not a.headless_test:
        root.mainloop()
        return 0

    def finish():
        ok = viewer.result is not None and viewer.last_frame is not None
        stats = dict(ok=ok, frames=viewer.drawn, photo_size=[viewer.photo.width(), viewer.photo.height()],
                     error=None if viewer.error is None else str(viewer.error))
        if ok:
            viewer.last_frame.save(a.headless_test)
            stats["final_equals_result"] = bool(np.array_equal(np.asarray(viewer.last_frame),
                                                               np.asarray(viewer.result[0])))
        print(json.dumps(stats), flush=True)
        root.destroy()

    viewer.on_done = lambda: root.after(50, finish)
    root.after(200, viewer.generate)
    root.after(int(a.timeout * 1000), finish)
    root.mainloop()
    return 0 if viewer.result is not None else 1


if __name__ == "__main__":
    sys.exit(main())
