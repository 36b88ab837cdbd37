"""What moe_lab writes to disk and reads back: the layout of a run directory and of a study directory,
atomic writes, and the environment record. The one place a file name or a metric name is spelled."""
