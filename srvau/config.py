"""Typed configuration: one pydantic model per ``params.yaml`` section.

``params.yaml`` (the DVC params file every stage reads) is *composed*, never edited by hand: DVC's
own Hydra composition writes it from ``configs/defaults.yaml`` (the demo defaults, commented) plus a
*recipe* from the ``recipe`` config group (``configs/recipe/*.yaml``, which may layer on another
recipe through its own defaults list) plus explicit overrides, which win:

    dvc exp run -S recipe=paper-3b -S sft.max_steps=5     (DVC composes, then runs what changed)
    srvau config compose --recipe paper-3b                 (the same file, for dvc repro / the flow)

So DVC records the effective value of every key a stage reads, and ``set_by`` names, per section,
the file that last set it, which dvc.yaml tracks too (an edit inside a recipe shows in ``dvc status``
before the next composition). ``srvau --recipe NAME`` composes in process instead of reading
params.yaml. Unknown keys and wrong types fail with the dotted key named.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator



def find_project_root(start: Path | None = None) -> Path:
    """The project a command works on: ``SRVAU_ROOT``, else the nearest folder holding params.yaml
    upwards from the working directory (so a clone, a copy or a DVC experiment workspace all work with
    one installed package), else the source checkout this package lives in."""
    env = os.environ.get("SRVAU_ROOT")
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file() and (folder / "dvc.yaml").is_file():
            return folder
    return Path(__file__).resolve().parent.parent


PROJECT_ROOT = find_project_root()


def project_relative(path: str | os.PathLike) -> str:
    """``path`` relative to the project root when it lies inside it, else absolute: how outputs that DVC
    versions (and what a reader of the checkout opens) name a file, the same in every checkout.

    The file itself is not resolved: with DVC's symlink cache a tracked file links into ``.dvc/cache``,
    and its name in the project is what counts. Its folder is, in case the root is reached by a link."""
    p = Path(os.path.abspath(path))
    for candidate in (p, p.parent.resolve() / p.name):
        if candidate.is_relative_to(PROJECT_ROOT):
            return candidate.relative_to(PROJECT_ROOT).as_posix()
    return str(p)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsConfig(Section):
    demo: str = "data/demo"
    ingest: str = "data/ingest"
    rocot: str = "data/rocot"
    models: str = "models"
    reports: str = "reports"


class TrackingConfig(Section):
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "srvau"
    registered_model: str = "srvau-qwen2_5-vl"
    # Bounds on MLflow's HTTP client, so a dead tracking server costs seconds, not minutes per call
    # (MLflow's own default); MLFLOW_HTTP_REQUEST_MAX_RETRIES / MLFLOW_HTTP_REQUEST_TIMEOUT win when set.
    http_max_retries: int = Field(2, ge=0, le=10)
    http_timeout_s: float = Field(20.0, ge=1)


class SynthConfig(Section):
    n_train: int = Field(160, ge=1)
    n_val: int = Field(24, ge=1)
    n_test: int = Field(48, ge=1)
    duration_s: float = Field(8.0, gt=0)
    fps: int = Field(8, ge=1)
    width: int = Field(112, ge=16)
    height: int = Field(112, ge=16)
    classes: list[str] = ["Fire", "Explosion", "Fighting", "Traffic_accident", "Water_incident"]
    normal_share: float = Field(0.2, ge=0, le=1)
    min_event_s: float = Field(2.0, gt=0)
    max_event_s: float = Field(4.0, gt=0)
    decoy_share: float = Field(0.5, ge=0, le=1)
    decoy_s: float = Field(1.0, gt=0)
    # Qwen2.5-VL tells video tokens apart in time only through rotary positions, which change attention
    # scores but not what a token carries: a 2-layer model cannot read seconds from them, so grounding
    # learns a prior interval. The bar puts elapsed time into the pixels, as a CCTV overlay does.
    time_bar: bool = True

    @model_validator(mode="after")
    def _event_fits(self) -> "SynthConfig":
        if not self.min_event_s <= self.max_event_s < self.duration_s:
            raise ValueError("need min_event_s <= max_event_s < duration_s")
        # a decoy (at most 1.0 s + decoy_s, then 0.5 s apart) must leave room for the longest event
        if self.decoy_share > 0 and 1.5 + self.decoy_s + self.max_event_s > self.duration_s:
            raise ValueError("need 1.5 + decoy_s + max_event_s <= duration_s (decoy before the event)")
        return self


class TinyModelConfig(Section):
    vocab_size: int = Field(1024, ge=256)
    hidden_size: int = Field(128, ge=16)
    num_hidden_layers: int = Field(2, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    num_key_value_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(256, ge=16)
    vision_depth: int = Field(2, ge=1)
    vision_hidden_size: int = Field(64, ge=16)
    vision_num_heads: int = Field(4, ge=1)
    max_position_embeddings: int = Field(4096, ge=256)
    reading_drill_steps: int = Field(2000, ge=0)
    reading_drill_target: float = Field(0.93, ge=0.0, le=1.0)


class ModelConfig(Section):
    base: str = "models/tiny-base"
    torch_dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    # MiB of encoded videos training keeps while the vision trunk is frozen (srvau.modeling.vision_cache); 0: off
    vision_trunk_cache_mb: float = Field(512, ge=0)
    tiny: TinyModelConfig = TinyModelConfig()


class VideoConfig(Section):
    """The one frame-sampling policy shared by training and evaluation."""

    fps: float = Field(2.0, gt=0)
    min_frames: int = Field(4, ge=2)
    max_frames: int = Field(16, ge=2)
    max_pixels_per_frame: int = Field(112 * 112, ge=28 * 28)
    total_pixels: int = Field(16 * 112 * 112, ge=28 * 28 * 2)
    probe_timeout_s: float = Field(30.0, gt=0)
    decoder: Literal["decord", "pyav"] = "decord"

    @model_validator(mode="after")
    def _frames(self) -> "VideoConfig":
        if self.min_frames > self.max_frames:
            raise ValueError("min_frames must be <= max_frames")
        return self


class IngestConfig(Section):
    annotations: list[str] = ["data/demo/train.csv", "data/demo/val.csv", "data/demo/test.csv"]
    # The folder holding every annotation file: DVC cannot take a list of files from params as
    # dependencies, so dvc.yaml depends on this folder (and on video_root).
    annotations_dir: str = "data/demo"
    video_root: str = "data/demo/videos"
    dataset: Literal["auto", "msad", "ucf", "ecva", "demo"] = "auto"
    strict: bool = False
    workers: int = Field(1, ge=1)
    interval_slack_s: float = Field(1.0, ge=0)
    # Degenerate videos are quarantined (see srvau/data/ingest.py): below one 28x28 Qwen2.5-VL patch
    # cell a frame is upscaled (invented pixels); under 2 frames or 0.5 s it is a still, not a clip.
    min_width: int = Field(28, ge=1)
    min_height: int = Field(28, ge=1)
    min_num_frames: int = Field(2, ge=1)
    min_duration_s: float = Field(0.5, ge=0)


class EndpointConfig(Section):
    """An OpenAI-compatible chat-completions endpoint, as ``srvau.chat.ChatClient`` uses it."""

    base_url: str = "http://127.0.0.1:8000/v1"  # /chat/completions is appended
    model: str
    api_key_env: str  # the NAME of the variable holding the key, never the key
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(512, ge=16)
    timeout_s: float = Field(60.0, gt=0)  # total wall-clock deadline of one request, body included
    max_retries: int = Field(3, ge=0)
    backoff_s: float = Field(1.0, ge=0)  # first wait; doubles each retry
    max_backoff_s: float = Field(30.0, ge=0)  # cap on one wait, Retry-After included
    concurrency: int = Field(4, ge=1)  # requests in flight at once


class OpenAITeacherConfig(EndpointConfig):
    """The RoCoT teacher's endpoint (vLLM, SGLang, a hosted API) and what it sends."""

    model: str = "Qwen/Qwen2.5-VL-72B-Instruct"
    api_key_env: str = "SRVAU_TEACHER_API_KEY"
    frames: int = Field(4, ge=1)
    image_format: Literal["jpeg", "png"] = "jpeg"
    response_format: Literal["json_schema", "json_object", "none"] = "json_schema"
    cache_dir: str = "data/cache/teacher"


