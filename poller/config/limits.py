"""The size limits of a configuration: bounds no real file reaches, so hostile input is refused.

Where it sits in the data flow::

    config/*.yaml --MAX_CONFIG_BYTES--> text --MAX_YAML_DEPTH, MAX_YAML_NODES--> YAML tree
        --MAX_EXPANDED_CHARS--> ${VAR}-expanded tree

The file reader (:mod:`poller.config.loading`), the YAML loader
(:mod:`poller.config.yaml_loader`) and ``${VAR}`` expansion (:mod:`poller.config.expansion`)
each enforce theirs, so that a huge file, an alias bomb or a variable used many times gets a
one-line error and never a hang or a traceback.
"""

from __future__ import annotations

#: The largest configuration file read; a bigger one is refused before it is parsed.
MAX_CONFIG_BYTES = 1024 * 1024
#: The deepest nesting of YAML collections, aliases expanded (a real config needs about 7).
MAX_YAML_DEPTH = 64
#: The most YAML values (scalars and collections), aliases expanded: bounds an alias bomb.
MAX_YAML_NODES = 100_000
#: The most characters ``${VAR}`` references may add to the file's values, all together: a
#: 1 MiB file of ``${BIG}`` (or aliases of one) would otherwise build gigabytes.
MAX_EXPANDED_CHARS = 4 * MAX_CONFIG_BYTES
