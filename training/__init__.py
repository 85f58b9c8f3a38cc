"""Training back ends: a recipe becomes a trained artefact (imported as ``searchlab_training``)."""
