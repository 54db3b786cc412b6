"""rlhf_core: the model side of the product, in pure PyTorch.

PaLM language models, tokenizers, data packing, generation, reward models and PPO/DPO trainers.
This package never imports Django, Celery, `webapp` or `workers` (checked by import-linter).

    from rlhf_core import PaLM
    model = PaLM(num_tokens=20000, dim=512, depth=12, heads=8, dim_head=64)
"""

from rlhf_core.palm import PaLM, PaLMConfig

__all__ = ["PaLM", "PaLMConfig"]
__version__ = "0.1.0"
