"""Data: product records and manifests, media decoding, frozen backbones, the feature cache, batches.

records -> media -> backbones / featurize -> features (cache: ensure_cache) -> dataset + masking.
"""
