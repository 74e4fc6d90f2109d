"""The user's process (internal): Pool, Executor, Process, proxies, and the link to the engine.

``dmp`` re-exports the public names; everything here may change.
"""
