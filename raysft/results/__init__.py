"""Reading an experiment's runs back out of MLflow: :mod:`raysft.results.ranking` (runs ranked on one metric, best
vs default, the verdict recorded on the latest sweep) and :mod:`raysft.results.pareto` (the trade-off between two
metrics and its plot)."""
