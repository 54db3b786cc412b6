"""The Django project: annotation workspace, accounts and roles, exports.

Never imports rlhf_core, torch or workers (checked by import-linter); background work is started by
task name through `webapp.background`.
"""
