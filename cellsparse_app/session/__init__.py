"""One user's working session in the web app: the workspace and what it shows.

* :mod:`~cellsparse_app.session.workspace`: :class:`Workspace`, a user's project plus what is on
  the canvas (prompts, selection, candidates, zoom); the UI's handlers call one method each;
* :mod:`~cellsparse_app.session.workspace_rounds`: training rounds, prediction, comparison, export;
* :mod:`~cellsparse_app.session.sam_bridge`: clicks and boxes to the SAM prompt engine;
* :mod:`~cellsparse_app.session.overlays`: the pictures (annotation overlay, errors, changes);
* :mod:`~cellsparse_app.session.viewport`: the zoomed, panned crop of the canvas;
* :mod:`~cellsparse_app.session.folders`: session folders, their tokens and their clean-up.

Nothing here imports a front end. Import from the submodules (this package imports nothing, so
the engines can use :mod:`overlays` without loading the workspace).
"""