class PolicyTeacherConfig(Section):
    """SRPO's recipe: the policy writes the first pass, ``reviser`` writes reflection + revision."""

    model: str | None = None  # checkpoint; None = model.base
    reviser: Literal["annotation", "openai"] = "annotation"
    prompt_style: Literal["think", "reflect"] = "think"
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0)  # 0 = greedy; > 0 samples (seeded by ``seed``)
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: int = Field(8, ge=1)


class CotConfig(Section):
    teacher: Literal["annotation", "openai", "policy"] = "annotation"
    tasks: list[Literal["qa", "grounding", "classification", "description"]] = [
        "qa",
        "grounding",
        "classification",
        "description",
    ]
    flaws: Literal["cues", "random"] = "cues"
    flawed_share: float = Field(0.5, ge=0, le=1)
    min_iou: float = Field(0.5, ge=0, le=1)
    min_description_overlap: float = Field(0.3, ge=0, le=1)
    single_pass: bool = False
    think_max_words: int = Field(16, ge=4)
    qa_option_orders: int = Field(1, ge=1, le=4)
    answer_max_words: int = Field(24, ge=4)
    openai: OpenAITeacherConfig = OpenAITeacherConfig()
    policy: PolicyTeacherConfig = PolicyTeacherConfig()


class ValidateConfig(Section):
    min_well_formed_share: float = Field(0.95, ge=0, le=1)
    max_examples: int = Field(5, ge=1)
    # Grounding learns "Anomaly" only from anomaly intervals of the train split: a train set of
    # Normal/unavailable rows trains a model that never localises anything.
    min_train_anomaly_intervals: int = Field(4, ge=0)
    max_quarantine_share: float = Field(0.2, ge=0, le=1)  # per split: quarantined / (kept + quarantined) rows


