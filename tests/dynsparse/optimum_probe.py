"""Run by the optimum interpreter (DYNSPARSE_OPTIMUM_PYTHON; its own venv: optimum-onnx needs transformers < 4.58):
load an export directory with `ORTModelFor<Task>.from_pretrained`, tokenise texts with the tokenizer beside it,
print the outputs as JSON. Usage: python optimum_probe.py DIR TASK TEXTS_JSON"""

import json
import sys

from transformers import AutoTokenizer

CLASSES = {
    "text-classification": ("ORTModelForSequenceClassification", ["logits"]),
    "token-classification": ("ORTModelForTokenClassification", ["logits"]),
    "question-answering": ("ORTModelForQuestionAnswering", ["start_logits", "end_logits"]),
    "feature-extraction": ("ORTModelForFeatureExtraction", ["last_hidden_state"]),
}


def main(path: str, task: str, texts: list[str]) -> None:
    import optimum.onnxruntime

    cls, names = CLASSES[task]
    model = getattr(optimum.onnxruntime, cls).from_pretrained(path)
    batch = AutoTokenizer.from_pretrained(path)(texts, padding=True, return_tensors="pt")
    out = model(**batch)
    print(json.dumps({"class": type(model).__name__, **{n: getattr(out, n).tolist() for n in names}}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
