"""Image-feature extractor: Cell Painting images -> per-well Mesmer ``C5_reduced`` vectors.

Modules: ``images`` (manifests, illumination, Mesmer pre-processing), ``tiling`` (paper eq. 1-2),
``mesmer`` (the torch network with Keras layer names), ``convert`` (Keras/TF weights -> torch),
``features`` (site and well vectors), ``run`` (one plate, resumable), ``distributed`` (Dask over
plates). See docs/extractor.md for every shape.
"""
