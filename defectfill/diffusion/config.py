"""DefectFill's fine-tuning config: every knob of a run, YAML-mapped by `defectfill.config.load_config`."""

from __future__ import annotations

from dataclasses import dataclass, field

from defectfill.config import check_choice, check_image_sizes, check_mask_threshold, check_trackers, scheduler_types
from defectfill.diffusion.models.pipeline import DEFAULT_BASE_MODEL
from defectfill.errors import ConfigError

OBJECT_LOSS_WEIGHTINGS = ("paper", "alpha")


@dataclass
class DefectFillTrainConfig:
    """Every knob of a DefectFill fine-tuning run (defaults: the paper's set-up)."""

    # model
    model: str = DEFAULT_BASE_MODEL
    revision: str | None = None
    variant: str | None = None
    # reference data
    data_dir: str = "../shared/data/aitex"
    defect_types: list[str] | None = None
    max_samples: int | None = None
    mask_threshold: int = 128
    crop_size: int = 256
    resolution: int = 512
    hflip: bool = True
    vflip: bool = True
    # prompts
    placeholder_token: str = "<v*>"
    # one learned token per defect type ("<v*-hole>", ...) in the one LoRA, each sample prompted with its
    # type's token; generation prompts each mask with the token of its reference's type
    token_per_type: bool = False
    initializer_token: str = "defect"
    object_name: str = "fabric"
    defect_prompt: str = "A photo of {token}"
    object_prompt: str = "A {object} with {token}"
    # LoRA
    lora_rank: int = 8
    lora_alpha: float | None = None
    train_text_encoder: bool = True
    # losses
    lambda_def: float = 0.5
    lambda_obj: float = 0.2
    lambda_attn: float = 0.05
    alpha: float = 0.3
    # L_obj = ||M' ⊙ (eps - eps_hat)||², M' = M + alpha (1 - M): "paper" weights the squared error by M'²
    # (background alpha² = 0.09), "alpha" by M' (background alpha = 0.3, what earlier versions of this code did)
    object_loss_weighting: str = "paper"
    num_boxes: int = 30
    box_min_frac: float = 0.03
    box_max_frac: float = 0.25
    # optimisation
    learning_rate_unet: float = 2e-4
    learning_rate_text: float = 4e-5
    learning_rate_token: float | None = None
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 100
    train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_train_steps: int = 2000
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    enable_xformers: bool = False  # only on request: attention capture replaces it in the captured layers
    allow_tf32: bool = True
    # speed (bench/speed/bench_train_step.py --features measures each on and off)
    cache_reference_latents: bool = True  # used when every reference image fits in one crop
    channels_last: bool = False  # UNet and VAE in channels_last memory format
    compile_unet: bool = False  # torch.compile the UNet (first steps pay the compile)
    seed: int = 0
    # outputs
    output_dir: str = "runs/defectfill"
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    log_with: list[str] = field(default_factory=lambda: ["jsonl"])
    log_every: int = 1
    overwrite: bool = False  # replace a finished (or unfinished) run already in output_dir

    def validate(self) -> None:
        positive = ("train_batch_size", "max_train_steps", "lora_rank", "gradient_accumulation_steps",
                    "checkpointing_steps", "num_boxes", "log_every", "learning_rate_unet", "learning_rate_text")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_samples", "checkpoints_total_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 (or null for no limit), got {getattr(self, name)}")
        for name in ("learning_rate_token", "lora_alpha"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive (or null for the default), got {getattr(self, name)}")
        check_image_sizes(self.crop_size, self.resolution)
        check_mask_threshold(self.mask_threshold)
        for name in ("lambda_def", "lambda_obj", "lambda_attn"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0 turns that loss off), got {getattr(self, name)}")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"alpha (the object loss's background weight) must be in [0, 1], got {self.alpha}")
        if self.object_loss_weighting not in OBJECT_LOSS_WEIGHTINGS:
            raise ConfigError(f"object_loss_weighting must be paper (squared error weighted by M'², the paper's "
                              f"||M' ⊙ (eps - eps_hat)||²) or alpha (weighted by M'), got {self.object_loss_weighting!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        check_choice("lr_scheduler", self.lr_scheduler, scheduler_types())
        if self.lr_warmup_steps < 0:
            raise ConfigError(f"lr_warmup_steps must be >= 0, got {self.lr_warmup_steps}")
        check_trackers(self.log_with)
        if "{token}" not in self.defect_prompt or "{token}" not in self.object_prompt:
            raise ConfigError("defect_prompt and object_prompt must both contain {token}")
        if not 0 < self.box_min_frac <= self.box_max_frac <= 1:
            raise ConfigError("need 0 < box_min_frac <= box_max_frac <= 1")

    def prompts(self, token: str | None = None) -> tuple[str, str]:
        """The defect prompt ("A photo of [V*]") and object prompt ("A [object] with [V*]"), with
        ``token`` (default: ``placeholder_token``) as [V*]."""
        fill = {"token": token or self.placeholder_token, "object": self.object_name}
        return self.defect_prompt.format(**fill), self.object_prompt.format(**fill)

    def tokens_by_type(self, defect_types: list[str]) -> dict[str, str]:
        """Defect type -> its learned token when ``token_per_type`` ("<v*>" becomes "<v*-hole>"), else {}."""
        if not self.token_per_type:
            return {}
        base = self.placeholder_token
        stem, close = (base[:-1], ">") if base.endswith(">") else (base, "")
        return {t: f"{stem}-{'_'.join(t.split())}{close}" for t in defect_types}
