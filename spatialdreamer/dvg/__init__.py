"""DVG: depth-based video generation (disparity control, forward warp, warp-back pairs, masks)."""

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
