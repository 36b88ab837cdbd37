"""Everything that reads results back: the sweep report (sweep_*), the ablation report (ablation_*),
TensorBoard scalars (tb_scalars), figures, seed statistics (stats) and what both reports share (common).
`python -m moe_lab.report DIR` is the entry point (__main__)."""
