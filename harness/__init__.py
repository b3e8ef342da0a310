"""harness: evaluate compressor–predictor LLM systems (accuracy, cost, mutual information)."""

__version__ = "0.1.0"
