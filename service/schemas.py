"""Request and response bodies (pydantic, at the process boundary). Limits that the operator sets (texts
per request, characters per text) are checked in `dispatch.py`; these models hold what never changes.

Every request's `inputs` arrive at the engine as plain strings and tuples (`codec.Item`): a text, a text pair,
a word list, or a (question, context) pair."""

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, Strict, model_validator


def _text(value: Any, what: str = 'an input is a text or a pair of texts ["a", "b"]') -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what}, got {type(value).__name__}")
    if not value.strip():
        raise ValueError("text must not be empty")
    if not value.isascii():
        try:  # JSON may carry a lone surrogate ("\ud800"), which no tokenizer takes: it would fail the batch
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text is not valid Unicode (it holds a lone surrogate)") from None
    return value


def _input(value: Any) -> str | tuple[str, str]:
    """One clear message per bad input, instead of one per member of the union."""
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise ValueError(f'a text pair is a list of 2 texts ["a", "b"], got {len(value)} items')
        return _text(value[0]), _text(value[1])
    return _text(value)


def _text_or_words(value: Any) -> str | tuple[str, ...]:
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError("a word list must hold at least one word")
        return tuple(_text(w, "a word is a string") for w in value)
    return _text(value, 'an input is a text or a list of words ["w", ...]')


def _question(value: Any) -> tuple[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f'an input is {{"question": "...", "context": "..."}}, got {type(value).__name__}')
    missing, extra = {"question", "context"} - set(value), sorted(map(str, set(value) - {"question", "context"}))
    if missing or extra:
        what = f"{' and '.join(sorted(missing))} missing" if missing else f"unknown key {extra[0]!r:.40}"
        raise ValueError(f'an input is {{"question": "...", "context": "..."}}: {what}')
    return _text(value["question"], "question is a text"), _text(value["context"], "context is a text")


# for the schema only (`_text` checks): not empty, not all whitespace
_Text = Annotated[str, Field(min_length=1, pattern=r"\S")]


class QuestionInput(BaseModel):
    """A question about a context (for the schema: `_question` checks)."""

    model_config = ConfigDict(extra="forbid")

    question: _Text
    context: _Text = Field(description="the text that holds the answer; long ones are read in overlapping windows")


# a text, or a text pair as ["a", "b"]
Input = Annotated[str | tuple[str, str], PlainValidator(_input, json_schema_input_type=_Text | tuple[_Text, _Text])]
# a text, or a list of words (tagged as given)
WordsInput = Annotated[
    str | tuple[str, ...],
    PlainValidator(_text_or_words, json_schema_input_type=_Text | Annotated[list[_Text], Field(min_length=1)]),
]
# {"question": ..., "context": ...}, as a (question, context) pair
QuestionPair = Annotated[tuple[str, str], PlainValidator(_question, json_schema_input_type=QuestionInput)]
Sparsity = Annotated[float, Strict(), Field(ge=0.0, lt=1.0)]  # strict: "0.5" or true are type errors
# the model's layer count bounds it (checked per checkpoint); 1024 only keeps absurd numbers out of messages
Depth = Annotated[int, Strict(), Field(ge=1, le=1024)]
InputT = TypeVar("InputT")


class SizedRequest(BaseModel, Generic[InputT]):
    """Inputs and at most one size selector (none: the operator's default)."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[InputT] = Field(min_length=1)
    sparsity: Sparsity | None = Field(None, description="serve at this sparsity (fraction of prunable weights removed)")
    size: str | None = Field(None, description="a named size (see GET /v1/sizes)", max_length=100)
    latency_budget_ms: Annotated[float, Strict(), Field(gt=0)] | None = Field(
        None, description="the largest size predicted to answer within this many ms, queue wait included"
    )
    depth: Depth | None = Field(
        None,
        description="run only this many layers, the checkpoint's most important first (see GET /v1/sizes: layers, "
        "depth); combines with sparsity, size or the default, not with latency_budget_ms",
    )
    language: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="the inputs' language: a checkpoint with per-language orderings (GET /v1/sizes: languages) "
        "serves with that language's own; one without serves every language with its shared ordering",
    )

    @model_validator(mode="after")
    def _one_selector(self) -> "SizedRequest[InputT]":
        given = [k for k in ("sparsity", "size", "latency_budget_ms") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of sparsity, size, latency_budget_ms; got {', '.join(given)}")
        if self.depth is not None and self.latency_budget_ms is not None:
            raise ValueError(
                "depth cannot be combined with latency_budget_ms: latencies are measured at full depth only; "
                "give depth with sparsity or size"
            )
        return self


class ClassifyRequest(SizedRequest[Input]):
    """Texts (or text pairs) to label."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"inputs": ["a gripping, beautiful film", "dull"], "sparsity": 0.5}]}
    )

    inputs: list[Input] = Field(min_length=1, description='texts; a text pair is ["a", "b"]')


