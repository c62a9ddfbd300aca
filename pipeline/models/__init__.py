"""Model families. Import :mod:`pipeline.models.build` for ``build_model`` (imports Keras)."""
