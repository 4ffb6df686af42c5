"""What the commands share to write their results: the progress bar, output checks, file names."""
from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from pathlib import Path

from tessera.runtime.errors import InvalidInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Limits checked before any work, so that a typo fails in milliseconds instead of filling memory.
MAX_IMAGES = 1024          # images per command (classes x -n); run the command again for more
MAX_SCALE = 64             # --scale
MAX_PIXELS = 89_478_485    # one saved image or sheet: Pillow's decompression-bomb limit, so it opens anywhere


class Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal, printed once otherwise)."""

    def __init__(self, label: str, enabled: bool = True, stream=None, unit: str = "tokens"):
        stream = stream or sys.stderr
        self.label, self.enabled, self.stream, self.unit = label, enabled, stream, unit
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.start = time.perf_counter()
        self.last = 0.0

    def __call__(self, step: int, total: int, _tokens=None) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if step < total and (not self.tty or now - self.last < 0.05):
            return
        self.last = now
        width = 30
        done = int(width * step / total)
        rate = step / max(now - self.start, 1e-9)
        speed = f"{rate:6.0f} tok/s" if self.unit == "tokens" else f"{now - self.start:6.1f} s"
        line = f"{self.label} [{'#' * done}{'.' * (width - done)}] {step}/{total} {self.unit} {speed}"
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        if step == total and self.tty:
            self.stream.write("\n")
        self.stream.flush()


class StageProgress:
    """The stages of `tessera export` on stderr (a callback for tessera.export.progress): one line per
    finished stage with its time when stderr is not a terminal; on a terminal one status line redrawn
    in place (the running stage, then its time), ended by a newline when a model directory is written
    and erased when a stage fails (the error is then the one `tessera: error:` line)."""

    def __init__(self, enabled: bool = True, stream=None, label: str = "export"):
        self.stream = stream or sys.stderr
        self.enabled, self.label = enabled, label
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started: dict[tuple[str, str], float] = {}
        self.t0 = time.perf_counter()
        self.open = False  # a redrawn line waits for its newline

    @staticmethod
    def _name(stage: str, detail: str) -> str:
        return f"{stage} ({detail})" if detail else stage

    def __call__(self, stage: str, status: str, detail: str = "") -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        name = self._name(stage, detail)
        if status == "start":
            self.started[(stage, detail)] = now
            if self.tty:
                self._draw(f"{self.label}: {name} ...")
            return
        took = now - self.started.pop((stage, detail), now)
        if status != "done":  # the error is the one `tessera: error:` line: the stage line goes away
            if self.open:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self.open = False
            return
        line = f"{self.label}: {name} done in {took:.1f}s"
        if self.tty:
            self._draw(line + f" (total {now - self.t0:.1f}s)")
            if stage == "write":  # a directory is finished: its summary follows
                self.finish()
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def _draw(self, line: str) -> None:
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()
        self.open = True

    def finish(self) -> None:
        """End the redrawn line (a terminal), so what follows starts on its own line."""
        if self.enabled and self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False


def check_writable(path: Path) -> None:
    """Fail before generating, not after: --out names an image file in an existing, writable folder.
    An existing directory is an error (name a file inside it), never written into."""
    if path.is_dir():
        raise InvalidInputError(f"--out {path} is a directory; name an image file, e.g. --out {path / 'tessera.png'}")
    folder = path.resolve().parent
    if not folder.is_dir():
        raise InvalidInputError(f"cannot write {path}: folder {folder} does not exist (create it or choose another --out)")
    try:
        tempfile.NamedTemporaryFile(dir=folder, prefix=".tessera-probe-").close()
    except OSError as e:
        raise InvalidInputError(f"cannot write {path}: {e.strerror or e} (choose another --out)") from None
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InvalidInputError(f"--out {path} must end in .png, .jpg, .webp or .bmp")


def check_counts(images: int, scale: int) -> None:
    """-n and --scale within the CLI's limits (before the model is even opened)."""
    if images < 1:
        raise InvalidInputError(f"-n must be >= 1, got {images}")
    if images > MAX_IMAGES:
        raise InvalidInputError(f"{images} images requested; at most {MAX_IMAGES} per command (run it again for more)")
    if not 1 <= scale <= MAX_SCALE:
        raise InvalidInputError(f"--scale must be 1..{MAX_SCALE}, got {scale}")


def check_pixels(width: int, height: int, count: int = 1) -> None:
    """One saved image of width x height (or a sheet of `count` of them) within MAX_PIXELS, checked
    before it is allocated."""
    total = width * height * count
    if total > MAX_PIXELS:
        what = f"a sheet of {count} images of {width}x{height} px" if count > 1 else f"an image of {width}x{height} px"
        raise InvalidInputError(f"{what} would hold {total / 1e6:,.0f} MP; at most {MAX_PIXELS / 1e6:.0f} MP per "
                                "saved file (lower --scale or -n, or drop --sheet)")


_UNSAFE = re.compile(r"[^\w.+-]+")


def safe_name(name: str, fallback: str) -> str:
    """A class name as a file-name part: no path separators, `..`, control or shell-special characters,
    no leading dot, at most 64 characters; `fallback` when nothing usable is left."""
    s = _UNSAFE.sub("_", str(name))
    s = re.sub(r"\.{2,}", "_", s).strip("._")[:64].strip("._")
    return s or fallback


def check_new_files(paths: list[Path], overwrite: bool) -> None:
    """Before any work: none of the files a command will write exists, unless --overwrite (a user's
    files are never replaced without a word)."""
    if overwrite:
        return
    taken = [p for p in paths if p.exists() or p.is_symlink()]
    if taken:
        more = f" (and {len(taken) - 1} more of the {len(paths)} files it would write)" if len(taken) > 1 else ""
        raise InvalidInputError(f"{taken[0]} already exists{more}; pass --overwrite to replace it, or choose "
                                "another --out")


def save_image(image, path: Path, overwrite: bool = True) -> None:
    """Write through a temporary file in the same folder: a reader never sees half an image, and a
    crash leaves the old file (or none) in place. overwrite=False: never replace a file that appeared
    meanwhile (a hard link is atomic and refuses an existing name; a filesystem without links
    falls back to a check before the rename)."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}{path.suffix}")
    try:
        image.save(tmp)
        if overwrite:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise InvalidInputError(f"{path} appeared while this command ran; it was left alone (pass --overwrite "
                                    "to replace it)") from None
        except OSError:  # no hard links here (FAT, some network filesystems)
            check_new_files([path], overwrite=False)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def add_overwrite_argument(p, what: str = "the output file(s)") -> None:
    """--overwrite: replacing an existing file is asked for, never assumed."""
    p.add_argument("--overwrite", action="store_true", help=f"replace {what} if they exist (default: an error)")
