"""Evaluation: embedding metrics, mismatch AUC, masked-word accuracy, and the evaluator (`python -m core.eval`)."""
