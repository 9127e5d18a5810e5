"""text-embeddings-inference's request and response bodies, as pydantic models (`service.protocols.tei` serves them)."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.protocols.common import SizeFields


class TeiOptions(SizeFields):
    truncate: bool = Field(False, description="only false: a text over the token limit is refused (422)")
    truncation_direction: Literal["left", "right", "Left", "Right"] | None = Field(None, description="unused")
    prompt_name: str | None = Field(None, max_length=100, description="refused: no prompts are configured")


class EmbedInput(TeiOptions):
    """TEI's embed request."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"inputs": ["a sentence"], "size": "small"}]})

    inputs: str | list[str] = Field(description="a text or a list of texts")
    normalize: bool = Field(True, description="only true: the vectors are unit vectors")
    dimensions: int | None = Field(None, description="refused: every size returns full-width vectors")


class PredictInput(TeiOptions):
    """TEI's predict request: a text, a pair ["a", "b"], or a list of texts and pairs."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"inputs": "a gripping film", "sparsity": 0.5}]})

    inputs: str | list[str] | list[str | list[str]] = Field(
        description='a text, a pair ["a", "b"] (a list of exactly 2 texts is a pair, as in TEI), or a list of '
        'texts and pairs [["a", "b"], ...]'
    )
    raw_scores: bool = Field(False, description="logits instead of probabilities")


class TokenizeInput(BaseModel):
    """TEI's tokenize request."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"inputs": "a gripping film"}]})

    inputs: str | list[str]
    add_special_tokens: bool = True
    prompt_name: str | None = Field(None, max_length=100, description="refused: no prompts are configured")


class InferenceInput(TeiOptions):
    """An Inference endpoint's request: `inputs` as the checkpoint's task takes them, task `parameters` (and
    dynsparse's size fields there or beside them)."""

    inputs: Any = Field(
        description='text-classification: a text, {"text", "text_pair"}, or a list of them; token-classification: '
        'a text or a list; question-answering: {"question", "context"} or a list; feature-extraction: a text or a '
        "list"
    )
    parameters: dict[str, Any] | None = Field(None, description="the task's parameters and dynsparse's size fields")
    normalize: bool = Field(True, description="feature-extraction: only true")


class Score(BaseModel):
    label: str
    score: float


class SimpleToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class ModelType(BaseModel):
    model_config = ConfigDict(extra="allow")


class Info(BaseModel):
    """TEI's /info, plus dynsparse's sizes."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model_id": "sst2",
                    "model_sha": None,
                    "model_dtype": "float32",
                    "model_type": {
                        "classifier": {
                            "id2label": {"0": "negative", "1": "positive"},
                            "label2id": {"negative": 0, "positive": 1},
                        }
                    },
                    "max_concurrent_requests": 256,
                    "max_input_length": 510,
                    "max_batch_tokens": 16320,
                    "max_batch_requests": 32,
                    "max_client_batch_size": 64,
                    "tokenization_workers": 1,
                    "version": "0.1.0",
                    "sha": None,
                    "docker_label": None,
                    "task": "text-classification",
                    "sizes": {"dense": 0.0, "medium": 0.45, "small": 0.9},
                    "default": {"sparsity": 0.0, "size": None},
                    "allowed": [0.0, 0.9],
                }
            ]
        }
    )

    model_id: str
    model_sha: str | None = None
    model_dtype: str
    model_type: dict[str, Any] = Field(description='{"classifier": {"id2label", "label2id"}}, {"embedding": ...}')
    max_concurrent_requests: int = Field(description="the queue limit (429 beyond it)")
    max_input_length: int = Field(description="tokens per text")
    max_batch_tokens: int
    max_batch_requests: int | None = Field(description="inputs per forward pass")
    max_client_batch_size: int = Field(description="inputs per request")
    tokenization_workers: int = 1
    version: str
    sha: str | None = None
    docker_label: str | None = None
    task: str = Field(description="what the checkpoint was trained for")
    sizes: dict[str, float] = Field(description="named sizes and their sparsity (GET /v1/sizes for more)")
    default: dict[str, Any]
    allowed: list[float] = Field(description="[densest, smallest] sparsity accepted")
