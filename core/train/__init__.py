"""Training (`python -m core.train`, core.train.trainer) and packaging a run (`python -m core.train.release`)."""
