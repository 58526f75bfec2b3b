"""Import torchvision on a CPU-only torch build.

torchvision 0.28's wheel is built against CUDA torch; on the CPU build of torch 2.13
``import torchvision`` fails with "operator torchvision::nms does not exist" because
its Python side registers fake kernels for ops whose schemas live in the (unloadable)
compiled extension. Defining the two schemas first lets datasets, transforms and
models import; calling ``nms``/``qnms`` still raises, which nothing here needs.
"""

from __future__ import annotations

import types

import torch

__all__ = ["import_torchvision"]

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library: torch.library.Library | None = None


def import_torchvision() -> types.ModuleType:
    """Return the ``torchvision`` module, defining missing op schemas first if needed."""
    global _library
    try:
        import torchvision
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
        if _library is None:
            _library = torch.library.Library("torchvision", "FRAGMENT")
            for name, schema in _SCHEMAS.items():
                if not torch._C._dispatch_has_kernel(f"torchvision::{name}"):
                    try:
                        _library.define(schema)
                    except RuntimeError:  # already defined by a real extension
                        pass
        import sys

        for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[mod]  # drop the half-imported package before retrying
        import torchvision
    return torchvision
