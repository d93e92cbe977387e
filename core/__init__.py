"""SCALE Explorer core: the library (data, model), the programs around it (train, eval) and the app's side (explore).

Data flows one way, one subpackage per stage:
    core.data     file -> decoded media -> backbone features -> feature cache -> batches
    core.model    batches -> SCALE -> outputs (S: core.model.score_matrix); checkpoints; catalog embeddings
    core.train    the trainer (`python -m core.train`) and release packaging (`python -m core.train.release`)
    core.eval     metrics and the evaluator (`python -m core.eval`)
    core.explore  what the Streamlit pages call (explorer facade, catalog check, retrieval, maps)
Top level: `errors` (error types), `modalities` (the modality table), `bench` (`python -m core.bench`).
Importable without Streamlit. data and model import nothing from train or explore (model/catalog uses
eval.metrics.l2n); train and eval import nothing from explore; eval and release nothing from the trainer.
"""
