"""One user's working session in the web app: the workspace and what it shows.

* :mod:`~cellsparse_app.session.workspace`: :class:`Workspace`, a user's project, its image list
  and the parts below (the UI's handlers call one method of one part each);
* :mod:`~cellsparse_app.session.canvas`: the shown image, its prompts, selection and zoom, and
  the rendered view;
* :mod:`~cellsparse_app.session.annotating`: clicks, outlines, the brush, accept, undo, erase;
* :mod:`~cellsparse_app.session.rounds`: training rounds and a session's handle on them;
* :mod:`~cellsparse_app.session.results`: predictions, the compare step, export files;
* :mod:`~cellsparse_app.session.sam_bridge`: clicks and boxes to the SAM prompt engine;
* :mod:`~cellsparse_app.session.overlays`: the pictures (annotation overlay, errors, changes);
* :mod:`~cellsparse_app.session.viewport`: the zoomed, panned crop of the canvas;
* :mod:`~cellsparse_app.session.folders`: session folders, their tokens and their clean-up.

Nothing here imports a front end; the core returns data and status lines, the front ends word
and lay out the rest. Import from the submodules (this package imports nothing, so the engines
can use :mod:`overlays` without loading the workspace).
"""
