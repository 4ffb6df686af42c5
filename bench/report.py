"""A `tessera bench` run as tables (aligned text for the terminal, markdown for a results file) and
JSON. Columns say what was measured; ratios are to the first directory on the same provider."""
from __future__ import annotations

import json
from pathlib import Path


def fmt(value, spec: str = ".1f", none: str = "—") -> str:
    return none if value is None else format(value, spec)


def _pct(value) -> str:
    return fmt(None if value is None else 100 * value, ".1f") + ("" if value is None else " %")


def model_table(run: dict) -> tuple[list[str], list[list[str]]]:
    """One row per (directory, provider): size, load, memory, one whole image, quality vs the first."""
    head = ["model", "provider", "precision", "graphs MiB", "load s", "peak RSS load MiB", "peak RSS, one image MiB",
            "x first", "one image s (tokens + decode)", "token agreement", "max abs logit error", "argmax agreement"]
    rows = []
    for r in run["rows"]:
        q = r.get("quality") or {}
        img = r.get("one_image") or {}
        rows.append([r["name"], r["provider"], r["precision"], fmt(r["graphs_mib"], ".2f"),
                     fmt(r.get("load_s"), ".3f"), fmt(r.get("peak_rss_load_mib"), ".0f"),
                     fmt(r.get("peak_rss_image_mib"), ".0f"), fmt(r["vs_first"].get("peak_rss_image"), ".2f"),
                     f"{fmt(img.get('tokens_s'), '.2f')} + {fmt(img.get('decode_s'), '.2f')}" if img else "—",
                     "reference" if "quality" not in r else _pct(q.get("token_agreement")),
                     "reference" if "quality" not in r else fmt(q.get("max_abs_logit_error"), ".3g"),
                     "reference" if "quality" not in r else _pct(q.get("argmax_agreement"))])
    return head, rows


def speed_table(run: dict) -> tuple[list[str], list[list[str]]]:
    """One row per (directory, provider, batch rows): prefill, decode median / p90, time per image."""
    head = ["model", "provider", "batch rows", "images", "prefill ms", "decode ms median", "decode ms p90",
            "s / image", "decode x first", "s / image x first"]
    rows = []
    for r in run["rows"]:
        for b, s in (r.get("batches") or {}).items():
            rows.append([r["name"], r["provider"], b, str(s["images"]),
                         fmt(s["prefill_ms"], ".2f"), fmt(s["median_ms"], ".3f"), fmt(s["p90_ms"], ".3f"),
                         fmt(s["image_s"], ".3f"), fmt(r["vs_first"].get(f"decode_{b}"), ".2f"),
                         fmt(r["vs_first"].get(f"image_s_{b}"), ".2f")])
    return head, rows


def markdown_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def text_table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]


def header(run: dict) -> list[str]:
    env, s = run["environment"], run["settings"]
    lb, la = env["load_before"], env.get("load_after") or ["?"]
    return [f"{env['date']}, {env['cpu']}, {env['cores']} cores; " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
            f"load average (1/5/15 min) before {'/'.join(map(str, lb))}, after {'/'.join(map(str, la))}"
            + ("  NOISY" if run.get("noisy") else ""),
            f"rounds {s['rounds']} (a fresh process each), warm-up {s['warmup']} tokens, threads "
            f"{s['threads'] or 'onnxruntime default'}, seed {s['seed']}, guidance "
            f"{s['guidance_scale'] if s['guidance_scale'] is not None else 'model default'}; peak RSS from "
            f"{next((r['rss_source'] for r in run['rows'] if r.get('rss_source')), 'VmHWM')} of a fresh worker; "
            "batch rows: 2 per image with guidance"]


def render(run: dict, markdown: bool = False) -> str:
    table = markdown_table if markdown else text_table
    out = ["# tessera bench", ""] if markdown else []
    out += [("- " if markdown else "") + h for h in header(run)] + [""]
    out += table(*model_table(run)) + [""]
    if any(r.get("batches") for r in run["rows"]):
        out += table(*speed_table(run)) + [""]
    out += [("- " if markdown else "") + n for n in run["notes"]]
    out += [("- " if markdown else "") + f"FAILED: {e}" for e in run["errors"]]
    return "\n".join(out).rstrip() + "\n"


def write_json(run: dict, path: Path) -> None:
    Path(path).write_text(json.dumps(run, indent=1, default=str) + "\n")


def write_markdown(run: dict, path: Path, command: str | None = None) -> None:
    text = render(run, markdown=True)
    command = command or run.get("command")
    if command:
        text = text.replace("# tessera bench\n", f"# tessera bench\n\n`{command}`\n", 1)
    Path(path).write_text(text)
