"""What sweeps and reports both read about a study, below both so neither imports the other: where its
trials are stored (`storage`) and how a configuration is named (`labels`)."""