class SftConfig(Section):
    output_dir: str = "models/sft"
    lora: bool = False
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_lm_head: bool = True
    max_steps: int = Field(300, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = Field(0.05, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    per_device_train_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int | None = Field(4096, ge=16)
    freeze_vision: bool = True
    gradient_checkpointing: bool = False
    bf16: bool = False
    logging_steps: int = Field(10, ge=1)
    save_steps: int = Field(100, ge=1)
    save_total_limit: int | None = Field(2, ge=1)
    resume: bool = True
    dataloader_num_workers: int = Field(0, ge=0)
    keep_samples_mb: float = Field(0.0, ge=0)  # processed samples kept in RAM for later epochs (per process)
    # reading drills per step, replayed from the training QA prompts (srvau.training.sft); 0: none
    drill_replay: int = Field(0, ge=0)


class GrpoConfig(Section):
    output_dir: str = "models/grpo"
    tasks: list[Literal["qa", "grounding", "classification"]] = ["qa", "grounding", "classification"]
    # "shuffled": TRL's seeded shuffle; "interleaved": every stretch of steps sees the tasks in
    # proportion (grpo.interleave_tasks), so the reward's trend is not the task mix's; "stratified":
    # interleaved, and each task's answers (letters, classes) in proportion too
    task_order: Literal["shuffled", "interleaved", "stratified"] = "shuffled"
    # the run takes half as many distinct prompts, forwards and then back in reverse, so its last k prompts
    # are its first k for every k and the logged reward's trend compares the same prompts (training_rows)
    mirror_prompts: bool = False
    # mirrored steps sample from the same random numbers (VideoGRPOTrainer.sampling_seed), so the trend
    # compares the policies, not two draws of their completions; needs mirror_prompts
    paired_sampling: bool = False
    prompt_style: Literal["reflect", "think", "direct"] | None = None
    max_steps: int = Field(30, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    lr_scheduler_type: str = "linear"
    warmup_steps: int = Field(0, ge=0)
    per_device_train_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    gradient_checkpointing: bool = False
    num_generations: int = Field(4, ge=2)
    beta: float = Field(0.04, ge=0)
    temperature: float = Field(1.0, gt=0)
    max_prompt_length: int | None = Field(1024, ge=16)
    max_completion_length: int = Field(160, ge=8)
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "grpo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    reward_funcs: dict[str, float] = {"format": 0.5, "reflective_accuracy": 1.0, "temporal_iou": 1.0, "length": 0.1}
    reward_options: dict[str, dict[str, float]] = {}
    difficulty_filter: bool = False
    difficulty_low: float = Field(0.1, ge=0, le=1)
    difficulty_high: float = Field(0.9, ge=0, le=1)
    lora: bool = True
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    train_lm_head: bool = True
    freeze_vision: bool = True
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    save_steps: int = Field(10, ge=1)
    save_total_limit: int | None = Field(2, ge=1)
    resume: bool = True
    log_completions_every: int = Field(10, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> "GrpoConfig":
        if self.difficulty_low > self.difficulty_high:
            raise ValueError("difficulty_low must be <= difficulty_high")
        if self.mirror_prompts and self.task_order == "shuffled":
            raise ValueError("mirror_prompts needs a fixed prompt order: task_order interleaved or stratified, not shuffled")
        if self.paired_sampling and not self.mirror_prompts:
            raise ValueError("paired_sampling pairs the steps that mirror_prompts gives the same prompts: set mirror_prompts: true")
        return self


class JudgeConfig(EndpointConfig):
    """VAU-Eval LLM judge's endpoint (srvau.evaluation.judge) and what it judges."""

    enabled: bool = False
    model: str = "deepseek-chat"
    api_key_env: str = "SRVAU_JUDGE_API_KEY"
    styles: list[Literal["reflect", "think", "direct"]] = ["reflect"]


class EvaluateConfig(Section):
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.0, ge=0)
    tasks: list[Literal["qa", "grounding", "classification", "description"]] = [
        "qa",
        "grounding",
        "classification",
        "description",
    ]
    styles: list[Literal["reflect", "think", "direct"]] = ["reflect", "think", "direct"]
    primary_style: Literal["reflect", "think", "direct"] = "reflect"
    split: str = "test"
    limit: int | None = Field(None, ge=1)
    iou_right: float = Field(0.5, gt=0, le=1)
    prior_split: str | None = "train"  # fit the video-blind prior here (srvau.evaluation.prior); None: no prior
    # label -> checkpoint; None means model.base (filled in by Params), so a recipe that changes the
    # base model also changes what the report calls "base".
    models: dict[str, str | None] = {"base": None, "sft": "models/sft", "grpo": "models/grpo"}
    out_dir: str = "reports/eval"
    report: str = "reports/eval/report.html"
    judge: JudgeConfig = JudgeConfig()

    @model_validator(mode="after")
    def _primary_evaluated(self) -> "EvaluateConfig":
        if self.primary_style not in self.styles:
            raise ValueError("primary_style must be one of styles")
        if not self.tasks or not self.styles:
            raise ValueError("tasks and styles must not be empty")
        return self


class RegisterConfig(Section):
    model_label: str = "grpo"
    alias: str = "challenger"
    gate_metric: str = "qa.reflect.accuracy"
    auto_promote: bool = True
    beat_prior: bool = True  # auto-promotion also needs the gate metric above the video-blind prior's


class LaunchOverride(Section):
    """One stage's departures from the ``launch`` defaults (unset = the default)."""

    num_processes: int | None = Field(None, ge=1)
    config_file: str | None = None


class LaunchStages(Section):
    sft: LaunchOverride = LaunchOverride()
    grpo: LaunchOverride = LaunchOverride()
    evaluate: LaunchOverride = LaunchOverride()


class LaunchConfig(Section):
    """How ``srvau launch sft|grpo|evaluate`` starts those stages (srvau.launch): 1 process runs in
    the command's own process; more run under ``accelerate launch`` with ``config_file``. The file's
    existence is checked when a stage launches with it (a project may hold no configs/ at all)."""

    num_processes: int = Field(1, ge=1)  # total over all machines (accelerate's meaning)
    config_file: str = "configs/accelerate/ddp.yaml"
    stages: LaunchStages = LaunchStages()


# Hydra composition (DVC's: .dvc/config names the same folder and file; a test keeps them equal)
CONFIG_DIR = "configs"          # the Hydra config folder, relative to the project root
DEFAULTS_NAME = "defaults"      # configs/defaults.yaml: the demo defaults and the defaults list
RECIPE_GROUP = "recipe"         # configs/recipe/<name>.yaml: one recipe per file


class DemoStagesConfig(Section):
    """The demo-only stages, as dvc.yaml's ``foreach`` lists: ``[]`` leaves the stage out of the DAG."""

    synth: list[str] = Field(["demo"], max_length=1)
    build_tiny: list[str] = Field(["tiny"], max_length=1)


class Params(Section):
    recipe: str | None = None   # the recipe params.yaml was composed with (a name in configs/recipe/), None = demo
    # section -> the config file that last set it (defaults or a recipe): dvc.yaml tracks that file's
    # section too, so an edit inside a recipe marks the stages that read it before recomposition
    set_by: dict[str, str] = {}
    seed: int = 1234
    paths: PathsConfig = PathsConfig()
    tracking: TrackingConfig = TrackingConfig()
    synth: SynthConfig = SynthConfig()
    model: ModelConfig = ModelConfig()
    video: VideoConfig = VideoConfig()
    ingest: IngestConfig = IngestConfig()
    cot: CotConfig = CotConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    sft: SftConfig = SftConfig()
    grpo: GrpoConfig = GrpoConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")
    launch: LaunchConfig = LaunchConfig()
    demo_stages: DemoStagesConfig = DemoStagesConfig()

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _set_by_names_sections(self) -> "Params":
        unknown = sorted(set(self.set_by) - {(f.alias or n) for n, f in type(self).model_fields.items()})
        if unknown:
            raise ValueError(f"set_by names no section: {', '.join(unknown)}")
        return self

    @field_validator("recipe")
    @classmethod
    def _recipe_is_a_name(cls, v: str | None) -> str | None:
        if v is not None and ("/" in v or v.endswith((".yaml", ".yml"))):
            raise ValueError(f"recipe is a name in {CONFIG_DIR}/{RECIPE_GROUP}/ (e.g. paper-3b), not a path")
        return v

    @model_validator(mode="after")
    def _evaluation_base_defaults_to_model_base(self) -> "Params":
        for label, spec in self.evaluate.models.items():
            if spec is None:
                self.evaluate.models[label] = self.model.base  # in place: no re-validation loop
        return self

    def annotations_outside_their_folder(self) -> list[str]:
        """``ingest.annotations`` files that do not lie under ``ingest.annotations_dir``, the folder DVC
        tracks for them (a one-off ``--set`` may point elsewhere; a composed params.yaml may not)."""
        folder = self.resolve(self.ingest.annotations_dir).resolve()
        return [a for a in self.ingest.annotations if not self.resolve(a).resolve().is_relative_to(folder)]

    def resolve(self, path: str | os.PathLike) -> Path:
        """A path from the config, relative to the project root unless absolute."""
        p = Path(path)
        return p if p.is_absolute() else PROJECT_ROOT / p

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class ConfigError(ValueError):
    """A params file that does not validate; the message names every offending key."""


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: {len(err.errors())} invalid setting(s)"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def recipe_source(recipe: str | os.PathLike) -> tuple[str, Path | None]:
    """A recipe as Hydra sees it: its name, plus an extra search path when the file lies outside the
    project's ``configs/`` (it must then sit in a ``recipe/`` folder, as Hydra's config groups do).
    Accepts ``paper-3b``, ``configs/recipe/paper-3b.yaml`` or any ``.../recipe/NAME.yaml``."""
    text = str(recipe)
    if not text.endswith((".yaml", ".yml")):
        return text, None
    path = Path(text)
    path = path if path.is_absolute() else PROJECT_ROOT / path
    if not path.is_file():
        raise ConfigError(f"recipe {text}: file not found (recipes live in {CONFIG_DIR}/{RECIPE_GROUP}/)")
    if path.parent.name != RECIPE_GROUP:
        raise ConfigError(f"recipe {text}: a recipe file must sit in a '{RECIPE_GROUP}/' folder "
                          f"(e.g. {CONFIG_DIR}/{RECIPE_GROUP}/{path.stem}.yaml)")
    root = path.parent.parent.resolve()
    return path.stem, None if root == (PROJECT_ROOT / CONFIG_DIR).resolve() else root


def hydra_overrides(recipe: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The Hydra overrides that compose ``recipe`` + ``overrides`` (what ``dvc exp run -S`` passes)."""
    out: list[str] = []
    if recipe:
        name, search = recipe_source(recipe)
        if search is not None:
            out.append(f"hydra.searchpath=[file://{search}]")
        out.append(f"{RECIPE_GROUP}={name}")
    return out + list(overrides)


def compose(recipe: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The composed config as a dict: defaults, then the recipe (and the recipes it layers on), then
    ``overrides`` (Hydra syntax, ``sft.max_steps=5``), exactly as DVC composes params.yaml."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(str((PROJECT_ROOT / CONFIG_DIR).resolve()), version_base=None):
            cfg = hydra_compose(config_name=DEFAULTS_NAME, overrides=hydra_overrides(recipe, overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"composing {CONFIG_DIR}/{DEFAULTS_NAME}.yaml with recipe {recipe}: {e}") from None
    return OmegaConf.to_container(cfg, resolve=True)


def write_composed(out: str | os.PathLike, recipe: str | os.PathLike | None = None,
                   overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Compose and write the params file (DVC's own writer, so the bytes equal what ``dvc exp run -S``
    writes), after checking the result validates: a bad recipe never reaches params.yaml."""
    from dvc.utils.hydra import compose_and_dump

    params = validate_params(compose(recipe, overrides), f"recipe {recipe or '(none)'}")
    outside = params.annotations_outside_their_folder()
    if outside:  # dvc.yaml depends on the folder, so these files would change unseen
        raise ConfigError(f"recipe {recipe or '(none)'}: ingest.annotations must lie under ingest.annotations_dir "
                          f"({params.ingest.annotations_dir}), which DVC tracks: {', '.join(outside)} do not")
    compose_and_dump(str(out), str((PROJECT_ROOT / CONFIG_DIR).resolve()), None, DEFAULTS_NAME, str(PROJECT_ROOT),
                     hydra_overrides(recipe, overrides))
    return params


def validate_params(data: dict[str, Any], source: str) -> Params:
    try:
        return Params.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(source, e)) from None


def load_params(
    path: str | os.PathLike | None = None,
    recipe: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
) -> Params:
    """The composed params file (default: the project's params.yaml), or, with ``recipe``, a fresh
    composition of ``configs/`` with that recipe; then ``overrides``, dotted keys
    (``{"sft.max_steps": 5}``) applied last, for tests and ``--set``; validated."""
    if recipe:
        data, source = compose(recipe), f"recipe {recipe}"
    else:
        path = Path(path) if path else PROJECT_ROOT / "params.yaml"
        data, source = _read_yaml(path), str(path)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted}: {part} is not a section")
        node[leaf] = value
    return validate_params(data, source)


def parse_override(text: str) -> tuple[str, Any]:
    """``key.sub=value`` with the value read as YAML (numbers, booleans, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)
