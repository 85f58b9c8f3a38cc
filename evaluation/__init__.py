"""Evaluation back ends: an artefact becomes per-domain scores.

Imported as ``searchlab_evaluation``.
"""
