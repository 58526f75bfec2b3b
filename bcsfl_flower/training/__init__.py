"""Torch training shared by every party that trains or evaluates a model.

:mod:`.train` (local SGD, evaluation, weights in and out, the torch device),
:mod:`.privacy` (DP-SGD with Opacus, the budget accounted across rounds) and
:mod:`.pruning` (magnitude pruning before upload). Clients train with it, the
committee's root set (:mod:`bcsfl_flower.committee.rootset`) computes its reference
update with it, and the ServerApp evaluates the global model with it. It imports
nothing else of the package.
"""
