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
from typing import Literal, get_args, get_origin, get_type_hints

from kbridge.engine.errors import KbridgeError
from kbridge.engine.profiles import PROFILES


class ConfigError(KbridgeError, ValueError):
    """A configuration value or file is wrong."""


# The string choices of the config, the default first: one list each (``choices(T)``), checked by
# ``validate`` (every field typed with one) and named in the CLI's help.
LMMBackend = Literal["hf", "http", "vllm", "auto"]
KnowledgeWrite = Literal["parallel", "joint"]
CaptionTriplesFrom = Literal["extracted", "self"]
Preview = Literal["linear", "vae"]
GraphMetric = Literal["soft", "jaccard", "jaccard_relations", "cosine"]
Semantic = Literal["clip", "blip", "clip+blip"]
BlipHead = Literal["itc", "itm", "itc+itm"]
IndexKind = Literal["auto", "flat", "ivfpq"]
Retriever = Literal["faiss", "mire", "both"]
Fidelity = Literal["fast", "reference"]
Schedule = Literal["auto", "fused", "phased"]
DomainName = Literal["general", "chest_xray"]
RuntimeBackend = Literal["torch", "compile", "onnx", "tensorrt", "torch_tensorrt"]
OnnxProvider = Literal["auto", "cpu", "cuda", "tensorrt"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune"]

DOMAIN_ALIASES = {"medical": "chest_xray"}
"""Older names of a domain, still accepted for ``run.domain`` (``--domain medical``)."""


def choices(t) -> tuple[str, ...]:
    """The values of a Literal choice type, in order."""
    return get_args(t)


@dataclass(frozen=True)
class ModelsConfig:
    lmm: str = "tiny"
    """Qwen2-VL: "tiny" (random twin built on first use) or a local Hugging Face-layout directory."""
    lmm_vllm_cpu: str = "tiny"
    """Size ("tiny" / "small") of the Idefics3 twin that the vllm backend and ``kbridge lmm serve``
    load on vLLM's CPU platform while ``lmm`` is a twin (vLLM's Qwen2-VL needs torchvision, which has
    no CPU build on PyPI). A real checkpoint goes in ``lmm``."""
    sdxl_base: str = "tiny"
    """SDXL base pipeline directory (diffusers layout) or "tiny"."""
    sdxl_refiner: str = "tiny"
    """SDXL refiner pipeline directory or "tiny"; used when generation.refiner is on."""
    clip: str = "tiny"
    """CLIP (vision + text towers, tokenizer, image processor) directory or "tiny"."""
    cache_dir: str = ""
    """Where tiny twins are built; empty means $KBRIDGE_CACHE or ~/.cache/kbridge."""
    cheff: str = "tiny"
    """Cheff chest-X-ray LDM (report → X-ray) directory written by ``kbridge models convert-cheff``, or "tiny"."""
    med_clip: str = "tiny"
    """Medical image–text scorer in CLIP layout (e.g. a PubMedCLIP directory) or "tiny"."""
    blip: str = "tiny"
    """BLIP image-text retrieval (BlipForImageTextRetrieval: ITC + ITM heads) directory or "tiny";
    loaded only when rank.semantic uses it."""
    mire: str = "tiny"
    """MIRe late-interaction retriever (our directory from ``kbridge models convert-mire``) or "tiny";
    loaded only when rank.retriever uses it."""


@dataclass(frozen=True)
class LMMConfig:
    backend: LMMBackend = "hf"
    """LMM backend: "hf" (transformers, CPU or one GPU), "http" (an OpenAI-compatible server such as
    ``vllm serve``, at ``url``), "vllm" (in-process vLLM; needs the vllm extra and a CUDA GPU), or
    "auto" (vllm when it is installed and a GPU is present, else hf)."""
    device: str = "cpu"
    """Torch device of the in-process hf backend ("cpu", "cuda:0"); vLLM places itself (the plan)."""
    dtype: str = "float32"
    """Weight dtype of the in-process LMM ("float32", "bfloat16", "float16")."""
    max_new_tokens: int = 2048
    """Cap for a structured (JSON) answer whose schema has no computable bound; kbridge's own
    schemas are bounded, and their worst-case length is used instead, so a record always fits."""
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
    """Images smaller than this pixel count are upscaled to it before the LMM sees them."""
    image_max_pixels: int = 112 * 112
    """Images are resized to this pixel budget before the LMM sees them (fewer vision tokens)."""
    cache: bool = True
    """Reuse LMM answers from the run store's SQLite cache (keyed by model, prompt, schema, seed)."""
    url: str = ""
    """Base URL of the OpenAI-compatible server for backend "http" (e.g. http://127.0.0.1:8000/v1)."""
    served_model: str = ""
    """Model name sent to the server; empty: the first model the server lists under /models."""
    api_key_env: str = "KBRIDGE_LMM_API_KEY"
    """Environment variable holding the server's API key (sent as a Bearer token when set)."""
    gpu_memory_utilization: float = 0.0
    """In-process vLLM's memory fraction per GPU; 0: the serving profile's (engine/lmm/serving.py).
    On a GPU box the memory plan sets it to what it booked (engine/plan.py)."""
    manage_server: bool = False
    """Backend "http" in a phased run: ``kbridge run`` starts the profile's ``vllm serve`` for each
    LMM phase and stops it before render (engine/lmm/lifecycle.py), so the GPUs are free for SDXL."""
    concurrency: int = 16
    """Most HTTP requests in flight at once (the server batches them continuously)."""
    timeout_s: float = 120.0
    """Seconds the client waits on the server (to connect, for the answer's first byte, for each
    further piece of a streamed answer) before the request is abandoned and retried."""
    retries: int = 3
    """Retries of one HTTP request after a connection error, a timeout or a 5xx answer."""
    backoff_s: float = 0.5
    """First retry delay; it doubles with every further retry."""
    http_max_pixels: int = 1280 * 28 * 28
    """Images larger than this are downscaled (aspect kept) before they are sent; the server
    resizes again to its own budget, so this only bounds upload size."""
    stream: bool = True
    """Ask the server to stream each answer (``stream: true`` with usage): each request's record
    then gets its client-side queue, first-token and decode times. A server that answers with one
    JSON body instead is read as such (no first-token time); false: never ask."""


@dataclass(frozen=True)
class KnowledgeConfig:
    """Bounds of the structured records; they also bound every JSON answer's length."""

    max_objects: int = 7
    """Objects per knowledge record (the reference's 7; with ``exact`` exactly this many)."""
    max_attributes: int = 3
    """Attributes per object (colour, material, size, pose...)."""
    triples: int = 10
    """Triples asked for per record (the reference's 10); 1..triples are accepted."""
    caption_triples: int = 6
    """Triples carried by each generated caption."""
    prompt_words: tuple[int, int] = (20, 70)
    """Word range of each diffusion prompt (SDXL reads 77 tokens)."""
    caption_words: tuple[int, int] = (8, 40)
    """Word range of each generated caption (text-missing samples' candidates)."""
    name_chars: int = 32
    """Longest entity / object name; relations get 3/4 of it, attributes 1.5×."""
    exact: bool = False
    """Ask for exactly max_objects objects and `triples` triples (the reference's fixed counts)
    instead of up to that many; benchmarks use it so both rows produce the same content."""
    write: KnowledgeWrite = "parallel"
    """How the N prompts (image missing) or N captions (text missing) are written: "parallel" (N
    sequences sharing one prompt prefix, each asked for candidate j of N with its own angle and
    seed: the longest decoded sequence is one candidate's) or "joint" (one answer holding all N).
    Parallel is the default: a shorter critical path with the same content (bench e2e --ladder:
    as many candidates, no duplicates, every answer schema-valid)."""
    caption_triples_from: CaptionTriplesFrom = "extracted"
    """Triples of caption candidates: "extracted" (one batched pass over the written captions, as
    the reference re-extracts them, so the graph score is independent evidence) or "self" (the
    caption writer reports them in the same answer: one LMM turn less)."""


@dataclass(frozen=True)
class GenerationConfig:
    candidates: int = 7
    """Candidates generated per incomplete sample (the reference's 7)."""
    height: int = 1024
    width: int = 1024
    """Generated image size in pixels, height × width (the reference's 1024²; multiples of 8)."""
    steps: int = 50
    """Total denoising steps, split between base and refiner by high_noise_frac."""
    high_noise_frac: float = 0.8
    """Fraction of the schedule the base runs before the refiner takes the latents."""
    guidance: float = 5.0
    """Classifier-free guidance scale of base and refiner (the reference's 5.0)."""
    refiner: bool = True
    """Off: the base runs the whole schedule (the reference then stops at 80% and returns noise)."""
    batch_size: int = 8
    """Images per diffusion forward, across candidates and samples."""
    split: int = 1
    """CPU and the torch runtime only: render this many micro-batches at once, each on a thread
    of its own with 1/split of the torch threads (the same modules; a scheduler and tokenizers
    each). On a 2-core CPU two 1-thread UNets do more per second than one 2-thread UNet (`kbridge
    bench render`); images follow the cross-setting rule. Ignored on GPUs, with float16 weights
    and with runtime.backend other than torch."""
    device: str = "cpu"
    """Torch device of the single render worker when ``devices`` is empty."""
    devices: tuple[str, ...] = ()
    """Data-parallel diffusion: one render worker per device, all pulling from one queue (empty:
    one worker on ``device``). ``kbridge plan`` fills it for multi-GPU profiles."""
    dtype: str = "float32"
    """Diffusion weight dtype ("float32"; "float16" on GPU profiles; the VAE upcasts as SDXL's does)."""
    vae: str = ""
    """Optional SDXL VAE directory (AutoencoderKL) replacing the base's, shared with the refiner, e.g.
    the fp16-fix VAE: its config's ``force_upcast: false`` lets it decode in float16 (no fp32 upcast,
    fp16 VAE graphs); empty keeps the pipeline's own."""
    vae_slicing: bool = False
    """Decode the batch's latents one image at a time (peak VAE memory of one image)."""
    vae_tiling: bool = False
    """Decode in overlapping tiles (bounded memory at 1024²; seams are blended, pixels change slightly)."""
    channels_last: bool = False
    """UNets and VAE in channels-last memory format (faster convolutions on tensor-core GPUs)."""
    fuse_qkv: bool = False
    """Fuse the attention Q/K/V projections into one matmul (diffusers ``fuse_qkv_projections``)."""
    refine_top: int = 0
    """Refine only the K most promising candidates (0: all, the reference's behaviour): the base
    runs for every candidate, its latents are previewed cheaply (``preview``), candidates are
    pre-ranked on the previews (CLIP against the sample's text), and only the top K go through the
    refiner and the full VAE decode; the others keep their preview image (``"refined": false``)."""
    preview: Preview = "linear"
    """How unrefined latents become images: "linear" (a fixed latent-to-RGB projection, no network)
    or "vae" (the VAE decoding the latents at half size)."""


@dataclass(frozen=True)
class RankConfig:
    semantic_weight: float = 0.5
    """Weight of the semantic term (CLIP and/or BLIP, see `semantic`; in [0, 1])."""
    graph_weight: float = 0.5
    """Weight of the knowledge-graph term (in [0, 1])."""
    graph_metric: GraphMetric = "soft"
    """"soft" (default): each normalised triple embedded once by the scorer's text tower (CLIP's
    when it is loaded); the score is the symmetric MaxSim between the two triple sets (mean
    best-match cosine, both directions), clipped to [0, 1], so paraphrased triples still match.
    "jaccard": Jaccard over undirected edges between normalised entity names.
    "jaccard_relations": the mean of that and the same over (edge, relation) pairs, so a shared
    edge with another verb ("man holds cup" / "man drops cup") earns half credit.
    "cosine": the reference's cosine of adjacency matrices, fixed (shared node index, so any
    sizes compare and identical graphs score 1)."""
    device: str = "cpu"
    """Torch device of the scorer (CLIP / BLIP, or the chest X-ray scorer)."""
    semantic: Semantic = "clip"
    """Semantic scorer: "clip", "blip", or "clip+blip" (the mean of both, as the reference does).
    Default "clip": one model, cheapest on the tiny profile; the reference pair is "clip+blip"."""
    blip_head: BlipHead = "itc"
    """BLIP score: "itc" (cosine of the contrastive projections, what the reference's scores are in
    practice), "itm" (match probability of the image-text matching head), or "itc+itm" (their mean)."""
    retrieve_k: int = 3
    """Retrieved candidates per incomplete sample from the run's corpus index (``kbridge index
    build``), ranked with the generated ones; 0 disables. No index, no retrieval."""
    index_dir: str = ""
    """Corpus index directory; empty means <run dir>/index."""
    index_kind: IndexKind = "auto"
    """faiss index: "flat" (exact inner product), "ivfpq" (approximate, compact), "auto" (flat below
    ivfpq_min items)."""
    ivfpq_min: int = 100_000
    """Corpus size from which "auto" builds IVF-PQ."""
    retriever: Retriever = "faiss"
    """Retrieved candidates of text-missing samples: "faiss" (the joint semantic + graph index), "mire"
    (MIRe late interaction: the image and a fixed instruction as the query, corpus texts as token
    bags; needs ``kbridge index build --retriever mire``) or "both". Image-missing samples use faiss."""


@dataclass(frozen=True)
class RunConfig:
    seed: int = 2025
    """Root seed; every (sample, candidate) and every LMM request derives its own from it."""
    fidelity: Fidelity = "fast"
    """"fast": one structured call per step. "reference": the reference's multi-turn chains."""
    batch_size: int = 4
    """Most rows an LMM or ranking stage takes in one call (its micro-batch); a stage takes what is
    ready, up to this, and never waits for more than ``batch_wait_ms``."""
    rows_in_flight: int = 8
    """Samples in the pipeline at once (admitted, not yet written). Bounds memory: images are
    decoded when a sample is admitted and released when its result is written."""
    dense_rows: int = 1
    """Most rows a dense stage (render, retrieve, rank) takes in one call. 1: each sample's
    candidates are rendered and scored together, so results do not depend on which samples
    happened to arrive together (the same-settings determinism rule holds). Larger values batch
    several samples' candidates (worth it on a GPU); results then follow the cross-setting rule."""
    batch_wait_ms: float = 5.0
    """How long a stage with fewer ready rows than its batch size waits for more."""
    stage_timeout_s: float = 1800.0
    """Watchdog: a stage call that has not returned after this many seconds fails its rows (and
    frees their slots) instead of holding the pipeline; generous, a call is normally seconds."""
    schedule: Schedule = "auto"
    """"fused" (every stage's models resident, rows stream through), "phased" (LMM → diffusion →
    LMM → rank, one group at a time over the whole selection, models swapped between), or
    "auto" (the GPU memory plan decides; see ``kbridge plan``). Not part of the result hash:
    a run can resume under the other schedule."""
    threads: int = 0
    """torch intra-op threads; 0 keeps torch's default."""
    max_pixels: int = 178_956_970
    """Largest image a sample may have (twice Pillow's decompression-bomb limit); larger ones fail
    their sample. Images are downscaled on load to 2048² pixels at most."""
    domain: DomainName = "general"
    """"general" (SDXL, CLIP, object knowledge) or "chest_xray" (Cheff, the [medical] scorer,
    radiology knowledge with triples; the bundled X-ray demo set when no data is given). "medical"
    is accepted as an alias of "chest_xray"."""


@dataclass(frozen=True)
class MedicalConfig:
    """The chest-X-ray domain (``run.domain = "chest_xray"``): which models, the Cheff sampler, the
    report bounds."""

    generator: str = "cheff"
    """Model slot of the report → X-ray generator."""
    scorer: str = "med_clip"
    """Model slot of the semantic scorer ("clip" to fall back to the general CLIP)."""
    steps: int = 50
    """DDIM steps (Cheff's 50)."""
    eta: float = 1.0
    """DDIM eta (Cheff's 1.0: every step draws fresh noise from the candidate's own generator)."""
    batch_size: int = 8
    """X-rays per UNet forward, across candidates and samples."""
    device: str = "cpu"
    """Torch device of the single X-ray render worker when ``devices`` is empty."""
    devices: tuple[str, ...] = ()
    """Data-parallel X-ray generation: one render worker per device (empty: one on ``device``)."""
    dtype: str = "float32"
    """Weight dtype of the X-ray generator (Cheff: UNet, VQ-VAE, LDM-BERT)."""
    report_words: tuple[int, int] = (20, 80)
    """Word range of each written report (Cheff reads at most 150 tokens)."""
    few_shot: str = ""
    """JSON file of few-shot examples ``[{"report": str, "record": {...}}]``; empty: the bundled ones."""
    few_shot_count: int = 2
    """Examples placed before every medical extraction (a shared prompt prefix); 0 disables."""


@dataclass(frozen=True)
class ServeConfig:
    """The ``[serve]`` section: what one ``kbridge serve`` request may ask for and how much the service
    holds at once (each key is also a ``kbridge serve`` flag; checked by engine/serve/limits.py)."""

    max_body_mb: float = 20.0
    """Largest request body (JSON or multipart) in MiB; larger bodies get 413."""
    max_image_pixels: int = 4096 * 4096
    """Largest uploaded image (width × height); larger get 413."""
    max_text_chars: int = 20_000
    """Longest input text in characters (a cheap first check); longer get 413."""
    max_text_tokens: int = 2048
    """Longest input text in tokens of the LMM's tokenizer (UTF-8 bytes when the tokenizer is remote:
    an upper bound for byte-level BPE); longer get 413."""
    max_aspect_ratio: float = 20.0
    """Most elongated uploaded image (long side / short side); more get 400."""
    max_candidates: int = 16
    """Most candidates a request may ask for (``candidates``; 422 above)."""
    max_steps: int = 100
    """Most denoising steps a request may ask for (``steps``; 422 above)."""
    max_queue: int = 64
    """Requests admitted and not yet finished; one more gets 429 with Retry-After."""
    max_request_unet_evals: int = 3200
    """Most UNet evaluations one request may cost (candidates × steps × 2 with guidance); 422 above."""
    max_queued_unet_evals: int = 50_000
    """Most UNet evaluations admitted and not finished, all requests together; 429 above (Retry-After:
    the queue's estimated drain time)."""
    max_queued_prompt_tokens: int = 200_000
    """Most input-text tokens admitted and not finished, all requests together; 429 above."""
    request_timeout_s: float = 600.0
    """A synchronous request still unfinished after this gets 504 (its work is cancelled)."""
    files_ttl_s: float = 3600.0
    """How long generated images stay under /v1/files/… (``"images": "url"``) and jobs stay readable."""
    files_max_mb: float = 512.0
    """Total size of the generated images kept for /v1/files/ in MiB; the oldest go first."""
    header_timeout_s: float = 10.0
    """Request headers not complete this long after a connection's first byte (or its previous
    answer): the connection is closed."""
    body_timeout_s: float = 30.0
    """A request body (JSON or upload) not fully received this long after the headers: 408, dropped."""
    drain_timeout_s: float = 60.0
    """After SIGTERM: admitted work may finish for this long (/health says 503 "draining"), then the
    rest is cancelled and the process exits, whatever is still running."""


@dataclass(frozen=True)
class RuntimeConfig:
    """How the dense models (UNets, VAE, text encoders, CLIP towers) execute; see engine/runtime/."""

    backend: RuntimeBackend = "torch"
    """"torch" (eager), "compile" (torch.compile), "onnx" (onnxruntime over exported graphs),
    "tensorrt" (native engines built from the ONNX; CUDA only), "torch_tensorrt" (CUDA only).
    Compiled backends match eager within the tolerances in README (not bit for bit)."""
    onnx_provider: OnnxProvider = "auto"
    """onnxruntime execution provider: "auto" (CUDA on a cuda device, else CPU), "cpu", "cuda",
    "tensorrt" (the TensorRT EP; slow first build, cached engines)."""
    fp16: bool = False
    """Convert exported graphs to float16 (GPU only: CPU kernels for fp16 are slow or missing)."""
    opset: int = 18
    """ONNX opset of exported graphs."""
    max_batch: int = 32
    """Largest batch an exported graph / engine profile accepts (the profile's max; never below the
    stage's batch size). GPU profiles set it to their batch size: engines allocate for the max."""
    compile_mode: CompileMode = "default"
    """torch.compile mode of the "compile" backend: "default", "reduce-overhead" (CUDA graphs: the
    UNet loop replays one graph per batch shape), "max-autotune" (graphs plus autotuned kernels)."""


@dataclass(frozen=True)
class PipelineConfig:
    """The whole configuration: the profile it was built from and one frozen section per concern
    (each section's fields say what they change)."""

    profile: str = "tiny"
    """The profile name it was built from (``engine/profiles.py``)."""
    models: ModelsConfig = field(default_factory=ModelsConfig)
    lmm: LMMConfig = field(default_factory=LMMConfig)
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    rank: RankConfig = field(default_factory=RankConfig)
    run: RunConfig = field(default_factory=RunConfig)
    medical: MedicalConfig = field(default_factory=MedicalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    """``kbridge serve`` limits (engine/serve/limits.py); no effect on results."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def result_hash(self) -> str:
        """Hash of every field that can change results (not batch sizes, threads or caches)."""
        d = self.to_dict()
        d["models"].pop("cache_dir")
        d["lmm"].pop("max_batch")
        d["lmm"].pop("cache")
        for k in ("url", "api_key_env", "concurrency", "timeout_s", "retries", "backoff_s", "stream"):
            d["lmm"].pop(k)  # where and how the server is reached, not what it answers
        for sec in ("generation", "medical"):  # how work is placed and batched, not what it computes
            d[sec].pop("batch_size")
            d[sec].pop("devices")
        d["generation"].pop("split")
        if d["run"]["domain"] == "general":  # general runs keep the hashes they had before the medical domain
            d.pop("medical")
            d["run"].pop("domain")
        else:  # chest_xray runs keep the hashes they had under the domain's old name
            d["run"]["domain"] = {v: k for k, v in DOMAIN_ALIASES.items()}.get(d["run"]["domain"], d["run"]["domain"])
        for k in ("batch_size", "rows_in_flight", "dense_rows", "batch_wait_ms", "stage_timeout_s", "schedule", "threads", "max_pixels"):
            d["run"].pop(k)
        if d["rank"]["retriever"] == "faiss":  # without MIRe, runs keep the hashes they had before it
            d["rank"].pop("retriever")
            d["models"].pop("mire")
        if d["lmm"]["backend"] != "vllm":  # only the vllm backend (on CPU) loads it: other runs keep their hashes
            d["models"].pop("lmm_vllm_cpu")
        d.pop("profile")
        d.pop("serve")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def cache_dir(self) -> Path:
        return Path(self.models.cache_dir or os.environ.get("KBRIDGE_CACHE") or Path.home() / ".cache" / "kbridge")


_SECTIONS = {"models": ModelsConfig, "lmm": LMMConfig, "knowledge": KnowledgeConfig, "generation": GenerationConfig,
             "rank": RankConfig, "run": RunConfig, "medical": MedicalConfig, "runtime": RuntimeConfig, "serve": ServeConfig}


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
    cfg = _apply(PipelineConfig(profile=profile), PROFILES[profile].config)
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
    if cfg.run.domain in DOMAIN_ALIASES:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, domain=DOMAIN_ALIASES[cfg.run.domain]))
    validate(cfg)
    return cfg


def _check_choices(cfg: PipelineConfig) -> None:
    """Every Literal-typed field holds one of its choices."""
    for name in _SECTIONS:
        section = getattr(cfg, name)
        hints = get_type_hints(type(section))
        for f in dataclasses.fields(section):
            t, v = hints[f.name], getattr(section, f.name)
            if get_origin(t) is Literal and v not in choices(t):
                alias = f"; also {', '.join(DOMAIN_ALIASES)}" if (name, f.name) == ("run", "domain") else ""
                raise ConfigError(f"unknown {name}.{f.name} {v!r} (known: {', '.join(choices(t))}{alias})")


def validate(cfg: PipelineConfig) -> None:
    """The generic checks; what a domain cannot run is its own ``check`` (engine/domains)."""
    g = cfg.generation
    _check_choices(cfg)
    if min(cfg.run.rows_in_flight, cfg.run.batch_size, cfg.run.dense_rows) < 1 or cfg.run.batch_wait_ms < 0:
        raise ConfigError("run.rows_in_flight, run.batch_size and run.dense_rows must be >= 1, "
                          "run.batch_wait_ms >= 0")
    if cfg.generation.refine_top < 0:
        raise ConfigError("generation.refine_top must be >= 0 (0: refine all)")
    if not 1 <= g.split <= 16:
        raise ConfigError("generation.split must be between 1 and 16")
    m = cfg.medical
    if m.steps < 1 or not 0.0 <= m.eta <= 1.0 or m.few_shot_count < 0 or not 1 <= m.report_words[0] <= m.report_words[1]:
        raise ConfigError("medical: steps >= 1, eta in [0, 1], few_shot_count >= 0, report_words (min, max)")
    if cfg.rank.retrieve_k < 0 or cfg.rank.retrieve_k > 64:
        raise ConfigError("rank.retrieve_k must be between 0 and 64")
    if cfg.lmm.backend == "http" and not cfg.lmm.url.startswith(("http://", "https://")):
        raise ConfigError(f"the http LMM backend needs a server URL (http://HOST:PORT/v1), not {cfg.lmm.url!r}")
    if cfg.lmm.concurrency < 1 or cfg.lmm.retries < 0 or cfg.lmm.timeout_s <= 0:
        raise ConfigError("lmm.concurrency must be >= 1, lmm.retries >= 0 and lmm.timeout_s > 0")
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
    if g.vae and not Path(g.vae).expanduser().is_dir():
        raise ConfigError(f"generation.vae: no such directory {g.vae}")

