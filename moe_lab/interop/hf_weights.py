"""Tensor names and layouts between transformers MoE state dicts and moe_lab state dicts.

transformers 5 stores routed experts the way moe_lab does: stacked, `gate_up_proj` [E, 2H, D] with
gate rows first then up rows, and `down_proj` [E, D, H] (nn.Linear's (out, in) layout), so they map
one-to-one. Dense and shared FFNs keep separate `gate_proj` and `up_proj` there, which are the two
halves of moe_lab's fused `w_in`. Checkpoint files written before transformers 5 (and by its
`save_pretrained`, which writes the original layout back) hold one tensor per expert; they are stacked
here the way transformers' own `conversion_mapping.py` does on load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from moe_lab.interop.architecture import Architecture
from moe_lab.interop.checkpoint import TIED_HEAD, CheckpointError, check_state_dict, expected_shapes
from moe_lab.model.config import ModelConfig, expert_dims, moe_layer_indices

# Buffers older checkpoints saved although they are derived from the config.
DERIVED = re.compile(r"\.rotary_emb\.inv_freq$")
LEGACY_EXPERT = re.compile(r"^(?P<block>.+)\.experts\.(?P<j>\d+)\.(?P<proj>[^.]+)\.weight$")
HF_HEAD = "lm_head.weight"


@dataclass(frozen=True)
class TensorLink:
    ours: str
    theirs: tuple[str, ...]  # one HF tensor, or (gate_proj, up_proj) stacked along dim 0
    fields: tuple[str, ...]  # HF config fields that set the shape, named when it does not fit


def tensor_links(cfg: ModelConfig, arch: Architecture) -> list[TensorLink]:
    """Every moe_lab tensor of `cfg` and the HF tensor(s) it is made of (tied head excluded)."""
    links = [TensorLink("embed.weight", ("model.embed_tokens.weight",), ("vocab_size", "hidden_size"))]
    moe_layers = set(moe_layer_indices(cfg))
    heads = {"q": "num_attention_heads", "k": "num_key_value_heads", "v": "num_key_value_heads"}
    for i in range(cfg.n_layers):

        def link(ours: str, theirs: list[str], fields: tuple[str, ...], i: int = i) -> None:
            links.append(TensorLink(f"blocks.{i}.{ours}", tuple(f"model.layers.{i}.{t}" for t in theirs), fields))

        link("attn_norm.weight", ["input_layernorm.weight"], ("hidden_size",))
        for p, n_heads in heads.items():
            link(f"attn.{p}_proj.weight", [f"self_attn.{p}_proj.weight"], (n_heads, "head_dim", "hidden_size"))
            if cfg.attention_bias:
                link(f"attn.{p}_proj.bias", [f"self_attn.{p}_proj.bias"], (n_heads, "head_dim"))
        link("attn.o_proj.weight", ["self_attn.o_proj.weight"], ("hidden_size", "num_attention_heads", "head_dim"))
        if cfg.qk_norm != "none":
            for p, n_heads in (("q", heads["q"]), ("k", heads["k"])):
                fields = ("head_dim",) if cfg.qk_norm == "head" else (n_heads, "head_dim")
                link(f"attn.{p}_norm.weight", [f"self_attn.{p}_norm.weight"], fields)
        link("ffn_norm.weight", ["post_attention_layernorm.weight"], ("hidden_size",))
        if i in moe_layers:
            experts = (arch.n_experts_field, arch.expert_hidden_field, "hidden_size")
            link("ffn.router.gate.weight", ["mlp.gate.weight"], (arch.n_experts_field, "hidden_size"))
            link("ffn.experts.w_in", ["mlp.experts.gate_up_proj"], experts)
            link("ffn.experts.w_out", ["mlp.experts.down_proj"], experts)
            if expert_dims(cfg).shared_hidden:
                shared = ("shared_expert_intermediate_size", "hidden_size")
                link(
                    "ffn.shared.w_in.weight",
                    ["mlp.shared_expert.gate_proj.weight", "mlp.shared_expert.up_proj.weight"],
                    shared,
                )
                link("ffn.shared.w_out.weight", ["mlp.shared_expert.down_proj.weight"], shared)
            if cfg.moe.shared_expert_gate:
                link("ffn.shared_gate.weight", ["mlp.shared_expert_gate.weight"], ("hidden_size",))
        else:
            dense = ("intermediate_size", "hidden_size")
            link("ffn.w_in.weight", ["mlp.gate_proj.weight", "mlp.up_proj.weight"], dense)
            link("ffn.w_out.weight", ["mlp.down_proj.weight"], dense)
    links.append(TensorLink("norm.weight", ("model.norm.weight",), ("hidden_size",)))
    if not cfg.tie_embeddings:
        links.append(TensorLink("lm_head.weight", (HF_HEAD,), ("vocab_size", "hidden_size")))
    return links


def fuse_legacy_experts(
    state_dict: dict[str, torch.Tensor], arch: Architecture, n_experts: int, source: str
) -> dict[str, torch.Tensor]:
    """Stack per-expert tensors (`<block>.experts.<j>.<proj>.weight`) into the transformers 5 layout
    and rename Mixtral's `block_sparse_moe` to `mlp`; a state dict already fused passes unchanged."""
    gate, up, down = arch.legacy_expert_names
    block_name = re.compile(rf"\.{re.escape(arch.legacy_moe_block)}(?=\.|$)")
    rename = lambda name: block_name.sub(".mlp", name)  # noqa: E731
    out: dict[str, torch.Tensor] = {}
    blocks: dict[str, dict[tuple[int, str], torch.Tensor]] = {}
    for name, tensor in state_dict.items():
        m = LEGACY_EXPERT.match(name)
        if m and m["proj"] in (gate, up, down):
            blocks.setdefault(m["block"], {})[int(m["j"]), m["proj"]] = tensor
        else:
            out[rename(name)] = tensor
    for block, tensors in blocks.items():
        found = sorted({j for j, _ in tensors})
        if found != list(range(n_experts)) and found == list(range(len(found))):
            raise CheckpointError(
                f"{source}: {block} holds {len(found)} experts, the config's {arch.n_experts_field} is {n_experts}"
            )
        for j in found:
            if j >= n_experts:
                raise CheckpointError(
                    f"{source}: tensor {block}.experts.{j}.{gate}.weight is beyond the "
                    f"config's {arch.n_experts_field} = {n_experts}"
                )
        stacks = {}
        for proj in (gate, up, down):
            names = [f"{block}.experts.{j}.{proj}.weight" for j in range(n_experts)]
            for j, name in enumerate(names):
                if (j, proj) not in tensors:
                    raise CheckpointError(f"{source}: tensor {name!r} is missing")
                if tensors[j, proj].shape != tensors[0, proj].shape:
                    raise CheckpointError(
                        f"{source}: tensor {name!r} has shape {list(tensors[j, proj].shape)}, "
                        f"expert 0 has {list(tensors[0, proj].shape)}"
                    )
            stacks[proj] = torch.stack([tensors[j, proj] for j in range(n_experts)])
        out[rename(block) + ".experts.gate_up_proj"] = torch.cat([stacks[gate], stacks[up]], dim=1)
        out[rename(block) + ".experts.down_proj"] = stacks[down]
    return out


