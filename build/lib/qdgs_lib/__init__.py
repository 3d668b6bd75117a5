"""qdgs: Quality-Diversity Generative Sampling (Chang et al., AAAI 2024) as a library."""

import torch as _torch

# The loaders rely on torch.load(weights_only=True), which torch < 2.6 lets a crafted file
# bypass (CVE-2025-32434).
if _torch.__version__ < "2.6":
    raise ImportError(f"qdgs_lib needs torch >= 2.6 (found {_torch.__version__}): older "
                      "versions' torch.load(weights_only=True) is not safe on untrusted files")
