"""Training one experiment with Lightning: the LightningModule (`lit`), the loggers, TensorBoard's
HPARAMS declarations (`tb_hparams`), what a run writes and reports (`results`), and `run`, which ties
them together (what `python -m moe_lab.train` does)."""
