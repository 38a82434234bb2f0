"""fedlight: federated-learning experiments with Lightning, MLflow and Optuna."""

__version__ = "0.1.0"
