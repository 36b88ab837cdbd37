"""Bridges between moe_lab models and other libraries' checkpoints.

`moe_lab.interop.hf`: Hugging Face `transformers` MoE models (Mixtral, OLMoE, Qwen2-MoE, Qwen3-MoE)
to and from moe_lab configs and state dicts. Needs the optional `transformers` dependency, so nothing
here is imported by the core.
"""
