"""Images, labels and annotations as arrays, and the files they come from and go to.

``images`` (reading images and label files, channels, contrast), ``display`` (the one
image-to-RGB picture, for people and SAM), ``stains`` (colour deconvolution, inversion),
``labels`` (the ``-1 / 0 / 1..N`` convention), ``annotations`` (what a user marked on one
image), ``margins`` (background rings around accepted cells), ``drawing`` (brush and outline to
masks), ``plausibility`` (masks that look wrong), ``polygons``, ``object_scale`` (cell diameters),
``metrics`` (matching and AP) and ``export`` (masks to TIFF/PNG/ROI/GeoJSON/...).
"""
