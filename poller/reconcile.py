"""Starts, drains and restarts mappings as the configuration file and the control API say.

(Owned by helper H4; a placeholder until it lands.)
"""
