"""Task heads on top of the elastic encoder, and where their weights live in transformers checkpoints.

The heads are never pruned: every size shares them. Each is built from transformers' own head for the
task (`AutoModelFor<Task>`), so a fine-tuned transformers checkpoint keeps its head.
"""

import torch
from torch import Tensor, nn
from transformers.activations import ACT2FN

from dynsparse.family import EncoderShape


class ClassifierHead(nn.Module):
    """First token -> dense -> activation -> label logits (BERT's pooler + classifier, RoBERTa's head)."""

    def __init__(self, shape: EncoderShape, act: str, dropout: float) -> None:
        super().__init__()
        self.pool = nn.Linear(shape.hidden, shape.hidden)
        self.act = ACT2FN[act]
        self.classifier = nn.Linear(shape.hidden, shape.num_labels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        pooled = self.act(self.pool(self.dropout(hidden[:, 0])))  # (B, H)
        return self.classifier(self.dropout(pooled))  # (B, C)

    def flops(self, seq_len: int) -> int:
        return 2 * (self.pool.weight.numel() + self.classifier.weight.numel())


class TokenHead(nn.Module):
    """Per-token label logits (B, T, C): transformers' `*ForTokenClassification` head."""

    def __init__(self, shape: EncoderShape, dropout: float) -> None:
        super().__init__()
        self.classifier = nn.Linear(shape.hidden, shape.num_labels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.classifier(self.dropout(hidden))

    def flops(self, seq_len: int) -> int:
        return 2 * seq_len * self.classifier.weight.numel()


class SpanHead(nn.Module):
    """Start and end logits per token (B, T, 2): transformers' `*ForQuestionAnswering` head."""

    def __init__(self, shape: EncoderShape) -> None:
        super().__init__()
        self.qa_outputs = nn.Linear(shape.hidden, 2)

    def forward(self, hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.qa_outputs(hidden)

    def flops(self, seq_len: int) -> int:
        return 2 * seq_len * self.qa_outputs.weight.numel()


class MeanPoolHead(nn.Module):
    """Mean of the non-padding tokens' last hidden states (B, H): the sentence-transformers / E5 pooling."""

    def forward(self, hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None:
            return hidden.mean(1)
        m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)

    def flops(self, seq_len: int) -> int:
        return 0


Head = ClassifierHead | TokenHead | SpanHead | MeanPoolHead


def head_params(head: nn.Module) -> int:
    return sum(p.numel() for p in head.parameters())


@torch.no_grad()
def predict_proba(logits: Tensor) -> tuple[Tensor, Tensor]:
    """(label ids, probability of each predicted label) for logits over labels on the last dim."""
    probs = logits.float().softmax(-1)
    score, label = probs.max(-1)
    return label, score
