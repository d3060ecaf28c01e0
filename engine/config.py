"""Frozen configs, composed once into a PipelineConfig, and the named profiles.

Every field has a docstring saying what it changes. Profiles are plain values; a TOML file
(``--config``) and CLI flags override them section by section.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A configuration value or file is wrong."""


@dataclass(frozen=True)
class ModelsConfig:
    lmm: str = "tiny"
    """Qwen2-VL: "tiny" (random twin built on first use) or a local Hugging Face-layout directory."""
    sdxl_base: str = "tiny"
    """SDXL base pipeline directory (diffusers layout) or "tiny"."""
    sdxl_refiner: str = "tiny"
    """SDXL refiner pipeline directory or "tiny"; used when generation.refiner is on."""
    clip: str = "tiny"
    """CLIP (vision + text towers, tokenizer, image processor) directory or "tiny"."""
    cache_dir: str = ""
    """Where tiny twins are built; empty means $KBRIDGE_CACHE or ~/.cache/kbridge."""


@dataclass(frozen=True)
class LMMConfig:
    backend: str = "hf"
    """LMM backend: "hf" (transformers, CPU or one GPU)."""
    device: str = "cpu"
    dtype: str = "float32"
    max_new_tokens: int = 2048
    """Cap for one structured (JSON) answer; schemas are bounded so a record always fits."""
    free_text_tokens: int = 250
    """Cap for free-text turns of the reference-fidelity chain (random models never stop)."""
    temperature: float = 0.1
    """Sampling temperature of knowledge and generation calls (the reference's 0.1)."""
    rank_temperature: float = 0.3
    """Temperature of the candidate-triple calls made for ranking (the reference's 0.3)."""
    greedy: bool = False
    """Greedy decoding instead of per-request seeded sampling."""
    max_batch: int = 16
    """Most sequences decoded together in one generate() call."""
    image_min_pixels: int = 56 * 56
    image_max_pixels: int = 112 * 112
    """Images are resized to this pixel budget before the LMM sees them (fewer vision tokens)."""
    cache: bool = True
    """Reuse LMM answers from the run store's SQLite cache (keyed by model, prompt, schema, seed)."""


@dataclass(frozen=True)
class KnowledgeConfig:
    """Bounds of the structured records; they also bound every JSON answer's length."""

    max_objects: int = 7
    max_attributes: int = 3
    """Attributes per object (colour, material, size, pose...)."""
    triples: int = 10
    """Triples asked for per record (the reference's 10); 1..triples are accepted."""
    caption_triples: int = 6
    """Triples carried by each generated caption."""
    prompt_words: tuple[int, int] = (20, 70)
    """Word range of each diffusion prompt (SDXL reads 77 tokens)."""
    caption_words: tuple[int, int] = (8, 40)
    name_chars: int = 32
    """Longest entity / object name; relations get 3/4 of it, attributes 1.5×."""


@dataclass(frozen=True)
class GenerationConfig:
    candidates: int = 7
    """Candidates generated per incomplete sample (the reference's 7)."""
    height: int = 1024
    width: int = 1024
    steps: int = 50
    """Total denoising steps, split between base and refiner by high_noise_frac."""
    high_noise_frac: float = 0.8
    """Fraction of the schedule the base runs before the refiner takes the latents."""
    guidance: float = 5.0
    refiner: bool = True
    """Off: the base runs the whole schedule (the reference then stops at 80% and returns noise)."""
    batch_size: int = 8
    """Images per diffusion forward, across candidates and samples."""
    device: str = "cpu"
    dtype: str = "float32"


@dataclass(frozen=True)
class RankConfig:
    semantic_weight: float = 0.5
    """Weight of the CLIP cosine term (clipped to [0, 1])."""
    graph_weight: float = 0.5
    """Weight of the knowledge-graph term (in [0, 1])."""
    graph_metric: str = "jaccard_relations"
    """"jaccard": Jaccard over undirected edges between normalised entity names.
    "jaccard_relations": the mean of that and the same over (edge, relation) pairs, so a shared
    edge with another verb ("man holds cup" / "man drops cup") earns half credit."""
    device: str = "cpu"


@dataclass(frozen=True)
class RunConfig:
    seed: int = 2025
    """Root seed; every (sample, candidate) and every LMM request derives its own from it."""
    fidelity: str = "fast"
    """"fast": one structured call per step. "reference": the reference's multi-turn chains."""
    batch_size: int = 4
    """Samples per pipeline batch."""
    batches_in_flight: int = 2
    """Batches in the pipeline at once: one can be in diffusion while the next is in the LMM."""
    threads: int = 0
    """torch intra-op threads; 0 keeps torch's default."""


@dataclass(frozen=True)
class RuntimeConfig:
    """How the dense models (UNets, VAE, text encoders, CLIP towers) execute; see engine/runtime/."""

    backend: str = "torch"
    """"torch" (eager), "compile" (torch.compile), "onnx" (onnxruntime over exported graphs),
    "tensorrt" (native engines built from the ONNX; CUDA only), "torch_tensorrt" (CUDA only).
    Compiled backends match eager within the tolerances in README (not bit for bit)."""
    onnx_provider: str = "auto"
    """onnxruntime execution provider: "auto" (CUDA on a cuda device, else CPU), "cpu", "cuda",
    "tensorrt" (the TensorRT EP; slow first build, cached engines)."""
    fp16: bool = False
    """Convert exported graphs to float16 (GPU only: CPU kernels for fp16 are slow or missing)."""
    opset: int = 18
    """ONNX opset of exported graphs."""
    max_batch: int = 32
    """Largest batch an exported graph / engine profile accepts (the profile's max)."""


