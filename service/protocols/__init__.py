"""The field's protocols as thin adapters onto the one dispatch path (`service.dispatch`): OpenAI embeddings,
Hugging Face text-embeddings-inference / Inference endpoints, and KServe's Open Inference Protocol v2. Each
turns its body into a `SizedRequest`, serves it on the same batcher, budgets, limits, API key and metrics as
`/v1/*`, and renders the outputs (and its errors) in its own shape."""

from service.protocols.common import error_body

__all__ = ["error_body"]
