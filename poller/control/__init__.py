"""The Lambda-compatible control API: mappings created, changed and deleted at run time.

Data flow::

    AWS CLI / boto3 / Terraform --HTTP (SigV4)--> server --> auth --> operations
        operations --shapes (AWS JSON <-> MappingConfig)--> store (lease table | SQLite | memory)
    every replica: poller.reconcile polls the store's head --> starts, drains and restarts
        mappings at batch boundaries --> acks the revision it applied --> state (Creating,
        Enabled, Updating, ...) is computed from those acks at read time

The modules: ``errors`` (AWS's error bodies), ``store`` (the record and the store protocol)
and its backends ``store_memory``, ``store_sqlite``, ``store_dynamodb``; ``shapes`` (validation
and rendering); ``state`` (the computed state); ``auth`` (SigV4 with botocore's code);
``operations`` (one function per API call, no HTTP) and ``server`` (aiohttp).
"""
