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
    # Expert parallelism (moe_lab.parallel): EP group size N; each of N consecutive ranks holds E / N of every
    # MoE layer's routed experts. N divides the world size (devices x num_nodes) and the routed expert count;
    # needs strategy ddp (auto picks it). 1 = off.
    expert_parallel: int = 1
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
    # Routing traces: at the first validation after every n optimizer steps (0: never) the experts chosen for
    # each token of a fixed evaluation set (the first validation batch) go to RUN/traces/step_<N>.parquet, with
    # the consistency with the previous trace and the token-class specialisation logged (moe_lab.traces).
    trace_every_n_steps: int = 0
    sample_prompt: str = "ROMEO:\n"


@dataclass
class UpcycleConfig:
    """Start the MoE model from a trained dense one (sparse upcycling, moe_lab.model.upcycle). A top-level
    section, not `model.init_from` + `model.upcycle`: ModelConfig is pure architecture, exported with every
    model, and how a run started is no property of the model."""

    method: str = ""  # "" (off) | copy | copy_noise | drop (UPCYCLE_METHODS)
    # The dense model: a moe_lab pretrained directory, a trainer checkpoint (*.ckpt), or a run directory
    # (its checkpoints/best.ckpt, else last.ckpt).
    source: str = ""
    noise_std: float = 0.01  # copy_noise: Gaussian noise std, relative to the std of each dense matrix
    drop_ratio: float = 0.5  # drop: fraction of each expert's hidden units re-initialised (Drop-Upcycling)


@dataclass
class ExperimentConfig:
    name: str = "default"
    seed: int = 0
    output_dir: str = "runs"
    version: str = ""  # run directory name under <output_dir>/<name>/; "" picks version_N
    # The model to start from, with its architecture (the experiment's model keys change only what they
    # name): a moe_lab pretrained directory (moe_lab_model.yaml + model.safetensors), a trainer checkpoint
    # (*.ckpt) or a run directory (its checkpoints/best.ckpt, else last.ckpt).
    model_init: str = ""
    # Used only at step 0, as model_init: the experiment's own model section describes the MoE.
    upcycle: UpcycleConfig = field(default_factory=UpcycleConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


# ---------------------------------------------------------------------------------------------
# Loading
