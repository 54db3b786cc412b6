"""Celery task bodies: the only place where Django rows meet rlhf_core.

Start a worker with `celery -A workers.app worker -Q default` (CPU) or `-Q gpu --concurrency 1`.
"""
