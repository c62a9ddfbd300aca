"""Model families. Import :mod:`pipeline.models.registry` for ``build_model`` (imports Keras)."""
