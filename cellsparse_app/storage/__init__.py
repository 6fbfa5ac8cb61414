"""What is kept on disk: projects, their manifest, named models, archives.

``project`` (a folder of images, annotations and rounds), ``manifest`` (``project.json``),
``model_store`` (named trained models under a data directory), ``archive`` (safe zip reading),
``model_zip`` (a model as one zip) and ``atomic_files`` (write-then-rename).
"""
