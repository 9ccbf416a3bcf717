"""What the tests share, imported as ``from support.<module> import ...`` (conftest.py puts
``tests/`` on ``sys.path``; test modules never import from one another).

- :mod:`support.wait`: :func:`~support.wait.wait_for`, the one way to wait for a condition;
- :mod:`support.daemon`: :class:`~support.daemon.Daemon`, ``python -m edged run`` in a
  subprocess, and the HTTP calls made to it (``get``, ``raw``, ``scrape``);
- :mod:`support.servers`: network cameras on loopback (MJPEG, RTSP) in child processes,
  which run :mod:`support.mjpeg` and :mod:`support.rtsp` as scripts;
- :mod:`support.sinks`: :class:`~support.sinks.Collect`, a sink that keeps every result;
- :mod:`support.fake_edgetpu`: the stand-in libedgetpu (``tests/fake_edgetpu``), compiled;
- :mod:`support.durations`: outage and load durations, short unless ``--long`` is given.

Tests that start a process (edged, a server, a worker, a tool) or a listening server are
marked ``system`` (``pytest -m "not system"`` runs the others, in seconds).
"""
