"""Weight files from the Hugging Face Hub: `hf://OWNER/REPO/FILE` -> a local path in the hub's cache.

Optional (`pip install 'tessera-ar[hub]'`): resolved through `huggingface_hub.hf_hub_download`, which
keeps its local cache ($HF_HOME / $HF_HUB_CACHE) and honours HF_HUB_OFFLINE=1 (cached files only).
Torch-free; every problem is one InvalidInputError line.
"""
from __future__ import annotations

from .errors import InvalidInputError

PREFIX = "hf://"


def is_hub(spec: str | None) -> bool:
    return bool(spec) and str(spec).startswith(PREFIX)


def parse(spec: str, flag: str = "weights") -> tuple[str, str]:
    """`hf://OWNER/REPO/FILE` (FILE may sit in folders) -> ("OWNER/REPO", "FILE")."""
    parts = spec[len(PREFIX):].split("/")
    if len(parts) < 3 or not all(parts):
        raise InvalidInputError(f"{flag} {spec}: a Hub file is hf://OWNER/REPO/FILE, "
                                "e.g. hf://FoundationVision/LlamaGen/c2i_B_256.pt")
    return "/".join(parts[:2]), "/".join(parts[2:])


def download(spec: str, flag: str = "weights") -> str:
    """The local path of the Hub file `spec` (downloaded into the cache unless HF_HUB_OFFLINE is set)."""
    repo_id, filename = parse(spec, flag)
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        from tessera.runtime.errors import ExtraNotInstalledError

        raise ExtraNotInstalledError(f"{flag} {spec}: loading from the Hugging Face Hub needs huggingface_hub: "
                                     "pip install 'tessera-ar[hub]'") from None
    try:
        return hf_hub_download(repo_id, filename)
    except Exception as e:  # huggingface_hub's own error types (offline miss, 404, network, auth)
        name = type(e).__name__
        if name == "LocalEntryNotFoundError" or "offline" in str(e).lower():
            why = ("not in the local Hub cache and HF_HUB_OFFLINE is set (unset it to download, or copy the "
                   "cache)" if _offline() else "not in the local Hub cache and the Hub cannot be reached")
        elif name in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
            why = f"the repository {repo_id} has no file {filename}"
        elif name in ("RepositoryNotFoundError", "GatedRepoError"):
            why = f"the repository {repo_id} does not exist or needs a login (huggingface-cli login)"
        else:
            why = f"{name}: {str(e).splitlines()[0] if str(e) else ''}"
        raise InvalidInputError(f"{flag} {spec}: {why}") from None


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return False