class EmbedRequest(SizedRequest[Input]):
    """Texts to embed."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"inputs": ["a sentence to embed"], "size": "small"}]})

    inputs: list[Input] = Field(min_length=1, description='texts; a text pair is ["a", "b"]')


class TokensRequest(SizedRequest[WordsInput]):
    """Texts (split into words as the tokenizer splits them) or word lists to tag."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"inputs": ["Ada Lovelace was born in London."], "sparsity": 0.5}]}
    )

    inputs: list[WordsInput] = Field(min_length=1, description='texts, or lists of words ["Ada", "Lovelace", ...]')


class AnswerRequest(SizedRequest[QuestionPair]):
    """Questions, each about its own context."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"inputs": [{"question": "Where was Ada born?", "context": "Ada was born in London."}]}]
        }
    )

    inputs: list[QuestionPair] = Field(min_length=1, description='{"question": ..., "context": ...} per input')


class Served(BaseModel):
    """How a request was served: at which size, and how long it took."""

    sparsity: float = Field(description="the sparsity that served the request")
    size: str | None = Field(None, description="the named size asked for, if any")
    latency_ms: float = Field(description="time in the server: queue + inference")
    queue_ms: float
    inference_ms: float = Field(description="the batch this request ran in (tokenize + forward)")
    budget_met: bool | None = Field(None, description="with latency_budget_ms: whether latency_ms fit it")
    degraded: bool = Field(False, description="served smaller than asked because the server was busy")
    size_reason: Literal["requested", "default", "budget", "floor", "overload"] | None = Field(
        None,
        description="what decided the size: the request's sparsity or size, the operator's default, the latency "
        "budget, the agreement floor (min_agreement: the budget alone would have gone smaller, or a named size ran "
        "denser), or overload (see degraded)",
    )
    depth: int = Field(description="the number of layers that ran")
    language: str | None = Field(description="the language whose ordering served it; null: the shared ordering")


class Prediction(BaseModel):
    """The predicted label of one input."""

    label: str
    score: float = Field(description="probability of the predicted label")


class ClassifyResponse(Served):
    """One prediction per input, in input order."""

    results: list[Prediction]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "results": [{"label": "positive", "score": 0.97}, {"label": "negative", "score": 0.88}],
                    "sparsity": 0.5,
                    "size": None,
                    "latency_ms": 4.2,
                    "queue_ms": 1.1,
                    "inference_ms": 3.1,
                    "budget_met": None,
                    "degraded": False,
                    "depth": 12,
                    "language": None,
                }
            ]
        }
    )


_SERVED = {
    "sparsity": 0.5,
    "size": None,
    "latency_ms": 4.2,
    "queue_ms": 1.1,
    "inference_ms": 3.1,
    "budget_met": None,
    "degraded": False,
    "depth": 12,
    "language": None,
}


class EmbedResponse(Served):
    """One unit vector per input, in input order."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"embeddings": [[0.031, -0.112, 0.054]], "dimensions": 3, **_SERVED}]}
    )

    embeddings: list[list[float]] = Field(description="mean-pooled, L2-normalised last hidden states")
    dimensions: int


class Entity(BaseModel):
    """An entity (BIO tags: a run of B-/I- words), or one tagged word (other tag sets, e.g. POS)."""

    entity_group: str = Field(description="the entity type (the tag without B-/I-), or the word's tag")
    score: float = Field(description="mean probability of its words' tags (each word's first sub-word)")
    word: str = Field(description="the tagged text: text[start:end]")
    start: int = Field(description="character offset in the text (a word list: in the words joined by spaces)")
    end: int


