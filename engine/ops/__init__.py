"""Operating Tollgate: configuration, command line, workers, metrics, logs, security, demo."""
