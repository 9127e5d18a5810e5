"""The modeling code a checkpoint (and a `--format transformers` export) carries for transformers' `trust_remote_code`.

The two modules here are copied as they are into the directory; `config.json`'s `auto_map` names them. They import
only torch and transformers (transformers loads them from the directory, where dynsparse may not be installed), so
they repeat the few lines of the elastic forward and the allocation rules they need; tests/dynsparse/test_hf_remote.py
holds them equal to `dynsparse.load`.
"""

from pathlib import Path

CODE_FILES = ("configuration_dynsparse.py", "modeling_dynsparse.py")
HERE = Path(__file__).resolve().parent
CLASSES = {  # task -> (transformers auto class, the class in modeling_dynsparse.py)
    "text-classification": ("AutoModelForSequenceClassification", "DynsparseForSequenceClassification"),
    "token-classification": ("AutoModelForTokenClassification", "DynsparseForTokenClassification"),
    "question-answering": ("AutoModelForQuestionAnswering", "DynsparseForQuestionAnswering"),
    "feature-extraction": ("AutoModel", "DynsparseModel"),
}