def missing_hint(link: TensorLink, cfg: ModelConfig, arch: Architecture) -> str:
    """The config field that most likely put a missing tensor in the expected set."""
    if link.ours == TIED_HEAD:
        return " (the config's tie_word_embeddings is false)"
    m = re.match(r"blocks\.(\d+)\.ffn\.", link.ours)
    if not (m and arch.placement_fields):
        return ""
    layer = int(m[1])
    kind = "an MoE" if layer in moe_layer_indices(cfg) else "a dense"
    return f" (the config makes layer {layer} {kind} layer: {', '.join(arch.placement_fields)})"


def to_moe_lab_state_dict(
    cfg: ModelConfig, arch: Architecture, hf_state_dict: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """The moe_lab state dict (tied head included, as MoETransformer.state_dict() has it)."""
    hf_state_dict = fuse_legacy_experts(hf_state_dict, arch, expert_dims(cfg).n_routed_experts, source)
    shapes = expected_shapes(cfg)
    out: dict[str, torch.Tensor] = {}
    used = {HF_HEAD} if cfg.tie_embeddings else set()  # a tied head may be listed; it is the embedding
    for link in tensor_links(cfg, arch):
        want = shapes[link.ours]
        part_shape = [want[0] // len(link.theirs), *want[1:]]
        parts = []
        for name in link.theirs:
            if name not in hf_state_dict:
                raise CheckpointError(f"{source}: tensor {name!r} is missing{missing_hint(link, cfg, arch)}")
            got = list(hf_state_dict[name].shape)
            if got != part_shape:
                raise CheckpointError(
                    f"{source}: tensor {name!r} has shape {got}, the config gives "
                    f"{part_shape} (from {', '.join(link.fields)})"
                )
            parts.append(hf_state_dict[name])
            used.add(name)
        out[link.ours] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    extra = sorted(n for n in hf_state_dict if n not in used and not DERIVED.search(n))
    if extra:
        raise CheckpointError(f"{source}: tensor {extra[0]!r} has no place in the model the config describes")
    if cfg.tie_embeddings:
        out[TIED_HEAD] = out["embed.weight"]
    return out


def to_hf_state_dict(
    cfg: ModelConfig, arch: Architecture, state_dict: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """The transformers 5 state dict (tied head included, as the HF model's state_dict() has it)."""
    check_state_dict(cfg, state_dict, source)
    out: dict[str, torch.Tensor] = {}
    for link in tensor_links(cfg, arch):
        for name, part in zip(link.theirs, state_dict[link.ours].chunk(len(link.theirs), dim=0), strict=True):
            out[name] = part
    if cfg.tie_embeddings:
        out[HF_HEAD] = out["model.embed_tokens.weight"]
    return out
