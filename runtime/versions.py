"""Release numbers of version strings, numpy- and onnxruntime-free so that the manifest checks
(spec.py, compat.py) import without onnxruntime."""
from __future__ import annotations

import re


def release_numbers(text: str) -> tuple[int, ...]:
    """'1.22.2' -> (1, 22, 2); suffixes end the release part: '1.22.2.post3', '1.24.0.dev20250101',
    '1.22.0rc1', '1.22.2+cu118' -> (1, 22, 2) / (1, 24, 0) / (1, 22, 0) / (1, 22, 2)."""
    parts: list[int] = []
    for piece in str(text).strip().lstrip("vV").split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
        if m.end() != len(piece):
            break
    return tuple(parts)
