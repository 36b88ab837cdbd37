"""The experiment schema: structured dataclasses that YAML files fill (moe_lab.config.experiment), and the
choices some of its keys take."""

from __future__ import annotations

from dataclasses import dataclass, field

from moe_lab.data.config import DataConfig
from moe_lab.model.config import ModelConfig

PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true")
COLLAPSE_ACTIONS = ("warn", "stop", "prune")  # what the collapse detector does when it fires
KEEP_CHECKPOINTS = ("all", "best_weights", "none")
# Experiment trackers (`trainer.loggers`): logger name -> the package it needs (None: installed with
# moe_lab). moe_lab.training.loggers builds them.
LOGGERS = {"tensorboard": None, "csv": None, "wandb": "wandb", "mlflow": "mlflow"}
# Key naming the base file(s) a YAML file extends, resolved relative to that file.
EXTENDS_KEY = "extends"


@dataclass
class OptimConfig:
    lr: float = 3e-3
    # Cosine decay from lr to lr * min_lr_ratio over trainer.max_steps, after a linear warmup.
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    # AdamW decoupled weight decay; never applied to norms, biases or embeddings.
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # global gradient-norm clip; 0 disables


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    val_every_n_steps: int = 100
    val_batches: int = 20  # validation batches per evaluation; 0 means the whole split
    accumulate_grad_batches: int = 1
    precision: str = "32-true"
    # Passed straight to lightning.Trainer; scale-out goes through Lightning's own strategies.
    accelerator: str = "auto"
    devices: str = "auto"  # "auto", a count ("2") or a list ("0,1")
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn | fsdp | ...
    deterministic: bool = False
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False  # recompute each block in the backward
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    resume: str = ""  # "" (fresh run), "auto" (latest last.ckpt of this experiment) or a .ckpt path
    checkpoint_every_n_steps: int = 0  # last.ckpt cadence; 0 means every val_every_n_steps
    # What a finished run (completed or pruned) keeps: all = best.ckpt and last.ckpt in full;
    # best_weights = best.ckpt without optimiser state, no last.ckpt; none = no checkpoints.
    # A run that failed or stopped keeps everything, so it can resume.
    keep_checkpoints: str = "all"
    progress_bar: bool = True
    log_every_n_steps: int = 10
    # Experiment trackers, through Lightning's logger classes: tensorboard | csv | wandb | mlflow
    # (wandb and mlflow are optional extras; see moe_lab.training.loggers).
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])


@dataclass
class MonitorConfig:
    log_every_n_steps: int = 10
    heatmap_every_n_steps: int = 200  # 0: no heatmap images
    # Per-expert load scalars moe/layer{i}/expert{j}: E charts per layer, off by default (the histograms
    # and heatmap show the same loads); only up to max_experts_logged experts per layer (0: none).
    log_expert_scalars: bool = False
    max_experts_logged: int = 64
    collapse_min_load_fraction: float = 0.1  # of uniform load
    collapse_patience_steps: int = 100
    collapse_min_entropy_norm: float = 0.0  # 0 disables the entropy criterion
    collapse_action: str = "warn"  # warn | stop | prune
    # Router health: every n optimizer steps (0: never) the norm of d(LM loss)/d(router weights) is
    # measured per MoE layer (one extra partial backward) and logged as moe/layer{i}/router_lm_grad_norm;
    # a router whose norm stays at or below `dead_router_max_grad_norm` for the collapse patience is a
    # collapse event ("dead_router": only the aux/z losses train it).
    router_grad_every_n_steps: int = 50
    dead_router_max_grad_norm: float = 1e-8
    sample_tokens: int = 200  # length of the text sample generated at each validation; 0 disables
    sample_prompt: str = "ROMEO:\n"


@dataclass
class ExperimentConfig:
    name: str = "default"
    seed: int = 0
    output_dir: str = "runs"
    version: str = ""  # run directory name under <output_dir>/<name>/; "" picks version_N
    # A moe_lab pretrained directory (moe_lab_model.yaml + model.safetensors) to start from.
    model_init: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


# ---------------------------------------------------------------------------------------------
# Loading
