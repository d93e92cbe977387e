"""Training: the trainer (`python -m core.train`, core.train.trainer), the fusion weights it fits on dev at the
end (core.train.fusion), and packaging a run as a checkpoint folder (`python -m core.train.release`)."""
