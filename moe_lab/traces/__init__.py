"""Routing traces: which experts every token of a fixed evaluation set goes to, per MoE layer, and what
can be read from two or more of them.

  trace.py           the Trace (per layer: experts [T, k], gates [T, k]) and its metadata
  capture.py         run a model over token ids and record its routers' choices
  store.py           a trace as a parquet file, and back
  compare.py         routing consistency between two traces of the same tokens
  specialisation.py  expert shares by token class (letters, digits, ...), as data and as an image
  numerics.py        consistency of fp32 vs bf16 autocast, and compiled vs eager
  command.py         `python -m moe_lab.inspect PATH --trace / --compare / --numerics`

During training, moe_lab.callbacks.routing_trace traces the first validation batch every
monitor.trace_every_n_steps steps and logs the consistency with the previous trace.
"""
