"""rlhf_core: the model side of the product, in pure PyTorch.

PaLM language models, tokenizers, data packing, generation, reward models and PPO/DPO trainers.
This package never imports Django, Celery, `webapp` or `workers` (checked by import-linter).
"""

__version__ = "0.1.0"