@dataclass(frozen=True)
class PipelineConfig:
    profile: str = "tiny"
    models: ModelsConfig = field(default_factory=ModelsConfig)
    lmm: LMMConfig = field(default_factory=LMMConfig)
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    rank: RankConfig = field(default_factory=RankConfig)
    run: RunConfig = field(default_factory=RunConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def result_hash(self) -> str:
        """Hash of every field that can change results (not batch sizes, threads or caches)."""
        d = self.to_dict()
        d["models"].pop("cache_dir")
        d["lmm"].pop("max_batch")
        d["lmm"].pop("cache")
        d["generation"].pop("batch_size")
        for k in ("batch_size", "batches_in_flight", "threads"):
            d["run"].pop(k)
        d.pop("profile")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def cache_dir(self) -> Path:
        return Path(self.models.cache_dir or os.environ.get("KBRIDGE_CACHE") or Path.home() / ".cache" / "kbridge")


_GPU_LMM = dict(device="cuda:0", dtype="bfloat16", image_max_pixels=448 * 448, max_batch=32)
_REFERENCE_SDXL = dict(height=1024, width=1024, steps=50, high_noise_frac=0.8, guidance=5.0, dtype="float16")

PROFILES: dict[str, dict] = {
    "tiny": dict(generation=dict(height=64, width=64, steps=4, candidates=4, batch_size=16),
                 knowledge=dict(max_objects=4, max_attributes=2, triples=5, caption_triples=3,
                                prompt_words=(5, 12), caption_words=(4, 10), name_chars=16)),
    "h100": dict(lmm=_GPU_LMM, generation=dict(_REFERENCE_SDXL, device="cuda:0", batch_size=7),
                 rank=dict(device="cuda:0")),
    "4090x4": dict(lmm=_GPU_LMM, generation=dict(_REFERENCE_SDXL, device="cuda:1", batch_size=2),
                   rank=dict(device="cuda:1")),
    "edge": dict(lmm=dict(_GPU_LMM, image_max_pixels=336 * 336, max_batch=8),
                 generation=dict(_REFERENCE_SDXL, device="cuda:0", batch_size=1), rank=dict(device="cuda:0")),
}
"""GPU profiles keep the reference's SDXL settings; model directories must be given for them."""

_SECTIONS = {"models": ModelsConfig, "lmm": LMMConfig, "knowledge": KnowledgeConfig, "generation": GenerationConfig,
             "rank": RankConfig, "run": RunConfig, "runtime": RuntimeConfig}


def _apply(cfg: PipelineConfig, overrides: dict) -> PipelineConfig:
    changes = {}
    for section, values in overrides.items():
        if section not in _SECTIONS:
            raise ConfigError(f"unknown config section {section!r} (known: {', '.join(_SECTIONS)})")
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a table")
        current = changes.get(section, getattr(cfg, section))
        known = {f.name for f in dataclasses.fields(current)}
        bad = set(values) - known
        if bad:
            raise ConfigError(f"unknown key(s) in [{section}]: {', '.join(sorted(bad))}")
        changes[section] = dataclasses.replace(current, **values)
    return dataclasses.replace(cfg, **changes)


def build_config(profile: str = "tiny", config_file: str | Path | None = None,
                 overrides: dict | None = None) -> PipelineConfig:
    """Profile defaults, then the TOML file, then explicit overrides (the CLI's flags)."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    cfg = _apply(PipelineConfig(profile=profile), PROFILES[profile])
    if config_file:
        try:
            data = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read config file {config_file}: {e}") from e
        for sec in data.values():  # TOML arrays → tuples, as the dataclass defaults are
            for k, v in list(sec.items()) if isinstance(sec, dict) else ():
                if isinstance(v, list):
                    sec[k] = tuple(v)
        cfg = _apply(cfg, data)
    cfg = _apply(cfg, {k: v for k, v in (overrides or {}).items() if v})
    validate(cfg)
    return cfg


def validate(cfg: PipelineConfig) -> None:
    g = cfg.generation
    if cfg.run.fidelity not in ("fast", "reference"):
        raise ConfigError(f"fidelity must be 'fast' or 'reference', not {cfg.run.fidelity!r}")
    if cfg.rank.graph_metric not in ("jaccard", "jaccard_relations"):
        raise ConfigError(f"unknown graph metric {cfg.rank.graph_metric!r}")
    if not 1 <= g.candidates <= 16:
        raise ConfigError("generation.candidates must be between 1 and 16")
    k = cfg.knowledge
    if not (1 <= k.prompt_words[0] <= k.prompt_words[1] and 1 <= k.caption_words[0] <= k.caption_words[1]):
        raise ConfigError("word ranges must be (min, max) with 1 <= min <= max")
    if min(k.max_objects, k.triples, k.caption_triples, k.name_chars) < 1 or k.max_attributes < 0:
        raise ConfigError("knowledge bounds must be positive")
    if not 0.0 < g.high_noise_frac <= 1.0:
        raise ConfigError("generation.high_noise_frac must be in (0, 1]")
    if cfg.rank.semantic_weight < 0 or cfg.rank.graph_weight < 0 or \
            cfg.rank.semantic_weight + cfg.rank.graph_weight == 0:
        raise ConfigError("rank weights must be non-negative and not both zero")
    if cfg.runtime.backend not in RUNTIME_BACKENDS:
        raise ConfigError(f"unknown runtime backend {cfg.runtime.backend!r} (known: {', '.join(RUNTIME_BACKENDS)})")
    if cfg.runtime.onnx_provider not in ("auto", "cpu", "cuda", "tensorrt"):
        raise ConfigError(f"unknown onnx provider {cfg.runtime.onnx_provider!r} (known: auto, cpu, cuda, tensorrt)")


RUNTIME_BACKENDS = ("torch", "compile", "onnx", "tensorrt", "torch_tensorrt")
