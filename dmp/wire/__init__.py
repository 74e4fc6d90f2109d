"""What crosses the wire (internal): message catalogue and codec, addresses, the ZeroMQ channel.

The manager daemon imports only this package, ``dmp.errors`` and
``dmp._config`` from ``dmp``: nothing here unpickles.
"""