class TokensResponse(Served):
    """Per input, in input order, its entities (or tagged words) in text order."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "results": [
                        [{"entity_group": "PER", "score": 0.98, "word": "Ada Lovelace", "start": 0, "end": 12}]
                    ],
                    **_SERVED,
                }
            ]
        }
    )

    results: list[list[Entity]]


class Answer(BaseModel):
    """The best span of the context (at most 30 tokens); empty with score 0 when there is none."""

    answer: str = Field(description="context[start:end]")
    score: float = Field(description="P(start) x P(end) of the span in the window it was found in")
    start: int = Field(description="character offset in the context")
    end: int


class AnswerResponse(Served):
    """One answer per input, in input order."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"results": [{"answer": "London", "score": 0.91, "start": 26, "end": 32}], **_SERVED}]
        }
    )

    results: list[Answer]


class Level(BaseModel):
    """One row of the size table: accounting from the checkpoint, latency measured by this server."""

    model_config = ConfigDict(extra="allow")  # the checkpoint's metric columns (accuracy, f1, ...)

    sparsity: float
    names: list[str] = Field(description="named sizes served at this level")
    params: int
    params_encoder: int
    params_embeddings: int
    flops: int
    latency_ms: float = Field(description="predicted from this server's profile at latency_batch x latency_seq_len")


class Measurement(BaseModel):
    """One measured point of the startup latency profile (median of repeated forward passes)."""

    sparsity: float
    batch: int
    seq_len: int
    latency_ms: float


class SizesResponse(BaseModel):
    """The sizes this server serves and what each costs."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "task": "text-classification",
                    "endpoint": "/v1/classify",
                    "endpoints": ["/v1/classify", "/v1/embed"],
                    "levels": [
                        {
                            "sparsity": 0.0,
                            "names": ["dense"],
                            "params": 22713602,
                            "params_encoder": 10646784,
                            "params_embeddings": 12066816,
                            "flops": 2181038080,
                            "latency_ms": 41.2,
                            "accuracy": 0.81,
                        }
                    ],
                    "sizes": {"dense": 0.0, "medium": 0.45, "small": 0.9},
                    "default": {"sparsity": 0.0, "size": None},
                    "allowed": [0.0, 0.9],
                    "grid": None,
                    "metric": "accuracy",
                    "device": "cpu (2 threads), float32",
                    "latency_batch": 8,
                    "latency_seq_len": 128,
                    "profile": [{"sparsity": 0.0, "batch": 8, "seq_len": 128, "latency_ms": 41.2}],
                    "layers": 6,
                    "depth": None,
                    "languages": [],
                }
            ]
        }
    )

    task: str = Field(description="what the checkpoint was trained for, e.g. token-classification")
    endpoint: str = Field(description="its endpoint, e.g. /v1/tokens")
    endpoints: list[str] = Field(description="every inference endpoint it serves (its own and /v1/embed)")
    levels: list[Level]
    sizes: dict[str, float] = Field(description="named sizes and their sparsity")
    default: dict[str, Any] = Field(description="what serves a request that names no size")
    allowed: tuple[float, float] = Field(description="[densest, smallest] sparsity accepted")
    grid: list[float] | None = Field(description="operator's levels: requests are served at the next denser one")
    metric: str | None
    device: str
    latency_batch: int
    latency_seq_len: int
    profile: list[Measurement] = Field(description="the latency points this server measured at start")
    layers: int = Field(description="the model's layer count: the largest depth a request may ask")
    depth: dict[str, Any] | None = Field(
        description="the checkpoint's depth record: order (layers, most important first), rule, min_layers (the "
        "smallest depth trained); null for a checkpoint trained without one (depth then drops odd layers first)"
    )
    languages: list[str] = Field(description="languages with their own ordering; empty: one shared ordering")
    agreement_measure: str | None = Field(
        default=None,
        description="what a level's agreement columns measure against the dense size on this server's traffic "
        "(shadow re-runs): label, top1 (tags), span (answers) or cosine (embeddings); see the README",
    )
    min_agreement: float | None = Field(default=None, description="the operator's agreement floor for budgets")


class Health(BaseModel):
    """Liveness."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: str


class Ready(BaseModel):
    """Readiness, with the device and the current queue."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "ready", "device": "cpu (2 threads), float32", "queue_depth": 0}]}
    )

    status: str
    device: str
    queue_depth: int


class ErrorResponse(BaseModel):
    """Every error: a clear message and a machine-readable kind."""

    error: str
    error_type: str
