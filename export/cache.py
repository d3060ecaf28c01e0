"""The artifact cache: content-addressed directories under ``<cache dir>/artifacts``.

    artifacts/<model>/<key digest>/model.onnx (+ model.onnx.data)   ONNX graph, external weights beside it
    artifacts/<model>/<key digest>/model.plan                        TensorRT engine
    artifacts/<model>/<key digest>/key.json                          everything the digest covers
    artifacts/timing/<tensorrt version>-sm<cc>.cache                 TensorRT timing cache, shared
    artifacts/weights-sha.json                                       memo: (file, size, mtime) → sha256

The key covers the weights' content hash, dtype, every input / output shape and axis range,
opset, exporter and runtime versions, and for TensorRT its version and the GPU's compute
capability. An artifact is built only when its directory is missing, into a temporary directory
renamed into place, so a killed build never leaves a half artifact behind; processes building the
same artifact take turns (a file lock), the later one reusing the earlier one's. ``files.json``
records every file's size and sha256; a cached artifact that no longer matches (truncated,
overwritten) is reported and rebuilt.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from kbridge.engine.config import RuntimeConfig
from kbridge.export.parts import Exportable, runtime_for

log = logging.getLogger(__name__)

EXPORT_VERSION = 1
"""Bump when the IO wrappers or export settings change, so caches rebuild."""


@dataclass(frozen=True)
class Artifact:
    name: str
    path: Path
    """The graph (model.onnx) or engine (model.plan) file."""
    built: bool
    """True: built by this call; False: found cached."""
    key: dict


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def weights_sha(files: tuple[Path, ...], root: Path) -> str:
    """sha256 over the files' bytes (and names); per-file digests memoised by (path, size, mtime) so
    multi-GB checkpoints are read once."""
    memo_path = root / "weights-sha.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    h = hashlib.sha256()
    changed = False
    for f in files:
        st = f.stat()
        k = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if k not in memo:
            fh = hashlib.sha256()
            with open(f, "rb") as fp:
                for chunk in iter(lambda: fp.read(1 << 22), b""):
                    fh.update(chunk)
            memo[k], changed = fh.hexdigest(), True
        h.update(f.name.encode() + b"\0" + memo[k].encode())
    if changed:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".weights-sha.", dir=root)  # one per process: writers never collide
        with open(fd, "w") as f:
            f.write(json.dumps(memo, indent=0))
        Path(tmp).replace(memo_path)
    return h.hexdigest()


def onnx_key(ex: Exportable, rt: RuntimeConfig, root: Path) -> dict:
    spec = ex.spec
    return {"format": "onnx", "model": spec.name, "weights_sha256": weights_sha(ex.weights, root),
            "dtype": "float16" if rt.fp16 else "float32", "opset": rt.opset,
            "inputs": [dataclasses.asdict(t) for t in spec.inputs],
            "outputs": [dataclasses.asdict(t) for t in spec.outputs],
            "axes": [dataclasses.asdict(a) for a in spec.axes],
            "exporter": {"kbridge_export": EXPORT_VERSION, "torch": _version("torch"),
                         "onnxscript": _version("onnxscript"), "onnx": _version("onnx")},
            "runtime": {"onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu")}}


def digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def artifact_dir(root: Path, key: dict) -> Path:
    return Path(root) / key["model"] / digest(key)


def _file_sha(f: Path) -> str:
    h = hashlib.sha256()
    with open(f, "rb") as fp:
        for chunk in iter(lambda: fp.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _listing(d: Path) -> dict:
    return {f.name: {"size": f.stat().st_size, "sha256": _file_sha(f)}
            for f in sorted(d.iterdir()) if f.is_file() and f.name not in ("key.json", "files.json")}


def intact(d: Path, main: Path) -> bool:
    """The artifact in ``d`` is complete and every file is what was built (size, then sha256)."""
    try:
        want = json.loads((d / "files.json").read_text())
        if not (d / "key.json").exists() or not main.exists() or main.name not in want:
            return False
        if any((d / n).stat().st_size != v["size"] for n, v in want.items()):
            return False
        return _listing(d) == want
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _build(final: Path, key: dict, make) -> None:
    """Run ``make(tmp_dir)`` and move the result into ``final`` atomically."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    try:
        make(tmp)
        (tmp / "files.json").write_text(json.dumps(_listing(tmp), indent=1) + "\n")
        (tmp / "key.json").write_text(json.dumps(key, indent=1, sort_keys=True, default=str) + "\n")
        try:
            tmp.rename(final)
        except OSError:  # another process built it first
            if not (final / "key.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_onnx(ex: Exportable, root: Path, rt: RuntimeConfig) -> Artifact:
    """The exported graph for ``ex`` (built only when missing)."""
    from kbridge.export.onnx import export_onnx

    rt = runtime_for(ex, rt)
    key = onnx_key(ex, rt, root)
    d = artifact_dir(root, key)
    path = d / "model.onnx"
    return _cached_or_built(ex.spec.name, d, path, key,
                            lambda tmp: export_onnx(ex.spec, ex.module, tmp / "model.onnx", rt.opset, rt.fp16))


def _cached_or_built(name: str, d: Path, path: Path, key: dict, make) -> Artifact:
    """The artifact in ``d`` when intact; else (re)built there, one process at a time."""
    from kbridge.engine.locks import exclusive

    if intact(d, path):
        log.info("%s: found cached %s", name, path)
        return Artifact(name, path, False, key)
    with exclusive(d.parent / f".{d.name}.lock"):
        if intact(d, path):  # built by another process while we waited
            return Artifact(name, path, False, key)
        if d.exists():
            log.warning("%s: cached artifact %s is damaged or incomplete; rebuilding it", name, d)
            shutil.rmtree(d)
        _build(d, key, make)
    log.info("%s: built %s", name, path)
    return Artifact(name, path, True, key)


def ensure_tensorrt(ex: Exportable, root: Path, rt: RuntimeConfig, device: str = "cuda:0") -> Artifact:
    """The TensorRT engine for ``ex``: exports the ONNX if missing, then builds with the spec's
    profile and the shared timing cache. Needs a CUDA GPU and the tensorrt package."""
    from kbridge.export.tensorrt import build_engine, gpu_facts, plan_build

    rt = runtime_for(ex, rt)
    onnx = ensure_onnx(ex, root, rt)
    facts = gpu_facts(device)
    key = {"format": "tensorrt", "model": ex.spec.name, "onnx": digest(onnx.key), **facts,
           "fp16": rt.fp16, "profile": {k: list(v) for k, v in ex.spec.profile().items()}}
    d = artifact_dir(root, key)
    plan = plan_build(ex.spec, onnx.path, d / "model.plan", root, facts, fp16=rt.fp16, device=device)
    return _cached_or_built(ex.spec.name, d, plan.engine_path, key,
                            lambda tmp: build_engine(dataclasses.replace(plan, engine_path=tmp / "model.plan")))


def artifacts_root(cache_dir: Path) -> Path:
    return Path(cache_dir) / "artifacts"
