"""SCALE Explorer core: data pipeline, SCALE model, trainer and evaluation.

Data flows one way: file -> decoded media (`media`) -> backbone features (`backbones`)
-> cached features (`features`) -> batches (`dataset`, `masking`) -> model (`model`)
-> outputs -> evaluation (`evaluate`) or the app. Importable without Streamlit.
"""
