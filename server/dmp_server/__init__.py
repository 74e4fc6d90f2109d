"""The dmp manager daemon (installed as ``dmp_server``; internal, not public API).

``daemon.Daemon`` is a single-threaded reactor around the task scheduler
(``scheduler``), with its peer bookkeeping in ``peers`` and its status report
in ``status``. ``dmp manager`` runs it as a daemon; dmp's local mode runs the
same reactor embedded in the user's process. Nothing here unpickles.
"""
