"""The producer: reads manifests lazily and splits them into chunk jobs (see ``submit``)."""
