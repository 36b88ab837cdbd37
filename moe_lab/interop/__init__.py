"""Bridges between moe_lab models and checkpoints on disk.

`moe_lab.interop.checkpoint`: moe_lab's own formats, the pretrained directory (moe_lab_model.yaml +
model.safetensors) and the trainer's Lightning checkpoints; the trainer imports it.
`moe_lab.interop.hf`: Hugging Face `transformers` MoE models (Mixtral, OLMoE, Qwen2-MoE, Qwen3-MoE)
to and from moe_lab configs and state dicts. It needs the optional `transformers` dependency, so the
core never imports it (nor anything here: this file imports nothing).
"""
