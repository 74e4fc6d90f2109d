"""Processes that run user code (internal): the node daemon, its supervisor, worker
processes and their runners, and the object host beside the manager.
"""
