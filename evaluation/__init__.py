"""Evaluation back ends: an artefact becomes per-domain scores (imported as ``searchlab_evaluation``)."""
