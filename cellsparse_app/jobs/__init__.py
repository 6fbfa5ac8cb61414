"""Training jobs of the REST API and the one training slot shared with the web app.

``runner`` (the queue and its worker), ``records`` (a job's state, kept on disk), ``journal``
(what survives a restart), ``training`` (one job's training run) and ``slot`` (one training run
per process, queue positions for both front ends).
"""
