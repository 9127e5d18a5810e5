"""GET /v1/sizes with live quality: per level, the shadow agreement measured on this server's traffic (with its
sample count) beside the checkpoint's offline figures, and the agreement the floor goes by.

Columns added to each level (`shadow_*` only once a comparison exists at that size):

    agreement           what the floor uses: measured once enough samples exist, else the offline estimate
    agreement_source    "shadow" or "offline" (null: nothing known)
    agreement_offline   the checkpoint's estimate (its metric relative to the dense level's)
    shadow_<measure>    the running mean of each measure (label, top1, kl, span, cosine) on shadowed inputs
    shadow_samples      inputs compared at this size
"""

from service.runtime import Runtime
from service.schemas import SizesResponse
from service.shadow import MEASURE


def live_sizes(rt: Runtime) -> SizesResponse:
    """`rt.sizes` with the live quality columns of the checkpoint's own task."""
    if rt.floor is None:
        return rt.sizes
    floor, task = rt.floor, rt.floor.task
    levels = []
    for level in rt.sizes.levels:
        s = level.sparsity
        value, source = floor.estimate(s)
        offline = floor.offline.get(s)
        extra = {
            "agreement": None if value is None else round(value, 4),
            "agreement_source": source,
            "agreement_offline": None if offline is None else round(offline, 4),
            **floor.book.columns(task, s),
        }
        levels.append(level.model_copy(update=extra))
    return rt.sizes.model_copy(
        update={"levels": levels, "agreement_measure": MEASURE[task], "min_agreement": floor.min_agreement}
    )
