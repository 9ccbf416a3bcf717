"""What the tests share, imported as ``from support.<module> import ...`` (conftest.py puts
``tests/`` on ``sys.path``; test modules never import from one another).

- :mod:`support.wait`: :func:`~support.wait.wait_for`, the one way to wait for a condition;
- :mod:`support.daemon`: :class:`~support.daemon.Daemon`, ``python -m edged run`` in a
  subprocess, with its listener's HTTP calls (readiness, status, metrics);
- :mod:`support.client`: HTTP calls as a client makes them (``get``, ``raw``, ``scrape``),
  ``free_port``, ``non_loopback_address``;
- :mod:`support.configs`: daemon configurations several modules run, the API token;
- :mod:`support.servers`: network cameras on loopback (MJPEG, RTSP) in child processes,
  which run :mod:`support.mjpeg` and :mod:`support.rtsp` as scripts (never imported);
- :mod:`support.prometheus`: Debian's Prometheus in a child process;
- :mod:`support.mosquitto`: Debian's mosquitto broker in a child process (stopped and started
  again), its password files;
- :mod:`support.kit`: the observability kit's files and the PromQL helpers that read them;
- :mod:`support.tools`: Debian programs the tests need, on PATH or in /usr/bin, /usr/sbin (skip,
  or fail with EDGED_REQUIRE_TOOLS=1);
- :mod:`support.sinks`: :class:`~support.sinks.Collect`, a sink that keeps every result;
- :mod:`support.fake_edgetpu`: the stand-in libedgetpu (``tests/fake_edgetpu``), compiled;
- :mod:`support.durations`: outage and load durations, short unless ``--long`` is given.

No module here may be named like one of the standard library (``http``, ``socket``...): the
scripts' folder is the first entry of their children's import path.

Tests that start a process (edged, a server, a worker, a tool) or a listening server are
marked ``system`` (``pytest -m "not system"`` runs the others, in seconds).
"""
