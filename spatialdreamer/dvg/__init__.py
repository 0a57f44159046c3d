"""DVG: depth-based video generation (disparity control, forward warp, warp-back pairs, masks).

The exports load on first use (:mod:`spatialdreamer._lazy`): the CPU flow of the corpus's
prepare stage (:mod:`spatialdreamer.dvg.dis`) needs neither torch nor kornia.
"""

from typing import TYPE_CHECKING

from spatialdreamer._lazy import lazy_exports

if TYPE_CHECKING:
    from spatialdreamer.dvg.disparity import (
        disparity_from_normalized,
        inverse_depth_from_metric,
        normalize_inverse_depth,
        robust_range,
    )
    from spatialdreamer.dvg.flow import dis_flow, flow_warp, forward_backward_consistent
    from spatialdreamer.dvg.masks import refine_masks_temporally
    from spatialdreamer.dvg.warp import WarpResult, forward_warp
    from spatialdreamer.dvg.warpback import WarpBackPair, warp_back_pair

__all__ = [
    "WarpBackPair",
    "WarpResult",
    "dis_flow",
    "disparity_from_normalized",
    "flow_warp",
    "forward_backward_consistent",
    "forward_warp",
    "inverse_depth_from_metric",
    "normalize_inverse_depth",
    "refine_masks_temporally",
    "robust_range",
    "warp_back_pair",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "WarpBackPair": "warpback",
        "WarpResult": "warp",
        "dis_flow": "flow",
        "disparity_from_normalized": "disparity",
        "flow_warp": "flow",
        "forward_backward_consistent": "flow",
        "forward_warp": "warp",
        "inverse_depth_from_metric": "disparity",
        "normalize_inverse_depth": "disparity",
        "refine_masks_temporally": "masks",
        "robust_range": "disparity",
        "warp_back_pair": "warpback",
    },
)
